"""Header tests of the conformance kit: the one header rule (``messagebus._headers``) holds
the same way on every transport, and one oversized header refused at publish disturbs no
other message. Mixed into :class:`~messagebus.testing.conformance.TransportConformance`."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from .. import Bus, Envelope, InvalidHeaders
from .._headers import MAX_HEADERS_BYTES, MAX_NAME_BYTES
from ._collect import Collector
from ._proxy import TcpProxy

if TYPE_CHECKING:
    from ._target import ConformanceTarget

__all__ = ["HeaderLimitTests"]

BusFactory = Callable[..., Bus]

#: One name of every binding's reserved family, in the cases a broker could take as distinct.
RESERVED_SAMPLES = (
    "ce-id",
    "CE-Type",
    "ce_id",
    "cloudEvents:id",
    "cloudEvents_source",
    "CLOUDEVENTS:time",
    "content-type",
    "Content-Type",
    "messagebus-attempt",
)


def _name(prefix: str) -> str:
    return f"hdr.{prefix}.{uuid.uuid4().hex[:10]}"


@contextlib.contextmanager
def _maybe_proxy(target: ConformanceTarget) -> Iterator[tuple[str, TcpProxy | None]]:
    """The target's URL through a :class:`TcpProxy` counting connections, when it has one."""
    if target.upstream is None or target.via_proxy is None:
        yield target.url, None
        return
    with TcpProxy(target.upstream) as proxy:
        yield target.via_proxy(proxy.host, proxy.port), proxy


class HeaderLimitTests:
    """The header rule on a real transport; needs the kit's ``target`` and ``buses`` fixtures."""

    async def test_header_name_at_the_limit_passes_one_byte_over_is_refused(
        self, target: ConformanceTarget, buses: BusFactory
    ) -> None:
        """Catches header-name limits that differ by transport (memory and Kafka took a
        300-byte name that RabbitMQ refused): a 255-byte name, ASCII or multi-byte, makes the
        round trip intact; a 256-byte one raises InvalidHeaders on every transport."""
        queue = _name("names")
        got: Collector[Envelope] = Collector(target.timeout)
        bus = buses("names")

        @bus.consume(queue)
        async def handle(envelope: Envelope) -> None:
            got.add(envelope)

        ascii_name = "n" * MAX_NAME_BYTES
        wide_name = "é" * (MAX_NAME_BYTES // 2) + "n"
        async with bus:
            for over in ("n" * (MAX_NAME_BYTES + 1), "é" * 128):
                with pytest.raises(InvalidHeaders, match=f"at most {MAX_NAME_BYTES}"):
                    await bus.send(queue, {"n": 0}, headers={over: "v"})
            await bus.send(queue, {"n": 1}, headers={ascii_name: "a", wide_name: "é"})
            [envelope] = await got.wait_for(1)
        assert envelope.headers.get(ascii_name) == "a"
        assert envelope.headers.get(wide_name) == "é"

    async def test_reserved_header_names_cannot_spoof_the_envelope(
        self, target: ConformanceTarget, buses: BusFactory
    ) -> None:
        """Catches a user header setting the envelope: ``cloudEvents:id`` on RabbitMQ or
        ``ce_id`` on Kafka replaced ``Envelope.id``. Every binding's name, in any case, is
        refused at publish with InvalidHeaders naming it, and nothing of it reaches a handler."""
        queue = _name("spoof")
        got: Collector[Envelope] = Collector(target.timeout)
        bus = buses("spoof")

        @bus.consume(queue)
        async def handle(envelope: Envelope) -> None:
            got.add(envelope)

        async with bus:
            for name in RESERVED_SAMPLES:
                with pytest.raises(InvalidHeaders, match="reserved") as info:
                    await bus.send(queue, {"n": 0}, headers={name: "spoofed"})
                assert repr(name) in str(info.value)
            await bus.send(queue, {"n": 1}, headers={"ok": "1"})
            [envelope] = await got.wait_for(1)
        assert envelope.id and envelope.id != "spoofed"
        assert envelope.source == "spoof"
        assert "spoofed" not in envelope.wire_headers.values()

    async def test_headers_at_the_size_limit_pass_and_a_huge_value_is_refused(
        self, target: ConformanceTarget, buses: BusFactory
    ) -> None:
        """Catches an oversized header reaching the broker (a 200 KB value made RabbitMQ close
        the connection) and a budget smaller than documented on some transport: 64 KiB of
        names and values make the round trip; a 200 KB value raises InvalidHeaders."""
        queue = _name("size")
        got: Collector[Envelope] = Collector(target.timeout)
        bus = buses("size")

        @bus.consume(queue)
        async def handle(envelope: Envelope) -> None:
            got.add(envelope)

        at_limit = {"x-big": "v" * (MAX_HEADERS_BYTES - len("x-big"))}
        async with bus:
            with pytest.raises(InvalidHeaders, match=f"at most {MAX_HEADERS_BYTES}"):
                await bus.send(queue, {"n": 0}, headers={"x-big": "v" * 200_000})
            await bus.send(queue, {"n": 1}, headers=at_limit)
            [envelope] = await got.wait_for(1)
        assert envelope.headers.get("x-big") == at_limit["x-big"]

    async def test_oversized_header_amid_traffic_floods_no_one(
        self, target: ConformanceTarget, buses: BusFactory
    ) -> None:
        """Catches the flood: one publish with a 200 KB header made RabbitMQ drop the
        connection about 1,300 times in 5 s, and 100 good messages sent meanwhile were handled
        308 times. While 100 good messages are sent and consumed on one bus, that publish is
        refused cleanly; every good message is handled exactly once (duplicates fail), no
        unexpected message arrives, and the connection is re-established at most once (counted
        through a TCP proxy when the target has one and the transport keeps its connections)."""
        queue = _name("flood")
        got: Collector[int] = Collector(target.timeout * 2)
        with _maybe_proxy(target) as (url, proxy):
            bus = buses("flood", url=url)

            @bus.consume(queue, concurrency=4)
            async def handle(item: dict[str, Any]) -> None:
                got.add(int(item["n"]))

            async with bus:
                await bus.send(queue, {"n": -1})  # warm up: every connection is open
                await got.wait_for(1)
                # Reconnects are counted where the transport keeps its connections (AMQP,
                # Kafka, gRPC): with no new connection for ten more messages. An HTTP client
                # that opens one per request (SQS on moto) is left to the other counts.
                warm = proxy.connections_total if proxy is not None else 0
                for n in range(-11, -1):
                    await bus.send(queue, {"n": n})
                await got.wait_until(lambda items: set(range(-11, 0)) <= set(items), "the warm-up messages")
                before = proxy.connections_total if proxy is not None else 0
                keeps_connections = proxy is not None and before == warm
                tenth_sent = asyncio.Event()

                async def good() -> None:
                    for n in range(100):
                        await bus.send(queue, {"n": n})
                        if n == 10:
                            tenth_sent.set()

                async def bad() -> BaseException | None:
                    await tenth_sent.wait()
                    try:
                        await bus.send(queue, {"n": 999}, headers={"x-flood": "v" * 200_000})
                    except InvalidHeaders as exc:
                        return exc
                    return None

                _, refused = await asyncio.gather(good(), bad())
                assert isinstance(refused, InvalidHeaders), "the 200 KB header was not refused"
                await bus.send(queue, {"n": 100})  # handled last: the rest had their chance
                await got.wait_until(lambda items: set(range(101)) <= set(items), "101 good messages")
                opened = proxy.connections_total - before if proxy is not None and keeps_connections else 0
        counts = Counter(got.items)
        unexpected = sorted(set(counts) - set(range(-11, 101)))
        duplicates = {n: c for n, c in counts.items() if c > 1}
        assert not unexpected, f"unexpected messages: {unexpected}"
        assert not duplicates, f"good messages handled more than once: {duplicates}"
        assert opened <= 1, f"the connection was re-established {opened} times"
