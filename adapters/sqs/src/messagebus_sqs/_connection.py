"""The connection: boto3 clients, the thread pool their blocking calls run on (``max_workers``
threads), the long-poll threads of the consumers (:class:`Poller`), and the batch APIs.
botocore reconnects and retries each call itself, so there is no connection to supervise
beyond open and close."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeVar

from messagebus import ConnectError, ConsumeError, LifecycleError, MessageBusError, PublishError, TransportError
from messagebus.transports import Backoff, Batcher, BlockingWorker

from ._codec import MAX_WIRE_SIZE
from ._errors import CONNECTION_ERRORS, errors
from ._options import SqsOptions
from ._topology import Topology

__all__ = ["BatchKind", "Connection", "Entry", "Poller"]

logger = logging.getLogger("messagebus.sqs")

T = TypeVar("T")
Entry = dict[str, Any]
BatchKind = Literal["send", "publish", "delete", "visibility"]
Send = Callable[[list[Entry]], Awaitable[dict[str, Any]]]

_ACK_LINGER = 0.005
#: Server-side failed entries (throttling, internal errors) are sent again this many times.
_RETRIES = 3
# kind -> boto3 client, method, target parameter, entries parameter
_APIS: dict[str, tuple[str, str, str, str]] = {
    "send": ("sqs", "send_message_batch", "QueueUrl", "Entries"),
    "publish": ("sns", "publish_batch", "TopicArn", "PublishBatchRequestEntries"),
    "delete": ("sqs", "delete_message_batch", "QueueUrl", "Entries"),
    "visibility": ("sqs", "change_message_visibility_batch", "QueueUrl", "Entries"),
}


class Connection:
    """The boto3 SQS/SNS clients of one transport, their thread pool, the topology cache and
    the batchers of every batch API in use. :meth:`open` and :meth:`close` are idempotent;
    use from one event loop."""

    def __init__(self, options: SqsOptions) -> None:
        self.options = options
        self.sqs: Any = None
        self.sns: Any = None
        #: The topology cache (``None`` until :meth:`open`).
        self.topology: Topology | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._batchers: dict[tuple[str, str], Batcher[Entry, Entry]] = {}
        self._lock = asyncio.Lock()
        self._closing = False

    def require(self) -> Topology:
        """The topology; raises :class:`LifecycleError` before :meth:`open` or once closing."""
        if self.topology is None or self._closing:
            raise LifecycleError("the sqs transport is not connected; call connect() first")
        return self.topology

    async def open(self) -> None:
        """Create the clients and check that the endpoint answers and accepts the credentials
        (one ``ListQueues`` call). Raises :class:`ConnectError` saying what to fix."""
        async with self._lock:
            if self.topology is not None:
                return
            executor = ThreadPoolExecutor(self.options.max_workers, thread_name_prefix="messagebus-sqs")
            try:
                sqs, sns = await asyncio.get_running_loop().run_in_executor(executor, self._open_clients)
            except BaseException:
                executor.shutdown(wait=False, cancel_futures=True)
                raise
            o = self.options
            self._executor, self.sqs, self.sns, self._closing = executor, sqs, sns, False
            self.topology = Topology(sqs, sns, queue_prefix=o.queue_prefix, topic_prefix=o.topic_prefix, fifo=o.fifo)

    def _open_clients(self) -> tuple[Any, Any]:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import NoCredentialsError

        o = self.options
        clients: list[Any] = []
        try:
            session = boto3.session.Session(profile_name=o.profile, region_name=o.region)
            if session.get_credentials() is None:
                raise NoCredentialsError()
            config = Config(
                region_name=o.region,
                connect_timeout=o.connect_timeout,
                read_timeout=max(o.read_timeout, o.wait_time + 10.0),
                retries={"mode": "standard", "total_max_attempts": o.max_attempts},
                max_pool_connections=o.max_workers + 32,
                user_agent_extra="messagebus-sqs/0.1",
            )
            clients = [session.client(name, endpoint_url=o.endpoint_url, config=config) for name in ("sqs", "sns")]
            # One cheap authenticated call proves the endpoint is reachable and the
            # credentials are accepted before the bus reports itself started.
            clients[0].list_queues(QueueNamePrefix=o.queue_prefix or "messagebus", MaxResults=1)
        except Exception as exc:
            _close_clients(clients)
            where = o.endpoint_url or f"AWS region {o.region}"
            raise errors.map(exc, ConnectError, f"connecting to SQS/SNS at {where}") from exc
        return clients[0], clients[1]

    async def close(self) -> None:
        """Send every queued batch entry, then release the threads and clients. Does not wait
        for long polls still running: their :class:`Poller` hands back what they receive."""
        if self.topology is None or self._closing:
            return
        self._closing = True
        for batcher in list(self._batchers.values()):
            await batcher.drain()
        self._batchers.clear()
        executor, self._executor, self.topology = self._executor, None, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        _close_clients([self.sqs, self.sns])
        self.sqs = self.sns = None

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run a blocking boto3 call on the pool."""
        if self._executor is None:
            raise LifecycleError("the sqs transport is not connected; call connect() first")
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def request(self, kind: BatchKind, target: str, entries: list[Entry]) -> dict[str, Any]:
        """One batch API call of ``kind`` on ``target`` (queue URL / topic ARN)."""
        client, method, target_arg, entries_arg = _APIS[kind]
        call = getattr(self.sqs if client == "sqs" else self.sns, method)
        return dict(await self.run(call, **{target_arg: target, entries_arg: entries}))

    def batcher(self, kind: BatchKind, target: str, send: Send | None = None) -> Batcher[Entry, Entry]:
        """The batcher of one batch API on one queue URL / topic ARN, made on first use with
        ``send`` (default: :meth:`request`) as its call. Entries go without ``Id``; each
        future gets the entry's ``Successful`` item or the operation's messagebus error. A
        publishing batch is sent again while the endpoint cannot be reached, for up to
        ``publish_timeout``."""
        batcher = self._batchers.get((kind, target))
        if batcher is None:
            publishing = kind in ("send", "publish")
            operation = "".join(part.title() for part in _APIS[kind][1].split("_"))  # SendMessageBatch
            what = f"{operation} {'to' if publishing else 'on'} {target}"
            error = PublishError if publishing else ConsumeError
            send = send or functools.partial(self.request, kind, target)
            if publishing:
                send = functools.partial(self._through_outage, send, what)
            batcher = self._batchers[(kind, target)] = Batcher(
                functools.partial(_send_batch, send, what, error),
                max_entries=10,
                map_error=functools.partial(errors.map, default=error, what=what),
                max_bytes=MAX_WIRE_SIZE if publishing else None,
                linger=0.0 if publishing else _ACK_LINGER,
                sequential=self.options.fifo and publishing,
            )
        return batcher

    async def _through_outage(self, send: Send, what: str, entries: list[Entry]) -> dict[str, Any]:
        # An outage shorter than publish_timeout delays the publish, it does not fail it. A
        # batch cut off after SQS stored it is stored twice (at least once); FIFO
        # deduplication ids drop the copy.
        return await Backoff(0.1, 2.0).retry_for(
            self.options.publish_timeout,
            lambda _: send(entries),
            transient=lambda exc: isinstance(exc, CONNECTION_ERRORS),
            give_up=functools.partial(_batch_error, PublishError, what),
            log=logger,
            what=what,
        )


class Poller:
    """The long-poll thread of one consumer: ``ReceiveMessage`` calls on a
    :class:`~messagebus.transports.BlockingWorker`, so a poll still waiting never delays
    ``stop()``, ``close()`` or the interpreter's exit. boto3 cannot cancel a call in flight:
    what an abandoned poll returns is made visible again (``ChangeMessageVisibilityBatch`` to
    0) from the poll thread, so nothing it received waits out its visibility timeout. Only a
    process that exits while a poll is being answered leaves those messages hidden until
    their visibility timeout; they are redelivered then.
    """

    def __init__(self, client: Any, name: str) -> None:
        self._client = client
        self._worker = BlockingWorker(f"messagebus-sqs-poll-{name}")

    async def receive(self, **request: Any) -> list[Entry]:
        """``ReceiveMessage`` with ``request`` (``QueueUrl`` and the rest): its ``Messages``.
        Raises the native error. Cancelled, it returns at once (see the class)."""

        def poll() -> list[Entry]:
            messages: list[Entry] = self._client.receive_message(**request).get("Messages", [])
            return messages

        return await self._worker.call(poll, functools.partial(self._hand_back, request["QueueUrl"]))

    async def idle(self) -> None:
        """Return once the poll in flight (abandoned or not) and its hand-back are done."""
        await self._worker.call(lambda: None, lambda _: None)

    def close(self) -> None:
        """End the thread after its poll in flight and its hand-backs (not waited for)."""
        self._worker.close()

    def _hand_back(self, queue_url: str, messages: list[Entry]) -> None:
        if not messages:
            return
        entries = [
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0} for i, m in enumerate(messages)
        ]
        try:
            failed = self._client.change_message_visibility_batch(QueueUrl=queue_url, Entries=entries).get("Failed")
        except Exception as exc:
            failed = exc
        if failed:
            msg = "messages a poll abandoned at stop got from %s not all visible again (%s): back after their timeout"
            logger.warning(msg, queue_url, failed)


async def _send_batch(
    send: Send, what: str, error: type[TransportError], batch: list[Entry]
) -> list[Entry | BaseException]:
    """Send ``batch`` (numbered as the entries' ``Id``) and read the ``Successful`` / ``Failed``
    lists; entries that failed on the server side (``SenderFault`` false) go again."""
    results: list[Entry | BaseException | None] = [None] * len(batch)
    todo = list(range(len(batch)))
    backoff = Backoff(0.1, 0.4, jitter=0.0)
    for attempt in range(_RETRIES + 1):
        response = await send([{**batch[i], "Id": str(i)} for i in todo])
        for ok in response.get("Successful", []):
            results[int(ok["Id"])] = ok
        again = []
        for failed in response.get("Failed", []):
            i = int(failed["Id"])
            if not failed.get("SenderFault", True) and attempt < _RETRIES:
                again.append(i)
            else:
                code, message = failed.get("Code", "?"), failed.get("Message", "")
                results[i] = error(f"{what}: {code}: {message}".rstrip(": "))
        if not again:
            break
        todo = again
        logger.info("%s: retrying %d entries after a server-side failure", what, len(todo))
        await backoff.wait()
    return [error(f"{what}: the batch response did not mention this entry") if r is None else r for r in results]


def _batch_error(error: type[TransportError], what: str, exc: Exception, _: bool) -> BaseException:
    mapped = errors.map(exc, error, what)
    # Our own errors pass the map unchanged: a copy, as retry_for chains it to the original.
    return type(mapped)(str(mapped)) if mapped is exc and isinstance(mapped, MessageBusError) else mapped


def _close_clients(clients: list[Any]) -> None:
    for client in clients:
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
