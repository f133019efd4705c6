"""start() and stop() of a bus on SQS/SNS: stop never waits out a long poll, and a poll cut
off by a stop loses nothing (issue 15). Against moto's server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import textwrap
import uuid
from typing import Any

from sqs_helpers import make_url

from messagebus import Bus

TIMEOUT = 30.0
#: Far beyond every wait of these tests: a message left hidden by a poll would come back too late.
HIDDEN = 600


async def test_stop_cuts_a_long_poll_short_and_loses_nothing_it_received(moto_endpoint: str, prefix: str) -> None:
    """Catches ``stop()`` waiting out the 20 s ``ReceiveMessage`` long poll (``wait_for``
    fails by timeout), and a poll abandoned at stop whose messages are never made visible
    again (they would stay hidden for 600 s: counted lost), or handled twice (duplicated)."""
    url = make_url(moto_endpoint, prefix, wait_time=20, visibility_timeout=HIDDEN)
    q = "cut"
    first, second, sender = (Bus.from_url(url, service=name) for name in ("first", "second", "sender"))
    before_stop: list[str] = []
    handled: list[str] = []
    ids = [uuid.uuid4().hex for _ in range(20)]
    warm, all_in = asyncio.Event(), asyncio.Event()

    @first.consume(q)
    async def early(data: dict[str, Any]) -> None:
        before_stop.append(data["id"])
        warm.set()

    @second.consume(q, concurrency=4)
    async def late(data: dict[str, Any]) -> None:
        handled.append(data["id"])
        if set(ids) <= set(handled):
            all_in.set()

    loop = asyncio.get_running_loop()
    polling, cut_poll_returned = asyncio.Event(), asyncio.Event()
    cut_poll_received: list[int] = []
    stopped = False

    def before_receive(**_: Any) -> None:
        loop.call_soon_threadsafe(polling.set)

    def after_receive(parsed: dict[str, Any], **_: Any) -> None:
        if stopped:  # only the poll running at stop returns after it
            cut_poll_received.append(len(parsed.get("Messages", [])))
            loop.call_soon_threadsafe(cut_poll_returned.set)

    await sender.start()
    await first.start()
    try:
        client = first.transport.sqs_client  # type: ignore[attr-defined]
        client.meta.events.register("before-call.sqs.ReceiveMessage", before_receive)
        client.meta.events.register("after-call.sqs.ReceiveMessage", after_receive)
        await sender.send(q, {"id": "warm"})
        await asyncio.wait_for(warm.wait(), TIMEOUT)
        polling.clear()
        await asyncio.wait_for(polling.wait(), TIMEOUT)  # a long poll is running now
        stopped = True
        await asyncio.wait_for(first.stop(), 10.0)  # fails by timeout if it waits for the poll
        for i in ids:
            await sender.send(q, {"id": i})
        await asyncio.wait_for(cut_poll_returned.wait(), TIMEOUT)
        assert sum(cut_poll_received) > 0, "precondition: the poll cut off by stop received messages"
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
    assert (len(lost), duplicated, unexpected, before_stop) == (0, 0, set(), ["warm"])


async def test_a_process_exits_at_once_after_stop_with_a_long_poll_running(moto_endpoint: str, prefix: str) -> None:
    """Catches a poll thread the interpreter joins at exit: a script that stops its bus would
    then hang for the rest of the 20 s long poll before exiting (``wait`` fails by timeout)."""
    url = make_url(moto_endpoint, prefix, wait_time=20)
    script = textwrap.dedent(
        f"""
        import asyncio
        from messagebus import Bus

        async def main() -> None:
            bus = Bus.from_url({url!r}, service="exiting")
            done, polling = asyncio.Event(), asyncio.Event()
            loop = asyncio.get_running_loop()

            @bus.consume("exit")
            async def handle(data: dict) -> None:
                done.set()

            def before_receive(**_) -> None:  # a value returned here would replace the call
                loop.call_soon_threadsafe(polling.set)

            async with bus:
                bus.transport.sqs_client.meta.events.register("before-call.sqs.ReceiveMessage", before_receive)
                await bus.send("exit", {{"n": 1}})
                await asyncio.wait_for(done.wait(), 30)
                polling.clear()
                await asyncio.wait_for(polling.wait(), 30)  # a long poll runs: stop must not wait for it
                print("stopping", flush=True)
            print("stopped", flush=True)

        asyncio.run(main())
        """
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ)
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        # Start-up and the first message may be slow on a loaded machine; only the time from
        # stop to exit must stay below the 20 s long poll.
        first = await asyncio.wait_for(proc.stdout.readline(), 120.0)
        assert first.decode().strip() == "stopping", (await proc.stderr.read()).decode()[-2000:]
        rest, err = await asyncio.wait_for(proc.communicate(), 15.0)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert (proc.returncode, rest.decode().strip()) == (0, "stopped"), err.decode()[-2000:]
