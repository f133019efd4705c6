"""RabbitMQ's own header limits: the content-header frame (headers, key, content type and
message id) must fit the negotiated ``frame_max``; a message that does not is refused before
it is sent, and one the broker refuses anyway (``FRAME_ERROR``, which closes the whole
connection) fails its publish once instead of being re-sent in a reconnect loop."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from messagebus_rabbitmq._codec import encode_properties, header_frame_size
from messagebus_rabbitmq._publishing import Publisher

from messagebus import Bus, InvalidHeaders, MessageTooLarge
from messagebus.testing import Collector, TcpProxy
from messagebus.transports import TransportURL

pytestmark = pytest.mark.faults

_BIG_KEY = "k" * 200_000  # the core limits headers to 64 KiB; a key is the way past it


def _proxied(url: str, proxy: TcpProxy) -> str:
    return TransportURL.parse(url).with_hosts(((proxy.host, proxy.port),)).render(redact=False)


def _upstream(url: str) -> tuple[str, int]:
    parsed = TransportURL.parse(url)
    return (parsed.host or "127.0.0.1", parsed.port or 5672)


def test_header_frame_size_counts_headers_key_and_properties() -> None:
    """Catches a size estimate that leaves out the key or the fixed part of the frame: the
    check must measure exactly what RabbitMQ measures (12 bytes + the encoded properties)."""
    props = encode_properties({"ce-id": "abc", "ce-datacontenttype": "application/json", "x": "y" * 100}, "k" * 50)
    assert header_frame_size(props) == 12 + len(props.marshal())
    assert header_frame_size(props) > 150
    with pytest.raises(InvalidHeaders, match="AMQP allows at most 255"):
        encode_properties({"n" * 256: "v"}, None)


async def test_oversized_header_frame_is_refused_before_sending(rabbitmq_url: str, name: str, admin: Any) -> None:
    """Catches headers plus key larger than the broker's frame_max reaching RabbitMQ, which
    answered FRAME_ERROR frame_too_large and closed the connection. It raises MessageTooLarge
    naming the sizes and frame_max; the connection stays up and a good message goes through."""
    admin.cleanup_later(queues=(name,))
    got: Collector[int] = Collector(20)
    with TcpProxy(_upstream(rabbitmq_url)) as proxy:
        bus = Bus.from_url(_proxied(rabbitmq_url, proxy), service="limits")

        @bus.consume(name)
        async def handle(item: dict[str, int]) -> None:
            got.add(item["n"])

        async with bus:
            with pytest.raises(MessageTooLarge, match=r"take \d+ bytes .* at most 131064 .*Nothing was sent"):
                await bus.send(name, {"n": 0}, key=_BIG_KEY)
            await bus.send(name, {"n": 1})
            assert await got.wait_for(1) == [1]
            assert proxy.connections_total == 1, "the refused message took the connection down"


async def test_message_the_broker_refuses_fails_once_and_is_not_resent(
    rabbitmq_url: str, name: str, admin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catches the reconnect storm: a message RabbitMQ refuses with a connection-level
    FRAME_ERROR was re-sent after every reconnect until publish_timeout (about 1,300
    reconnects in 5 s), and 100 good messages consumed on the same connection meanwhile were
    handled 308 times. With the size check bypassed (a broker taking less than it
    negotiated), the refused publish must fail with MessageTooLarge, the connection be
    re-established once, every good message be handled, and duplicates stay within what was
    in flight at that one cut (one publish and the handlers running)."""
    monkeypatch.setattr(Publisher, "_check_frames", lambda self, pending, raw: None)
    admin.cleanup_later(queues=(name,))
    concurrency = 4
    got: Collector[int] = Collector(60)
    with TcpProxy(_upstream(rabbitmq_url)) as proxy:
        bus = Bus.from_url(_proxied(rabbitmq_url, proxy), service="storm")

        @bus.consume(name, concurrency=concurrency)
        async def handle(item: dict[str, int]) -> None:
            got.add(item["n"])

        async with bus:
            await bus.send(name, {"n": -1})  # warm up: consumer and publisher channel open
            await got.wait_for(1)
            before = proxy.connections_total
            tenth_sent = asyncio.Event()

            async def good() -> None:
                for n in range(100):
                    await bus.send(name, {"n": n})
                    if n == 10:
                        tenth_sent.set()

            async def bad() -> BaseException | None:
                await tenth_sent.wait()
                try:
                    await bus.send(name, {"n": 999}, key=_BIG_KEY)
                except MessageTooLarge as exc:
                    return exc
                return None

            _, refused = await asyncio.gather(good(), bad())
            assert isinstance(refused, MessageTooLarge), "the refused message was not failed"
            assert "closed the connection" in str(refused) and "frame_max" in str(refused)
            await got.wait_until(lambda items: set(range(100)) <= set(items), "all 100 good messages")
            monkeypatch.undo()  # with the check back, sending it again is refused before sending
            with pytest.raises(MessageTooLarge, match="Nothing was sent"):
                await bus.send(name, {"n": 999}, key=_BIG_KEY)
            await bus.send(name, {"n": 100})  # a barrier: everything before it was handled
            await got.wait_until(lambda items: 100 in items, "the barrier")
            reconnects = proxy.connections_total - before
    counts = Counter(got.items)
    unexpected = set(counts) - set(range(-1, 101))
    duplicates = {n: c for n, c in counts.items() if c > 1}
    assert not unexpected, f"unexpected messages {sorted(unexpected)} (the refused one was delivered?)"
    assert reconnects <= 1, f"the connection was re-established {reconnects} times"
    assert sum(c - 1 for c in duplicates.values()) <= 1 + concurrency, f"duplicates beyond in-flight: {duplicates}"


def test_both_amqp_binding_prefixes_are_read() -> None:
    """Catches a foreign producer's ``cloudEvents_`` attributes (the prefix the current AMQP
    binding prefers) being read as plain headers: both prefixes carry the envelope."""
    from messagebus_rabbitmq._codec import decode_headers
    from pamqp.commands import Basic

    props = Basic.Properties(headers={"cloudEvents_id": "a1", "cloudEvents:type": "T", "k": "v"})
    assert decode_headers(props) == {"ce-id": "a1", "ce-type": "T", "k": "v"}
