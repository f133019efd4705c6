"""The gRPC channels and asyncio clients of one transport: opened and checked by
``connect``, closed by ``close``.

Reconnecting is gRPC's own job: the channels retry a lost connection every 0.2-2 s (not
gRPC's default of up to two minutes), and every call made meanwhile fails or waits within
its own timeout or retry, so there is no reconnect loop here. Everything runs on the bus's
event loop (``grpc.aio``): no client thread, no blocking call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Any

import grpc  # type: ignore[import-untyped]
from google.pubsub_v1 import PublisherAsyncClient, SubscriberAsyncClient
from google.pubsub_v1.services.publisher.transports import PublisherGrpcAsyncIOTransport
from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcAsyncIOTransport

from messagebus import ConfigurationError, ConnectError, LifecycleError, MessageBusError

from ._errors import errors, transient_retry
from ._options import PubSubOptions
from ._topology import Topology

__all__ = ["Clients", "Connection"]

_API_HOST = "pubsub.googleapis.com:443"
_SCOPES = ("https://www.googleapis.com/auth/pubsub", "https://www.googleapis.com/auth/cloud-platform")
_CHANNEL_OPTIONS = [
    # Pub/Sub messages reach 10 MB; gRPC's default receive limit is 4 MB.
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_metadata_size", 4 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]


@dataclass(frozen=True, slots=True)
class Clients:
    """The open clients (publisher: topics and publishing; subscriber: subscriptions, pulls
    and acks) and the declarations made through them."""

    publisher: PublisherAsyncClient
    subscriber: SubscriberAsyncClient
    topology: Topology


class Connection:
    """Opens, checks and closes the clients of one transport. Used from one event loop."""

    def __init__(self, project: str, emulator_host: str | None, options: PubSubOptions) -> None:
        self.project = project
        self.emulator_host = emulator_host
        self.options = options
        self.clients: Clients | None = None
        self._lock: asyncio.Lock | None = None

    @property
    def where(self) -> str:
        """The endpoint, for error messages."""
        host = f"emulator {self.emulator_host}" if self.emulator_host else _API_HOST
        return f"{host} (project {self.project})"

    def require(self) -> Clients:
        """The open clients. Raises :class:`LifecycleError` before ``open`` and after ``close``."""
        clients = self.clients
        if clients is None:
            raise LifecycleError("the Pub/Sub transport is not connected; call connect() first")
        return clients

    async def open(self) -> None:
        """Create the clients and prove the endpoint, project and credentials work with one
        bounded call. Idempotent. Raises :class:`ConnectError` or :class:`ConfigurationError`."""
        self._lock = self._lock or asyncio.Lock()
        async with self._lock:
            if self.clients is not None:
                return
            timeout = self.options.connect_timeout
            try:
                clients = await self._create(timeout)
                self.clients = clients
                await asyncio.wait_for(
                    clients.publisher.list_topics(
                        request={"project": f"projects/{self.project}", "page_size": 1},
                        retry=transient_retry(timeout),
                        timeout=timeout,
                    ),
                    timeout + 1.0,
                )
            except BaseException as exc:
                await self.close()
                if isinstance(exc, MessageBusError | asyncio.CancelledError):
                    raise
                raise errors.map(exc, ConnectError, f"cannot connect to Pub/Sub at {self.where}") from exc

    async def _create(self, timeout: float) -> Clients:
        if self.emulator_host:
            pub_channel = grpc.aio.insecure_channel(self.emulator_host, options=_CHANNEL_OPTIONS)
            sub_channel = grpc.aio.insecure_channel(self.emulator_host, options=_CHANNEL_OPTIONS)
        else:
            # Application Default Credentials may probe the GCE metadata server: off the loop, bounded.
            credentials = await asyncio.wait_for(
                asyncio.to_thread(_load_credentials, self.options.credentials_file), timeout
            )
            kw: dict[str, Any] = {"credentials": credentials, "options": _CHANNEL_OPTIONS}
            pub_channel = PublisherGrpcAsyncIOTransport.create_channel(_API_HOST, **kw)
            sub_channel = SubscriberGrpcAsyncIOTransport.create_channel(_API_HOST, **kw)
        publisher = PublisherAsyncClient(transport=PublisherGrpcAsyncIOTransport(channel=pub_channel))
        subscriber = SubscriberAsyncClient(transport=SubscriberGrpcAsyncIOTransport(channel=sub_channel))
        topology = Topology(publisher, subscriber, self.options, self.where, self.emulator_host is not None)
        return Clients(publisher, subscriber, topology)

    async def close(self) -> None:
        """Close both channels. Idempotent; never raises for an already-broken connection."""
        clients, self.clients = self.clients, None
        if clients is not None:
            for client in (clients.publisher, clients.subscriber):
                with contextlib.suppress(Exception):
                    await client.transport.close()  # type: ignore[no-untyped-call]


def _load_credentials(path: str | None) -> Any:
    """Application Default Credentials, or service-account or authorized-user credentials from
    the JSON file ``path`` (the two kinds a user hands over deliberately; external-account
    configs are refused as unvetted input)."""
    import google.auth
    from google.oauth2 import credentials as user_credentials
    from google.oauth2 import service_account

    if path is None:
        credentials, _ = google.auth.default(scopes=_SCOPES)
        return credentials
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
        kind = info.get("type") if isinstance(info, dict) else None
        if kind == "service_account":
            return service_account.Credentials.from_service_account_info(info, scopes=_SCOPES)  # type: ignore[no-untyped-call]
        if kind == "authorized_user":
            return user_credentials.Credentials.from_authorized_user_info(info, scopes=_SCOPES)  # type: ignore[no-untyped-call]
    except Exception as exc:
        raise ConfigurationError(
            f"credentials_file {path!r} cannot be used: {type(exc).__name__}: {exc}; give a service-account or "
            "authorized-user JSON key file"
        ) from exc
    raise ConfigurationError(
        f"credentials_file {path!r} has type {kind!r}; expected a 'service_account' or 'authorized_user' JSON file"
    )
