"""stop() of a bus on Redis Streams: it does not wait out a blocked XREADGROUP, and loses
nothing published next (issue 15). Against the shared redis-server."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

from redis_helpers import fresh_prefix, with_options

from messagebus import Bus

TIMEOUT = 30.0


async def test_stop_unblocks_a_long_read_and_loses_nothing_published_next(redis_url: str) -> None:
    """Catches ``stop()`` waiting out the blocked ``XREADGROUP`` (60 s here: ``wait_for``
    fails by timeout), and a read left blocked on the server after the stop, which takes
    what is published next for the stopped consumer (claimed only after the 600 s
    visibility timeout: counted lost); also counts duplicated and unexpected messages."""
    url = with_options(redis_url, f"prefix={fresh_prefix()}&block_time=60&socket_timeout=120&visibility_timeout=600")
    first, second, sender = (Bus.from_url(url, service=s) for s in ("shop", "shop", "sender"))
    ids = [uuid.uuid4().hex for _ in range(20)]
    handled: list[str] = []
    warm, all_in = asyncio.Event(), asyncio.Event()

    @first.subscribe("cut", group="billing")
    async def early(data: dict[str, str]) -> None:
        warm.set()

    @second.subscribe("cut", group="billing", concurrency=4)
    async def late(data: dict[str, str]) -> None:
        handled.append(data["id"])
        if set(ids) <= set(handled):
            all_in.set()

    await sender.start()
    await first.start()
    try:
        await sender.publish("cut", {"id": "warm"})
        await asyncio.wait_for(warm.wait(), TIMEOUT)  # then it blocks in its next read
        await asyncio.wait_for(first.stop(), 10.0)  # fails by timeout if it waits for the read
        for i in ids:
            await sender.publish("cut", {"id": i})
        await second.start()
        with contextlib.suppress(TimeoutError):  # what is missing by then is counted lost below
            await asyncio.wait_for(all_in.wait(), TIMEOUT)
    finally:
        await first.stop()
        await second.stop()
        await sender.stop()
    lost = set(ids) - set(handled)
    duplicated = len(handled) - len(set(handled))
    unexpected = set(handled) - set(ids)
    assert (len(lost), duplicated, unexpected) == (0, 0, set())
