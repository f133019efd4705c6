"""SqsTransport: the messagebus transport contract on AWS SQS and SNS (boto3).

boto3 is synchronous, so every AWS call runs on a thread pool the transport owns (bounded by
``max_workers``; each consumer adds one thread for its long poll, so polls never starve
publishes or acks). The event loop only waits on futures. boto3 clients are thread-safe and
shared by all threads; the session is only used while connecting.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import math
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from botocore.exceptions import ClientError

from messagebus import (
    ConnectError,
    ConsumeError,
    DecodeError,
    LifecycleError,
    MessageTooLarge,
    PublishError,
    TopologyError,
    TransportError,
    UnsupportedFeature,
)
from messagebus.transports import (
    AttributeValue,
    Capabilities,
    Consumer,
    Delivery,
    DeliveryHandler,
    Destination,
    DestinationKind,
    OutgoingMessage,
    TransportURL,
    WorkerPool,
)

from ._batch import Batcher
from ._codec import MAX_WIRE_SIZE, decode_message, encode_message
from ._errors import is_missing, map_error
from ._options import SqsOptions, options_from_url
from ._telemetry import SQS_SYSTEM, consume_attributes, publish_attributes, system_for
from ._topology import Topology, logical_queue

__all__ = ["MAX_BODY_SIZE", "SqsTransport"]

logger = logging.getLogger("messagebus.sqs")

T = TypeVar("T")

#: Largest body accepted: the 256 KiB SQS/SNS limit minus 8 KiB kept for the attributes.
MAX_BODY_SIZE = MAX_WIRE_SIZE - 8192
_MAX_VISIBILITY = 43_200
_ID_CHARS = re.compile(r"[\x21-\x7e]{1,128}")
_ACK_LINGER = 0.005


class SqsTransport:
    """Transport for ``sqs://`` URLs: SNS topics fanning out to one SQS queue per group, and
    plain SQS queues for work queues (see the adapter README for the full mapping).

    Use from one event loop. :meth:`connect` and :meth:`close` are idempotent. Credentials come
    from the normal AWS chain and are never logged or put in an error message.
    """

    messaging_system: str = SQS_SYSTEM

    def __init__(self, options: SqsOptions) -> None:
        """Build an unconnected transport from validated options (no I/O)."""
        self.options = options
        self.capabilities = Capabilities(
            ordering=options.fifo,
            native_delay=True,
            persistence=True,
            consumer_groups=True,
            max_message_size=MAX_BODY_SIZE,
            network=True,
        )
        self._executor: ThreadPoolExecutor | None = None
        self._sqs: Any = None
        self._sns: Any = None
        self._topology: Topology | None = None
        self._batchers: dict[tuple[str, str], Batcher] = {}
        self._resolving: dict[tuple[str, str], asyncio.Future[str]] = {}
        self._consumers: set[_SqsConsumer] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._draining: set[asyncio.Task[None]] = set()
        self._connected = False
        self._closing = False
        self._connect_lock: asyncio.Lock | None = None

    @classmethod
    def from_url(cls, url: TransportURL | str) -> SqsTransport:
        """Build a transport from ``sqs://?region=...&endpoint_url=...``.

        Validates every option without network I/O. Raises :class:`InvalidURL`,
        :class:`InvalidOption` (listing the valid options) or :class:`ConfigurationError`
        (no region in the URL nor in the AWS configuration).
        """
        parsed = TransportURL.parse(url) if isinstance(url, str) else url
        return cls(options_from_url(parsed))

    def __repr__(self) -> str:
        o = self.options
        where = o.endpoint_url or "aws"
        return f"SqsTransport(region={o.region!r}, endpoint={where!r}, fifo={o.fifo})"

    @property
    def sqs_client(self) -> Any:
        """The boto3 SQS client (thread-safe; blocking: call it from a thread). ``None`` until
        :meth:`connect`. For advanced use and tests; the transport does not need you to."""
        return self._sqs

    @property
    def sns_client(self) -> Any:
        """The boto3 SNS client, like :attr:`sqs_client`."""
        return self._sns

    # -- lifecycle ---------------------------------------------------------------------------

    async def connect(self) -> None:
        """Create the boto3 clients and check that the endpoint answers and accepts the
        credentials (one ``ListQueues`` call, retried by botocore for transient failures).

        Idempotent. Raises :class:`ConnectError` (unreachable endpoint, missing or rejected
        credentials) with a message saying what to fix, the botocore error chained.
        """
        if self._connected:
            return
        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            if self._connected:
                return
            executor = ThreadPoolExecutor(self.options.max_workers, thread_name_prefix="messagebus-sqs")
            loop = asyncio.get_running_loop()
            try:
                sqs, sns = await loop.run_in_executor(executor, self._open_clients)
            except BaseException:
                executor.shutdown(wait=False, cancel_futures=True)
                raise
            self._executor = executor
            self._sqs, self._sns = sqs, sns
            self._topology = Topology(
                sqs,
                sns,
                queue_prefix=self.options.queue_prefix,
                topic_prefix=self.options.topic_prefix,
                fifo=self.options.fifo,
            )
            self._closing = False
            self._connected = True

    def _open_clients(self) -> tuple[Any, Any]:
        import boto3
        from botocore.config import Config

        o = self.options
        where = o.endpoint_url or f"AWS region {o.region}"
        sqs: Any = None
        sns: Any = None
        try:
            session = boto3.session.Session(profile_name=o.profile, region_name=o.region)
            if session.get_credentials() is None:
                from botocore.exceptions import NoCredentialsError

                raise NoCredentialsError()
            config = Config(
                region_name=o.region,
                connect_timeout=o.connect_timeout,
                read_timeout=max(o.read_timeout, o.wait_time + 10.0),
                retries={"mode": "standard", "total_max_attempts": o.max_attempts},
                max_pool_connections=o.max_workers + 32,
                user_agent_extra="messagebus-sqs/0.1",
            )
            sqs = session.client("sqs", endpoint_url=o.endpoint_url, config=config)
            sns = session.client("sns", endpoint_url=o.endpoint_url, config=config)
            # One cheap authenticated call proves the endpoint is reachable and the
            # credentials are accepted before the bus reports itself started.
            sqs.list_queues(QueueNamePrefix=o.queue_prefix or "messagebus", MaxResults=1)
        except Exception as exc:
            for client in (sqs, sns):
                if client is not None:
                    with contextlib.suppress(Exception):
                        client.close()
            raise map_error(exc, ConnectError, f"connecting to SQS/SNS at {where}") from exc
        return sqs, sns

    async def close(self) -> None:
        """Stop every consumer (no grace: the bus stops them gracefully first), send pending
        acks, wait for polls still running (bounded by ``wait_time``; what they received is
        made visible again), then release the threads and clients. Idempotent."""
        if not self._connected or self._closing:
            return
        self._closing = True
        for consumer in list(self._consumers):
            await consumer.stop(0.0)
        polls = [c.poll_task for c in self._consumers if c.poll_task is not None and not c.poll_task.done()]
        polls += [t for t in self._draining if not t.done()]
        if polls:
            _, pending = await asyncio.wait(polls, timeout=self.options.wait_time + 5.0)
            for task in pending:
                task.cancel()
        for batcher in list(self._batchers.values()):
            await batcher.drain()
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)
        self._consumers.clear()
        self._batchers.clear()
        executor, self._executor = self._executor, None
        sqs, sns = self._sqs, self._sns
        self._sqs = self._sns = None
        self._topology = None
        self._connected = False
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        for client in (sqs, sns):
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()

    # -- plumbing ----------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run a blocking boto3 call on the transport's pool."""
        if self._executor is None:
            raise LifecycleError("the sqs transport is not connected; call connect() first")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def _require(self) -> Topology:
        if self._topology is None or self._closing:
            raise LifecycleError("the sqs transport is not connected; call connect() first")
        return self._topology

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _batcher(self, kind: str, target: str, logical: str | None = None) -> Batcher:
        """The batcher of one batch API (``send``, ``publish``, ``delete``, ``visibility``) on
        one queue URL / topic ARN. ``logical`` (send/publish) names the destination to declare
        again when the call finds it missing."""
        key = (kind, target)
        batcher = self._batchers.get(key)
        if batcher is not None:
            return batcher
        fifo = self.options.fifo
        op: Callable[[str, list[dict[str, Any]]], Any]
        error: type[TransportError]
        if kind == "send":
            op = lambda url, entries: self._sqs.send_message_batch(QueueUrl=url, Entries=entries)  # noqa: E731
            what, error, linger = f"SendMessageBatch to {target}", PublishError, 0.0
        elif kind == "publish":
            op = lambda arn, entries: self._sns.publish_batch(TopicArn=arn, PublishBatchRequestEntries=entries)  # noqa: E731
            what, error, linger = f"PublishBatch to {target}", PublishError, 0.0
        elif kind == "delete":
            op = lambda url, entries: self._sqs.delete_message_batch(QueueUrl=url, Entries=entries)  # noqa: E731
            what, error, linger = f"DeleteMessageBatch on {target}", ConsumeError, _ACK_LINGER
        else:
            op = lambda url, entries: self._sqs.change_message_visibility_batch(QueueUrl=url, Entries=entries)  # noqa: E731
            what, error, linger = f"ChangeMessageVisibilityBatch on {target}", ConsumeError, _ACK_LINGER

        async def call(entries: list[dict[str, Any]]) -> dict[str, Any]:
            if kind == "publish" and logical is not None:
                # A group of this process re-creating its queue (it found it gone) re-creates
                # the topic first and subscribes last; SNS drops what is published in between.
                await self._groups_redeclared(logical, start=False)
            try:
                return dict(await self._run(op, target, entries))
            except ClientError as exc:
                if logical is None or not is_missing(exc):
                    raise
                logger.warning("messagebus-sqs: %s: %s is gone; declaring it again", what, logical)
            # Nothing of a batch refused for a missing destination was stored: sending it
            # again once to the re-created queue/topic cannot duplicate anything.
            return dict(await self._run(op, await self._redeclare(kind, logical), entries))

        publishing = kind in ("send", "publish")
        batcher = Batcher(
            call,
            error=error,
            what=what,
            max_bytes=MAX_WIRE_SIZE if publishing else None,
            linger=linger,
            sequential=fifo and publishing,
        )
        self._batchers[key] = batcher
        return batcher

    async def _redeclare(self, kind: str, logical: str) -> str:
        """Forget the cached URL/ARN of a queue or topic found missing and declare it again
        (idempotent on AWS, so concurrent callers are fine). Returns the new URL/ARN."""
        topology = self._require()
        if kind == "publish":
            topology.forget_topic(logical)
            arn = await self._run(topology.topic_arn, logical)
            # A new topic has no subscriptions: groups consumed in this process subscribe
            # again before the batch is sent again, so it reaches them. Groups consumed
            # elsewhere do when their consumer finds its queue gone.
            await self._groups_redeclared(logical, start=True)
            return arn
        topology.forget_queue(logical)
        return await self._run(topology.queue_url, logical)

    async def _groups_redeclared(self, topic: str, *, start: bool) -> None:
        """Wait until the groups of ``topic`` consumed in this process have declared their
        queue and subscription again: every one (``start``), or those already doing so."""
        groups = [
            c.redeclare() if start else c.redeclaring
            for c in list(self._consumers)
            if c.source.kind is DestinationKind.TOPIC and c.source.name == topic
        ]
        pending = [g for g in groups if g is not None]
        if pending:
            await asyncio.gather(*(asyncio.shield(g) for g in pending))

    # -- publishing --------------------------------------------------------------------------

    def messaging_system_for(self, destination: Destination) -> str:
        """OpenTelemetry ``messaging.system`` for publishing to ``destination``: ``aws.sns``
        for a topic, ``aws_sqs`` for a queue (``messaging_system`` is the consume side's)."""
        return system_for(destination)

    def publish_attributes(self, destination: Destination) -> dict[str, AttributeValue]:
        """Telemetry attributes for publishing to ``destination`` (``messaging.system``
        ``aws.sns`` for topics, ``aws_sqs`` for queues, topic ARN / queue URL once known)."""
        topology = self._topology
        if topology is None:
            return publish_attributes(destination, queue_url=None, topic_arn=None)
        if destination.kind is DestinationKind.TOPIC and destination.group is None:
            return publish_attributes(destination, queue_url=None, topic_arn=topology.cached_topic(destination.name))
        return publish_attributes(destination, queue_url=topology.cached_queue(destination.name), topic_arn=None)

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """Publish ``messages`` and return once SQS/SNS confirmed each one.

        Topic messages go to the SNS topic (``PublishBatch``), queue messages to the SQS queue
        (``SendMessageBatch``); both are created on first use. Concurrent calls share batches
        of up to 10. Every message is checked first: :class:`MessageTooLarge` (body over
        :data:`MAX_BODY_SIZE` or body plus attributes over 256 KiB) and
        :class:`UnsupportedFeature` (a key on a standard destination with ``strict_keys``)
        are raised before anything is sent. Raises :class:`PublishError` for a message SQS/SNS
        did not confirm (others of the call may have been stored), :class:`TopologyError` if
        the destination cannot be created.
        """
        topology = self._require()
        fifo = self.options.fifo
        prepared: list[tuple[Destination, dict[str, Any], int, str | None]] = []
        for message in messages:
            body_len = len(message.body)
            if body_len > MAX_BODY_SIZE:
                raise MessageTooLarge(
                    f"message to {message.destination} has a {body_len}-byte body; the sqs transport "
                    f"allows {MAX_BODY_SIZE} bytes (SQS/SNS 256 KiB minus room for attributes). Nothing was sent"
                )
            if message.key is not None and not fifo and self.options.strict_keys:
                raise UnsupportedFeature(
                    f"message to {message.destination} has key {message.key!r} but the destination is a "
                    "standard (unordered) SQS/SNS destination; use sqs://?fifo=true for ordering by key, "
                    "or drop strict_keys=true to carry the key without ordering"
                )
            wire = encode_message(message.body, message.headers, message.key)
            if wire.size > MAX_WIRE_SIZE:
                raise MessageTooLarge(
                    f"message to {message.destination} is {wire.size} bytes with its attributes "
                    f"(base64 for binary bodies); SQS/SNS allow {MAX_WIRE_SIZE}. Nothing was sent"
                )
            is_topic = message.destination.kind is DestinationKind.TOPIC and message.destination.group is None
            entry: dict[str, Any] = {("Message" if is_topic else "MessageBody"): wire.body}
            if wire.attributes:
                entry["MessageAttributes"] = wire.attributes
            if fifo:
                # A message without an id (a foreign producer's) gets a fresh one: a constant
                # would make SQS drop every later message as a duplicate for five minutes.
                dedup = _fifo_id(message.id) if message.id else uuid.uuid4().hex
                entry["MessageGroupId"] = _fifo_id(message.key) if message.key is not None else dedup
                entry["MessageDeduplicationId"] = dedup
            prepared.append((message.destination, entry, wire.size, message.key))
        if not prepared:
            return
        targets: dict[Destination, tuple[str, str, str]] = {}
        for destination, *_ in prepared:
            if destination not in targets:
                targets[destination] = await self._resolve(topology, destination)
        futures = [
            self._batcher(*targets[dest]).add(entry, size, ordered=key is not None)
            for dest, entry, size, key in prepared
        ]
        results = await asyncio.gather(*futures, return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            first = failures[0]
            if len(failures) > 1 and isinstance(first, PublishError) and not isinstance(first, MessageTooLarge):
                raise PublishError(
                    f"{len(failures)} of {len(futures)} messages were not confirmed; first: {first}"
                ) from first
            raise first

    async def _resolve(self, topology: Topology, destination: Destination) -> tuple[str, str, str]:
        """The batch kind, target (topic ARN / queue URL) and logical name of ``destination``,
        declaring it on first use. Concurrent first uses share one declaration (single flight)."""
        is_topic = destination.kind is DestinationKind.TOPIC and destination.group is None
        logical = destination.name if is_topic else logical_queue(destination)
        kind = "publish" if is_topic else "send"
        known = topology.cached_topic(logical) if is_topic else topology.cached_queue(logical)
        if known is not None:
            return kind, known, logical
        key = (kind, logical)
        pending = self._resolving.get(key)
        if pending is None:
            declare = topology.topic_arn if is_topic else topology.queue_url
            pending = asyncio.ensure_future(self._run(declare, logical))
            self._resolving[key] = pending
            pending.add_done_callback(lambda _: self._resolving.pop(key, None))
        return kind, await asyncio.shield(pending), logical

    # -- consuming ---------------------------------------------------------------------------

    async def subscribe(self, source: Destination, handler: DeliveryHandler, *, concurrency: int) -> Consumer:
        """Declare ``source`` and start delivering its messages to ``handler``.

        A topic subscription (``source.group`` set) gets its SQS queue, subscribed to the SNS
        topic with raw delivery; a queue gets its SQS queue. At most ``concurrency`` handler
        calls run at once (messages with one key one after another); up to ``prefetch`` more
        are received ahead. Raises :class:`TopologyError` if declaring fails,
        :class:`ConfigurationError` for ``concurrency < 1``.
        """
        topology = self._require()
        if concurrency < 1:
            from messagebus import ConfigurationError

            raise ConfigurationError(f"concurrency must be >= 1, got {concurrency}")
        topic_arn: str | None = None
        if source.kind is DestinationKind.TOPIC:
            if not source.group:
                raise TopologyError(f"subscribing to topic {source.name!r} needs a group")
            queue_url, topic_arn = await self._run(topology.subscription_queue, source.name, source.group)
        else:
            queue_url = await self._run(topology.queue_url, source.name)
        consumer = _SqsConsumer(self, source, queue_url, topic_arn, handler, concurrency)
        self._consumers.add(consumer)
        consumer.start()
        return consumer

    def _forget(self, consumer: _SqsConsumer) -> None:
        if self._closing:
            return
        self._consumers.discard(consumer)
        poll = consumer.poll_task
        if poll is not None and not poll.done():
            # A receive still in flight: close() waits for it so what it got is released.
            self._draining.add(poll)
            poll.add_done_callback(self._draining.discard)


def _fifo_id(value: str) -> str:
    """A MessageGroupId / MessageDeduplicationId (1-128 printable ASCII) for any string."""
    if value and _ID_CHARS.fullmatch(value):
        return value
    return "h-" + hashlib.sha256(value.encode()).hexdigest()


class _SqsDelivery:
    """One received SQS message; settled once with :meth:`ack` or :meth:`retry`."""

    __slots__ = (
        "_attributes",
        "_body",
        "_consumer",
        "_headers",
        "_key",
        "_raw",
        "attempt_",
        "deadline",
        "extending",
        "finished",
        "settled",
    )

    def __init__(
        self,
        consumer: _SqsConsumer,
        raw: dict[str, Any],
        body: bytes,
        headers: dict[str, str],
        key: str | None,
        attributes: dict[str, AttributeValue],
        deadline: float,
    ) -> None:
        self._consumer = consumer
        self._raw = raw
        self._body = body
        self._headers = headers
        self._key = key
        self._attributes = attributes
        count = (raw.get("Attributes") or {}).get("ApproximateReceiveCount", "1")
        self.attempt_ = max(1, int(count)) if str(count).isdigit() else 1
        self.deadline = deadline
        self.extending: asyncio.Future[Any] | None = None
        self.settled = False
        self.finished = False

    @property
    def body(self) -> bytes:
        """The payload bytes (base64 bodies already decoded)."""
        return self._body

    @property
    def headers(self) -> Mapping[str, str]:
        """Every header: native attributes plus the unpacked ``messagebus-headers`` ones."""
        return self._headers

    @property
    def key(self) -> str | None:
        """The producer's key (carried as ``messagebus-key``)."""
        return self._key

    @property
    def attempt(self) -> int:
        """SQS ``ApproximateReceiveCount``: 1 on the first delivery."""
        return self.attempt_

    @property
    def raw(self) -> dict[str, Any]:
        """The SQS message dict as ``ReceiveMessage`` returned it."""
        return self._raw

    @property
    def receipt_handle(self) -> str:
        """The receipt handle of this receive."""
        return str(self._raw["ReceiptHandle"])

    @property
    def messaging_attributes(self) -> Mapping[str, AttributeValue]:
        """Telemetry attributes: queue URL, topic ARN, SQS message id, FIFO group."""
        return self._attributes

    async def ack(self) -> None:
        """Delete the message. The delete is queued and sent with other acks of this queue in
        one ``DeleteMessageBatch`` (within 5 ms, or at once when 10 are queued), so the handler's
        slot is free at once; :meth:`Consumer.stop` and :meth:`SqsTransport.close` wait until
        every queued delete was sent. If SQS refuses it (say the receipt handle expired) the
        failure is logged and the message comes back after its visibility timeout: at least
        once, never lost. Idempotent: a delivery already settled is left alone."""
        if self.settled:
            return
        self.settled = True
        self._consumer.delete(self)

    async def retry(self, delay: float, headers: Mapping[str, str]) -> None:
        """Make the message visible again after ``delay`` seconds (rounded up to whole seconds,
        at most 12 hours) with ``ChangeMessageVisibility``; the next delivery has attempt + 1.
        ``headers`` are carried to that redelivery when it happens in this process.
        A delivery already settled is left alone."""
        if self.settled:
            return
        self.settled = True
        self._consumer.remember(self, headers)
        seconds = min(_MAX_VISIBILITY, max(0, math.ceil(delay)))
        await self._consumer.change_visibility(self, seconds)


class _SqsConsumer:
    """Polls one SQS queue and feeds a WorkerPool; extends visibility of held messages."""

    def __init__(
        self,
        transport: SqsTransport,
        source: Destination,
        queue_url: str,
        topic_arn: str | None,
        handler: DeliveryHandler,
        concurrency: int,
    ) -> None:
        self._transport = transport
        self.source = source
        self.queue_url = queue_url
        self.topic_arn = topic_arn
        self._handler = handler
        self._options = transport.options
        self._pool = WorkerPool(self._handle, concurrency, ordered=True, name=str(source))
        self._max_held = concurrency + transport.options.prefetch
        self._held: set[_SqsDelivery] = set()
        self._deleting: set[_SqsDelivery] = set()
        self._space = asyncio.Event()
        self._stopping = asyncio.Event()
        self._stopped = False
        self._poll_executor = ThreadPoolExecutor(1, thread_name_prefix="messagebus-sqs-poll")
        self.poll_task: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._extra_headers: OrderedDict[str, dict[str, str]] = OrderedDict()
        self._deleter = transport._batcher("delete", queue_url)
        self._visibility = transport._batcher("visibility", queue_url)
        self._recreating: asyncio.Task[bool] | None = None

    def start(self) -> None:
        """Start the workers, the poll loop and the visibility heartbeat."""
        self._pool.start()
        loop = asyncio.get_running_loop()
        self.poll_task = loop.create_task(self._poll_loop(), name=f"messagebus-sqs-poll-{self.source}")
        self._heartbeat = loop.create_task(self._extend_loop(), name=f"messagebus-sqs-visibility-{self.source}")

    async def stop(self, grace: float) -> None:
        """Stop receiving, give in-flight handlers ``grace`` seconds, then make every message
        not settled visible again (visibility 0) so another consumer gets it at once.
        Idempotent. A receive still in flight finishes in the background and its messages are
        made visible again too; :meth:`SqsTransport.close` waits for that."""
        if self._stopped:
            return
        self._stopped = True
        self._stopping.set()
        self._space.set()
        await self._pool.stop(grace)
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        unsettled = [d for d in self._held if not d.settled]
        self._held.clear()
        await self._release(unsettled)
        await self._deleter.drain()
        await self._visibility.drain()
        if self.poll_task is not None and self.poll_task.done():
            self._poll_executor.shutdown(wait=False)
        self._transport._forget(self)

    # -- settling (called by deliveries) -----------------------------------------------------

    def delete(self, delivery: _SqsDelivery) -> None:
        # Until SQS confirmed the delete, the heartbeat keeps the message hidden: a delete
        # delayed by a slow endpoint must not let another consumer get it meanwhile.
        self._deleting.add(delivery)
        fut = self._deleter.add({"ReceiptHandle": delivery.receipt_handle})
        fut.add_done_callback(functools.partial(self._delete_done, delivery))

    def _delete_done(self, delivery: _SqsDelivery, fut: asyncio.Future[dict[str, Any]]) -> None:
        self._deleting.discard(delivery)
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None and self._queue_missing(exc) is None:
            logger.warning("messagebus-sqs: ack failed, the message will be redelivered: %s", exc)

    async def change_visibility(self, delivery: _SqsDelivery, seconds: int) -> None:
        await self._after_extension(delivery)
        await self._visibility.add({"ReceiptHandle": delivery.receipt_handle, "VisibilityTimeout": seconds})

    def remember(self, delivery: _SqsDelivery, headers: Mapping[str, str]) -> None:
        if not headers:
            return
        message_id = str(delivery.raw.get("MessageId", ""))
        self._extra_headers[message_id] = dict(headers)
        while len(self._extra_headers) > 10_000:
            self._extra_headers.popitem(last=False)

    async def _after_extension(self, delivery: _SqsDelivery) -> None:
        # A visibility extension still in flight could land after the settle call and undo
        # it (a retry delay overwritten, a released message hidden again): wait for it.
        pending = delivery.extending
        if pending is not None and not pending.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(pending)

    async def _release(self, deliveries: list[_SqsDelivery]) -> None:
        if not deliveries:
            return
        futures = []
        for d in deliveries:
            d.settled = True
            futures.append(self._visibility.add({"ReceiptHandle": d.receipt_handle, "VisibilityTimeout": 0}))
        results = await asyncio.gather(*futures, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed and self._queue_missing(failed[0]) is None:
            logger.warning(
                "messagebus-sqs: could not make %d unsettled messages of %s visible again (%s); "
                "they come back after the visibility timeout",
                len(failed),
                self.source,
                failed[0],
            )

    # -- a queue that vanished ---------------------------------------------------------------

    def _queue_missing(self, exc: BaseException) -> asyncio.Task[bool] | None:
        """If ``exc`` says this consumer's queue (or topic) is gone, start declaring it again
        (one re-declaration at a time) and return that task; else ``None``."""
        if not is_missing(exc) or self._stopped:
            return None
        if self.redeclaring is None:
            logger.warning("messagebus-sqs: the queue of %s is gone (%s); declaring it again", self.source, exc)
        return self.redeclare()

    @property
    def redeclaring(self) -> asyncio.Task[bool] | None:
        """The re-declaration of this consumer's queue in progress, if any."""
        task = self._recreating
        return task if task is not None and not task.done() else None

    def redeclare(self) -> asyncio.Task[bool]:
        """Declare this consumer's queue (and subscription) again, one re-declaration at a
        time: a call while one runs returns that one."""
        task = self.redeclaring
        if task is None:
            task = asyncio.get_running_loop().create_task(self._recreate())
            self._recreating = task
            self._transport._track(task)
        return task

    async def _recreate(self) -> bool:
        """Declare the queue again (for a group also the topic, the queue policy and the raw
        subscription). The messages that were in it are gone; receipt handles of messages
        held from it are void, so their acks fail and are only logged. Never raises."""
        source = self.source
        try:
            topology = self._transport._require()
            if source.kind is DestinationKind.TOPIC:
                assert source.group is not None  # checked by subscribe()
                topology.forget_topic(source.name)
                topology.forget_queue(logical_queue(source))
                url, arn = await self._transport._run(topology.subscription_queue, source.name, source.group)
                self.topic_arn = arn
            else:
                topology.forget_queue(source.name)
                url = await self._transport._run(topology.queue_url, source.name)
        except Exception as exc:
            err = map_error(exc, ConsumeError, f"declaring the queue of {source} again")
            logger.warning("messagebus-sqs: %s; trying again on the next receive", err)
            return False
        if url != self.queue_url:
            self.queue_url = url
            self._deleter = self._transport._batcher("delete", url)
            self._visibility = self._transport._batcher("visibility", url)
        return True

    # -- loops -------------------------------------------------------------------------------

    async def _handle(self, delivery: Delivery) -> None:
        assert isinstance(delivery, _SqsDelivery)
        try:
            await self._handler(delivery)
        finally:
            delivery.finished = True
            if not self._stopping.is_set():
                self._held.discard(delivery)
                if not delivery.settled:
                    # The handler returned without settling: hand the message back now rather
                    # than after the visibility timeout.
                    task = asyncio.get_running_loop().create_task(self._release([delivery]))
                    self._transport._track(task)
            elif delivery.settled:
                self._held.discard(delivery)
            self._space.set()

    def _receive(self, count: int) -> list[dict[str, Any]]:
        response = self._transport._sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=count,
            WaitTimeSeconds=self._options.wait_time,
            VisibilityTimeout=self._options.visibility_timeout,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["All"],
        )
        return list(response.get("Messages", []))

    async def _poll_loop(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = 0.0
        while not self._stopping.is_set():
            room = self._max_held - len(self._held)
            if room <= 0:
                self._space.clear()
                await self._space.wait()
                continue
            try:
                messages = await loop.run_in_executor(self._poll_executor, self._receive, min(10, room))
            except Exception as exc:
                backoff = min(5.0, backoff * 2 or 0.1)
                recreating = self._queue_missing(exc)
                if recreating is not None:
                    # Still wait the backoff after: a queue just created may not answer yet.
                    await asyncio.shield(recreating)
                else:
                    err = map_error(exc, ConsumeError, f"receiving from {self.queue_url}")
                    logger.warning("messagebus-sqs: %s; retrying in %.1fs", err, backoff)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), backoff)
                continue
            backoff = 0.0
            received_at = time.monotonic()
            deliveries = [self._delivery(m, received_at) for m in messages]
            if self._stopping.is_set():
                await self._release(deliveries)
                break
            for d in deliveries:
                self._held.add(d)
                self._pool.submit_nowait(d)
        self._poll_executor.shutdown(wait=False)

    def _delivery(self, message: dict[str, Any], received_at: float) -> _SqsDelivery:
        try:
            body, headers, key = decode_message(message)
        except DecodeError as exc:
            # Deliver what arrived so the bus dead-letters it, instead of looping on it here.
            logger.warning("messagebus-sqs: message %s: %s", message.get("MessageId"), exc)
            body, headers, key = str(message.get("Body", "")).encode(), {}, None
        extra = self._extra_headers.pop(str(message.get("MessageId", "")), None)
        if extra:
            headers = {**headers, **extra}
        attrs = consume_attributes(self.queue_url, message, self.topic_arn)
        deadline = received_at + self._options.visibility_timeout
        return _SqsDelivery(self, message, body, headers, key, attrs, deadline)

    async def _extend_loop(self) -> None:
        vt = self._options.visibility_timeout
        interval = max(0.25, vt / 4)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            candidates = [d for d in self._held if not d.settled]
            candidates += self._deleting
            due = [d for d in candidates if d.deadline - now < vt / 2]
            if not due:
                continue
            for d in due:
                d.deadline = now + vt
                fut = self._visibility.add({"ReceiptHandle": d.receipt_handle, "VisibilityTimeout": vt})
                fut.add_done_callback(functools.partial(self._extended, d))
                d.extending = fut

    def _extended(self, delivery: _SqsDelivery, fut: asyncio.Future[dict[str, Any]]) -> None:
        # Not awaited by the heartbeat, so a slow endpoint never delays the next round.
        if fut.cancelled():
            return
        exc = fut.exception()
        # A message settled meanwhile (deleted, released) may refuse the extension: fine.
        if exc is not None and self._queue_missing(exc) is None and not delivery.settled:
            logger.warning("messagebus-sqs: extending the visibility of a message of %s failed: %s", self.source, exc)
