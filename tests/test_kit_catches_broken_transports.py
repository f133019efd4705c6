"""A kit that passes a broken transport is a broken kit (DESIGN section 6).

Each transport here is the memory transport with one deliberate bug, of the kind real
adapters have had. Both layers of the conformance kit (the transport-level
:class:`~messagebus.testing.transport_kit.TransportKit` and the Bus-level
:class:`~messagebus.testing.conformance.TransportConformance`) run against it in-process
(pytester), restricted with ``-k`` to the tests that guard the broken promise; every one of
those must fail, and the same selection must pass on the healthy memory transport.

The broken transports reach into the memory transport's private parts where the bug needs
it (a redelivery's ``_Stored``, a consumer's ordering flag): they are test fixtures, not API.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from messagebus.testing.conformance import ConformanceTarget
from messagebus.transports import (
    AttributeValue,
    Capabilities,
    Consumer,
    Delivery,
    DeliveryHandler,
    Destination,
    OutgoingMessage,
    TransportURL,
)
from messagebus.transports.memory import MemoryTransport, _MemConsumer, _Stored

pytest_plugins = ["pytester"]


class _DeliveryProxy:
    """A delivery that forwards everything to the real one; broken transports override
    one settle method."""

    def __init__(self, inner: Delivery) -> None:
        self._inner = inner

    @property
    def body(self) -> bytes:
        return self._inner.body

    @property
    def headers(self) -> Mapping[str, str]:
        return self._inner.headers

    @property
    def key(self) -> str | None:
        return self._inner.key

    @property
    def attempt(self) -> int:
        return self._inner.attempt

    @property
    def topic(self) -> str | None:
        return self._inner.topic

    @property
    def raw(self) -> Any:
        return self._inner.raw

    @property
    def messaging_attributes(self) -> Mapping[str, AttributeValue]:
        return self._inner.messaging_attributes

    async def ack(self) -> None:
        await self._inner.ack()

    async def retry(self, delay: float, headers: Mapping[str, str]) -> None:
        await self._inner.retry(delay, headers)


class UnorderedTransport(MemoryTransport):
    """Bug: keys are ignored when dispatching; one key's messages run on any free worker."""

    async def subscribe(self, source: Destination, handler: DeliveryHandler, *, concurrency: int) -> Consumer:
        queue = self.broker.declare(source)
        consumer = _MemConsumer(queue, handler, concurrency, ordered=False)
        consumer.start()
        self._consumers.append(consumer)
        self.broker.attach(queue, consumer)
        return consumer


class _ImpatientConsumer:
    def __init__(self, inner: Consumer) -> None:
        self._inner = inner

    async def stop(self, grace: float) -> None:
        await self._inner.stop(0)  # the bug: grace ignored, running handlers cancelled at once


class ImpatientStopTransport(MemoryTransport):
    """Bug: ``Consumer.stop(grace)`` cancels running handlers at once."""

    async def subscribe(self, source: Destination, handler: DeliveryHandler, *, concurrency: int) -> Consumer:
        return _ImpatientConsumer(await super().subscribe(source, handler, concurrency=concurrency))


class EarlyConfirmTransport(MemoryTransport):
    """Bug: ``publish`` returns once the messages are in a client-side buffer; the buffer is
    flushed a little later and dropped by ``close``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._buffered: list[asyncio.TimerHandle] = []

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        if not messages:
            return
        loop = asyncio.get_running_loop()
        self._buffered.append(loop.call_later(0.02, self.broker.publish, list(messages)))

    async def close(self) -> None:
        for handle in self._buffered:
            handle.cancel()
        self._buffered.clear()
        await super().close()


class _AckedOnReceipt(_DeliveryProxy):
    async def ack(self) -> None:
        pass  # already acked when it arrived

    async def retry(self, delay: float, headers: Mapping[str, str]) -> None:
        # The broker forgot the original, so a retry re-publishes a copy (attempt + 1).
        inner = self._inner
        consumer = inner.source
        assert isinstance(consumer, _MemConsumer)
        old: _Stored = inner.native
        copy = _Stored(old.body, {**old.headers, **headers}, old.key, old.attempt + 1)
        consumer.queue.broker.schedule(consumer.queue, copy, delay)


class EarlyAckTransport(MemoryTransport):
    """Bug: every delivery is acked on receipt (auto-ack), before the handler ran, so a
    handler cancelled by the stop grace loses its message."""

    async def subscribe(self, source: Destination, handler: DeliveryHandler, *, concurrency: int) -> Consumer:
        async def ack_first(delivery: Delivery) -> None:
            await delivery.ack()
            await handler(_AckedOnReceipt(delivery))

        return await super().subscribe(source, ack_first, concurrency=concurrency)


class _ForgetfulRetry(_DeliveryProxy):
    async def retry(self, delay: float, headers: Mapping[str, str]) -> None:
        await self._inner.ack()  # the bug: the redelivery is never scheduled


class DroppedRedeliveryTransport(MemoryTransport):
    """Bug: ``retry()`` acks the message and forgets to schedule the redelivery."""

    async def subscribe(self, source: Destination, handler: DeliveryHandler, *, concurrency: int) -> Consumer:
        async def forgetful(delivery: Delivery) -> None:
            await handler(_ForgetfulRetry(delivery))

        return await super().subscribe(source, forgetful, concurrency=concurrency)


@dataclass(frozen=True)
class _Acked:
    body: bytes
    headers: Mapping[str, str]
    key: str | None


class _RecordedAck(_DeliveryProxy):
    def __init__(self, inner: Delivery, log: list[_Acked]) -> None:
        super().__init__(inner)
        self._log = log

    async def ack(self) -> None:
        await self._inner.ack()
        self._log.append(_Acked(self.body, self.headers, self.key))


class ReplayAfterReconnectTransport(MemoryTransport):
    """Bug: a networked transport that loses its committed position when it reconnects: a
    subscription that was closed and is subscribed again gets every message it had already
    acked once more (like a Kafka consumer committing nothing and resetting to earliest)."""

    #: Acked messages per (broker, source): what a "reconnect" replays.
    _history: dict[tuple[str, Destination], list[_Acked]] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        base = self.capabilities
        self.capabilities = Capabilities(
            ordering=base.ordering,
            native_delay=base.native_delay,
            persistence=base.persistence,
            consumer_groups=base.consumer_groups,
            max_message_size=base.max_message_size,
            network=True,
        )

    async def subscribe(self, source: Destination, handler: DeliveryHandler, *, concurrency: int) -> Consumer:
        log = self._history.setdefault((self.broker.name, source), [])
        if log:
            queue = self.broker.declare(source)
            with self.broker.lock:
                for acked in log:
                    queue.ready.append(_Stored(acked.body, acked.headers, acked.key))

        async def recording(delivery: Delivery) -> None:
            await handler(_RecordedAck(delivery, log))

        return await super().subscribe(source, recording, concurrency=concurrency)


class ReplayToTopicTransport(MemoryTransport):
    """Bug: a redelivery to one group that goes to the topic instead (issue 18: replaying a
    dead letter with ``publish(topic, ...)`` re-delivers it to the healthy groups too)."""

    async def publish_to_group(self, source: Destination, messages: Sequence[OutgoingMessage]) -> None:
        await self.publish(messages)


class LostHandBackTransport(MemoryTransport):
    """Bug: unsettled deliveries handed back on stop are forgotten (a consumer that acks
    what it prefetched when it closes): a look at dead letters then removes them."""

    async def subscribe(self, source: Destination, handler: DeliveryHandler, *, concurrency: int) -> Consumer:
        consumer = await super().subscribe(source, handler, concurrency=concurrency)
        assert isinstance(consumer, _MemConsumer)
        consumer.release = consumer._returned  # type: ignore[method-assign]
        return consumer


class HistoryIgnoredTransport(MemoryTransport):
    """Bug: ``start_from`` dropped on the way to the broker (issue 20: a new group that
    starts at the latest message whatever it asked: the rebuild reads no history)."""

    async def subscribe(self, source: Destination, handler: DeliveryHandler, *, concurrency: int) -> Consumer:
        return await super().subscribe(dataclasses.replace(source, start_from=None), handler, concurrency=concurrency)


class RewindingTransport(MemoryTransport):
    """Bug: ``start_from`` applied to a group that exists (its consumers rewound: every
    retained message handled again)."""

    async def subscribe(self, source: Destination, handler: DeliveryHandler, *, concurrency: int) -> Consumer:
        if source.start_from is not None:
            self.broker.delete_group(source)
        return await super().subscribe(source, handler, concurrency=concurrency)


BROKEN: dict[str, type[MemoryTransport]] = {
    "healthy": MemoryTransport,
    "unordered": UnorderedTransport,
    "impatient_stop": ImpatientStopTransport,
    "early_confirm": EarlyConfirmTransport,
    "early_ack": EarlyAckTransport,
    "dropped_redelivery": DroppedRedeliveryTransport,
    "replay_after_reconnect": ReplayAfterReconnectTransport,
    "replay_to_topic": ReplayToTopicTransport,
    "lost_hand_back": LostHandBackTransport,
    "history_ignored": HistoryIgnoredTransport,
    "rewinding": RewindingTransport,
}


def target(kind: str) -> ConformanceTarget:
    """A kit target on a fresh memory broker, served by the transport called ``kind``."""
    cls = BROKEN[kind]
    return ConformanceTarget(
        url=f"memory://broken-{kind}-{uuid.uuid4().hex[:8]}",
        timeout=3.0,
        transport=lambda url: cls.from_url(TransportURL.parse(url)),
    )


# Which kit tests must fail on each broken transport: Bus-level (Bus) and transport-level
# (Kit). Each list is also the -k selection, which must pass on the healthy transport.
MUST_FAIL: dict[str, list[str]] = {
    "unordered": ["Bus::test_ordering_per_key", "Kit::test_per_key_order_with_random_handler_delays"],
    "impatient_stop": [
        "Bus::test_graceful_stop_lets_in_flight_handlers_finish",
        "Kit::test_stop_lets_a_running_handler_finish",
    ],
    "early_confirm": [
        "Bus::test_publish_returns_after_the_message_is_stored",
        "Kit::test_publish_returns_after_the_message_is_stored",
        "Kit::test_publish_reaches_the_groups_subscribed_at_that_time",
    ],
    "early_ack": [
        "Bus::test_handler_cancelled_by_grace_timeout_is_redelivered",
        "Kit::test_unsettled_delivery_is_redelivered",
    ],
    "dropped_redelivery": [
        "Bus::test_retry_with_backoff_then_dead_letter_headers",
        "Bus::test_nack_redelivers_and_is_not_a_failure",
        "Kit::test_retry_redelivers_with_attempt_and_headers",
    ],
    "replay_after_reconnect": [
        "Bus::test_close_and_resubscribe_loses_nothing",
        "Kit::test_ack_settles_for_good",
    ],
    "replay_to_topic": ["Bus::test_dead_letters_replay_goes_to_the_failed_group_only"],
    "lost_hand_back": [
        "Bus::test_dead_letters_replay_goes_to_the_failed_group_only",
        "Bus::test_dead_letters_replay_by_id_then_purge",
    ],
    "history_ignored": [
        "Bus::test_history_earliest_replays_retained_messages_to_a_new_group_only",
        "Bus::test_history_from_a_time_starts_at_that_time",
        "Bus::test_history_replay_helper_rebuilds_without_touching_live_groups",
    ],
    "rewinding": ["Bus::test_history_start_is_ignored_for_a_group_that_exists"],
}

_KIT_CLASSES = """

class TestBus_{kind}(TransportConformance):
    @pytest.fixture
    def target(self) -> ConformanceTarget:
        return broken.target({kind!r})


class TestKit_{kind}(TransportKit):
    @pytest.fixture
    def target(self) -> ConformanceTarget:
        return broken.target({kind!r})
"""

_KIT_MODULE = """
import sys

import pytest

from messagebus.testing.conformance import ConformanceTarget, TransportConformance
from messagebus.testing.transport_kit import TransportKit

broken = sys.modules[{module!r}]
"""


def _run_kit(pytester: pytest.Pytester, runs: dict[str, list[str]]) -> tuple[set[str], set[str]]:
    """Run, in one in-process pytest session, the kit tests ``runs[kind]`` (``Layer::test``
    names) on each transport ``kind``; return the (passed, failed) ``kind:Layer::test``s."""
    source = _KIT_MODULE.format(module=__name__) + "".join(_KIT_CLASSES.format(kind=kind) for kind in runs)
    pytester.makepyfile(test_broken_kit=source)
    selection = " or ".join(
        f"(Test{t.split('::')[0]}_{kind} and {t.split('::')[1]})" for kind, tests in runs.items() for t in tests
    )
    recorder = pytester.inline_run(
        "-k",
        selection,
        "-p",
        "no:cacheprovider",
        "-o",
        "asyncio_mode=auto",
        "-o",
        "asyncio_default_fixture_loop_scope=function",
    )
    passed, _, failed = recorder.listoutcomes()

    def names(reports: Sequence[Any]) -> set[str]:
        out = set()
        for report in reports:
            cls, test = report.nodeid.split("::")[-2:]
            layer, kind = cls.removeprefix("Test").split("_", 1)
            out.add(f"{kind}:{layer}::{test}")
        return out

    return names(passed), names(failed)


def test_kit_fails_each_broken_transport_and_passes_the_healthy_one(pytester: pytest.Pytester) -> None:
    """Catches a kit too weak to see a broken promise: every kit test listed for a broken
    transport in ``MUST_FAIL`` must fail on it (before this kit, the ordering, graceful stop
    and publish-confirmation bugs passed the whole kit). And catches a kit test that fails
    every transport, which would prove nothing: the same tests pass on the healthy memory
    transport. One pytest session runs them all (both layers), to keep the time down."""
    runs = dict(MUST_FAIL)
    runs["healthy"] = sorted({t for tests in MUST_FAIL.values() for t in tests})
    passed, failed = _run_kit(pytester, runs)
    missed = sorted(f"{kind}:{t}" for kind, tests in MUST_FAIL.items() for t in tests if f"{kind}:{t}" not in failed)
    assert not missed, f"kit tests that passed a broken transport: {missed}"
    healthy_failed = sorted(name for name in failed if name.startswith("healthy:"))
    assert not healthy_failed, f"kit tests failing the healthy memory transport: {healthy_failed}"
    assert {name for name in passed if name.startswith("healthy:")} == {f"healthy:{t}" for t in runs["healthy"]}
    assert not {name for name in passed if not name.startswith("healthy:")}, "a broken transport passed a test"


def test_the_broken_transports_are_memory_transports() -> None:
    """Catches a broken transport that is not what the kit runs (a typo in the table)."""
    assert all(issubclass(cls, MemoryTransport) for cls in BROKEN.values())
    assert target("healthy").capabilities.network is False
    assert target("replay_after_reconnect").capabilities.network is True
