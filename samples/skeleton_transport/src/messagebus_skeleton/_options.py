"""URL and query options of the skeleton transport, validated before any I/O."""

from __future__ import annotations

from pydantic import Field

from messagebus import InvalidURL
from messagebus.transports import TransportOptions, TransportURL, parse_options

__all__ = ["SCHEME", "SkeletonOptions", "parse_url"]

SCHEME = "skeleton"


class SkeletonOptions(TransportOptions):
    """Query options of ``skeleton:///path/to/broker.db?...``. Immutable.

    Unknown names and ill-typed values are refused by :func:`parse_url` with the list of
    valid options (``TransportOptions`` forbids extra fields; :func:`parse_options` words it).
    """

    visibility_timeout: float = Field(
        30.0, gt=0, le=43_200, description="seconds a received message stays hidden from other consumers"
    )
    poll_interval: float = Field(0.05, gt=0, le=60, description="seconds between polls of an empty queue")
    max_message_size: int = Field(1024 * 1024, ge=1, le=1024**3, description="largest body in bytes")
    busy_timeout: float = Field(5.0, gt=0, le=600, description="seconds to wait for another writer's lock")
    connect_retries: int = Field(3, ge=0, le=100, description="extra attempts to open the file before ConnectError")


def parse_url(url: TransportURL) -> tuple[str, SkeletonOptions]:
    """The database path and the options of ``url``. No I/O.

    Raises :class:`InvalidURL` (a host, credentials, no path) or
    :class:`InvalidOption` (bad query), with the URL rendered without its password.
    """
    if url.hosts or url.username is not None or url.password is not None:
        # url.render() masks a password; never format the raw URL string into a message.
        raise InvalidURL(
            f"transport URL {url.render()!r}: the skeleton broker is a local file and takes no host or "
            f"credentials; write {SCHEME}:///absolute/path/to/broker.db"
        )
    if not url.path or url.path == "/" or url.path.endswith("/"):
        raise InvalidURL(f"transport URL {url.render()!r} names no file; write {SCHEME}:///absolute/path/to/broker.db")
    return url.path, parse_options(url, SkeletonOptions)
