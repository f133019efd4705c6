"""Bus: the one object a service uses to publish, send, subscribe and consume."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from types import TracebackType
from typing import Any, Self, TypeVar, cast, overload

from . import _dead_letters
from . import _headers as h
from ._batch import BatchCollector
from ._checks import positive_int
from ._config import TransportURL
from ._dead_letter import error_message, error_type_name
from ._dead_letters import QueueDepth
from ._delay import deliver_at
from ._destination import Destination, DestinationKind, validate_name, validate_pattern
from ._discovery import load_transport
from ._errors import (
    ConfigurationError,
    InvalidHeaders,
    LifecycleError,
    MessageBusError,
    PublishError,
    RequestFailed,
    RequestTimeout,
    UnsupportedFeature,
)
from ._evolution import CE_DATASCHEMA, Upcaster, Upcasters, dataschema_for
from ._handler import UserHandler, bind_batch_handler, bind_handler, may_reply
from ._history import StartFrom, position
from ._message import Envelope, OutgoingMessage
from ._middleware import Handler, Middleware, PublishFn, PublishMiddleware, compose
from ._observability import default_consume_middleware, default_publish_middleware, filtered_counter
from ._replay import caught_up
from ._request import Replies, past_reply_by, reply_by
from ._retry import Retry
from ._serialization import JSON, Decoder, decoder_for, encode, type_name
from ._settle import Settler
from ._stats import BusStats, HandlerStats, check_stats_interval
from ._stop_signals import stop_on_signals
from ._transport import Consumer, PublishAttributes, ReadyConsumer, Transport

__all__ = ["Bus", "BusState"]

logger = logging.getLogger("messagebus")

H = TypeVar("H", bound=UserHandler)
T = TypeVar("T")
U = TypeVar("U", bound=Upcaster)

_SPECVERSION = "1.0"


class BusState(StrEnum):
    """Lifecycle of a :class:`Bus`: new -> starting -> running -> stopping -> stopped."""

    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(slots=True)
class _Registration:
    source: Destination
    handler: UserHandler
    concurrency: int
    retry: Retry | None
    middleware: tuple[Middleware, ...]
    batch: int | None = None
    batch_timeout: float = 0.5


class Bus:
    """Publish, send, subscribe and consume on one transport, chosen by URL.

    Register handlers with :meth:`subscribe` / :meth:`consume` before :meth:`start`; publish
    while running (also while stopping, so in-flight handlers can still emit events). A bus
    is used from one event loop and is not thread-safe. It starts once: a stopped bus cannot
    be restarted (make a new one).

    ``retry`` is the default policy of every handler; ``middleware`` wraps every handler
    (first listed runs outermost); ``publish_middleware`` wraps every publish call. A handler
    still running ``slow_handler_warning`` seconds after it started is logged once as a
    warning naming the destination, group and message id (``None`` turns that off); the
    check runs every half of that, so the warning comes at most half as late again.
    :meth:`start` returns once every consumer receives messages, waiting at most
    ``ready_timeout`` seconds for consumers that can tell (a Kafka group join takes seconds);
    past it, it logs a warning naming those not ready and returns (they go on joining, and
    what is published meanwhile is not lost). Raises :class:`ConfigurationError` for a
    ``retry`` that is not a :class:`Retry`, or a ``slow_handler_warning`` or
    ``ready_timeout`` that is not a positive number. Every ``stats_interval`` seconds (and
    once after start and once while stopping) the bus publishes its per-handler counts on
    the ``messagebus.stats`` topic for ``messagebus monitor`` (``None``: never; see
    docs/observability.md); any other value than a number > 0 raises ConfigurationError.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        service: str = "app",
        retry: Retry | None = None,
        middleware: Iterable[Middleware] = (),
        publish_middleware: Iterable[PublishMiddleware] = (),
        url: TransportURL | None = None,
        slow_handler_warning: float | None = 60.0,
        ready_timeout: float = 30.0,
        stats_interval: float | None = 10.0,
    ) -> None:
        self.service = validate_name(service, "service")
        self.transport = transport
        if retry is not None and not isinstance(retry, Retry):
            # An int here used to be accepted and blew up in the settle path of every failure.
            raise ConfigurationError(
                f"retry must be a messagebus.Retry (e.g. Retry(max_attempts={retry!r}) for a count), "
                f"got {type(retry).__name__}"
            )
        self.retry = retry if retry is not None else Retry()
        if slow_handler_warning is not None and (
            isinstance(slow_handler_warning, bool)
            or not isinstance(slow_handler_warning, int | float)
            or not slow_handler_warning > 0
        ):
            raise ConfigurationError(
                f"slow_handler_warning must be a number of seconds > 0, or None to turn the warning off; "
                f"got {slow_handler_warning!r}"
            )
        self._slow_handler_warning = slow_handler_warning
        self._ready_timeout = _seconds(ready_timeout, "ready_timeout")
        self._url = url
        interval = check_stats_interval(stats_interval)
        self._stats = None if interval is None else BusStats(self.service, transport, interval)
        system = transport.messaging_system
        server = self._telemetry_server()
        attributes_for = transport.publish_attributes if isinstance(transport, PublishAttributes) else None
        self._middleware = (*default_consume_middleware(system, service=self.service, server=server), *middleware)
        self._publish_middleware = (
            *default_publish_middleware(system, service=self.service, server=server, attributes_for=attributes_for),
            *publish_middleware,
        )
        self._state = BusState.NEW
        self._registrations: list[_Registration] = []
        # What the service says it publishes and sends: documentation (AsyncAPI), no runtime effect.
        self._declared: list[tuple[Destination, Any]] = []
        self._sources: set[tuple[DestinationKind, str, str | None]] = set()
        self._consumers: list[Consumer] = []
        self._settlers: list[Settler] = []
        self._stopping: asyncio.Task[None] | None = None
        self._names: set[str] = set()
        self._types: dict[type, tuple[str, str | None]] = {}
        self._upcasters = Upcasters()
        self._replies: Replies | None = None
        self._decoders: dict[Any, Decoder] = {}
        base: PublishFn = self._publish_to_transport
        self._publish: PublishFn = compose(base, self._publish_middleware)

    def _telemetry_server(self) -> tuple[str, int | None] | None:
        """The first broker host and port of the URL (``server.address``/``server.port``);
        none for the in-process memory transport."""
        url = self._url
        if url is None or not url.hosts or self.transport.messaging_system == "memory":
            return None
        return url.hosts[0]

    # -- construction ------------------------------------------------------------------

    @classmethod
    def from_url(cls, url: str, *, service: str = "app", **kwargs: Any) -> Bus:
        """Build a bus on the transport that handles ``url``'s scheme.

        Raises :class:`InvalidURL`, :class:`InvalidOption` or :class:`TransportNotFound` (with
        the package to install) before any I/O.
        """
        parsed = TransportURL.parse(url)
        return cls(load_transport(parsed), service=service, url=parsed, **kwargs)

    @classmethod
    def from_env(cls, *, service: str | None = None, **kwargs: Any) -> Bus:
        """Build from ``MESSAGEBUS_URL`` (default ``memory://``) and ``MESSAGEBUS_SERVICE``
        (default ``app``); an explicit ``service`` wins over the environment."""
        url = os.environ.get("MESSAGEBUS_URL") or "memory://"
        name = service or os.environ.get("MESSAGEBUS_SERVICE") or "app"
        return cls.from_url(url, service=name, **kwargs)

    @property
    def state(self) -> BusState:
        """Where the bus is in its lifecycle."""
        return self._state

    @property
    def url(self) -> TransportURL | None:
        """The transport URL the bus was built from (``str()`` redacts the password)."""
        return self._url

    def __repr__(self) -> str:
        where = f", url={str(self._url)!r}" if self._url else ""
        return f"Bus(service={self.service!r}{where}, state={self._state.value})"

    # -- registration --------------------------------------------------------------------

    def subscribe(
        self,
        topic: str,
        *,
        group: str | None = None,
        concurrency: int = 1,
        retry: Retry | None = None,
        middleware: Iterable[Middleware] = (),
        batch: int | None = None,
        batch_timeout: float = 0.5,
        filter: dict[str, str] | None = None,
        start_from: StartFrom = "latest",
    ) -> Callable[[H], H]:
        """Decorator: handle every message published to ``topic``, as subscription ``group``
        (default: the service name). Instances of one group compete; each group gets every
        message.

        ``topic`` may be a pattern where the transport declares ``wildcards``: ``*`` matches
        one dot-separated segment, ``#`` any number (``orders.*``, ``orders.#``);
        ``Envelope.destination`` is then the topic each message was published to.
        ``filter`` (header name -> value) handles only messages whose headers all match:
        matched by the broker where it can, else acked unhandled at the client and counted
        in ``messagebus.filtered.messages``. ``batch=N`` calls the handler with a
        ``list[T]`` of up to N messages (a partial batch ``batch_timeout`` seconds after its
        first message); ``concurrency`` is then the number of batch calls at once.
        ``start_from`` is where the group starts when the broker creates it: ``"latest"``
        (messages published from then on), ``"earliest"`` (every message the broker still
        retains for the topic) or an aware ``datetime`` (those published at or after it, by
        their ``ce-time``); for a group that exists it is ignored (logged at INFO).

        Raises :class:`LifecycleError` after start, :class:`InvalidDestination`,
        :class:`InvalidHandler`, :class:`InvalidHeaders` (a filter name), or
        :class:`ConfigurationError` for a duplicate, a bad ``batch``/``batch_timeout`` or
        ``start_from``; :class:`UnsupportedFeature` for a pattern on a transport without
        wildcards, or a ``start_from`` other than latest on one without history."""
        name = validate_pattern(topic, "topic")
        group_name = validate_name(group if group is not None else self.service, "group")
        source = Destination(
            DestinationKind.TOPIC,
            name,
            group_name,
            _filter(filter, name),
            position(start_from, f"{name} (group {group_name})"),
        )
        capabilities = self.transport.capabilities
        if source.is_pattern and not capabilities.wildcards:
            raise UnsupportedFeature(
                f"{self.transport.messaging_system} cannot subscribe to the pattern {name!r}: "
                f"{capabilities.wildcards_reason}; subscribe to each topic by name"
            )
        if source.start_from is not None and not capabilities.history:
            raise UnsupportedFeature(
                f"{self.transport.messaging_system} cannot start group {group_name!r} of {name!r} "
                f"from {start_from!r}: {capabilities.history_reason}; only start_from='latest' works here"
            )
        return self._register(source, concurrency, retry, middleware, batch, batch_timeout)

    def consume(
        self,
        queue: str,
        *,
        concurrency: int = 1,
        retry: Retry | None = None,
        middleware: Iterable[Middleware] = (),
        batch: int | None = None,
        batch_timeout: float = 0.5,
    ) -> Callable[[H], H]:
        """Decorator: take messages from work queue ``queue`` (each handled by one consumer;
        messages sent before any consumer existed wait). A handler's non-None return value
        is the reply to a :meth:`request`. ``batch`` as in :meth:`subscribe`. Raises like
        :meth:`subscribe`."""
        source = Destination(DestinationKind.QUEUE, validate_name(queue, "queue"))
        return self._register(source, concurrency, retry, middleware, batch, batch_timeout)

    def publishes(self, topic: str, message_type: Any) -> None:
        """Declare that this service publishes ``message_type`` messages to ``topic``: a send
        operation in :func:`messagebus._asyncapi.asyncapi_document` (``messagebus asyncapi``). Documentation
        only: publishing is neither required nor checked. Declaring the same pair twice is a
        no-op; allowed in any state. Raises :class:`InvalidDestination` for an illegal name."""
        self._declare(Destination(DestinationKind.TOPIC, validate_name(topic, "topic")), message_type)

    def sends(self, queue: str, message_type: Any) -> None:
        """Declare that this service sends ``message_type`` messages to work queue ``queue``;
        like :meth:`publishes`."""
        self._declare(Destination(DestinationKind.QUEUE, validate_name(queue, "queue")), message_type)

    def _declare(self, destination: Destination, message_type: Any) -> None:
        if (destination, message_type) not in self._declared:
            self._declared.append((destination, message_type))

    def upcaster(self, model: type[Any], *, from_version: int) -> Callable[[U], U]:
        """Decorator: register ``fn(data: dict) -> dict`` turning a message of ``model`` at
        schema version ``from_version`` into one at ``from_version + 1`` (a pure function of
        the JSON object; see docs/evolution.md). Chained before a handler of ``model``
        validates an older message. Raises :class:`ConfigurationError` when ``model`` is not
        a pydantic model, ``from_version`` is not in ``1 .. model.schema_version - 1`` or
        already has an upcaster; :class:`LifecycleError` once the bus has started."""
        if self._state is not BusState.NEW:
            raise LifecycleError(f"cannot register an upcaster on a {self._state.value} bus; register before start()")
        return self._upcasters.register(model, from_version)

    def _register(
        self,
        source: Destination,
        concurrency: int,
        retry: Retry | None,
        middleware: Iterable[Middleware],
        batch: int | None = None,
        batch_timeout: float = 0.5,
    ) -> Callable[[H], H]:
        if self._state is not BusState.NEW:
            raise LifecycleError(
                f"cannot register a handler for {source} on a {self._state.value} bus; "
                "register every handler before start()"
            )
        positive_int(concurrency, f"concurrency for {source}")
        if retry is not None and not isinstance(retry, Retry):
            raise ConfigurationError(f"retry for {source} must be a messagebus.Retry, got {type(retry).__name__}")
        # One handler per group, whatever its filter or start: two would compete for its messages.
        if (source.kind, source.name, source.group) in self._sources:
            raise ConfigurationError(
                f"{source} already has a handler on this bus; one handler per topic and group "
                "(use another group to get a second copy of each message)"
            )
        if batch is not None:
            positive_int(batch, f"batch for {source}", "an int >= 1 (the most messages per call)")
        _seconds(batch_timeout, f"batch_timeout for {source}")
        chain = tuple(middleware)

        def decorator(fn: H) -> H:
            # Validate now, not at start.
            if batch is None:
                bind_handler(fn, str(source), self._upcasters)
            else:
                bind_batch_handler(fn, str(source), self._upcasters)
            self._sources.add((source.kind, source.name, source.group))
            self._registrations.append(
                _Registration(source, fn, concurrency, retry, chain, batch, float(batch_timeout))
            )
            return fn

        return decorator

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, declare every subscription and queue, and start the consumers.

        Raises :class:`LifecycleError` unless the bus is new; transport errors propagate
        (:class:`ConnectError`, :class:`TopologyError`) and leave the bus new again.
        """
        if self._state is not BusState.NEW:
            raise LifecycleError(f"start() needs a new bus; this one is {self._state.value} (create a new Bus)")
        self._state = BusState.STARTING
        try:
            await self.transport.connect()
            for reg in self._registrations:
                settler = self._settler(reg)
                # A batch subscription holds `batch` messages per batch in flight, plus one
                # batch filling while the calls run (else the broker idles between batches).
                concurrency = (reg.concurrency + 1) * reg.batch if reg.batch else reg.concurrency
                self._settlers.append(settler)
                consumer = await self.transport.subscribe(reg.source, settler.handle, concurrency=concurrency)
                self._consumers.append(consumer)
            await self._wait_ready()
        except BaseException:
            await self._shutdown(0.0)
            self._state = BusState.NEW
            raise
        self._state = BusState.RUNNING
        if self._stats is not None:
            self._stats.start()

    def _settler(self, reg: _Registration, stats: HandlerStats | None = None) -> Settler:
        system = self.transport.messaging_system
        return Settler(
            reg.source,
            compose(self._innermost(reg), self._middleware + reg.middleware),
            reg.retry or self.retry,
            # Dead-letter copies go through the publish middleware: a send span and metric.
            self._publish,
            system,
            warn_after=self._slow_handler_warning,
            on_dead_letter=self._reply_failure if reg.source.kind is DestinationKind.QUEUE else None,
            filtered=filtered_counter(system, reg.source.name, reg.source.group) if reg.source.filter else None,
            stats=stats or (self._stats.handler(reg.source) if self._stats is not None else None),
        )

    def _innermost(self, reg: _Registration) -> Handler:
        where = str(reg.source)
        if reg.batch is not None:
            decode, call = bind_batch_handler(reg.handler, where, self._upcasters)
            return BatchCollector(
                decode, call, reg.batch, reg.batch_timeout, where, concurrency=reg.concurrency
            ).handler()
        handler = bind_handler(reg.handler, where, self._upcasters)
        if reg.source.kind is DestinationKind.QUEUE and may_reply(reg.handler):
            return self._replying(handler)
        return handler

    def _replying(self, handler: Handler) -> Handler:
        """Send a handler's non-None return value to the requester's reply queue."""
        call = cast("Callable[[Envelope], Any]", handler)

        async def reply(envelope: Envelope) -> None:
            result = await call(envelope)
            reply_to = envelope.wire_headers.get(h.REPLY_TO)
            if result is None or not reply_to:
                return
            if past_reply_by(envelope.wire_headers):
                logger.info("not replying to request %s: its caller stopped waiting", envelope.id)
                return
            await self._reply(reply_to, envelope, result, None)

        return reply

    async def _reply(self, reply_to: str, request: Envelope, payload: object, error: tuple[str, str] | None) -> None:
        try:
            destination = Destination(DestinationKind.QUEUE, validate_name(reply_to, "reply queue"))
        except MessageBusError:
            logger.warning("request %s names an illegal reply queue %r; no reply sent", request.id, reply_to)
            return
        message = self._message(destination, payload, None, None)
        message.headers[h.CORRELATION_ID] = request.id
        if error is not None:
            message.headers[h.REPLY_ERROR_TYPE], message.headers[h.REPLY_ERROR_MESSAGE] = error
        await self._send([message])

    async def _reply_failure(self, envelope: Envelope, error: Exception) -> None:
        reply_to = envelope.wire_headers.get(h.REPLY_TO)
        if reply_to and not past_reply_by(envelope.wire_headers):
            kind, text = error_type_name(error), error_message(error)
            await self._reply(reply_to, envelope, {"error_type": kind, "error_message": text}, (kind, text))

    async def _wait_ready(self) -> None:
        # All at once: joins run in parallel, so start() takes one join, not one per handler.
        waiting = {
            asyncio.ensure_future(consumer.ready()): reg.source
            for reg, consumer in zip(self._registrations, self._consumers, strict=True)
            if isinstance(consumer, ReadyConsumer)
        }
        if not waiting:
            return
        _, pending = await asyncio.wait(waiting, timeout=self._ready_timeout)
        for task in pending:
            task.cancel()
        if pending:
            names = ", ".join(sorted(str(waiting[task]) for task in pending))
            logger.warning(
                "bus %s started before these subscriptions were ready (still joining after %.0fs): %s",
                self.service,
                self._ready_timeout,
                names,
            )

    async def stop(self, grace: float = 30.0) -> None:
        """Stop fetching, let in-flight handlers finish and settle for up to ``grace``
        seconds, cancel the rest (they are never acked, so they are redelivered), close.
        Idempotent; a bus that never started stays unstarted."""
        if self._state in (BusState.NEW, BusState.STOPPED):
            return
        if self._stopping is None:
            self._state = BusState.STOPPING
            self._stopping = asyncio.ensure_future(self._shutdown(grace))
        await asyncio.shield(self._stopping)
        self._state = BusState.STOPPED

    async def _shutdown(self, grace: float) -> None:
        consumers, self._consumers = self._consumers, []
        running = sum(s.running for s in self._settlers)
        cancelled = sum(s.cancelled for s in self._settlers)
        try:
            try:
                if consumers:
                    await asyncio.gather(*(c.stop(grace) for c in consumers))
            finally:
                if self._stats is not None:
                    # After the handlers: the last snapshot has the final counts. Before the
                    # reply queue goes: a publish after its deletion can make Kafka's client
                    # ask for it again in a metadata request, which re-creates it.
                    await self._stats.stop()
            if self._replies is not None:
                # After the consumers: a handler finishing in the grace may still make a request.
                await self._replies.close(grace)
        finally:
            await self.transport.close()
        if consumers:
            cancelled = sum(s.cancelled for s in self._settlers) - cancelled
            logger.info(
                "%r stopped: of %d handler call(s) running at stop, %d finished within the %gs grace and %d were "
                "cancelled (not acked: the broker redelivers them)",
                self,
                running,
                max(running - cancelled, 0),
                grace,
                cancelled,
            )

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def run(self, *, grace: float = 30.0) -> None:
        """Start (unless already running), run until SIGINT or SIGTERM (or cancellation), then
        stop gracefully with ``grace``. Logs one INFO record once it is running. Raises
        :class:`LifecycleError` on a stopped bus."""
        stopped = asyncio.Event()
        try:
            with stop_on_signals(stopped):
                if self._state is not BusState.RUNNING:
                    await self.start()
                logger.info("%r running; SIGINT or SIGTERM stops it", self)
                await stopped.wait()
        finally:
            await self.stop(grace)

    # -- operating: dead letters and depths -------------------------------------------------

    async def dead_letter_queues(self) -> list[QueueDepth]:
        """Every dead-letter queue on the broker (not only this bus's) with its depth, sorted
        by name. Read-only. Raises :class:`LifecycleError` unless the bus runs,
        :class:`UnsupportedFeature` when the transport is no :class:`BrokerAdmin`."""
        self._check_running("list dead-letter queues")
        return await _dead_letters.dead_letter_queues(self.transport)

    async def queue_depth(self, name: str, group: str | None = None) -> int | None:
        """Messages stored and not yet taken in queue ``name``, or in topic ``name``'s
        ``group`` (``None``: the broker does not tell; ``0``: no such queue or group; see
        :meth:`BrokerAdmin.depth`). Read-only; raises like :meth:`dead_letter_queues`."""
        self._check_running("read a queue depth")
        source = (
            Destination(DestinationKind.TOPIC, self._name(name, "topic"), validate_name(group, "group"))
            if group is not None
            else Destination(DestinationKind.QUEUE, self._name(name, "queue"))
        )
        return await _dead_letters.admin_of(self.transport).depth(source)

    async def peek_dead_letters(self, queue: str, limit: int = 10, *, wait: float = 1.0) -> list[Envelope]:
        """Up to ``limit`` dead letters of ``queue`` (``<topic>.<group>.dlq``, ``<queue>.dlq``)
        as envelopes (body, headers with the ``dlq-*`` failure record), removing nothing. It
        returns once it has ``limit``, or the queue's depth, or after ``wait`` seconds
        without a message. Raises :class:`ConfigurationError` for a name not ending in
        ``.dlq`` or a bad limit, and like :meth:`dead_letter_queues`."""
        self._check_running("peek at dead letters")
        return await _dead_letters.peek(self.transport, queue, limit, wait=_seconds(wait, "wait"))

    async def replay_dead_letters(
        self, queue: str, limit: int | None = None, *, ids: Iterable[str] | None = None, wait: float = 1.0
    ) -> int:
        """Send dead letters of ``queue`` back to the ORIGINAL group (or queue) only, up to
        ``limit`` (``None``: all), only those with an id in ``ids`` when given; returns how
        many. Same id, type, content type, key, body and headers; the attempt count starts
        over at 1 and the header ``dlq-replayed`` says when. Each is removed from ``queue``
        only after the broker confirmed its replay: a crash mid-replay duplicates, never
        loses. Other groups of the topic never see a replayed message. Raises like
        :meth:`peek_dead_letters`; a replay publish that fails raises its error with that
        dead letter and the rest still in ``queue``."""
        self._check_running("replay dead letters")
        chosen = None if ids is None else [str(i) for i in ids]
        return await _dead_letters.replay(self.transport, queue, limit, ids=chosen, wait=_seconds(wait, "wait"))

    async def purge_dead_letters(self, queue: str, *, wait: float = 1.0) -> int:
        """Remove every dead letter of ``queue`` (those there when it starts; it stops after
        ``wait`` seconds without one); returns how many. Raises like :meth:`peek_dead_letters`."""
        self._check_running("purge dead letters")
        return await _dead_letters.purge(self.transport, queue, wait=_seconds(wait, "wait"))

    # -- history -------------------------------------------------------------------------------

    async def replay(
        self,
        topic: str,
        handler: UserHandler,
        *,
        start_from: StartFrom = "earliest",
        group: str | None = None,
        concurrency: int = 1,
        idle: float = 2.0,
    ) -> int:
        """Run ``handler`` (typed like a :meth:`subscribe` handler) over ``topic``'s history
        in a FRESH group, to rebuild a projection; return how many messages it handled.

        The group (default: a throwaway ``replay-<hex>``, deleted at the end; a ``group`` you
        name is kept, so a service can go on consuming it live) is created at ``start_from``
        and read until it has caught up: its depth (:meth:`BrokerAdmin.depth`) is 0 with no
        handler call running, or, where the broker does not tell the depth, after ``idle``
        seconds without a message. Live groups of the topic are never touched. A failing
        message is retried and dead-lettered as in any group. Raises
        :class:`LifecycleError` unless the bus runs, :class:`UnsupportedFeature` on a
        transport without history or :class:`BrokerAdmin`, :class:`ConfigurationError` for a
        bad argument, and what ``subscribe`` raises; cancelling it stops the replay."""
        self._check_running("replay history")
        name = self._name(topic, "topic")
        chosen = validate_name(group, "group") if group is not None else f"replay-{os.urandom(6).hex()}"
        source = Destination(DestinationKind.TOPIC, name, chosen, (), position(start_from, f"{name} (replay)"))
        if source.start_from is None:
            raise ConfigurationError("replay needs start_from='earliest' or a datetime ('latest' has no history)")
        admin = _dead_letters.admin_of(self.transport)
        capabilities = self.transport.capabilities
        if not capabilities.history:
            raise UnsupportedFeature(
                f"{self.transport.messaging_system} cannot replay {name!r}: {capabilities.history_reason}"
            )
        positive_int(concurrency, f"concurrency for the replay of {name!r}")
        wait = _seconds(idle, "idle")
        # Not this bus's reported handler stats: its own counters tell when it has caught up.
        stats = HandlerStats(source)
        settler = self._settler(_Registration(source, handler, concurrency, None, ()), stats)
        consumer = await self.transport.subscribe(source, settler.handle, concurrency=concurrency)
        try:
            if isinstance(consumer, ReadyConsumer):
                # A Kafka group still joining reads nothing: that is no sign of having caught up.
                await asyncio.wait_for(consumer.ready(), self._ready_timeout)
            await caught_up(admin, source, stats, wait)
        finally:
            await consumer.stop(5.0)
            if group is None:
                await admin.delete_group(source)
        return stats.handled

    # -- publishing ------------------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        payload: object,
        *,
        key: str | None = None,
        headers: dict[str, str] | None = None,
        delay: float | timedelta | None = None,
    ) -> None:
        """Publish ``payload`` to every subscription group of ``topic``; return once the
        broker confirmed it. With ``delay`` (seconds or a ``timedelta``) no handler gets it
        before that time has passed (it is stored now; each group holds its copy back
        without holding back other messages). Raises :class:`LifecycleError`,
        :class:`EncodeError`, :class:`InvalidHeaders`, :class:`InvalidDestination`,
        :class:`MessageTooLarge`, :class:`PublishError`, or :class:`ConfigurationError` for
        a bad ``delay``."""
        self._check_running("publish")
        destination = Destination(DestinationKind.TOPIC, self._name(topic, "topic"))
        await self._send([self._message(destination, payload, key, headers, due=deliver_at(delay, repr(topic)))])

    async def send(
        self,
        queue: str,
        payload: object,
        *,
        key: str | None = None,
        headers: dict[str, str] | None = None,
        delay: float | timedelta | None = None,
    ) -> None:
        """Send ``payload`` to work queue ``queue`` (kept until a consumer takes it); return
        once confirmed. ``delay`` as in :meth:`publish`. Raises like :meth:`publish`."""
        self._check_running("send")
        destination = Destination(DestinationKind.QUEUE, self._name(queue, "queue"))
        await self._send([self._message(destination, payload, key, headers, due=deliver_at(delay, repr(queue)))])

    @overload
    async def request(
        self,
        queue: str,
        payload: object,
        *,
        reply_type: type[T],
        timeout: float = 30.0,
        key: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> T: ...

    @overload
    async def request(
        self,
        queue: str,
        payload: object,
        *,
        reply_type: None = None,
        timeout: float = 30.0,
        key: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Envelope: ...

    async def request(
        self,
        queue: str,
        payload: object,
        *,
        reply_type: Any = None,
        timeout: float = 30.0,
        key: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """Send ``payload`` to ``queue`` and return the reply its handler returns, decoded
        as ``reply_type`` (``None``: the reply :class:`Envelope`). Safe to call from many
        tasks at once: each gets its own reply. The first request makes this bus's reply
        queue (deleted on stop where the transport can); its time counts in ``timeout``.

        Raises :class:`RequestTimeout` when no reply came within ``timeout`` seconds (the
        responder then sends none), :class:`RequestFailed` (naming the error type) when the
        responder's handler failed for good, :class:`DecodeError` when the reply does not
        decode as ``reply_type``, :class:`LifecycleError` when the bus stops first, and
        like :meth:`send`."""
        self._check_running("request")
        _seconds(timeout, f"timeout of a request to {queue!r}")
        destination = Destination(DestinationKind.QUEUE, self._name(queue, "queue"))
        message = self._message(destination, payload, key, headers)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        replies = self._replies
        if replies is None:
            replies = self._replies = Replies(self.transport, self.service)
        try:
            if not replies.is_open:
                await asyncio.wait_for(replies.open(), timeout)
        except TimeoutError:
            raise RequestTimeout(
                f"no reply from {queue!r} within {timeout}s: the reply queue was not ready in time"
            ) from None
        message.headers[h.REPLY_TO] = replies.queue
        message.headers[h.REPLY_BY] = reply_by(max(deadline - loop.time(), 0.0))
        future = replies.expect(message.id)
        try:
            await self._send([message])
            reply = await asyncio.wait_for(future, max(deadline - loop.time(), 0.0))
        except TimeoutError:
            raise RequestTimeout(
                f"no reply from {queue!r} within {timeout}s (is a consumer of {queue!r} running, "
                "and does its handler return a value?)"
            ) from None
        finally:
            replies.forget(message.id)
        failure = reply.wire_headers.get(h.REPLY_ERROR_TYPE)
        if failure is not None:
            text = reply.wire_headers.get(h.REPLY_ERROR_MESSAGE, "")
            raise RequestFailed(
                f"the handler of {queue!r} failed for good ({failure}: {text}); the request was dead-lettered",
                error_type=failure,
                error_message=text,
            )
        if reply_type is None:
            return reply
        decode = self._decoders.get(reply_type)
        if decode is None:
            # Built once per type: a TypeAdapter per request cost more than the rest of it.
            decode = self._decoders[reply_type] = decoder_for(reply_type)
        return decode(reply.body, reply.wire_headers.get(h.CE_CONTENT_TYPE, JSON))

    async def publish_many(
        self,
        topic: str,
        payloads: Iterable[object],
        *,
        key: str | Callable[[Any], str | None] | None = None,
        headers: dict[str, str] | None = None,
        delay: float | timedelta | None = None,
    ) -> None:
        """Publish many payloads in batches, with confirms pipelined; return once all are
        confirmed. ``key`` may be a function of the payload; ``delay`` as in :meth:`publish`
        (one due time for all). Raises like :meth:`publish`; on error some messages may
        have been published (each at most once)."""
        self._check_running("publish_many")
        destination = Destination(DestinationKind.TOPIC, self._name(topic, "topic"))
        await self._send(self._messages(destination, payloads, key, headers, deliver_at(delay, repr(topic))))

    async def send_many(
        self,
        queue: str,
        payloads: Iterable[object],
        *,
        key: str | Callable[[Any], str | None] | None = None,
        headers: dict[str, str] | None = None,
        delay: float | timedelta | None = None,
    ) -> None:
        """Send many payloads to ``queue``, batched; like :meth:`publish_many`."""
        self._check_running("send_many")
        destination = Destination(DestinationKind.QUEUE, self._name(queue, "queue"))
        await self._send(self._messages(destination, payloads, key, headers, deliver_at(delay, repr(queue))))

    def _messages(
        self,
        destination: Destination,
        payloads: Iterable[object],
        key: str | Callable[[Any], str | None] | None,
        headers: dict[str, str] | None,
        due: str | None = None,
    ) -> list[OutgoingMessage]:
        items = payloads if isinstance(payloads, list | tuple) else list(payloads)
        extra = h.validate_headers(headers) if headers else None
        # One timestamp and one read of the random source for the whole batch.
        now = datetime.now(UTC).isoformat()
        ids = os.urandom(16 * len(items)).hex()
        make = self._message
        if callable(key):
            return [
                make(destination, p, key(p), extra, checked=True, now=now, id=ids[32 * i : 32 * i + 32], due=due)
                for i, p in enumerate(items)
            ]
        return [
            make(destination, p, key, extra, checked=True, now=now, id=ids[32 * i : 32 * i + 32], due=due)
            for i, p in enumerate(items)
        ]

    def _check_running(self, what: str) -> None:
        if self._state is not BusState.RUNNING and self._state is not BusState.STOPPING:
            hint = (
                "call 'await bus.start()' or use 'async with bus:' first"
                if self._state in (BusState.NEW, BusState.STARTING)
                else "the bus was stopped; create a new Bus"
            )
            raise LifecycleError(f"cannot {what} on a {self._state.value} bus: {hint}")

    def _name(self, name: str, what: str) -> str:
        if name not in self._names:
            validate_name(name, what)
            self._names.add(name)
        return name

    def _message(
        self,
        destination: Destination,
        payload: object,
        key: str | None,
        headers: dict[str, str] | None,
        *,
        checked: bool = False,
        now: str | None = None,
        id: str | None = None,
        due: str | None = None,
    ) -> OutgoingMessage:
        if key is not None and not isinstance(key, str):
            raise ConfigurationError(f"message key must be a str or None, got {type(key).__name__}")
        body, content_type = encode(payload)
        cls = type(payload)
        known = self._types.get(cls)
        if known is None:
            known = self._types[cls] = (type_name(payload), dataschema_for(cls))
        kind, schema = known
        wire = {
            h.CE_ID: id or os.urandom(16).hex(),
            h.CE_SOURCE: self.service,
            h.CE_TYPE: kind,
            h.CE_SPECVERSION: _SPECVERSION,
            h.CE_TIME: now or datetime.now(UTC).isoformat(),
            h.CE_CONTENT_TYPE: content_type,
        }
        if schema is not None:
            wire[CE_DATASCHEMA] = schema
        if headers:
            wire.update(headers if checked else h.validate_headers(headers))
        if due is not None:
            wire[h.DELIVER_AT] = due
        return OutgoingMessage(destination, body, wire, key)

    async def _send(self, messages: Sequence[OutgoingMessage]) -> None:
        if messages:
            await self._publish(messages)

    async def _publish_to_transport(self, messages: Sequence[OutgoingMessage]) -> None:
        try:
            await self.transport.publish(messages)
        except MessageBusError:
            raise
        except Exception as exc:  # a transport bug must not leak a bare client error
            raise PublishError(f"publishing to {messages[0].destination.name!r} failed: {exc!r}") from exc
        if self._stats is not None:
            self._stats.count_published(messages)


def _seconds(value: object, what: str) -> float:
    """``value`` as float seconds if it is a number > 0 (not a bool), else :class:`ConfigurationError`."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigurationError(f"{what} must be a number of seconds > 0, got {value!r}")
    return float(value)


def _filter(filter: object, topic: str) -> tuple[tuple[str, str], ...]:
    """A subscription filter as sorted ``(header, value)`` pairs. Raises
    :class:`InvalidHeaders` for names a user header cannot have, :class:`ConfigurationError`
    for anything but a ``dict[str, str]``."""
    if filter is None:
        return ()
    if not isinstance(filter, dict) or not filter:
        raise ConfigurationError(
            f"filter of the subscription to {topic!r} must be a non-empty dict of header name -> value, got {filter!r}"
        )
    try:
        checked = h.validate_headers(filter)
    except InvalidHeaders as exc:
        raise InvalidHeaders(f"filter of the subscription to {topic!r}: {exc}") from exc
    return tuple(sorted(checked.items()))
