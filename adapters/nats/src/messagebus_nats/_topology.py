"""Logical destinations -> JetStream streams, subjects and durable consumers; declarations.

Topic ``T``: subject ``P.T`` (``P`` the prefix) in stream ``P_T`` with interest retention;
group ``G``: the durable pull consumer ``G`` on it (from ``start_from`` when it is made).
Queue ``Q``: subject ``P.Q`` in work-queue stream ``P_Q``, durable ``messagebus-queue``.
Dead letters are queues. Topics and queues share one name space (the README has more).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from messagebus import TopologyError
from messagebus.transports import Destination, DestinationKind, dead_letter_name, sanitize_name

from ._errors import ERRORS
from ._options import NatsOptions

__all__ = ["QUEUE_CONSUMER", "Names", "Topology", "names_of", "physical_names"]

logger = logging.getLogger("messagebus.nats")

QUEUE_CONSUMER = "messagebus-queue"
#: Stream and consumer names become file names on the server: keep them short.
MAX_NAME = 120
_ALLOWED = r"A-Za-z0-9_-"


@dataclass(frozen=True, slots=True)
class Names:
    """The physical names of one destination (``consumer`` empty when publishing to a topic)."""

    stream: str
    subject: str
    consumer: str
    queue: bool


def stream_name(logical: str, prefix: str = "") -> str:
    """A legal stream (or consumer) name for ``logical`` (letters, digits, ``_``, ``-``; a
    changed or cut name gets a hash, so distinct logical names stay distinct). Pure."""
    name = f"{prefix}_{logical}" if prefix else logical
    return sanitize_name(name, max_length=MAX_NAME, allowed=_ALLOWED, replacement="_")


def subject_of(logical: str, prefix: str = "") -> str:
    """The subject of ``logical``: its own name (dots make tokens), unless it holds an empty
    token (``a..b``), which subjects cannot; then its stream name. Pure."""
    subject = logical if ".." not in logical else stream_name(logical)
    return f"{prefix}.{subject}" if prefix else subject


def names_of(destination: Destination, prefix: str = "") -> Names:
    """The stream, subject and durable consumer of ``destination``. Pure."""
    queue = destination.kind is DestinationKind.QUEUE
    consumer = QUEUE_CONSUMER if queue else stream_name(destination.group) if destination.group else ""
    return Names(stream_name(destination.name, prefix), subject_of(destination.name, prefix), consumer, queue)


def physical_names(destination: Destination, options: NatsOptions | None = None) -> dict[str, str]:
    """Role -> JetStream name for ``destination``: ``stream`` and ``subject`` always; for a
    queue or a topic's group also ``consumer`` (the durable), ``dead_letter_stream`` and
    ``dead_letter_subject`` (where the core dead-letters). Only ``options.prefix`` changes
    names. Pure."""
    prefix = options.prefix if options is not None else ""
    names = names_of(destination, prefix)
    out = {"stream": names.stream, "subject": names.subject}
    if names.consumer:
        dlq = dead_letter_name(destination.name, destination.group)
        out |= {
            "consumer": names.consumer,
            "dead_letter_stream": stream_name(dlq, prefix),
            "dead_letter_subject": subject_of(dlq, prefix),
        }
    return out


class Topology:
    """Creates streams and durable consumers on demand, each stream once per connection. Not
    thread-safe (one loop). Idempotent; a stream of other settings raises :class:`TopologyError`."""

    def __init__(self, js: JetStreamContext, options: NatsOptions) -> None:
        self._js = js
        self._options = options
        self._locks: dict[str, asyncio.Lock] = {}
        #: Streams known to exist (read it for the fast path; never modify it).
        self.known: set[str] = set()

    async def ensure_stream(self, names: Names) -> None:
        """Create the stream of ``names`` unless known. Raises :class:`TopologyError`."""
        if names.stream in self.known:
            return
        lock = self._locks.setdefault(names.stream, asyncio.Lock())
        async with lock:
            if names.stream in self.known:
                return
            o = self._options
            config = StreamConfig(
                name=names.stream,
                subjects=[names.subject],
                retention=RetentionPolicy.WORK_QUEUE if names.queue else RetentionPolicy.INTEREST,
                storage=StorageType.FILE if o.storage == "file" else StorageType.MEMORY,
                num_replicas=o.replicas,
            )
            try:
                await self._js.add_stream(config)
            except Exception as exc:
                what = f"cannot create JetStream stream {names.stream!r} for {names.subject!r}"
                raise ERRORS.map(exc, TopologyError, what) from exc
            self.known.add(names.stream)
            logger.debug("nats stream ensured: %s", names.stream)

    async def ensure_consumer(self, names: Names) -> None:
        """Create the durable pull consumer of ``names`` (idempotent). A queue's consumer gets
        every message, a new group those from ``start_from``; an existing one keeps its start."""
        await self.ensure_stream(names)
        start = "earliest" if names.queue else self._options.start_from
        policy = {"now": DeliverPolicy.NEW, "earliest": DeliverPolicy.ALL}.get(start, DeliverPolicy.BY_START_TIME)
        at = None if start.isalpha() else datetime.fromtimestamp(int(start) / 1000, UTC)
        try:
            if not names.queue:  # JetStream cannot move an existing durable: it keeps its start
                with contextlib.suppress(NotFoundError):
                    old = (await self._js.consumer_info(names.stream, names.consumer)).config
                    policy, at = old.deliver_policy or policy, old.opt_start_time
            config = ConsumerConfig(
                durable_name=names.consumer,
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=policy,
                opt_start_time=at,
                filter_subject=names.subject,
                ack_wait=self._options.ack_wait,
                max_deliver=self._options.max_deliver,
                max_ack_pending=-1,
            )
            await self._js.add_consumer(names.stream, config)
        except Exception as exc:
            what = f"cannot create the durable consumer {names.consumer!r} of stream {names.stream!r}"
            raise ERRORS.map(exc, TopologyError, what) from exc
