"""URL and query options of the NATS transport, validated before any I/O."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field

from messagebus import InvalidOption, InvalidURL
from messagebus.transports import TransportOptions, TransportURL, parse_options

__all__ = ["SCHEMES", "NatsOptions", "load_options"]

SCHEMES = ("nats", "nats+tls")


class NatsOptions(TransportOptions):
    """Options of ``nats://`` URLs (all optional; the adapter README describes each one).
    Immutable; validated by :func:`load_options`."""

    prefix: str = Field(
        "", max_length=64, pattern=r"^[A-Za-z0-9_-]*$", description="prepended to every stream and subject name"
    )
    storage: Literal["file", "memory"] = Field("file", description="JetStream storage of the streams it creates")
    replicas: int = Field(1, ge=1, le=5, description="replicas of the streams it creates")
    retention: Literal["interest", "limits"] = Field(
        "interest", description="topic streams keep a message until every group acked it, or to max_age/max_msgs"
    )
    max_age: float | None = Field(None, gt=0, le=10 * 365 * 86_400, description="seconds a topic stream keeps one")
    max_msgs: int | None = Field(None, ge=1, description="most messages a topic stream keeps")
    ack_wait: float = Field(30.0, ge=1, le=43_200, description="seconds before an unacked delivery is redelivered")
    max_deliver: int = Field(-1, ge=-1, description="JetStream's delivery limit per message (-1: none)")
    start_from: str = Field("now", pattern=r"^(now|earliest|\d{1,15})$", description="now, earliest or Unix ms")
    pull_expires: float = Field(5.0, ge=0.1, le=300, description="seconds one pull request waits for messages")
    pattern_interval: float = Field(
        5.0, ge=0.1, le=3_600, description="seconds between two listings of a pattern subscription's topics"
    )
    publish_timeout: float = Field(10.0, gt=0, le=600, description="seconds to wait for JetStream's publish ack")
    connect_timeout: float = Field(5.0, gt=0, le=600, description="seconds per connection attempt")
    connect_retries: int = Field(3, ge=0, le=100, description="extra connection attempts before ConnectError")
    reconnect_wait: float = Field(0.5, gt=0, le=60, description="seconds between reconnection attempts")
    ping_interval: float = Field(20.0, gt=0, le=3_600, description="seconds between client pings")
    max_outstanding_pings: int = Field(2, ge=1, le=100, description="unanswered pings before reconnecting")
    # nats-server's default max_payload (1 MiB, body and headers) less 8 KiB for headers.
    max_message_size: int = Field(1024 * 1024 - 8192, ge=1, le=64 * 1024**2, description="largest body in bytes")
    name: str = Field("messagebus", min_length=1, max_length=200, description="client name shown by the server")
    token: str | None = Field(None, repr=False, description="authentication token")
    creds: str | None = Field(None, description="a .creds file (JWT and NKey seed)")
    tls_ca: str | None = Field(None, description="CA file for nats+tls://")
    tls_cert: str | None = Field(None, description="client certificate file for nats+tls://")
    tls_key: str | None = Field(None, description="client key file for nats+tls://")

    def check(self, scheme: str) -> None:
        """Cross-field rules; raises ``ValueError`` saying what is wrong."""
        for name in ("creds", "tls_ca", "tls_cert", "tls_key"):
            path = getattr(self, name)
            if path is not None and not os.path.isfile(path):
                raise ValueError(f"{name}={path!r} does not exist or is not a file")
        if scheme != "nats+tls" and (self.tls_ca or self.tls_cert or self.tls_key):
            raise ValueError("tls_ca, tls_cert and tls_key need a nats+tls:// URL")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")


def load_options(url: TransportURL) -> NatsOptions:
    """Validate ``url`` (hosts, no path) and its query into :class:`NatsOptions`.

    Raises :class:`InvalidURL` or :class:`InvalidOption` naming what is wrong and what is
    allowed; never shows the password or token.
    """
    if not url.hosts or any(not host for host, _ in url.hosts):
        raise InvalidURL(f"NATS URL {url.render()!r} names no server; expected nats://host:4222 or nats://h1,h2:4222")
    if url.path not in ("", "/"):
        raise InvalidURL(
            f"NATS URL {url.render()!r} has a path; NATS URLs have none (use ?prefix=... to keep names apart)"
        )
    options = parse_options(url, NatsOptions)
    try:
        options.check(url.scheme)
    except ValueError as exc:
        raise InvalidOption(f"{exc} in {url.render()!r}") from None
    return options
