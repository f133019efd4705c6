"""Messages of the shop. Plain pydantic models: the handler annotations pick the decoder."""

from pydantic import BaseModel

ORDERS_CREATED = "orders.created"
PAYMENTS_COMPLETED = "payments.completed"
ORDERS_SHIPPED = "orders.shipped"
EMAILS = "emails"


class OrderCreated(BaseModel):
    order_id: str
    customer: str
    email: str
    total: float
    card: str = "4242"


class PaymentCompleted(BaseModel):
    order_id: str
    amount: float
    email: str


class OrderShipped(BaseModel):
    order_id: str
    carrier: str
    email: str


class SendEmail(BaseModel):
    to: str
    subject: str
    order_id: str
