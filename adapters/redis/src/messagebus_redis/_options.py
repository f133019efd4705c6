"""URL query options of the Redis transport, validated before any I/O."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field

from messagebus import InvalidOption, InvalidURL
from messagebus.transports import TransportOptions, TransportURL, parse_options

__all__ = ["RedisOptions", "load_options"]

#: ``start_from`` values: ``now`` (a new topic group sees messages published after it was
#: created), ``earliest`` (everything the stream still holds), or a stream id / a Unix time in
#: milliseconds (stream ids are times: ``1700000000000`` or ``1700000000000-0``).
_START = r"^(now|earliest|\d{1,15}(-\d{1,19})?)$"


class RedisOptions(TransportOptions):
    """Options of ``redis://`` and ``rediss://`` URLs (all optional; the README explains each).

    Immutable; validated by :func:`load_options`, which also checks the cross-field rules.
    """

    prefix: str = Field("mb:", max_length=100, pattern=r"^[A-Za-z0-9._:-]*$", description="prefix of every key")
    visibility_timeout: float = Field(
        30.0, ge=0.5, le=86_400, description="seconds a delivered, unsettled entry stays with its consumer"
    )
    prefetch: int = Field(100, ge=1, le=10_000, description="most entries a consumer holds, queued and running")
    block_time: float = Field(1.0, gt=0, le=60, description="seconds one XREADGROUP waits for new entries")
    socket_timeout: float = Field(10.0, gt=0, le=600, description="seconds to wait for a reply")
    connect_timeout: float = Field(10.0, gt=0, le=600, description="seconds connect() keeps trying")
    publish_timeout: float = Field(30.0, gt=0, le=3_600, description="seconds publish() retries through an outage")
    max_message_size: int = Field(1024 * 1024, ge=1, le=512 * 1024 * 1024, description="largest body in bytes")
    maxlen: int | None = Field(None, ge=0, description="keep about this many entries per topic stream")
    retention: float | None = Field(None, gt=0, description="seconds a topic stream keeps entries")
    start_from: str = Field("now", pattern=_START, description="where a new topic group starts")
    client_name: str = Field("messagebus", min_length=1, max_length=100, pattern=r"^[!-~]+$")
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_cert_reqs: Literal["required", "optional", "none"] = "required"

    def check(self, tls: bool) -> None:
        """Cross-field rules; raises ``ValueError`` with a message safe to show (no secrets)."""
        if self.block_time >= self.socket_timeout:
            raise ValueError("block_time must be lower than socket_timeout (a blocked read would time out)")
        if self.block_time >= self.visibility_timeout:
            raise ValueError("block_time must be lower than visibility_timeout")
        files = {"ssl_ca_certs": self.ssl_ca_certs, "ssl_certfile": self.ssl_certfile, "ssl_keyfile": self.ssl_keyfile}
        if not tls and any(files.values()):
            raise ValueError("ssl_* options need a rediss:// URL")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile go together (client certificate and its key)")
        for name, path in files.items():
            if path is not None and not os.path.isfile(path):
                raise ValueError(f"{name}={path!r} is not a readable file")


def load_options(url: TransportURL) -> tuple[int, RedisOptions]:
    """The database number (URL path ``/N``) and the options of ``url``. No I/O.

    Raises :class:`InvalidURL` (several hosts, a bad path) or :class:`InvalidOption` naming
    what is wrong and what is allowed. Never shows the password.
    """
    kind = url.scheme.partition("+")[2]
    if len(url.hosts) > 1 and not kind:
        raise InvalidURL(f"redis URL {url.render()!r} names several hosts; give one (or use redis+cluster://)")
    service, _, path = url.path.strip("/").rpartition("/") if kind == "sentinel" else ("", "", url.path.strip("/"))
    if kind == "sentinel" and not service:
        service, path = path, ""
    if kind == "sentinel" and not service:
        raise InvalidURL(f"redis URL {url.render()!r} needs the master's name: redis+sentinel://host:26379/mymaster/0")
    if path and not (path.isdigit() and int(path) < 100_000 and (kind != "cluster" or path == "0")):
        raise InvalidURL(f"redis URL {url.render()!r}: the path is the database number (0 on a cluster)")
    options = parse_options(url, RedisOptions)
    try:
        options.check(url.scheme == "rediss")
    except ValueError as exc:
        raise InvalidOption(f"{exc} in {url.render()!r}") from None
    return int(path or 0), options
