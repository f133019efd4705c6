"""Connection supervision: the redis-py client of a transport (a pool of connections that
reopen on the next command after a failure; a ``RedisCluster`` for ``redis+cluster://``, a
Sentinel-discovered master for ``redis+sentinel://``), opened with back-off within
``connect_timeout``, and the dedicated clients consumers block on.

redis-py's own command retries are off: a retried XREADGROUP whose reply was lost would
strand entries, and a retried publish would be invisible to the caller's deadline. Each
caller retries with :class:`~messagebus.transports.Backoff` where that is safe.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import redis.asyncio as aredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from messagebus import ConnectError, LifecycleError
from messagebus.transports import Backoff, TransportURL, describe_error

from ._errors import ERRORS, is_transient
from ._options import RedisOptions

__all__ = ["Connection"]

logger = logging.getLogger("messagebus.redis")


class Connection:
    """The client of one transport. Not thread-safe (one event loop); :meth:`open` and
    :meth:`close` are idempotent. Never puts the password in a message or log line."""

    def __init__(self, url: TransportURL, db: int, options: RedisOptions) -> None:
        self.options = options
        self.address = ",".join(f"{h}:{p}" for h, p in url.hosts) or "127.0.0.1:6379"
        self.address += f"/{db}"
        self.client: aredis.Redis | None = None
        self.kind = url.scheme.partition("+")[2]  # "", "cluster" or "sentinel"
        self._nodes = [(h or "127.0.0.1", p or (26379 if self.kind == "sentinel" else 6379)) for h, p in url.hosts]
        self._service = url.path.strip("/").partition("/")[0]
        self._lock = asyncio.Lock()
        o = options
        self._kwargs: dict[str, Any] = {
            "host": url.host or "127.0.0.1",
            "port": url.port or 6379,
            "db": db,
            "username": url.username,
            "password": url.password,
            "socket_timeout": o.socket_timeout,
            "socket_connect_timeout": min(o.socket_timeout, o.connect_timeout),
            "socket_keepalive": True,
            "retry": Retry(NoBackoff(), 0),
            "client_name": o.client_name,
        }
        if url.scheme == "rediss":
            self._kwargs.update(
                ssl=True,
                ssl_ca_certs=o.ssl_ca_certs,
                ssl_certfile=o.ssl_certfile,
                ssl_keyfile=o.ssl_keyfile,
                ssl_cert_reqs=o.ssl_cert_reqs,
            )

    def require(self) -> aredis.Redis:
        """The client; raises :class:`LifecycleError` before :meth:`open` or after :meth:`close`."""
        if self.client is None:
            raise LifecycleError("the Redis transport is not connected; call connect() first")
        return self.client

    def dedicated(self, name: str) -> aredis.Redis:
        """A client of its own (a consumer's blocking reads; one connection outside a cluster),
        named ``name`` on the server so that it can be found and unblocked."""
        self.require()
        return self._new(client_name=name, single_connection_client=True)

    def _new(self, **extra: Any) -> aredis.Redis:
        kwargs = {**self._kwargs, **extra}
        if self.kind == "cluster":
            for key in ("host", "port", "db", "single_connection_client"):
                kwargs.pop(key, None)
            nodes = [ClusterNode(h, p) for h, p in self._nodes]
            return RedisCluster(startup_nodes=nodes, **kwargs)  # type: ignore[return-value]
        if self.kind == "sentinel":
            for key in ("host", "port", "single_connection_client"):
                kwargs.pop(key, None)
            # The URL's credentials are the master's; the sentinels are asked without any.
            sentinel = Sentinel(self._nodes, sentinel_kwargs={"socket_timeout": kwargs["socket_timeout"]})  # type: ignore[no-untyped-call]
            master: aredis.Redis = sentinel.master_for(self._service, **kwargs)
            return master
        return aredis.Redis(**kwargs)

    async def open(self) -> None:
        """PING until it answers, retrying transient failures with back-off for
        ``connect_timeout`` seconds; raises :class:`ConnectError` saying where and why (at once
        for refused credentials)."""
        async with self._lock:
            if self.client is not None:
                return
            client = self._new()
            deadline = time.monotonic() + self.options.connect_timeout
            backoff = Backoff(0.1, 1.0)
            while True:
                try:
                    await client.ping()
                    break
                except Exception as exc:
                    delay = backoff.next()
                    if not is_transient(exc) or time.monotonic() + delay >= deadline:
                        await client.aclose()
                        what = f"cannot connect to Redis at {self.address}"
                        raise ERRORS.map(exc, ConnectError, what) from exc
                    logger.debug("connecting to Redis at %s failed (%s); retrying", self.address, describe_error(exc))
                    await asyncio.sleep(delay)
            self.client = client

    async def close(self) -> None:
        """Close every connection of the pool. Idempotent."""
        client, self.client = self.client, None
        if client is not None:
            try:
                await client.aclose()
            except Exception as exc:
                logger.debug("closing the Redis client failed: %s", describe_error(exc))
