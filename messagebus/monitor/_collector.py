"""What the monitor page shows, aggregated from the ``messagebus.stats`` snapshots every Bus
publishes and from the broker's depths.

A snapshot is untrusted input (anyone who can publish to the topic can send one): it is
parsed field by field, and a malformed one is dropped whole. Counters in snapshots are
cumulative per Bus instance; rates are the difference between an instance's last two
snapshots divided by the time between them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .._destination import matches_pattern
from .._stats import STATS_TOPIC

__all__ = ["COUNTERS", "Collector", "DeadLetterAdmin", "HandlerKey", "STATS_TOPIC"]

log = logging.getLogger("messagebus.monitor")

#: The cumulative per-handler counters of a snapshot, in the order the page shows them.
COUNTERS = ("handled", "failed", "retried", "dead_lettered")
_MAX_NAME = 512
#: An instance silent for this many of its own intervals (plus a margin) counts as gone.
_STALE_INTERVALS = 3.0
_STALE_MARGIN = 5.0
#: A service none of whose instances runs stays on the page (greyed) this long.
FORGET_AFTER = 300.0


class _QueueDepth(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def depth(self) -> int | None: ...


class DeadLetterAdmin(Protocol):
    """The :class:`~messagebus.Bus` methods the monitor reads depths and dead letters with."""

    async def dead_letter_queues(self) -> Sequence[_QueueDepth]: ...

    async def queue_depth(self, name: str, group: str | None = None) -> int | None: ...

    async def peek_dead_letters(self, queue: str, limit: int = 10) -> Sequence[Any]: ...

    async def replay_dead_letters(
        self, queue: str, limit: int | None = None, *, ids: Iterable[str] | None = None
    ) -> int: ...

    async def purge_dead_letters(self, queue: str) -> int: ...


#: (service, kind, source, group): one handler of a service, over all its instances.
HandlerKey = tuple[str, str, str, str | None]


@dataclass(slots=True)
class _HandlerSample:
    kind: str
    source: str
    group: str | None
    dead_letter_queue: str
    counts: dict[str, int]
    in_flight: int
    p50_ms: float | None
    p99_ms: float | None


@dataclass(slots=True)
class _Snapshot:
    service: str
    instance: str
    time: float
    interval: float
    transport: str
    started: float
    stopping: bool
    handlers: list[_HandlerSample]
    published: dict[tuple[str, str], int]


@dataclass(slots=True)
class _Retired:
    """The final counters of instances that stopped or went silent."""

    dead_letter_queue: str
    counts: dict[str, int]
    at: float


@dataclass(slots=True)
class _Instance:
    last: _Snapshot
    received: float
    #: per handler (kind, source, group): counter -> messages per second over the last interval
    rates: dict[tuple[str, str, str | None], dict[str, float]] = field(default_factory=dict)
    published_rates: dict[tuple[str, str], float] = field(default_factory=dict)


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > _MAX_NAME:
        raise ValueError(f"{what} must be a non-empty string of at most {_MAX_NAME} characters")
    return value


def _count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be an int >= 0")
    return value


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number")
    return float(value)


def _millis(value: object, what: str) -> float | None:
    return None if value is None else _number(value, what)


def parse_snapshot(body: bytes) -> _Snapshot:
    """One stats snapshot from its JSON body. Raises :class:`ValueError` naming the first bad
    field (the whole snapshot is then ignored)."""
    data = json.loads(body)
    if not isinstance(data, dict):
        raise ValueError("a stats snapshot must be a JSON object")
    handlers = []
    for item in data.get("handlers") or []:
        if not isinstance(item, dict):
            raise ValueError("handlers[] must be objects")
        kind = item.get("kind")
        if kind not in ("subscribe", "consume"):
            raise ValueError("handlers[].kind must be 'subscribe' or 'consume'")
        group = item.get("group")
        handlers.append(
            _HandlerSample(
                kind=kind,
                source=_text(item.get("source"), "handlers[].source"),
                group=None if group is None else _text(group, "handlers[].group"),
                dead_letter_queue=_text(item.get("dead_letter_queue"), "handlers[].dead_letter_queue"),
                counts={name: _count(item.get(name, 0), f"handlers[].{name}") for name in COUNTERS},
                in_flight=_count(item.get("in_flight", 0), "handlers[].in_flight"),
                p50_ms=_millis(item.get("p50_ms"), "handlers[].p50_ms"),
                p99_ms=_millis(item.get("p99_ms"), "handlers[].p99_ms"),
            )
        )
    published: dict[tuple[str, str], int] = {}
    for item in data.get("published") or []:
        if not isinstance(item, dict):
            raise ValueError("published[] must be objects")
        kind = item.get("kind")
        if kind not in ("topic", "queue"):
            raise ValueError("published[].kind must be 'topic' or 'queue'")
        destination = _text(item.get("destination"), "published[].destination")
        published[(kind, destination)] = _count(item.get("messages", 0), "published[].messages")
    interval = _number(data.get("interval", 10.0), "interval")
    return _Snapshot(
        service=_text(data.get("service"), "service"),
        instance=_text(data.get("instance"), "instance"),
        time=_number(data.get("time"), "time"),
        interval=interval if interval > 0 else 10.0,
        transport=str(data.get("transport") or "")[:_MAX_NAME],
        started=_number(data.get("started", 0.0), "started"),
        stopping=data.get("stopping") is True,
        handlers=handlers,
        published=published,
    )


def _rate(now: int, before: int, seconds: float) -> float:
    # A counter that went down is a restarted instance reusing its name: no rate this time.
    return max(now - before, 0) / seconds


class Collector:
    """The monitor's picture of the system: services, their handlers and what they publish,
    with totals, rates, in-flight counts, handler times and broker depths.

    Fed by :meth:`ingest` (one stats message body at a time) and by :meth:`poll_depths`
    (depths and dead-letter queues, read through ``admin`` when given). Used from one event
    loop; :meth:`state` returns a JSON-ready dict and never raises.
    """

    def __init__(
        self,
        admin: DeadLetterAdmin | None = None,
        *,
        transport: str = "",
        ignore_services: Sequence[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.admin = admin
        self.transport = transport
        self._ignore = frozenset(ignore_services)
        self._clock = clock
        self._instances: dict[tuple[str, str], _Instance] = {}
        #: final counters of instances that stopped or went silent, so totals never go down
        self._retired: dict[HandlerKey, _Retired] = {}
        self._retired_published: dict[tuple[str, str, str], _Retired] = {}
        self._depths: dict[tuple[str, str, str | None], int | None] = {}
        self._dead_letters: dict[str, int | None] = {}
        self._depth_errors: dict[str, str] = {}
        self._dropped = 0

    # -- input ---------------------------------------------------------------------------

    def ingest(self, body: bytes) -> bool:
        """Take one stats snapshot (a ``messagebus.stats`` message body). Returns whether it
        was used; a malformed one is counted, logged at DEBUG and dropped; never raises."""
        try:
            snapshot = parse_snapshot(body)
        except (ValueError, TypeError, RecursionError) as exc:
            self._dropped += 1
            log.debug("ignored a malformed stats snapshot: %s", exc)
            return False
        if snapshot.service in self._ignore:
            return False
        now = self._clock()
        key = (snapshot.service, snapshot.instance)
        current = self._instances.get(key)
        if current is not None and snapshot.time < current.last.time:
            return False  # an older snapshot overtaken by a newer one: rates would go negative
        if snapshot.stopping:
            self._instances.pop(key, None)
            self._retire(snapshot)
            return True
        instance = _Instance(snapshot, now)
        if current is not None and snapshot.time > current.last.time:
            seconds = snapshot.time - current.last.time
            before = {(s.kind, s.source, s.group): s for s in current.last.handlers}
            for sample in snapshot.handlers:
                previous = before.get((sample.kind, sample.source, sample.group))
                if previous is not None:
                    instance.rates[(sample.kind, sample.source, sample.group)] = {
                        name: _rate(sample.counts[name], previous.counts[name], seconds) for name in COUNTERS
                    }
            for where, messages in snapshot.published.items():
                if where in current.last.published:
                    instance.published_rates[where] = _rate(messages, current.last.published[where], seconds)
        self._instances[key] = instance
        return True

    def _retire(self, snapshot: _Snapshot) -> None:
        now = self._clock()
        for sample in snapshot.handlers:
            key = (snapshot.service, sample.kind, sample.source, sample.group)
            retired = self._retired.setdefault(key, _Retired(sample.dead_letter_queue, dict.fromkeys(COUNTERS, 0), now))
            retired.at = now
            for name in COUNTERS:
                retired.counts[name] += sample.counts[name]
        for (kind, destination), messages in snapshot.published.items():
            where = (snapshot.service, kind, destination)
            sent = self._retired_published.setdefault(where, _Retired("", {"messages": 0}, now))
            sent.at = now
            sent.counts["messages"] += messages

    def _expire(self, now: float) -> None:
        for key, instance in list(self._instances.items()):
            if now - instance.received > instance.last.interval * _STALE_INTERVALS + _STALE_MARGIN:
                log.info("service %s instance %s sent no stats for a while: counted as gone", *key)
                del self._instances[key]
                self._retire(instance.last)
        live = {service for service, _ in self._instances}
        for gone in [k for k, v in self._retired.items() if k[0] not in live and now - v.at > FORGET_AFTER]:
            del self._retired[gone]
        for sent in [k for k, v in self._retired_published.items() if k[0] not in live and now - v.at > FORGET_AFTER]:
            del self._retired_published[sent]

    async def poll_depths(self, timeout: float = 5.0) -> None:
        """Read every handler's queue depth (a queue, or a topic group's lag) and the
        dead-letter queues with their depths, through ``admin``. A failing read leaves that
        depth unknown (``None``) and its error in :meth:`state`; never raises."""
        admin = self.admin
        if admin is None:
            return
        sources = {
            (sample.kind, sample.source, sample.group)
            for instance in self._instances.values()
            for sample in instance.last.handlers
            if "*" not in sample.source and "#" not in sample.source
        }
        depths: dict[tuple[str, str, str | None], int | None] = {}
        for kind, source, group in sorted(sources, key=str):
            try:
                depths[(kind, source, group)] = await asyncio.wait_for(
                    admin.queue_depth(source, group if kind == "subscribe" else None), timeout
                )
                self._depth_errors.pop(f"{kind} {source}", None)
            except Exception as exc:
                depths[(kind, source, group)] = None
                self._depth_errors[f"{kind} {source}"] = _describe(exc)
        self._depths = depths
        try:
            queues = await asyncio.wait_for(admin.dead_letter_queues(), timeout)
            self._dead_letters = {q.name: q.depth for q in queues}
            self._depth_errors.pop("dead-letter queues", None)
        except Exception as exc:
            self._depth_errors["dead-letter queues"] = _describe(exc)

    # -- output --------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Everything the page draws, as plain JSON types (names are raw text: the page
        inserts them as text, never as markup)."""
        now = self._clock()
        self._expire(now)
        handlers: dict[HandlerKey, dict[str, Any]] = {}
        published: dict[tuple[str, str, str], dict[str, Any]] = {}
        services: dict[str, dict[str, Any]] = {}
        for (service, _), instance in sorted(self._instances.items()):
            snap = instance.last
            entry = services.setdefault(
                service, {"name": service, "instances": 0, "transport": snap.transport, "started": snap.started}
            )
            entry["instances"] += 1
            entry["started"] = min(entry["started"], snap.started)
            for sample in snap.handlers:
                where = (sample.kind, sample.source, sample.group)
                row = handlers.setdefault((service, *where), self._handler_row(service, sample))
                row["instances"] += 1
                row["in_flight"] += sample.in_flight
                for name in COUNTERS:
                    row[name] += sample.counts[name]
                rates = instance.rates.get(where)
                if rates is not None:
                    for name in COUNTERS:
                        row["rates"][name] = (row["rates"][name] or 0.0) + rates[name]
                # Over several instances the slowest one's percentile: a bound, not a merge.
                row["p50_ms"] = _max(row["p50_ms"], sample.p50_ms)
                row["p99_ms"] = _max(row["p99_ms"], sample.p99_ms)
            for (kind, destination), messages in snap.published.items():
                out = published.setdefault(
                    (service, kind, destination),
                    {"service": service, "kind": kind, "destination": destination, "messages": 0, "rate": None},
                )
                out["messages"] += messages
                rate = instance.published_rates.get((kind, destination))
                if rate is not None:
                    out["rate"] = (out["rate"] or 0.0) + rate
        # Stopped instances keep their counts; a service with none left stays, with 0 instances.
        for (service, kind, source, group), retired in self._retired.items():
            services.setdefault(service, {"name": service, "instances": 0, "transport": "", "started": None})
            sample = _HandlerSample(kind, source, group, retired.dead_letter_queue, {}, 0, None, None)
            row = handlers.setdefault((service, kind, source, group), self._handler_row(service, sample))
            for name in COUNTERS:
                row[name] += retired.counts[name]
        for (service, kind, destination), retired in self._retired_published.items():
            services.setdefault(service, {"name": service, "instances": 0, "transport": "", "started": None})
            sent = published.setdefault(
                (service, kind, destination),
                {"service": service, "kind": kind, "destination": destination, "messages": 0, "rate": None},
            )
            sent["messages"] += retired.counts["messages"]
        handler_rows = [handlers[k] for k in sorted(handlers, key=str)]
        published_rows = [published[k] for k in sorted(published)]
        return {
            "time": now,
            "transport": self.transport,
            "services": [services[name] for name in sorted(services)],
            "handlers": handler_rows,
            "published": published_rows,
            "graph": _graph(handler_rows, published_rows, {name: s["instances"] for name, s in services.items()}),
            "dead_letters": {
                "supported": self.admin is not None,
                "queues": [{"name": name, "depth": depth} for name, depth in sorted(self._dead_letters.items())],
            },
            "errors": [f"{what}: {error}" for what, error in sorted(self._depth_errors.items())],
            "dropped_snapshots": self._dropped,
        }

    def _handler_row(self, service: str, sample: _HandlerSample) -> dict[str, Any]:
        depth = self._depths.get((sample.kind, sample.source, sample.group))
        return {
            "service": service,
            "kind": sample.kind,
            "source": sample.source,
            "group": sample.group,
            "dead_letter_queue": sample.dead_letter_queue,
            "dead_letter_depth": self._dead_letters.get(sample.dead_letter_queue),
            "depth": depth,
            "instances": 0,
            "in_flight": 0,
            **dict.fromkeys(COUNTERS, 0),
            "rates": dict.fromkeys(COUNTERS, None),
            "p50_ms": None,
            "p99_ms": None,
        }


def _max(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else max(a, b)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


def _graph(
    handlers: Sequence[Mapping[str, Any]], published: Sequence[Mapping[str, Any]], instances: Mapping[str, int]
) -> dict[str, Any]:
    """Nodes (services, topics, queues, patterns) and edges: service -> topic/queue for what
    it publishes, topic/queue -> service for what it handles (labelled with the group), and
    topic -> pattern where a pattern subscription matches a topic someone publishes. A
    service node carries its number of running instances (0: stopped)."""
    nodes: dict[str, dict[str, Any]] = {}
    edges: list[dict[str, Any]] = []

    def node(kind: str, name: str) -> str:
        if kind == "queue" and name.endswith(".dlq"):
            kind = "dlq"  # consumed like a queue (the shop's notifications do), drawn as what it is
        node_id = f"{kind}:{name}"
        entry = nodes.setdefault(node_id, {"id": node_id, "kind": kind, "name": name, "depth": None})
        if kind == "service":
            entry["instances"] = instances.get(name, 0)
        return node_id

    for service in instances:
        node("service", service)  # drawn before it publishes or handles anything
    for row in published:
        edges.append(
            {
                "from": node("service", row["service"]),
                "to": node(row["kind"], row["destination"]),
                "kind": "publish",
                "group": None,
                "total": row["messages"],
                "rate": row["rate"],
                "depth": None,
            }
        )
    for row in handlers:
        pattern = "*" in row["source"] or "#" in row["source"]
        kind = "queue" if row["kind"] == "consume" else "pattern" if pattern else "topic"
        source = node(kind, row["source"])
        if kind == "queue":
            nodes[source]["depth"] = row["depth"]
        edges.append(
            {
                "from": source,
                "to": node("service", row["service"]),
                "kind": row["kind"],
                "group": row["group"],
                "total": row["handled"],
                "rate": row["rates"]["handled"],
                "depth": row["depth"],
            }
        )
        if row["dead_lettered"] or row["dead_letter_depth"]:
            dlq = node("dlq", row["dead_letter_queue"])
            nodes[dlq]["depth"] = row["dead_letter_depth"]
            edges.append(
                {
                    "from": node("service", row["service"]),
                    "to": dlq,
                    "kind": "dead_letter",
                    "group": row["group"],
                    "total": row["dead_lettered"],
                    "rate": row["rates"]["dead_lettered"],
                    "depth": row["dead_letter_depth"],
                }
            )
    topics = [n["name"] for n in nodes.values() if n["kind"] == "topic"]
    # A pattern comes from an untrusted snapshot and '#' matching backtracks: a few at most.
    patterns = [n["name"] for n in nodes.values() if n["kind"] == "pattern" and n["name"].count("#") <= 2]
    for pattern in patterns:
        for topic in topics:
            if matches_pattern(pattern, topic):
                edges.append(
                    {
                        "from": f"topic:{topic}",
                        "to": f"pattern:{pattern}",
                        "kind": "match",
                        "group": None,
                        "total": None,
                        "rate": None,
                        "depth": None,
                    }
                )
    return {"nodes": [nodes[k] for k in sorted(nodes)], "edges": edges}
