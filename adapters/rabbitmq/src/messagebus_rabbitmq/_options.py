"""URL query options of the RabbitMQ transport, validated before any I/O."""

from __future__ import annotations

import os

from pydantic import Field, field_validator

from messagebus import InvalidOption, InvalidURL
from messagebus.transports import TransportOptions, TransportURL, parse_options

__all__ = ["DEFAULT_MAX_MESSAGE_SIZE", "RabbitMQOptions", "parse_url", "vhost_of"]

#: RabbitMQ 4's default ``max_message_size`` (16 MiB); 3.x allowed 128 MiB by default.
DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024
#: The broker's hard ceiling for ``max_message_size`` (512 MiB).
BROKER_MAX_MESSAGE_SIZE = 512 * 1024 * 1024

_TLS_OPTIONS = ("cafile", "certfile", "keyfile", "verify")


class RabbitMQOptions(TransportOptions):
    """Query options of an ``amqp://`` / ``amqps://`` URL (see the adapter README).

    Immutable. Unknown names and ill-typed values are rejected by :func:`parse_url` with
    the list of valid options.
    """

    heartbeat: int = Field(60, ge=0, le=3600, description="AMQP heartbeat in seconds; 0 disables it")
    prefetch: int | None = Field(
        None, ge=1, le=65535, description="per-consumer prefetch count; default: the handler's concurrency"
    )
    connection_name: str = Field("messagebus", min_length=1, max_length=255)
    connect_timeout: float = Field(10.0, gt=0, le=300, description="seconds per connection attempt")
    connect_retries: int = Field(3, ge=0, le=100, description="extra connection attempts before ConnectError")
    publish_timeout: float = Field(
        30.0, gt=0, le=3600, description="seconds publish() may take, reconnecting included, before PublishError"
    )
    max_message_size: int = Field(DEFAULT_MAX_MESSAGE_SIZE, ge=1, le=BROKER_MAX_MESSAGE_SIZE)
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    verify: bool = True

    @field_validator("cafile", "certfile", "keyfile")
    @classmethod
    def _file_exists(cls, value: str | None) -> str | None:
        # A stat call, not network I/O: a typo in a path should fail at from_url, not at connect.
        if value is not None and not os.path.isfile(value):
            raise ValueError(f"file {value!r} does not exist or is not a regular file")
        return value


def parse_url(url: TransportURL) -> RabbitMQOptions:
    """Validate ``url`` for this transport; return its options.

    Raises :class:`InvalidURL` (no host) or :class:`InvalidOption` (bad query), always with
    the password redacted. Performs no network I/O.
    """
    if not url.hosts:
        raise InvalidURL(f"transport URL {url.render()!r} names no host; expected amqp://user:password@host:5672/vhost")
    if url.scheme == "amqp":
        given = [name for name in _TLS_OPTIONS if name in url.query]
        if given:
            raise InvalidOption(
                f"option(s) {', '.join(given)} in {url.render()!r} only apply to TLS connections; use an amqps:// URL"
            )
    options = parse_options(url, RabbitMQOptions)
    if options.keyfile is not None and options.certfile is None:
        raise InvalidOption(
            f"option 'keyfile' is given without 'certfile' in {url.render()!r}; a client key needs its "
            "certificate (certfile=...)"
        )
    return options


def vhost_of(url: TransportURL) -> str:
    """The virtual host named by the URL path: ``/`` for an empty path, else the path without
    its leading slash (``amqp://h/%2F`` is the vhost ``/``, ``amqp://h/prod`` is ``prod``)."""
    path = url.path
    vhost = path[1:] if path.startswith("/") else path
    return vhost or "/"
