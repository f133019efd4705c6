"""Run the shop: all four services in one process (default), or one service.

python -m samples.shop                       # all four on memory://, prints the flow
python -m samples.shop --orders 20           # more orders
MESSAGEBUS_URL=amqp://guest:guest@localhost/ python -m samples.shop --service payments
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time

from .models import OrderCreated
from .services import build_notifications, build_orders, build_payments, build_shipping, place_orders

COLORS = {"orders": 33, "payments": 35, "shipping": 36, "notifications": 32}
NAMES = ["Ada", "Linus", "Grace", "Guido", "Barbara", "Ken"]
BUILDERS = {"payments": build_payments, "shipping": build_shipping, "notifications": build_notifications}


def log(service: str, text: str) -> None:
    label = f"{service:<13}"
    if sys.stdout.isatty():
        label = f"\033[{COLORS.get(service, 0)}m{label}\033[0m"
    print(f"{label} | {text}", flush=True)


def sample_orders(n: int) -> list[OrderCreated]:
    orders = [
        OrderCreated(
            order_id=f"order-{i}",
            customer=name,
            email=f"{name.lower()}@example.com",
            total=round(19.99 * i, 2),
            card="0000" if i == 5 else "4242",
        )
        for i, name in zip(range(1, n + 1), NAMES * (n // len(NAMES) + 1), strict=False)
    ]
    return orders


def print_order_trace(order_id: str) -> None:
    """Print the trace of one order across the four services (needs opentelemetry-sdk)."""
    from messagebus.testing.telemetry import install_telemetry, print_trace_tree

    telemetry = install_telemetry()
    trace_id = telemetry.trace_id_of(
        lambda span: span.name == "place order" and (span.attributes or {}).get("shop.order_id") == order_id
    )
    if trace_id is None:
        print(f"no trace recorded for {order_id}")
        return
    print(f"\nThe trace of {order_id} (retried once by payments) across the four services:\n")
    print_trace_tree(telemetry.spans(trace_id), trace_id=trace_id)


async def run_all(url: str, n: int, timeout: float) -> int:
    done: dict[str, str] = {}
    finished = asyncio.Event()

    def on_done(order_id: str, outcome: str) -> None:
        done[order_id] = outcome
        if len(done) >= n:
            finished.set()

    buses = [
        build_payments(url, log),
        build_shipping(url, log),
        build_notifications(url, log, on_done),
    ]
    orders_bus = build_orders(url, log)
    started = time.perf_counter()
    for bus in buses:
        await bus.start()
    async with orders_bus:
        await place_orders(orders_bus, sample_orders(n), log)
        try:
            await asyncio.wait_for(finished.wait(), timeout)
        except TimeoutError:
            print(f"timed out: {len(done)} of {n} orders finished", file=sys.stderr)
            return 1
    for bus in buses:
        await bus.stop()
    took = time.perf_counter() - started
    shipped = sum(1 for o in done.values() if o == "shipped")
    print(
        f"\n{n} orders in {took:.2f}s on {orders_bus.url}: "
        f"{shipped} shipped, {n - shipped} payment failed (dead-lettered)"
    )
    return 0


async def run_one(url: str, service: str, n: int) -> int:
    if service == "orders":
        async with build_orders(url, log) as bus:
            await place_orders(bus, sample_orders(n), log)
        return 0
    bus = BUILDERS[service](url, log)  # type: ignore[operator]
    await bus.start()
    log(service, f"consumers running on {bus.url}; Ctrl-C to stop")
    await bus.run()  # until SIGINT/SIGTERM, then a graceful stop
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m samples.shop", description=__doc__.splitlines()[0])
    parser.add_argument("--service", choices=["all", "orders", *BUILDERS], default="all")
    parser.add_argument("--orders", type=int, default=6, help="how many orders to place")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--url", default=os.environ.get("MESSAGEBUS_URL", "memory://shop"))
    parser.add_argument("--trace", action="store_true", help="print the trace tree of order-3 (opentelemetry-sdk)")
    args = parser.parse_args()
    # The SDK's own retry / dead-letter log lines, interleaved with the services' output.
    logging.basicConfig(level=logging.WARNING, format="%(name)-13s | %(levelname)s: %(message)s", stream=sys.stdout)
    if args.service == "all":
        if not args.trace:
            return asyncio.run(run_all(args.url, args.orders, args.timeout))
        try:
            from messagebus.testing.telemetry import capture_telemetry
        except ImportError as exc:
            # Only a missing SDK gets the install hint; any other ImportError is a bug to show.
            if not (exc.name or "").startswith("opentelemetry"):
                raise
            print(f"--trace needs the OpenTelemetry SDK ({exc}): pip install opentelemetry-sdk", file=sys.stderr)
            return 2
        with capture_telemetry():
            status = asyncio.run(run_all(args.url, args.orders, args.timeout))
            print_order_trace("order-3")
        return status
    return asyncio.run(run_one(args.url, args.service, args.orders))


if __name__ == "__main__":
    sys.exit(main())
