"""Connection supervision: one AMQP connection per transport, opened with a bounded retry,
re-opened with back-off after a drop, and consumers' channels restored on the new one (not
aio-pika's robust connection, which is known to come back with zero consumers)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
import aiormq

from messagebus import ConnectError, LifecycleError, MessageBusError, TopologyError
from messagebus.transports import Backoff, TransportURL

from ._errors import error_map, is_transient_connect_error
from ._options import RabbitMQOptions

__all__ = ["CLOSE_TIMEOUT", "Connection", "close_quietly", "open_channel"]

logger = logging.getLogger("messagebus.rabbitmq")

#: Seconds allowed for closing a channel/connection or cancelling a consumer: a stalled
#: network must not hang stop() or close().
CLOSE_TIMEOUT = 5.0

Opener = Callable[[aiormq.abc.AbstractConnection], Awaitable[None]]


async def open_channel(
    raw: aiormq.abc.AbstractConnection, *, confirms: bool, **kwargs: Any
) -> aiormq.abc.AbstractChannel:
    """Open a channel on ``raw`` (publisher confirms on or off). Every channel of the adapter
    is opened here. Raises what aiormq raises (mapped by the caller)."""
    # An unbounded frame buffer: with aiormq's default of 10, a channel closed after a
    # cancelled basic.consume still receives deliveries until the broker's close-ok, nobody
    # reads them, and its full buffer blocks the connection's one reader: every channel of
    # the connection hangs until the heartbeat gives up (minutes). Deliveries stay bounded by
    # the prefetch, confirms by the publishes in flight.
    return await raw.channel(publisher_confirms=confirms, frame_buffer_size=0, **kwargs)


async def close_quietly(closable: Any) -> None:
    """Close a channel or connection within :data:`CLOSE_TIMEOUT`; one already gone is fine."""
    if closable is not None and not getattr(closable, "is_closed", False):
        with contextlib.suppress(Exception):
            await asyncio.wait_for(closable.close(), CLOSE_TIMEOUT)


class Connection:
    """The supervised connection of one transport (``raw``: the last aiormq connection
    opened). A drop starts a reconnect loop with back-off that runs until it succeeds or
    :meth:`close` is called; :meth:`wait_ready` waits it out. Not thread-safe."""

    def __init__(self, url: TransportURL, options: RabbitMQOptions) -> None:
        self.url = url
        self.options = options
        # The URL path without its slash: amqp://h, amqp://h/ and amqp://h/%2F are the vhost "/".
        self.vhost = url.path.removeprefix("/") or "/"
        self.raw: aiormq.abc.AbstractConnection | None = None
        self.closed = False
        self._conn: aio_pika.abc.AbstractConnection | None = None
        self._ready = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._errors = error_map(url.username or "guest", self.vhost)

    @property
    def ready(self) -> bool:
        """True while the connection is open."""
        return self._ready.is_set() and not self.closed

    @functools.cached_property
    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of an ``amqps://`` URL (``None`` for ``amqp://``), also used for an
        ``https`` management API. Raises :class:`ConnectError` when a TLS file is unreadable."""
        # Built at the first connect (not cached when it raises): an unreadable file fails there.
        opts = self.options
        if self.url.scheme != "amqps":
            return None
        try:
            ctx = ssl.create_default_context(cafile=opts.cafile)
            if opts.certfile:
                ctx.load_cert_chain(opts.certfile, opts.keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(f"cannot load the TLS files for {self.url.render()}: {exc}") from exc
        if not opts.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    async def _open_once(self) -> aio_pika.abc.AbstractConnection:
        """Try every host of the URL once; raise the last error."""
        opts, url = self.options, self.url
        context = self.ssl_context
        last: Exception | None = None
        for host, port in url.hosts:
            try:
                return await aio_pika.connect(
                    host=host,
                    port=port or (5672 if context is None else 5671),
                    login=url.username if url.username is not None else "guest",
                    password=url.password if url.password is not None else "guest",
                    virtualhost=self.vhost,
                    ssl=context is not None,
                    ssl_context=context,
                    timeout=opts.connect_timeout,
                    client_properties={"connection_name": opts.connection_name},
                    heartbeat=opts.heartbeat,
                )
            except Exception as exc:
                last = exc
                if not is_transient_connect_error(exc):
                    break
        assert last is not None
        raise last

    async def open(self) -> None:
        """Open the connection, retrying a refused/unreachable broker ``connect_retries``
        times with back-off. Idempotent. Raises :class:`ConnectError` (URL redacted) at once
        for wrong credentials, an unknown vhost or a TLS failure, after the bounded retry
        for an unreachable broker; :class:`LifecycleError` after :meth:`close`."""
        if self.closed:
            raise LifecycleError("this RabbitMQ transport was closed; create a new one")
        if self._conn is None:
            await self._open(self.options.connect_retries + 1, Backoff(0.2, 2.0))

    async def _open(self, attempts: int | None, backoff: Backoff) -> None:
        # attempts=None (a reconnect): try until closed.
        await close_quietly(self._conn)  # the dropped one, if any
        attempt = 0
        while not self.closed:
            attempt += 1
            try:
                conn = await self._open_once()
            except MessageBusError:
                raise
            except Exception as exc:
                if attempts is not None and (attempt == attempts or not is_transient_connect_error(exc)):
                    what = f"cannot connect to RabbitMQ at {self.url} after {attempt} attempt(s)"
                    raise self._errors.map(exc, ConnectError, what) from exc
                delay = backoff.next()
                logger.warning("connecting to RabbitMQ at %s failed (%s); next try in %.2fs", self.url, exc, delay)
                await asyncio.sleep(delay)
                continue
            if self.closed:
                await close_quietly(conn)
                return
            assert conn.transport is not None
            raw = self.raw = conn.transport.connection
            self._conn = conn
            raw.closing.add_done_callback(functools.partial(self._lost, raw))
            self._ready.set()
            if attempts is None:
                logger.info("reconnected to RabbitMQ at %s", self.url)
            return

    def _lost(self, raw: aiormq.abc.AbstractConnection, _closing: object = None) -> None:
        if raw is not self.raw or self.closed:
            return
        self._ready.clear()
        logger.warning("connection to RabbitMQ at %s lost; reconnecting", self.url)
        if self._supervisor is None or self._supervisor.done():
            self._supervisor = asyncio.get_running_loop().create_task(
                self._open(None, Backoff(0.05, 5.0)), name="messagebus-rabbitmq-reconnect"
            )

    async def wait_ready(self, timeout: float | None) -> aiormq.abc.AbstractConnection:
        """The open connection, waiting up to ``timeout`` seconds for a reconnect. Raises
        :class:`LifecycleError` before :meth:`connect` or after :meth:`close`,
        ``TimeoutError`` when the reconnect takes longer."""
        if self.closed:
            raise LifecycleError("the RabbitMQ transport is closed")
        if self._conn is None:
            raise LifecycleError("the RabbitMQ transport is not connected; call connect() (Bus.start) first")
        if not self._ready.is_set():
            await asyncio.wait_for(self._ready.wait(), timeout)
            if self.closed:
                raise LifecycleError("the RabbitMQ transport is closed")
        raw = self.raw
        assert raw is not None
        return raw

    async def restore(self, open_: Opener, what: str, stop: asyncio.Event, timeout: float | None = None) -> bool:
        """Run ``open_(connection)`` (open a channel, declare, consume) until it succeeds,
        waiting for the connection and backing off between failures; return ``False`` when
        ``stop`` was set or the connection closed first.

        With ``timeout`` (a first start) a :class:`TopologyError` is raised at once and any
        other failure becomes :class:`ConnectError` once ``timeout`` seconds have passed;
        without (a restore after a drop) failures are logged and retried until it works."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        backoff = Backoff(0.05, 5.0)
        while not stop.is_set():
            try:
                raw = await self.wait_ready(None if deadline is None else max(deadline - loop.time(), 0.001))
                if stop.is_set():
                    break
                await open_(raw)
                return True
            except LifecycleError:
                if deadline is not None:
                    raise
                break
            except Exception as exc:
                if deadline is not None and isinstance(exc, MessageBusError):
                    raise
                if deadline is not None and loop.time() >= deadline:
                    raise self._errors.map(exc, ConnectError, f"cannot start consuming {what} on RabbitMQ") from exc
                level = logging.ERROR if isinstance(exc, TopologyError) else logging.WARNING
                logger.log(level, "restoring the consumer of %s failed: %s", what, exc)
            await backoff.wait(stop)
        return False

    async def close(self) -> None:
        """Stop reconnecting and close the connection. Idempotent; never raises."""
        self.closed = True
        self._ready.set()  # wake waiters so they see the closed state
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
        conn, self._conn, self.raw = self._conn, None, None
        await close_quietly(conn)
