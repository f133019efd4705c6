"""Request/reply: a shop asks the pricing service for quotes and waits for each answer.

    python -m samples.patterns.request_reply [URL]

The pricing service consumes the ``quotes`` queue; its handler returns a ``Quote``, which
is the reply. The shop calls ``bus.request("quotes", QuoteRequest(...), reply_type=Quote,
timeout=...)``: one request, then three at once (each gets its own quote). A quote for an
unknown product makes the handler raise ``LookupError``, which pricing never retries: the
shop's request fails at once with ``RequestFailed`` naming ``builtins.LookupError``, long
before its timeout. A request to ``quotes.archive``, which nobody consumes, ends in
``RequestTimeout`` after its short timeout.
"""

from __future__ import annotations

import asyncio
import time

from pydantic import BaseModel

from messagebus import Bus, Envelope, RequestFailed, RequestTimeout, Retry

from ._scene import Checks, namespaced, run_cli, say

PRICES = {"widget": 2.50, "gadget": 12.00, "sprocket": 0.40}
#: Seconds the shop waits for a quote; the failed one must come back well before it.
QUOTE_TIMEOUT = 10.0
#: Seconds the shop waits on the queue nobody consumes.
NO_RESPONDER_TIMEOUT = 0.5


class QuoteRequest(BaseModel):
    sku: str
    quantity: int


class Quote(BaseModel):
    sku: str
    quantity: int
    unit_price: float
    total: float


def build_pricing(url: str, quotes: str) -> Bus:
    """The pricing service: answers each ``QuoteRequest`` on ``quotes`` with a ``Quote``;
    raises ``LookupError`` (not retried: dead-lettered at once) for an unknown product."""
    bus = Bus.from_url(url, service="pricing")

    @bus.consume(quotes, concurrency=4, retry=Retry(retry_on=(ConnectionError,)))
    async def price(request: QuoteRequest, envelope: Envelope) -> Quote:
        if request.sku not in PRICES:
            say("pricing", f"no price for {request.sku!r}: raising LookupError")
            raise LookupError(f"no price for {request.sku!r}")
        unit = round(PRICES[request.sku] * (0.9 if request.quantity >= 100 else 1.0), 2)
        quote = Quote(
            sku=request.sku, quantity=request.quantity, unit_price=unit, total=round(unit * request.quantity, 2)
        )
        say("pricing", f"quoting {request.quantity} x {request.sku} (request {envelope.id[:8]}): ${quote.total}")
        return quote

    return bus


async def main(url: str, *, namespace: str | None = None) -> int:
    """Run the scene on ``url``; 0 when every reply reached its caller, the failing request
    raised ``RequestFailed`` before its timeout and the unanswered one ``RequestTimeout``."""
    name = namespaced(url, namespace)
    quotes, archive = name("quotes"), name("quotes.archive")
    checks = Checks()
    pricing = build_pricing(url, quotes)
    shop = Bus.from_url(url, service="shop")
    async with pricing, shop:
        quote = await shop.request(
            quotes, QuoteRequest(sku="widget", quantity=10), reply_type=Quote, timeout=QUOTE_TIMEOUT
        )
        say("shop", f"got {quote!r}")
        checks.expect(quote.sku == "widget" and quote.total == 25.0, f"10 widgets cost $25.00, got {quote!r}")

        wanted = [
            QuoteRequest(sku="gadget", quantity=1),
            QuoteRequest(sku="sprocket", quantity=500),
            QuoteRequest(sku="widget", quantity=3),
        ]
        got = await asyncio.gather(
            *(shop.request(quotes, request, reply_type=Quote, timeout=QUOTE_TIMEOUT) for request in wanted)
        )
        for request, reply in zip(wanted, got, strict=True):
            say("shop", f"asked for {request.quantity} x {request.sku} at once with the others: ${reply.total}")
            checks.expect(
                (reply.sku, reply.quantity) == (request.sku, request.quantity),
                f"the reply to {request!r} is its own quote, got {reply!r}",
            )

        started = time.monotonic()
        try:
            await shop.request(
                quotes, QuoteRequest(sku="unobtainium", quantity=1), reply_type=Quote, timeout=QUOTE_TIMEOUT
            )
        except RequestFailed as error:
            waited = time.monotonic() - started
            say("shop", f"RequestFailed after {waited:.2f}s: error_type={error.error_type} ({error.error_message})")
            checks.expect(
                error.error_type == "builtins.LookupError", f"the failure names LookupError, got {error.error_type!r}"
            )
            checks.expect(waited < QUOTE_TIMEOUT, "a failed request fails before its timeout")
        except RequestTimeout:
            checks.expect(False, "a request whose responder failed for good fails fast, not by its timeout")
        else:
            checks.expect(False, "a quote for an unknown product raises RequestFailed")

        started = time.monotonic()
        try:
            await shop.request(
                archive, QuoteRequest(sku="widget", quantity=1), reply_type=Quote, timeout=NO_RESPONDER_TIMEOUT
            )
        except RequestTimeout as error:
            say("shop", f"RequestTimeout after {time.monotonic() - started:.2f}s: {error}")
        else:
            checks.expect(False, f"a request to {archive!r}, which nobody consumes, raises RequestTimeout")
    return checks.result()


if __name__ == "__main__":
    run_cli(main, __doc__)
