"""The four services. Each ``build_*`` registers its handlers on a bus and returns it."""

from __future__ import annotations

from collections.abc import Callable

from opentelemetry import trace

from messagebus import Bus, Envelope, Reject, Retry

from .models import (
    EMAILS,
    ORDERS_CREATED,
    ORDERS_SHIPPED,
    PAYMENTS_COMPLETED,
    OrderCreated,
    OrderShipped,
    PaymentCompleted,
    SendEmail,
)

Log = Callable[[str, str], None]

tracer = trace.get_tracer("samples.shop")


class PaymentGatewayDown(Exception):
    """The (simulated) card processor timed out; worth a retry."""


def build_orders(url: str, log: Log) -> Bus:
    """The order service only publishes; see :func:`place_orders`."""
    bus = Bus.from_url(url, service="orders")
    bus.publishes(ORDERS_CREATED, OrderCreated)  # for its AsyncAPI document
    return bus


async def place_orders(bus: Bus, orders: list[OrderCreated], log: Log) -> None:
    """Publish each order, keyed by order id so its events stay in order. Each order is one
    business transaction: its span is the root of a trace that crosses all four services."""
    for order in orders:
        with tracer.start_as_current_span("place order", attributes={"shop.order_id": order.order_id}):
            await bus.publish(ORDERS_CREATED, order, key=order.order_id)
        log("orders", f"placed {order.order_id} for {order.customer}: ${order.total:.2f}")


def build_payments(url: str, log: Log) -> Bus:
    """Charges cards. The gateway fails the first attempt of every third order (retried with
    backoff); card 0000 is declined (rejected: dead-lettered at once)."""
    bus = Bus.from_url(url, service="payments", retry=Retry(max_attempts=3, initial_delay=0.05, jitter=0.0))
    bus.publishes(PAYMENTS_COMPLETED, PaymentCompleted)

    @bus.subscribe(ORDERS_CREATED, concurrency=4)
    async def charge(order: OrderCreated, envelope: Envelope) -> None:
        if order.card == "0000":
            log("payments", f"card declined for {order.order_id}: rejecting")
            raise Reject(f"card ending {order.card} declined")
        if int(order.order_id.split("-")[1]) % 3 == 0 and envelope.attempt == 1:
            log("payments", f"gateway timeout for {order.order_id} (attempt {envelope.attempt}), will retry")
            raise PaymentGatewayDown("card processor timed out")
        log("payments", f"charged {order.order_id} ${order.total:.2f} (attempt {envelope.attempt})")
        await bus.publish(
            PAYMENTS_COMPLETED,
            PaymentCompleted(order_id=order.order_id, amount=order.total, email=order.email),
            key=order.order_id,
        )

    return bus


def build_shipping(url: str, log: Log) -> Bus:
    """Ships paid orders and asks notifications to email the customer."""
    bus = Bus.from_url(url, service="shipping")
    bus.publishes(ORDERS_SHIPPED, OrderShipped)
    bus.sends(EMAILS, SendEmail)

    @bus.subscribe(PAYMENTS_COMPLETED, concurrency=4)
    async def ship(payment: PaymentCompleted) -> None:
        carrier = "DHL" if payment.amount > 50 else "Post"
        log("shipping", f"shipped {payment.order_id} with {carrier}")
        await bus.publish(ORDERS_SHIPPED, OrderShipped(order_id=payment.order_id, carrier=carrier, email=payment.email))
        await bus.send(
            EMAILS,
            SendEmail(to=payment.email, subject=f"Order {payment.order_id} is on its way", order_id=payment.order_id),
        )

    return bus


def build_notifications(url: str, log: Log, on_done: Callable[[str, str], None] | None = None) -> Bus:
    """Sends emails from the work queue, and tells customers about failed payments by
    reading the payments dead-letter queue."""
    bus = Bus.from_url(url, service="notifications")

    @bus.consume(EMAILS, concurrency=8)
    async def send_email(cmd: SendEmail) -> None:
        log("notifications", f"emailed {cmd.to}: {cmd.subject!r}")
        if on_done:
            on_done(cmd.order_id, "shipped")

    @bus.consume(f"{ORDERS_CREATED}.payments.dlq")
    async def payment_failed(order: OrderCreated, envelope: Envelope) -> None:
        reason = envelope.wire_headers.get("dlq-error-message", "?")
        log("notifications", f"payment failed for {order.order_id} ({reason}); emailed {order.email}")
        if on_done:
            on_done(order.order_id, "payment failed")

    return bus
