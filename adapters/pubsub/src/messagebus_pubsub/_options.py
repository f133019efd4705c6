"""Options of the Pub/Sub transport (the URL query) and the project and emulator a URL names,
validated before any I/O."""

from __future__ import annotations

import os
import re
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, Field

from messagebus import InvalidOption, InvalidURL
from messagebus.transports import TransportOptions, TransportURL

__all__ = ["PubSubOptions", "emulator_of", "project_of"]

#: Environment variable Google's clients read to find the emulator; honoured here too.
EMULATOR_ENV = "PUBSUB_EMULATOR_HOST"

# Google Cloud project ids: 6-30 characters, lowercase letters, digits and hyphens, starting
# with a letter and not ending with a hyphen.
_PROJECT = re.compile(r"[a-z][a-z0-9-]{4,28}[a-z0-9]")
# The emulator takes any project id (it checks none); these are the characters a resource
# name segment and a URL host can both carry.
_EMULATOR_PROJECT = re.compile(r"[A-Za-z0-9._~+-]{1,100}")
_HOST_PORT = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})")
_SPAN = re.compile(r"(\d{1,9})([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
#: Pub/Sub's limits of a topic's message retention, in seconds: 10 minutes to 31 days.
MIN_RETENTION, MAX_RETENTION = 600, 31 * 86400


def _host_port(value: str | None) -> str | None:
    """``value`` if it is ``host:port`` (``None`` if empty); raises ``ValueError``."""
    if not value:
        return None
    match = _HOST_PORT.fullmatch(value)
    if match is None or not 0 < int(match.group(1)) < 65536:
        raise ValueError("expected host:port such as 127.0.0.1:8085")
    return value


def _retention(value: object) -> int | None:
    """Seconds of ``value`` (``7d``, ``12h``, ``90m``, ``600s`` or plain seconds; ``None`` if
    empty) within Pub/Sub's limits; raises ``ValueError``."""
    if value is None or value == "":
        return None
    match = _SPAN.fullmatch(str(value).strip().lower())
    seconds = int(match.group(1)) * _UNITS[match.group(2)] if match else 0
    if not MIN_RETENTION <= seconds <= MAX_RETENTION:
        raise ValueError("expected a span from 10m to 31d (Pub/Sub's limits), such as 7d, 12h, 90m or 3600s")
    return seconds


class PubSubOptions(TransportOptions):
    """Options of the Pub/Sub transport: the query of a ``pubsub://PROJECT?...`` URL, or given
    to :class:`PubSubTransport` directly (immutable; invalid values raise ``InvalidOption``).

    - ``emulator_host``: ``host:port`` of a Pub/Sub emulator (plaintext, no credentials);
      defaults to ``$PUBSUB_EMULATOR_HOST``.
    - ``credentials_file``: a service-account (or other) credentials JSON file; default:
      Application Default Credentials.
    - ``ack_deadline``: seconds (10-600) a delivered message stays leased before Pub/Sub
      redelivers it if this process dies; leases are extended while handlers run.
    - ``max_messages``: flow control, the most messages leased at once per consumer
      (default: ``concurrency + 100``; also capped at 100 MiB).
    - ``ordering``: use ordering keys (ordered publisher and ordered subscriptions).
    - ``connect_timeout``: seconds ``connect()`` and declarations may take before failing.
    - ``publish_timeout``: seconds a publish may wait for the broker's confirmation.
    - ``batch_max_messages`` / ``batch_max_latency``: the publisher's batching.
    - ``topic_retention``: how long Pub/Sub keeps a topic's messages (``7d``, ``12h``, ``90m``,
      ``600s``; 10m to 31d), set on the topics this transport declares (an existing topic's
      shorter or missing retention is raised to it, never lowered). It turns on history:
      ``subscribe(start_from=...)``. Default: none (no history).
    """

    emulator_host: Annotated[str | None, AfterValidator(_host_port)] = None
    credentials_file: str | None = Field(default=None, min_length=1)
    ack_deadline: int = Field(default=60, ge=10, le=600)
    max_messages: int | None = Field(default=None, ge=1, le=100_000)
    ordering: bool = True
    connect_timeout: float = Field(default=10.0, gt=0, le=600)
    publish_timeout: float = Field(default=60.0, gt=0, le=3600)
    batch_max_messages: int = Field(default=100, ge=1, le=1000)
    batch_max_latency: float = Field(default=0.01, ge=0, le=10)
    topic_retention: Annotated[int | None, BeforeValidator(_retention)] = None


def project_of(url: TransportURL) -> str:
    """The Google Cloud project id a ``pubsub://PROJECT`` URL names, validated without I/O.

    A real project id follows Google's rule (6-30 lowercase letters, digits, hyphens); with an
    emulator (``emulator_host`` in the URL, or ``$PUBSUB_EMULATOR_HOST``) any id the emulator
    takes is accepted, such as ``pubsub://p1?emulator_host=...``. Raises :class:`InvalidURL`
    for a missing or malformed project id, a port, user info or a path (the scheme is checked
    by the transport).
    """
    if url.username is not None or url.password is not None:
        raise InvalidURL(
            f"pubsub:// URLs carry no user or password ({url.render()!r}); "
            "use credentials_file=... or Application Default Credentials"
        )
    if len(url.hosts) != 1 or not url.host:
        raise InvalidURL(
            f"pubsub:// URL {url.render()!r} must name exactly one Google Cloud project: pubsub://my-project"
        )
    if url.port is not None:
        raise InvalidURL(
            f"pubsub:// URL {url.render()!r} names a port; the host is the project id. "
            "Point at an emulator with ?emulator_host=HOST:PORT"
        )
    if url.path not in ("", "/"):
        raise InvalidURL(f"pubsub:// URL {url.render()!r} has a path {url.path!r}; expected pubsub://my-project")
    if _PROJECT.fullmatch(url.host) is None:
        if _emulated(url):
            if _EMULATOR_PROJECT.fullmatch(url.host) is None:
                raise InvalidURL(
                    f"invalid project id {url.host!r} in {url.render()!r}: the emulator takes any id of letters, "
                    "digits, '.', '_', '~', '+' or '-'"
                )
            return url.host
        raise InvalidURL(
            f"invalid Google Cloud project id {url.host!r} in {url.render()!r}: use 6-30 lowercase letters, "
            "digits or hyphens, starting with a letter and not ending with a hyphen (an emulator, named by "
            f"?emulator_host= or ${EMULATOR_ENV}, takes any id)"
        )
    return url.host


def _emulated(url: TransportURL) -> bool:
    """Whether ``url`` talks to an emulator: ``emulator_host`` in its query, or
    ``$PUBSUB_EMULATOR_HOST`` set and no ``credentials_file`` (the rule of :func:`emulator_of`)."""
    if url.query.get("emulator_host"):
        return True
    return bool(os.environ.get(EMULATOR_ENV, "").strip()) and not url.query.get("credentials_file")


def emulator_of(options: PubSubOptions, url: TransportURL) -> str | None:
    """The emulator to use: ``emulator_host``, else ``$PUBSUB_EMULATOR_HOST`` unless a
    ``credentials_file`` asks for the real service. Raises :class:`InvalidOption`."""
    emulator = options.emulator_host
    if emulator is not None and options.credentials_file is not None:
        raise InvalidOption(
            f"credentials_file and an emulator ({emulator}) exclude each other in {url.render()!r}: "
            "the emulator takes no credentials"
        )
    env = os.environ.get(EMULATOR_ENV, "").strip()
    if emulator is None and options.credentials_file is None and env:
        try:
            emulator = _host_port(env)
        except ValueError:
            raise InvalidOption(
                f"environment variable {EMULATOR_ENV}={env!r} is not host:port such as 127.0.0.1:8085"
            ) from None
    return emulator
