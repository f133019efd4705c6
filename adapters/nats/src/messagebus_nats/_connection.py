"""Connection supervision: one nats-py client per transport, opened with bounded retries.

nats-py reconnects an established connection by itself (forever, every ``reconnect_wait``
seconds) and subscribes its subscriptions again; the consumers are told through
:meth:`Connection.on_reconnect` so that they ask for messages again at once.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext

from messagebus import ConfigurationError, ConnectError, LifecycleError
from messagebus.transports import Backoff, TransportURL, describe_error

from ._errors import ERRORS, is_fatal
from ._options import NatsOptions
from ._topology import Topology

__all__ = ["Connection", "quietly"]

logger = logging.getLogger("messagebus.nats")


class Connection:
    """The client, JetStream context and topology of one transport. Not thread-safe (one
    event loop); :meth:`open` and :meth:`close` are idempotent. Never puts a password or
    token in a message or log line."""

    def __init__(self, url: TransportURL, options: NatsOptions) -> None:
        self.url = url
        self.options = options
        scheme = "tls" if url.scheme == "nats+tls" else "nats"
        self.servers = [f"{scheme}://{h if ':' not in h else f'[{h}]'}:{p or 4222}" for h, p in url.hosts]
        self.client: Client | None = None
        self.js: JetStreamContext | None = None
        self.topology: Topology | None = None
        self.max_payload = options.max_message_size
        self._listeners: list[Callable[[], None]] = []
        self._lock = asyncio.Lock()

    def require(self) -> tuple[JetStreamContext, Topology]:
        """The JetStream context and topology; raises :class:`LifecycleError` before :meth:`open`."""
        if self.js is None or self.topology is None:
            raise LifecycleError("the NATS transport is not connected; call connect() first")
        return self.js, self.topology

    def on_reconnect(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener()`` after each reconnection; returns the function that removes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def _kwargs(self) -> dict[str, Any]:
        o, url = self.options, self.url
        kwargs: dict[str, Any] = {
            "servers": self.servers,
            "name": o.name,
            "connect_timeout": o.connect_timeout,
            "reconnect_time_wait": o.reconnect_wait,
            "max_reconnect_attempts": -1,  # a transport never gives up on its server by itself
            "ping_interval": o.ping_interval,
            "max_outstanding_pings": o.max_outstanding_pings,
            "error_cb": self._on_error,
            "disconnected_cb": self._on_disconnect,
            "reconnected_cb": self._on_reconnect,
        }
        if url.password is not None:
            kwargs |= {"user": url.username or "", "password": url.password}
        elif url.username:
            kwargs["token"] = url.username  # nats://token@host, as NATS URLs write it
        if o.token is not None:
            kwargs["token"] = o.token
        if o.creds is not None:
            kwargs["user_credentials"] = o.creds
        if url.scheme == "nats+tls":
            try:
                context = ssl.create_default_context(cafile=o.tls_ca)
                if o.tls_cert and o.tls_key:
                    context.load_cert_chain(o.tls_cert, o.tls_key)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigurationError(f"cannot load the NATS TLS files (tls_ca/tls_cert/tls_key): {exc}") from exc
            kwargs["tls"] = context
        return kwargs

    async def open(self) -> None:
        """Connect, retrying ``connect_retries`` times with back-off; raises
        :class:`ConnectError` saying which servers were tried and why (at once for refused
        credentials or TLS)."""
        async with self._lock:
            if self.client is not None:
                return
            kwargs = self._kwargs()
            backoff = Backoff(0.1, 2.0)
            attempts = self.options.connect_retries + 1
            for attempt in range(1, attempts + 1):
                client = Client()
                try:
                    # nats-py retries the first connect too while reconnects are allowed: bound it.
                    await asyncio.wait_for(
                        client.connect(**kwargs, allow_reconnect=False), self.options.connect_timeout + 1
                    )
                    break
                except Exception as exc:
                    await quietly(client.close())
                    if attempt == attempts or is_fatal(exc):
                        what = f"cannot connect to NATS at {', '.join(self.servers)} after {attempt} attempt(s)"
                        raise ERRORS.map(exc, ConnectError, what) from exc
                    logger.warning("connecting to NATS failed (%s); attempt %d", describe_error(exc), attempt)
                    await backoff.wait()
            # Reconnects are on from here: an established transport rides out outages.
            client.options["allow_reconnect"] = True
            self.client = client
            self.max_payload = client.max_payload
            self.js = client.jetstream(timeout=self.options.publish_timeout)
            self.topology = Topology(client, self.js, self.options)

    async def _on_error(self, exc: Exception) -> None:
        logger.debug("nats client error: %s", describe_error(exc))

    async def _on_disconnect(self) -> None:
        if self.client is None:
            return  # our own close
        logger.warning("disconnected from NATS at %s; reconnecting", ", ".join(self.servers))

    async def _on_reconnect(self) -> None:
        logger.info("reconnected to NATS")
        if self.topology is not None:
            self.topology.known.clear()  # a restarted server may have lost memory streams
        for listener in list(self._listeners):
            listener()

    async def close(self) -> None:
        """Flush what was sent (acks included), then close. Idempotent."""
        client = self.client
        self.client = self.js = self.topology = None
        if client is None:
            return
        if client.is_connected:
            await quietly(client.flush(timeout=max(1, int(self.options.publish_timeout))))
        await quietly(client.close())


async def quietly(step: Any) -> None:
    """Await a clean-up or settle step, logging instead of raising."""
    try:
        await step
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        logger.debug("cleanup step failed: %s", describe_error(exc))
