"""Connection supervision: the producer and admin client of a transport, opened with back-off
within ``connect_timeout``, and the settings every aiokafka client of it shares. aiokafka
reconnects established clients by itself."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka import errors as kerr
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.helpers import create_ssl_context

from messagebus import ConfigurationError, ConnectError, LifecycleError
from messagebus.transports import Backoff, TransportURL

from ._errors import SASL_HINT, errors
from ._options import KafkaOptions
from ._topology import TopicAdmin

__all__ = ["Connection", "quietly"]

logger = logging.getLogger("messagebus.kafka")


class Connection:
    """The producer and admin client of one transport. Not thread-safe (one event loop);
    :meth:`open` and :meth:`close` are idempotent. Never puts the password in a message."""

    def __init__(self, url: TransportURL, options: KafkaOptions) -> None:
        self.options = options
        self.servers = [f"{h}:{p or 9092}" if ":" not in h else f"[{h}]:{p or 9092}" for h, p in url.hosts]
        self.producer: AIOKafkaProducer | None = None
        self.topics: TopicAdmin | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._lock = asyncio.Lock()

    def client_kwargs(self) -> dict[str, Any]:
        """Connection settings shared by the producer, consumers and admin client."""
        o = self.options
        kwargs: dict[str, Any] = {"bootstrap_servers": self.servers, "client_id": o.client_id}
        kwargs.update(request_timeout_ms=o.request_timeout_ms, security_protocol=o.effective_protocol)
        if o.sasl_username is not None:
            kwargs.update(sasl_mechanism=o.sasl_mechanism or "PLAIN", sasl_plain_username=o.sasl_username)
            kwargs["sasl_plain_password"] = o.sasl_password
        if o.uses_ssl:
            try:
                kwargs["ssl_context"] = create_ssl_context(
                    cafile=o.ssl_cafile, certfile=o.ssl_certfile, keyfile=o.ssl_keyfile
                )
            except (OSError, ssl.SSLError) as exc:
                raise ConfigurationError(
                    f"cannot load the Kafka TLS files (ssl_cafile/ssl_certfile/ssl_keyfile): {exc}"
                ) from exc
        return kwargs

    def connect_error(self, exc: BaseException, *, gave_up: bool = True) -> ConnectError:
        """Why the bootstrap servers could not be used (``gave_up``: after ``connect_timeout``)."""
        o = self.options
        what = f"cannot connect to Kafka bootstrap servers {','.join(self.servers)}"
        if gave_up:
            what += f" within {o.connect_timeout:g}s"
        if o.sasl_username is not None:
            # A listener without SASL, or wrong credentials, fail the handshake in many ways
            # (aiokafka's SCRAM code even with KeyError): say that SASL is in play.
            what += f" with SASL ({o.sasl_mechanism or 'PLAIN'}): {SASL_HINT}"
        error = errors.map(exc, ConnectError, what)
        return error if isinstance(error, ConnectError) else ConnectError(str(error))

    def require(self) -> tuple[AIOKafkaProducer, TopicAdmin]:
        """The producer and topic admin; raises :class:`LifecycleError` before :meth:`open`."""
        if self.producer is None or self.topics is None:
            raise LifecycleError("the Kafka transport is not connected; call connect() first")
        return self.producer, self.topics

    async def open(self) -> None:
        """Start the producer and the admin client, retrying with back-off for
        ``connect_timeout`` seconds; raises :class:`ConnectError` saying which servers were
        tried and why it failed (at once when retrying cannot help)."""
        async with self._lock:
            if self.producer is not None:
                return
            o = self.options
            kwargs = self.client_kwargs()

            async def start(deadline: float) -> tuple[AIOKafkaProducer, AIOKafkaAdminClient]:
                settings: dict[str, Any] = {"compression_type": None if o.compression == "none" else o.compression}
                settings.update(max_request_size=o.max_request_size, max_batch_size=o.max_batch_size)
                settings.update(linger_ms=o.linger_ms, enable_idempotence=o.idempotence, acks="all")
                producer = AIOKafkaProducer(**kwargs, **settings)
                admin = AIOKafkaAdminClient(**kwargs)
                try:
                    await asyncio.wait_for(producer.start(), max(deadline - time.monotonic(), 0.1))
                    await asyncio.wait_for(admin.start(), max(deadline - time.monotonic(), 1.0))
                except BaseException:
                    await quietly(producer.stop())
                    await quietly(admin.close())
                    raise
                return producer, admin

            def transient(exc: Exception) -> bool:
                # Broad on purpose: aiokafka's SASL code can fail with plain KeyError /
                # ValueError on an unexpected server answer; the caller gets ConnectError.
                refused = o.idempotence and isinstance(exc, kerr.UnknownError)  # InitProducerId refused
                sasl = isinstance(exc, kerr.UnsupportedSaslMechanismError | kerr.SaslAuthenticationFailed)
                return isinstance(exc, kerr.KafkaError | OSError | TimeoutError) and not sasl and not refused

            give_up = lambda exc, retried: self.connect_error(exc, gave_up=retried)  # noqa: E731
            producer, admin = await Backoff(0.1, 1.0).retry_for(
                o.connect_timeout, start, transient=transient, give_up=give_up, log=logger, what="connecting to Kafka"
            )
            self.producer, self._admin = producer, admin
            self.topics = TopicAdmin(admin, partitions=o.partitions, replication_factor=o.replication_factor)

    async def close(self) -> None:
        """Flush and stop the producer, close the admin client. Idempotent."""
        producer, admin = self.producer, self._admin
        self.producer = self._admin = self.topics = None
        if producer is not None:
            await quietly(asyncio.wait_for(producer.stop(), self.options.request_timeout_ms / 1000))
        if admin is not None:
            await quietly(admin.close())


async def quietly(step: Awaitable[Any]) -> None:
    """Await a cleanup step, logging instead of raising (close and stop paths). Raises
    :class:`asyncio.CancelledError` only when the calling task itself is being cancelled."""
    try:
        await step
    except asyncio.CancelledError:
        # aiokafka's consumer.stop() re-raises the cancellation of its own fetch task when that
        # fetch was backing off a cut connection (aiokafka#647): not a cancellation of ours.
        if (task := asyncio.current_task()) is None or task.cancelling():
            raise
        logger.debug("cleanup step ended by a cancellation inside aiokafka")
    except Exception as exc:
        logger.debug("cleanup step failed: %r", exc)
