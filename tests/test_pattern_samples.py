"""The pattern samples (samples/patterns) run and keep their promises: on a fresh memory://
broker each, once each on RabbitMQ, and from the command line by URL.

Each sample's ``main`` checks its own pattern (replies reach their caller, the delayed
message is not early, batches and dead letters, routing and filters) and returns 1 with the
broken promise printed; these tests assert the return code and the printed story.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from messagebus.transports.memory import MemoryTransport
from samples.patterns import batch, dead_letters, delay, event_sourcing, request_reply, routing, schema_evolution

ROOT = Path(__file__).resolve().parent.parent
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"
REDIS_URL = "redis://127.0.0.1:6379/0"
Main = Callable[..., Awaitable[int]]


def fresh_memory() -> str:
    return f"memory://patterns-{uuid.uuid4().hex[:8]}"


async def test_request_reply_answers_fails_fast_and_times_out(capsys: pytest.CaptureFixture[str]) -> None:
    """Catches: a reply lost or given to another of the concurrent callers, a responder's
    final failure that does not reach the caller as RequestFailed naming the error type,
    and a request to a queue nobody consumes that does not end in RequestTimeout."""
    assert await request_reply.main(fresh_memory()) == 0
    out = capsys.readouterr().out
    assert "got Quote(sku='widget', quantity=10, unit_price=2.5, total=25.0)" in out
    assert "asked for 500 x sprocket at once with the others: $1800.0" not in out  # the bulk price applied
    assert "asked for 500 x sprocket at once with the others: $180.0" in out
    assert "RequestFailed after" in out and "error_type=builtins.LookupError" in out
    assert "RequestTimeout after" in out and "quotes.archive" in out
    assert "OK: every promise of the pattern kept" in out


async def test_delay_handles_the_undelayed_reminder_first_and_the_delayed_one_not_early(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Catches: a delayed message handled before its due time (the sample measures it
    against the send time), and a delayed message holding back the one sent after it."""
    assert await delay.main(fresh_memory()) == 0
    out = capsys.readouterr().out
    assert "handled in this order: ['coffee is ready', 'stand-up in 2 s']" in out
    assert re.search(r"'stand-up in 2 s' handled \+\d+ ms after its due time \(lateness\)", out)


async def test_batch_indexes_every_order_in_batches_and_dead_letters_the_poison_alone(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Catches: a batch larger than ``batch=50``, an order lost or indexed twice, the
    poison message failing its batch (its good orders dead-lettered or retried) instead of
    going to the dead letters alone with a DecodeError."""
    assert await batch.main(fresh_memory()) == 0
    out = capsys.readouterr().out
    sizes = [int(n) for n in re.findall(r"bulk-indexed\s+(\d+) orders", out)]
    assert sum(sizes) == batch.ORDERS and max(sizes) <= batch.BATCH
    assert len(sizes) < batch.ORDERS  # really batched, not one call per message
    assert out.count("dead letter b'garbled: not an order': messagebus.DecodeError") == 1
    assert "OK: every promise of the pattern kept" in out


async def test_routing_audits_each_orders_event_by_topic_and_filters_eu(capsys: pytest.CaptureFixture[str]) -> None:
    """Catches: Envelope.destination naming the pattern instead of the topic published to,
    ``orders.*`` matching more than one segment (orders.created.v2), and the header filter
    letting a US order through to the EU group."""
    assert await routing.main(fresh_memory()) == 0
    out = capsys.readouterr().out
    for line in ("orders.created: order-1 (us)", "orders.paid: order-2 (eu)", "orders.cancelled: order-1 (us)"):
        assert f"audit      | {line}" in out
    assert "audit      | orders.created.v2" not in out and "orders.*:" not in out
    assert sorted(re.findall(r"picking (order-\d+)", out)) == ["order-2", "order-5"]


async def test_routing_without_wildcards_says_why_and_runs_the_filter_part(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catches: the sample crashing (or silently auditing nothing) on a transport that
    refuses patterns, instead of printing the UnsupportedFeature reason and running the
    filter part alone. The transport is memory:// declaring no wildcards."""
    build = MemoryTransport.from_url

    def without_wildcards(url: object) -> MemoryTransport:
        transport = build(url)  # type: ignore[arg-type]
        transport.capabilities = dataclasses.replace(
            transport.capabilities, wildcards=False, wildcards_reason="this test's broker has no patterns"
        )
        return transport

    monkeypatch.setattr(MemoryTransport, "from_url", staticmethod(without_wildcards))
    assert await routing.main(fresh_memory()) == 0
    out = capsys.readouterr().out
    assert "no wildcard subscription here: memory cannot subscribe to the pattern 'orders.*'" in out
    assert "this test's broker has no patterns" in out
    assert "audit      | orders." not in out
    assert sorted(re.findall(r"picking (order-\d+)", out)) == ["order-2", "order-5"]


async def test_dead_letters_are_found_replayed_to_billing_alone_and_billed(capsys: pytest.CaptureFixture[str]) -> None:
    """Catches: the sample passing while its story breaks (the yen orders not dead-lettered,
    the replay not reaching billing, audit handling an order twice)."""
    assert await dead_letters.main(fresh_memory()) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert sorted(re.findall(r"billed order (\d+) \(attempt 1\)", out)) == ["1", "2", "3", "4", "5", "6"]
    assert "replayed 2 dead letter(s)" in out


async def test_schema_evolution_upcasts_v1_and_dead_letters_v3(capsys: pytest.CaptureFixture[str]) -> None:
    """Catches: the sample passing while its story breaks (the v1 order not upcast, the v2
    one changed, the v3 one handled or retried instead of dead-lettered with its reason)."""
    assert await schema_evolution.main(fresh_memory()) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert "billed o-1: 12.50 EUR" in out and "billed o-2: 9.90 USD" in out and "billed o-3" not in out
    assert "dead letter after attempt 1: OrderPlaced: message is schema version 3" in out
    assert "OrderPlacedV1 -> OrderPlaced: not backward compatible" in out


def test_samples_run_from_the_command_line_by_url_and_by_environment() -> None:
    """Catches: a broken ``python -m samples.patterns.<name> [URL]`` entry (no main guard,
    the URL argument or MESSAGEBUS_URL ignored, the exit code not main's)."""
    by_argument = subprocess.run(
        [sys.executable, "-m", "samples.patterns.request_reply", "memory://cli-arg"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert by_argument.returncode == 0, by_argument.stdout + by_argument.stderr
    assert "OK: every promise of the pattern kept" in by_argument.stdout
    env = {**os.environ, "MESSAGEBUS_URL": "nosuchscheme://nowhere"}
    by_environment = subprocess.run(
        [sys.executable, "-m", "samples.patterns.routing"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert by_environment.returncode != 0
    assert "nosuchscheme" in by_environment.stderr


@pytest.mark.parametrize(
    "sample",
    [request_reply, delay, batch, routing, dead_letters, schema_evolution],
    ids=lambda m: m.__name__.rsplit(".", 1)[1],
)
async def test_sample_runs_on_rabbitmq(sample: object, capsys: pytest.CaptureFixture[str]) -> None:
    """Catches: a pattern that works on memory:// but not through RabbitMQ (reply queue,
    TTL-held delay, batch prefetch, dead letters, header filter; the pattern subscription
    where the adapter maps it, else its UnsupportedFeature reason). Fresh names per run."""
    pytest.importorskip("messagebus_rabbitmq")
    main: Main = sample.main  # type: ignore[attr-defined]
    assert await main(RABBITMQ_URL) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert "OK: every promise of the pattern kept" in out
    if sample is routing:
        assert "no wildcard subscription here: rabbitmq" in out or ".orders.paid: order-2 (eu)" in out


EVENT_SOURCING_STORY = [
    "read-model | balances: acc-1=71.25, acc-2=20.00, acc-3=7.00",
    "read-model | restarted: the balances in memory are gone",
    "read-model | rebuilt from history: acc-1=71.25, acc-2=20.00, acc-3=7.00",
    "read-model | live again: acc-1=71.25, acc-2=30.00, acc-3=5.00",
    "operator   | bus.replay handled 11 events: acc-1=71.25, acc-2=30.00, acc-3=5.00",
    "OK: every promise of the pattern kept",
]


def assert_event_sourcing_story(out: str) -> None:
    lines = [line for line in out.splitlines() if line in EVENT_SOURCING_STORY]
    assert lines == EVENT_SOURCING_STORY, out
    assert "FAILED" not in out


async def test_event_sourcing_rebuilds_the_read_model_from_history(capsys: pytest.CaptureFixture[str]) -> None:
    """Bug caught: the event-sourcing sample passing while its story breaks: the restarted
    read model's new group starting at the latest message (nothing rebuilt), a rebuild that
    doubles, drops or reorders events, the live group getting an event again, the events
    after the rebuild not reaching it, or Bus.replay rebuilding other balances or counting
    wrong."""
    assert await event_sourcing.main(fresh_memory()) == 0, capsys.readouterr().out
    assert_event_sourcing_story(capsys.readouterr().out)


HISTORY_URLS = {
    "redis": REDIS_URL,
    "nats": "nats://127.0.0.1:4222?retention=limits&max_age=3600",
    "rabbitmq": f"{RABBITMQ_URL}?history=1h",
}


@pytest.mark.parametrize("broker", list(HISTORY_URLS))
async def test_event_sourcing_rebuilds_on_brokers_that_keep_history(
    broker: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bug caught: a rebuild from history that works on memory:// but not on a real broker
    (the new group not created at the first stream entry / retained message / stream
    offset, Bus.replay never catching up or counting wrong, the live group disturbed), each
    broker by its URL with its history opt-in. Fresh names per run."""
    pytest.importorskip(f"messagebus_{broker}")
    assert await event_sourcing.main(HISTORY_URLS[broker]) == 0, capsys.readouterr().out
    assert_event_sourcing_story(capsys.readouterr().out)


async def test_event_sourcing_without_history_says_why_and_exits_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bug caught: the sample crashing with a traceback (or claiming success) on a broker
    that keeps no history, instead of printing the UnsupportedFeature reason and returning
    2. The transport is memory:// declaring no history."""
    build = MemoryTransport.from_url

    def without_history(url: object) -> MemoryTransport:
        transport = build(url)  # type: ignore[arg-type]
        transport.capabilities = dataclasses.replace(
            transport.capabilities, history=False, history_reason="this test's broker forgets"
        )
        return transport

    monkeypatch.setattr(MemoryTransport, "from_url", staticmethod(without_history))
    assert await event_sourcing.main(fresh_memory()) == event_sourcing.UNSUPPORTED
    out = capsys.readouterr().out
    assert "cannot rebuild from history here: memory cannot start group 'balances-v2'" in out
    assert "this test's broker forgets" in out
    assert "UNSUPPORTED: this broker keeps no history" in out
    assert "OK: every promise" not in out and "rebuilt from history" not in out


def test_event_sourcing_runs_from_the_command_line_by_url() -> None:
    """Bug caught: a broken ``python -m samples.patterns.event_sourcing URL`` entry (no main
    guard, the URL argument ignored, the exit code not main's)."""

    def run(url: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "samples.patterns.event_sourcing", url]
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)

    good = run("memory://cli-event-sourcing")
    assert good.returncode == 0, good.stdout + good.stderr
    assert_event_sourcing_story(good.stdout)
    bad = run("nosuchscheme://nowhere")
    assert bad.returncode != 0 and "nosuchscheme" in bad.stderr
