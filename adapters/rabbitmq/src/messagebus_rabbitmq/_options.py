"""URL query options of the RabbitMQ transport, validated before any I/O."""

from __future__ import annotations

import os
import re

from pydantic import Field, field_validator

from messagebus.transports import TransportOptions

__all__ = ["RabbitMQOptions"]


class RabbitMQOptions(TransportOptions):
    """Query options of an ``amqp://`` / ``amqps://`` URL (see the adapter README). Immutable."""

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
    # RabbitMQ 4's default max_message_size (3.x allowed 128 MiB); 512 MiB is its ceiling.
    max_message_size: int = Field(16 * 1024 * 1024, ge=1, le=512 * 1024 * 1024)
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    verify: bool = True
    # Base URL of the management HTTP API (checked by RabbitMQTransport.load_options).
    management_url: str | None = None
    #: Opt-in history: each topic's messages are kept this long in a RabbitMQ stream
    #: (``x-max-age``), which ``subscribe(start_from=...)`` reads when it creates a group.
    history: str | None = Field(None, description="max age of a topic's history: 7D, 12h, 30m, 1Y ...")

    @field_validator("history")
    @classmethod
    def _max_age(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[1-9][0-9]*[YMDhms]", value):
            raise ValueError("expected a number and a unit Y, M, D, h, m or s (RabbitMQ's x-max-age), e.g. 7D or 12h")
        return value

    @field_validator("cafile", "certfile", "keyfile")
    @classmethod
    def _file_exists(cls, value: str | None) -> str | None:
        # A stat call, not network I/O: a typo in a path should fail at from_url, not at connect.
        if value is not None and not os.path.isfile(value):
            raise ValueError(f"file {value!r} does not exist or is not a regular file")
        return value
