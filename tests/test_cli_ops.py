"""The operator's commands against real brokers: ``messagebus dlq list|show|replay|purge``,
``publish`` and ``tail`` (issue 18). The broker state is made with a Bus, then the command
runs as a user runs it (``main(argv)``, or a subprocess for ``tail`` and its signals)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from messagebus import Bus, Envelope, Reject, Retry
from messagebus.__main__ import main
from messagebus._discovery import load_transport
from messagebus.testing import missing_broker, wait_for_port
from messagebus.transports import BrokerAdmin, DeleteQueue, Destination, DestinationKind, TransportURL

ROOT = Path(__file__).resolve().parent.parent

BROKERS = {
    "memory": "memory://cli-ops",
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672/",
    "redis": "redis://127.0.0.1:6379/0",
    "nats": "nats://127.0.0.1:4222",
}


def broker_url(name: str) -> str:
    url = BROKERS[name]
    if name != "memory":
        pytest.importorskip(f"messagebus_{name}")
        parsed = TransportURL.parse(url)
        if not wait_for_port(parsed.host or "127.0.0.1", parsed.port or 0, timeout=5.0):
            missing_broker(name, f"nothing listens on {parsed.host}:{parsed.port}")
    return url


@pytest.fixture(params=list(BROKERS))
def url(request: pytest.FixtureRequest) -> str:
    return broker_url(request.param)


def _name(prefix: str) -> str:
    return f"cli.{prefix}.{uuid.uuid4().hex[:8]}"


async def _remove(url: str, *, queues: tuple[str, ...] = (), groups: tuple[tuple[str, str], ...] = ()) -> None:
    """Delete what a test made on a shared broker (a queue goes with its dead-letter queue)."""
    transport = load_transport(TransportURL.parse(url))
    await transport.connect()
    try:
        assert isinstance(transport, DeleteQueue) and isinstance(transport, BrokerAdmin)
        for queue in queues:
            await transport.delete_queue(queue)
        for topic, group in groups:
            await transport.delete_group(Destination(DestinationKind.TOPIC, topic, group))
    finally:
        await transport.close()


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def _dead_letter(url: str, queue: str, jobs: list[dict[str, Any]]) -> list[str]:
    """Send ``jobs`` to ``queue`` through a consumer that refuses each; returns their ids
    once all are dead letters."""
    bus = Bus.from_url(url, service="cli-test", retry=Retry(max_attempts=1))
    refused: list[str] = []
    done = asyncio.Event()

    @bus.consume(queue)
    async def refuse(job: dict[str, Any], envelope: Envelope) -> None:
        refused.append(envelope.id)
        if len(refused) == len(jobs):
            done.set()
        raise Reject("refused by the test")

    async with bus:
        for job in jobs:
            # A header is printed as text, not JSON: the escape must be shown by the command itself.
            await bus.send(queue, job, headers={"note": "\x1b[2Jcleared"})
        await asyncio.wait_for(done.wait(), 30)
        dlq = f"{queue}.dlq"
        for _ in range(600):  # the broker's own count; no event tells when the copy is stored
            depths = {q.name: q.depth for q in await bus.dead_letter_queues()}
            if depths.get(dlq, -1) in (len(jobs), None):
                break
            await asyncio.sleep(0.05)
    return refused


async def _take(url: str, queue: str, count: int) -> list[Envelope]:
    """Consume ``count`` messages of ``queue`` (waiting up to 30 s)."""
    bus = Bus.from_url(url, service="cli-test")
    got: list[Envelope] = []
    done = asyncio.Event()

    @bus.consume(queue)
    async def take(job: object, envelope: Envelope) -> None:
        got.append(envelope)
        if len(got) >= count:
            done.set()

    async with bus:
        await asyncio.wait_for(done.wait(), 30)
    return got


def test_dlq_commands_list_show_replay_one_and_purge(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Bug caught: a dead letter that cannot be found, read or replayed without code: list
    missing the queue or its depth, show removing messages or printing a payload's terminal
    escapes raw, replay --id sending others or not as a first attempt, purge leaving some or
    purging without confirmation."""
    queue = _name("mail")
    dlq = f"{queue}.dlq"
    ids = asyncio.run(_dead_letter(url, queue, [{"n": 1, "note": "\x1b[2J<script>x</script>"}, {"n": 2}, {"n": 3}]))

    code, out, _ = run_cli(capsys, "dlq", "list", url)
    assert code == 0
    assert re.search(rf"^{re.escape(dlq)}\s+(3|\?)$", out, re.M), out

    code, out, _ = run_cli(capsys, "dlq", "show", url, dlq, "--limit", "10")
    assert code == 0
    assert out.count("--- ") == 3 and all(i in out for i in ids), out
    assert "dlq-error-type: messagebus" in out and f"replays to: {queue}" in out
    assert "note: \\x1b[2Jcleared" in out and "\x1b" not in out, "a payload's escape sequence reached the terminal"
    assert '"n": 1' in out, "the body is not shown as readable JSON"
    _, again, _ = run_cli(capsys, "dlq", "show", url, dlq)
    assert again.count("--- ") == 3, "show removed dead letters"

    code, out, _ = run_cli(capsys, "dlq", "replay", url, dlq, "--id", ids[1])
    assert code == 0 and "replayed 1 dead letter(s)" in out
    [replayed] = asyncio.run(_take(url, queue, 1))
    assert replayed.id == ids[1] and replayed.attempt == 1

    code, _, err = run_cli(capsys, "dlq", "purge", url, dlq)
    assert code == 2 and "--yes" in err, "purge ran without confirmation"
    code, out, _ = run_cli(capsys, "dlq", "purge", url, dlq, "--yes")
    assert code == 0 and "purged 2 dead letter(s)" in out
    _, out, _ = run_cli(capsys, "dlq", "show", url, dlq)
    assert f"{dlq} is empty" in out
    asyncio.run(_remove(url, queues=(queue,)))


def test_dlq_commands_refuse_a_name_that_is_not_a_dead_letter_queue(capsys: pytest.CaptureFixture[str]) -> None:
    """Bug caught: a typo that replays or purges a live queue instead of its dead letters."""
    for argv in (["show"], ["replay"], ["purge", "--yes"]):
        code, _, err = run_cli(capsys, "dlq", argv[0], "memory://cli-ops", "orders.created.billing", *argv[1:])
        assert code == 2 and "ending in '.dlq'" in err


def test_dlq_replay_of_an_unknown_id_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    """Bug caught: `dlq replay --id` exiting 0 when the id is not there (a script thinks it replayed)."""
    url = BROKERS["memory"]
    queue = _name("none")
    asyncio.run(_dead_letter(url, queue, [{"n": 1}]))
    code, out, _ = run_cli(capsys, "dlq", "replay", url, f"{queue}.dlq", "--id", "not-there")
    assert code == 1 and "1 of the given ids were not found" in out


def test_publish_command_sends_json_with_key_and_headers(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Bug caught: a hand-made message that arrives without its key or headers, as bytes a
    typed handler rejects, or to a topic instead of the queue asked for."""
    queue = _name("hand")
    code, out, _ = run_cli(
        capsys, "publish", url, queue, '{"order": 7}', "--queue", "--key", "k7", "--header", "region=eu"
    )
    assert code == 0 and f"sent to queue {queue}" in out
    [got] = asyncio.run(_take(url, queue, 1))
    assert got.key == "k7" and got.headers["region"] == "eu" and got.content_type == "application/json"
    code, _, err = run_cli(capsys, "publish", url, queue, "{not json", "--queue")
    assert code == 2 and "not valid JSON" in err
    code, _, err = run_cli(capsys, "publish", url, queue, "{}", "--header", "novalue")
    assert code == 2 and "NAME=VALUE" in err
    asyncio.run(_remove(url, queues=(queue,)))


async def _publish(url: str, topic: str, payloads: list[Any]) -> None:
    bus = Bus.from_url(url, service="cli-test")
    async with bus:
        for payload in payloads:
            await bus.publish(topic, payload)


async def _make_group(url: str, topic: str, group: str) -> None:
    bus = Bus.from_url(url, service="cli-test")

    @bus.subscribe(topic, group=group)
    async def nothing(payload: object) -> None: ...

    async with bus:
        pass


async def _depth(url: str, topic: str, group: str) -> int | None:
    bus = Bus.from_url(url, service="cli-test")
    async with bus:
        return await bus.queue_depth(topic, group)


@pytest.mark.parametrize("broker", ["rabbitmq", "redis", "nats"])
def test_tail_prints_messages_takes_nothing_from_groups_and_leaves_nothing(broker: str) -> None:
    """Bug caught: a tail that steals messages from an existing group, prints a payload's
    escape sequences raw, ignores Ctrl-C, or leaves its throwaway group behind to fill up."""
    url = broker_url(broker)
    topic = _name("tail")
    asyncio.run(_make_group(url, topic, "billing"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    tail = subprocess.Popen(
        [sys.executable, "-m", "messagebus", "tail", url, topic],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert tail.stderr is not None and tail.stdout is not None
        started = tail.stderr.readline()
        match = re.search(r"group (tail-[0-9a-f]+)", started)
        assert match, f"tail did not start: {started}{tail.stderr.read() if tail.poll() is not None else ''}"
        group = match.group(1)
        asyncio.run(_publish(url, topic, [{"n": 1}, {"text": "\x1b[31mred"}]))
        lines = []
        while not any("red" in line for line in lines):
            line = tail.stdout.readline()
            assert line, "tail exited before printing both messages"
            lines.append(line)
        tail.send_signal(signal.SIGINT)
        rest, err = tail.communicate(timeout=30)
    finally:
        if tail.poll() is None:
            tail.kill()
    out = "".join(lines) + rest
    assert tail.returncode == 0, err
    assert '"n": 1' in out and "[31mred" in out and "\x1b" not in out
    # Published after the tail stopped: a group left behind would keep a copy.
    asyncio.run(_publish(url, topic, [{"n": 3}]))
    assert asyncio.run(_depth(url, topic, "billing")) == 3, "tail took messages from group billing"
    assert asyncio.run(_depth(url, topic, group)) == 0, "the tail's group was left behind"
    asyncio.run(_remove(url, groups=((topic, "billing"),)))


@pytest.mark.parametrize("name", ["memory", "redis"])
def test_replay_prints_history_from_a_point_and_a_named_group_goes_on_from_there(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bug caught: `messagebus replay` that starts at the latest message (prints nothing of
    the history), does not end once caught up, takes messages from a live group, or deletes
    a group the user named (the next replay with it would start over)."""
    url = broker_url(name)
    topic = _name("replay")
    live: list[int] = []

    async def publish() -> None:
        bus = Bus.from_url(url, service="cli-test")

        @bus.subscribe(topic, group="live")
        async def keep(event: dict[str, Any]) -> None:
            live.append(int(event["n"]))

        async with bus:
            await bus.publish_many(topic, [{"n": n} for n in range(3)], key="k")
            for _ in range(600):  # until the live group has them (an event would need the handler's loop)
                if len(live) == 3:
                    break
                await asyncio.sleep(0.05)

    asyncio.run(publish())
    group = _name("kept").replace(".", "-")
    try:
        code, out, _ = run_cli(capsys, "replay", url, topic, "--from", "1h", "--group", group, "--idle", "0.5")
        assert code == 0, out
        assert out.count("--- ") == 3 and '"n": 2' in out, out
        assert f"replayed 3 message(s) of {topic} from " in out and f"group {group} kept" in out
        code, out, _ = run_cli(capsys, "replay", url, topic, "--group", group, "--idle", "0.5")
        assert code == 0 and "replayed 0 message(s)" in out, out  # the kept group went on from its place
        code, out, _ = run_cli(capsys, "replay", url, topic, "--idle", "0.5")
        assert "replayed 3 message(s)" in out, out  # a throwaway group: the whole history again
    finally:
        asyncio.run(_remove(url, groups=((topic, "live"), (topic, group))))
    assert sorted(live) == [0, 1, 2]


def test_replay_refuses_latest_a_bad_time_and_a_broker_without_history(capsys: pytest.CaptureFixture[str]) -> None:
    """Bug caught: `--from latest` waiting for nothing, a typo in --from read as some other
    time, and a broker that keeps no history answering with an empty replay instead of why."""
    code, _, err = run_cli(capsys, "replay", "memory://cli-ops", "t", "--from", "latest")
    assert code == 2 and "--from latest has no history" in err
    code, _, err = run_cli(capsys, "replay", "memory://cli-ops", "t", "--from", "yesterday")
    assert code == 2 and "span back from now (90s, 15m, 2h, 7d)" in err
    url = broker_url("rabbitmq")
    code, _, err = run_cli(capsys, "replay", url, "t")
    assert code != 0 and "cannot replay 't'" in err and "history" in err, err
