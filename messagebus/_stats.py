"""Per-handler stats every bus publishes on the ``messagebus.stats`` topic (for the monitor).

A bus built with ``stats_interval`` (default 10 s; ``None``: off) publishes one snapshot
right after start, one every interval, and a last one with ``"stopping": true`` while it
stops (after its handlers finished, before the transport closes). The snapshot is JSON,
CloudEvents type ``messagebus.stats.v1``::

    {"service", "instance", "time", "interval", "transport", "started", "stopping",
     "handlers": [{"kind", "source", "group", "dead_letter_queue", "handled", "failed",
                   "retried", "dead_lettered", "in_flight", "p50_ms", "p99_ms"}],
     "published": [{"kind", "destination", "messages"}]}

Counters are cumulative since the bus started; a reader makes rates from the differences
between two snapshots of one ``instance``. Snapshots go to the transport directly: no
middleware, no span, no metric, and not counted in ``published``.

The settle path pays a few int increments and one ``perf_counter`` pair per message: the
counters are plain attributes of :class:`HandlerStats`, read by the snapshot on the same
event loop (no lock).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import socket
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from . import _headers as h
from ._destination import Destination, DestinationKind
from ._errors import ConfigurationError
from ._message import OutgoingMessage
from ._request import is_reply_queue
from ._transport import Transport

__all__ = [
    "STATS_CONTENT_TYPE",
    "STATS_TOPIC",
    "STATS_TYPE",
    "BusStats",
    "HandlerStats",
    "check_stats_interval",
]

logger = logging.getLogger("messagebus")

#: The topic every bus publishes its stats snapshots to.
STATS_TOPIC = "messagebus.stats"
#: CloudEvents ``type`` of a stats snapshot (the ``v1`` format above).
STATS_TYPE = "messagebus.stats.v1"
#: Media type of a snapshot's body.
STATS_CONTENT_TYPE = "application/json"

#: Handler durations kept per handler for p50/p99 (a power of two: the ring index is a mask).
WINDOW = 1024
_MASK = WINDOW - 1

#: Seconds the stopping snapshot may hold up ``stop()`` (a broker that does not answer).
STOP_TIMEOUT = 2.0

_DESTINATION = Destination(DestinationKind.TOPIC, STATS_TOPIC)


def check_stats_interval(value: object) -> float | None:
    """``value`` as float seconds, or ``None`` (no stats). Raises :class:`ConfigurationError`
    naming what is allowed for anything but ``None`` or a finite number > 0 (not a bool)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not (value > 0 and math.isfinite(value)):
        raise ConfigurationError(
            f"stats_interval must be a finite number of seconds > 0, or None to publish no stats; got {value!r}"
        )
    return float(value)


class HandlerStats:
    """Counters of one handler (subscription or queue consumer), updated by its Settler.

    ``handled``: acked after the handler returned; ``failed``: the handler raised (a
    :class:`Nack` is not a failure); ``retried``: redeliveries scheduled (failures with
    retries left, and Nacks); ``dead_lettered``: copies sent to the dead-letter queue;
    ``in_flight``: deliveries being handled or settled now. ``durations`` is a ring of the
    last :data:`WINDOW` handler-chain durations in seconds, ``samples`` how many were ever
    recorded (the next slot is ``samples & (WINDOW - 1)``).
    """

    __slots__ = (
        "_reported",
        "dead_letter_queue",
        "dead_lettered",
        "durations",
        "failed",
        "group",
        "handled",
        "in_flight",
        "kind",
        "retried",
        "samples",
        "source",
    )

    def __init__(self, source: Destination) -> None:
        self.kind = "subscribe" if source.kind is DestinationKind.TOPIC else "consume"
        self.source = source.name
        self.group = source.group
        self.dead_letter_queue = source.dead_letter_queue
        self.handled = 0
        self.failed = 0
        self.retried = 0
        self.dead_lettered = 0
        self.in_flight = 0
        # Preallocated: recording a duration stores one float, it never grows a list.
        self.durations = [0.0] * WINDOW
        self.samples = 0
        self._reported = 0

    def record(self, seconds: float) -> None:
        """Add one handler-chain duration."""
        self.durations[self.samples & _MASK] = seconds
        self.samples += 1

    def percentiles(self) -> tuple[float | None, float | None]:
        """p50 and p99 in milliseconds of the durations recorded since the last call (at most
        the last :data:`WINDOW`); ``(None, None)`` when there were none."""
        end = self.samples
        count = min(end - self._reported, WINDOW)
        self._reported = end
        if count <= 0:
            return None, None
        ring = self.durations
        recent = sorted(ring[(end - 1 - i) & _MASK] for i in range(count))
        return _rank(recent, 0.50) * 1000.0, _rank(recent, 0.99) * 1000.0

    def snapshot(self) -> dict[str, Any]:
        """This handler's entry of a snapshot (takes the durations since the last one)."""
        p50, p99 = self.percentiles()
        return {
            "kind": self.kind,
            "source": self.source,
            "group": self.group,
            "dead_letter_queue": self.dead_letter_queue,
            "handled": self.handled,
            "failed": self.failed,
            "retried": self.retried,
            "dead_lettered": self.dead_lettered,
            "in_flight": self.in_flight,
            "p50_ms": p50,
            "p99_ms": p99,
        }


def _rank(ordered: list[float], q: float) -> float:
    """The nearest-rank ``q`` quantile of a sorted, non-empty list."""
    return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]


class BusStats:
    """The stats of one bus and the task that publishes them on :data:`STATS_TOPIC`.

    :meth:`handler` makes the counters of each handler (before start); the bus calls
    :meth:`count_published` after each confirmed publish, :meth:`start` once running and
    :meth:`stop` while stopping. Publishing a snapshot never raises into the bus: a failure
    is logged (a warning for the first after a success, then at DEBUG) and the next
    interval tries again. Use from the bus's event loop only.
    """

    __slots__ = (
        "_failing",
        "_queues",
        "_stopped",
        "_task",
        "_topics",
        "_transport",
        "handlers",
        "instance",
        "interval",
        "service",
        "started",
    )

    def __init__(self, service: str, transport: Transport, interval: float) -> None:
        self.service = service
        self.interval = interval
        self._transport = transport
        # Stable for the bus's life: the monitor tells restarts and replicas apart by it.
        self.instance = f"{socket.gethostname()}-{os.getpid()}-{os.urandom(2).hex()}"
        self.handlers: list[HandlerStats] = []
        self.started: float | None = None
        self._topics: dict[str, int] = {}
        self._queues: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self._stopped = False

    def handler(self, source: Destination) -> HandlerStats:
        """New counters for the handler of ``source``, included in every snapshot."""
        stats = HandlerStats(source)
        self.handlers.append(stats)
        return stats

    def count_published(self, messages: Sequence[OutgoingMessage]) -> None:
        """Count messages the broker confirmed, per destination."""
        topics, queues = self._topics, self._queues
        for message in messages:
            destination = message.destination
            counts = topics if destination.kind is DestinationKind.TOPIC else queues
            name = destination.name
            counts[name] = counts.get(name, 0) + 1

    def snapshot(self, *, stopping: bool = False) -> dict[str, Any]:
        """The snapshot as a JSON-ready dict (takes each handler's durations since the last one)."""
        queues = self._queues
        # Replies go to each caller's own reply queue: one entry per caller instance ever
        # seen would grow without bound, and the monitor has nothing to draw for them.
        for name in [name for name in queues if is_reply_queue(name)]:
            del queues[name]
        now = time.time()
        return {
            "service": self.service,
            "instance": self.instance,
            "time": now,
            "interval": self.interval,
            "transport": self._transport.messaging_system,
            "started": self.started if self.started is not None else now,
            "stopping": stopping,
            "handlers": [stats.snapshot() for stats in self.handlers],
            "published": [
                *({"kind": "topic", "destination": name, "messages": n} for name, n in self._topics.items()),
                *({"kind": "queue", "destination": name, "messages": n} for name, n in queues.items()),
            ],
        }

    def message(self, *, stopping: bool = False) -> OutgoingMessage:
        """A snapshot as the message to publish on :data:`STATS_TOPIC`."""
        body = json.dumps(self.snapshot(stopping=stopping), separators=(",", ":")).encode()
        headers = {
            h.CE_ID: os.urandom(16).hex(),
            h.CE_SOURCE: self.service,
            h.CE_TYPE: STATS_TYPE,
            h.CE_SPECVERSION: "1.0",
            h.CE_TIME: datetime.now(UTC).isoformat(),
            h.CE_CONTENT_TYPE: STATS_CONTENT_TYPE,
        }
        # Keyed by instance: on a partitioned broker one instance's snapshots stay in order.
        return OutgoingMessage(_DESTINATION, body, headers, self.instance)

    def start(self) -> None:
        """Publish a snapshot now and then every ``interval`` seconds, until :meth:`stop`.
        Idempotent."""
        if self._task is None:
            self.started = time.time()
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"messagebus stats {self.service}")

    async def stop(self) -> None:
        """End the periodic snapshots and publish the last one, ``"stopping": true``, waiting
        at most :data:`STOP_TIMEOUT` seconds for the broker. Nothing when :meth:`start` was
        never called. Never raises but ``CancelledError`` (of the caller)."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopped = True
        task.cancel()
        # Bounded, never `await task`: a transport's publish may turn the cancel into an
        # error, which _publish logs; the loop then ends at its next check of _stopped
        # instead of sleeping and publishing for ever (a stop that never returned, on NATS).
        await asyncio.wait({task}, timeout=STOP_TIMEOUT)
        await self._publish(stopping=True, timeout=STOP_TIMEOUT)

    async def _run(self) -> None:
        while not self._stopped:
            # Bounded by the interval: a hung broker call must not pile up snapshots.
            await self._publish(stopping=False, timeout=self.interval)
            if self._stopped:
                return
            await asyncio.sleep(self.interval)

    async def _publish(self, *, stopping: bool, timeout: float) -> None:
        try:
            # Not wait_for: on 3.11 it swallows a cancel (stop's) that comes as the publish ends.
            async with asyncio.timeout(timeout):
                await self._transport.publish([self.message(stopping=stopping)])
        except Exception as exc:  # stats are best effort: never into the app or the loop
            if self._failing:
                logger.debug("publishing stats of %s to %s failed again: %r", self.service, STATS_TOPIC, exc)
            else:
                self._failing = True
                logger.warning(
                    "publishing stats of %s to %s failed (%r); retrying every %gs, "
                    "further failures logged at DEBUG until one succeeds",
                    self.service,
                    STATS_TOPIC,
                    exc,
                    self.interval,
                )
        else:
            self._failing = False
