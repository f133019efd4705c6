"""URL options of the ``sqs://`` transport, validated before any I/O."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from messagebus import ConfigurationError, InvalidOption, InvalidURL
from messagebus.transports import TransportOptions, TransportURL, parse_options

__all__ = ["SqsOptions", "load_options"]

_PREFIX = re.compile(r"[A-Za-z0-9_-]{0,40}")
_REGION = re.compile(r"[a-z]{2}(-[a-z0-9]+)+-\d+")


class SqsOptions(TransportOptions):
    """Query options of ``sqs://?region=...``; see the adapter README for each one.

    Immutable. ``region`` falls back to the AWS configuration chain (``AWS_REGION``,
    ``AWS_DEFAULT_REGION``, the profile's ``region``) when the URL does not name one.
    """

    region: str | None = None
    endpoint_url: str | None = None
    profile: str | None = None
    #: Seconds a received message stays hidden; extended while its handler runs.
    visibility_timeout: int = Field(default=30, ge=1, le=43200)
    #: Long-poll seconds of ReceiveMessage (0 = short polling).
    wait_time: int = Field(default=20, ge=0, le=20)
    queue_prefix: str = ""
    topic_prefix: str = ""
    #: Make every topic and queue FIFO (``.fifo``): ordering per key via MessageGroupId.
    fifo: bool = False
    #: Raise UnsupportedFeature for a keyed message to a standard (non-FIFO) destination.
    strict_keys: bool = False
    #: Threads for boto3 calls (publish, ack, visibility); each consumer adds one poll thread.
    max_workers: int = Field(default=8, ge=1, le=256)
    #: Messages received ahead of the handlers, per consumer, on top of its concurrency.
    prefetch: int = Field(default=10, ge=0, le=100)
    #: Seconds to wait for a TCP connection / a response (beyond the long poll).
    connect_timeout: float = Field(default=5.0, gt=0, le=300)
    read_timeout: float = Field(default=30.0, gt=0, le=900)
    #: Seconds a publish may wait for an unreachable endpoint before PublishError.
    publish_timeout: float = Field(default=30.0, gt=0, le=3600)
    #: botocore attempts per call for transient failures (throttling, dropped connections).
    max_attempts: int = Field(default=5, ge=1, le=20)

    @field_validator("region")
    @classmethod
    def _check_region(cls, value: str | None) -> str | None:
        if value is not None and _REGION.fullmatch(value) is None:
            raise ValueError("expected an AWS region name such as us-east-1 or eu-west-1")
        return value

    @field_validator("endpoint_url")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("expected an http:// or https:// URL such as http://127.0.0.1:5000")
        if parts.username or parts.password:
            raise ValueError("must not contain credentials; use the AWS credential chain")
        return value.rstrip("/")

    @field_validator("queue_prefix", "topic_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if _PREFIX.fullmatch(value) is None:
            raise ValueError("use at most 40 letters, digits, '-' or '_'")
        return value


def load_options(url: TransportURL) -> SqsOptions:
    """Validate an ``sqs://`` URL (no host, no path) into :class:`SqsOptions`.

    Raises :class:`InvalidURL`, :class:`InvalidOption` or :class:`ConfigurationError` (no
    region anywhere) without network I/O; only the local AWS config files are read.
    """
    if url.hosts or url.username is not None or url.password is not None:
        raise InvalidURL(
            f"sqs:// URLs take no host or credentials ({url.render()!r}); put the endpoint in "
            "?endpoint_url=http://host:port and credentials in the AWS credential chain"
        )
    if url.path not in ("", "/"):
        raise InvalidURL(f"sqs:// URLs take no path, got {url.path!r}; use ?queue_prefix= / ?topic_prefix=")
    options = parse_options(url, SqsOptions)
    if options.region is None:
        region = _configured_region(options.profile)
        if region is None:
            raise ConfigurationError(
                "no AWS region for the sqs transport: add ?region=<name> to the URL (for example "
                "sqs://?region=eu-west-1) or set AWS_REGION / AWS_DEFAULT_REGION or a profile region"
            )
        options = options.model_copy(update={"region": region})
    return options


def _configured_region(profile: str | None) -> str | None:
    """The region of the normal AWS configuration chain, reading only local files and env."""
    import botocore.exceptions
    import botocore.session

    try:
        session = botocore.session.Session(profile=profile)
        region = session.get_config_variable("region")
    except botocore.exceptions.ProfileNotFound as exc:
        raise InvalidOption(f"option 'profile'={profile!r}: no such profile in the AWS config files") from exc
    return region if isinstance(region, str) and region else None
