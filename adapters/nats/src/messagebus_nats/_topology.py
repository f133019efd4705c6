"""Logical destinations -> JetStream streams, subjects and durable consumers; declarations.

Topic ``T``: subject ``P.T`` (``P`` the prefix) in stream ``P_T`` with interest retention
(``retention=limits``: kept to ``max_age``/``max_msgs``, the history of new groups);
group ``G``: the durable pull consumer ``G`` on it (from the subscription's ``start_from``, else
the URL option's, when it is made).
Queue ``Q``: subject ``P.Q`` in work-queue stream ``P_Q``, durable ``messagebus-queue``.
Dead letters are queues. Topics and queues share one name space (the README has more).

A pattern subscription (``orders.*`` as group ``G``) is recorded once in the registry stream
(subjects ``P.messagebus~patterns.<durable>``, one record each, its time the group's start)
and has the durable :func:`pattern_durable` on every matching topic's stream: made by the
subscriber for streams that exist, and by whoever creates a matching stream later, before
its first message, so a new topic loses nothing for the pattern's group.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import APIError, NotFoundError

from messagebus import TopologyError
from messagebus.transports import (
    Destination,
    DestinationKind,
    Position,
    dead_letter_name,
    log_ignored,
    matches_pattern,
    sanitize_name,
)

from ._errors import ERRORS
from ._options import NatsOptions

__all__ = ["QUEUE_CONSUMER", "Names", "Topology", "names_of", "pattern_durable", "physical_names"]

logger = logging.getLogger("messagebus.nats")

QUEUE_CONSUMER = "messagebus-queue"
#: Stream and consumer names become file names on the server: keep them short.
MAX_NAME = 120
_ALLOWED = r"A-Za-z0-9_-"
#: The registry's logical name: ``~`` is in no logical name, so no topic or queue meets it.
REGISTRY = "messagebus~patterns"


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


def topic_of(subject: str, prefix: str = "") -> str:
    """The topic of a stream subject of this prefix ("" when it is not one: another prefix or
    a wildcard). Pure; the inverse of :func:`subject_of` for names without ``..``."""
    if prefix:
        head, dot, subject = subject.partition(".")
        if head != prefix or not dot:
            return ""
    return "" if any(t in ("*", ">") for t in subject.split(".")) else subject


def names_of(destination: Destination, prefix: str = "") -> Names:
    """The stream, subject and durable consumer of ``destination``. Pure."""
    queue = destination.kind is DestinationKind.QUEUE
    consumer = QUEUE_CONSUMER if queue else stream_name(destination.group) if destination.group else ""
    return Names(stream_name(destination.name, prefix), subject_of(destination.name, prefix), consumer, queue)


def pattern_durable(source: Destination) -> str:
    """The durable consumer of pattern subscription ``source`` on each matching topic's stream:
    group and pattern together (``audit`` on ``orders.*`` -> ``orders__star__audit_<hash>``),
    never the name of a plain group. Pure."""
    return stream_name(source.dead_letter_queue.removesuffix(".dlq"))


def start_of(position: Position) -> str | None:
    """A subscription's ``start_from`` in the URL option's terms: ``earliest``, a Unix time in
    ms (rounded down: JetStream delivers from it, never after the time), or ``None`` (keep the
    option). Pure."""
    if isinstance(position, datetime):
        return str((position - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1))
    return position


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

    def __init__(self, client: Client, js: JetStreamContext, options: NatsOptions) -> None:
        self._client = client
        self._js = js
        self._options = options
        prefix = options.prefix
        #: The pattern registry's stream and subjects (one record a subject).
        self.registry = Names(stream_name(REGISTRY, prefix), f"{subject_of(REGISTRY, prefix)}.*", "", False)
        self._locks: dict[str, asyncio.Lock] = {}
        #: Streams known to exist (read it for the fast path; never modify it).
        self.known: set[str] = set()
        #: Topic streams another bus made with interest retention: no history for new groups.
        self.without_history: set[str] = set()
        #: Durables a replay made sure of on this connection (dropped when a group is deleted).
        self.replay_durables: set[Names] = set()

    async def ensure_stream(self, names: Names) -> None:
        """Create the stream of ``names`` unless known. Raises :class:`TopologyError`."""
        if names.stream in self.known:
            return
        lock = self._locks.setdefault(names.stream, asyncio.Lock())
        async with lock:
            if names.stream in self.known:
                return
            o = self._options
            registry = names is self.registry
            topic = not names.queue and not registry
            config = StreamConfig(
                name=names.stream,
                subjects=[names.subject],
                retention=RetentionPolicy.LIMITS
                if registry
                else RetentionPolicy.WORK_QUEUE
                if names.queue
                else RetentionPolicy(o.retention),
                max_msgs_per_subject=1 if registry else -1,
                max_age=o.max_age if topic else None,
                max_msgs=o.max_msgs if topic else None,
                storage=StorageType.FILE if o.storage == "file" else StorageType.MEMORY,
                num_replicas=o.replicas,
            )
            try:
                try:
                    await self._js.add_stream(config)
                except APIError as exc:
                    # A topic stream another bus made with other retention or limits serves as it
                    # is: publishing and consuming need only its subject (history needs limits).
                    if not (topic and exc.err_code == 10058):
                        raise
                    made = (await self._js.stream_info(names.stream)).config
                    if made.subjects != config.subjects:
                        raise
                    if made.retention == RetentionPolicy.INTEREST and o.retention == "limits":
                        self.without_history.add(names.stream)
                    logger.info("nats stream %s exists with other settings (%s); used as it is", names.stream, made)
                    self.known.add(names.stream)
                    return
                if topic:  # before anything is published to it
                    for source, since in await self.patterns():
                        if matches_pattern(source.name, topic_of(names.subject, o.prefix)):
                            await self._add_consumer(replace(names, consumer=pattern_durable(source)), since)
            except TopologyError:
                raise
            except Exception as exc:
                what = f"cannot create JetStream stream {names.stream!r} for {names.subject!r}"
                raise ERRORS.map(exc, TopologyError, what) from exc
            self.known.add(names.stream)
            logger.debug("nats stream ensured: %s", names.stream)

    async def delete(self, names: Names) -> None:
        """Delete the stream of ``names`` with its consumers and messages. Idempotent."""
        self.known.discard(names.stream)
        try:
            with contextlib.suppress(NotFoundError):
                await self._js.delete_stream(names.stream)
        except Exception as exc:
            raise ERRORS.map(exc, TopologyError, f"cannot delete JetStream stream {names.stream!r}") from exc

    async def register(self, source: Destination) -> str:
        """Record pattern subscription ``source`` in the registry unless it is there; returns
        its start (its ``start_from`` when this records it, else the option's; the first record's
        time in Unix ms for ``now``). A recorded one ignores ``source.start_from`` (logged)."""
        await self.ensure_stream(self.registry)
        subject = self.registry.subject.replace("*", pattern_durable(source))
        body = json.dumps({"pattern": source.name, "group": source.group}).encode()
        start = start_of(source.start_from) or self._options.start_from
        try:
            try:
                await self._js.publish(subject, body, headers={"Nats-Expected-Last-Subject-Sequence": "0"})
            except APIError:  # 10071: recorded already (the first time stays)
                log_ignored(source, "nats")
                start = self._options.start_from
            first = await self._js.get_last_msg(self.registry.stream, subject)
        except Exception as exc:
            raise ERRORS.map(exc, TopologyError, f"cannot record pattern {source} in {subject!r}") from exc
        return str(int(first.time.timestamp() * 1000)) if start == "now" and first.time else start

    async def patterns(self) -> list[tuple[Destination, str]]:
        """Every recorded pattern subscription with its start ([] while there is no registry)."""
        out: list[tuple[Destination, str]] = []
        seq = 1
        while True:
            try:
                msg = await self._js.get_msg(self.registry.stream, seq, subject=self.registry.subject, next=True)
            except NotFoundError:  # no registry, or no more records
                return out
            seq = (msg.seq or seq) + 1
            with contextlib.suppress(ValueError, KeyError, TypeError):  # a foreign record
                record = json.loads(msg.data or b"")
                source = Destination(DestinationKind.TOPIC, str(record["pattern"]), str(record["group"]))
                since = str(int(msg.time.timestamp() * 1000)) if msg.time else "now"
                out.append((source, since if self._options.start_from == "now" else self._options.start_from))

    async def matching(self, pattern: str, retention: str | None = None) -> dict[str, Names]:
        """Topic -> names of every topic stream (of the ``retention`` option; ``"workqueue"``: queue stream) of
        this prefix whose logical name matches ``pattern`` (streams listed by the server,
        filtered by subject; those of the other kind and foreign streams left out)."""
        prefix = self._options.prefix
        retention = retention or self._options.retention
        head = pattern.split("#")[0].rstrip(".")
        # "#" is NATS ">" (one token or more) after the head; "orders.#" also matches "orders".
        filters = [f"{head}.>" if head else ">", *([head] if head and pattern.endswith(".#") else [])]
        out: dict[str, Names] = {}
        for wanted in [pattern] if "#" not in pattern else filters:
            await self._list(f"{prefix}.{wanted}" if prefix else wanted, pattern, retention, out)
        return out

    async def _list(self, wanted: str, pattern: str, retention: str, out: dict[str, Names]) -> None:
        prefix = self._options.prefix
        offset, total = 0, 1
        while offset < total:
            request = json.dumps({"offset": offset, "subject": wanted}).encode()
            try:
                answer = await self._client.request("$JS.API.STREAM.LIST", request, self._options.publish_timeout)
                reply = json.loads(answer.data)
            except Exception as exc:
                raise ERRORS.map(exc, TopologyError, f"cannot list the JetStream streams of {wanted!r}") from exc
            streams = reply.get("streams") or []
            offset, total = offset + len(streams), int(reply.get("total", 0)) if streams else 0
            for info in streams:
                config = info.get("config", {})
                subjects = config.get("subjects") or []
                topic = topic_of(subjects[0], prefix) if len(subjects) == 1 else ""
                if (
                    topic
                    and config.get("retention") == retention
                    and config.get("name") == stream_name(topic, prefix)
                    and matches_pattern(pattern, topic)
                ):
                    queue = retention == "workqueue"
                    out[topic] = Names(config["name"], subjects[0], QUEUE_CONSUMER if queue else "", queue)

    async def ensure_consumer(self, names: Names, start: str | None = None) -> bool:
        """Create the durable pull consumer of ``names`` (idempotent). A queue's consumer gets
        every message, a new group those from ``start`` (default ``start_from``); an existing
        one keeps its start. Returns whether a group's durable existed already. Raises
        :class:`TopologyError` for a ``start`` on a stream with interest retention (made by a
        bus without ``retention=limits``: it kept nothing for a new group)."""
        await self.ensure_stream(names)
        if start is not None and names.stream in self.without_history:
            raise TopologyError(
                f"cannot start a new group of stream {names.stream!r} from {start}: the stream was made with "
                "interest retention (by a bus without retention=limits) and keeps no history; delete the "
                "stream or give every bus of this topic the same retention option"
            )
        return await self._add_consumer(names, start)

    async def _add_consumer(self, names: Names, start: str | None = None) -> bool:
        start = "earliest" if names.queue else start or self._options.start_from
        policy = {"now": DeliverPolicy.NEW, "earliest": DeliverPolicy.ALL}.get(start, DeliverPolicy.BY_START_TIME)
        at = None if start.isalpha() else datetime.fromtimestamp(int(start) / 1000, UTC)
        existed = False
        try:
            if not names.queue:  # JetStream cannot move an existing durable: it keeps its start
                with contextlib.suppress(NotFoundError):
                    old = (await self._js.consumer_info(names.stream, names.consumer)).config
                    policy, at = old.deliver_policy or policy, old.opt_start_time
                    existed = True
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
        return existed
