"""Where a new subscription group starts reading: ``subscribe(..., start_from=...)``.

A group created with ``start_from="earliest"`` first gets every message its broker still
retains for the topic; with a :class:`~datetime.datetime`, those published at or after it. A
broker seeks coarsely (Kafka by record time, RabbitMQ streams by chunk, Redis by id
millisecond), so the exact cut is made here, once for every transport: a delivery stamped
(``ce-time``) before the time is acked unhandled. ``start_from`` is applied when the group is
created; for a group that exists it is ignored and :func:`log_ignored` says so.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Literal, TypeAlias

from . import _headers as h
from ._destination import Destination
from ._errors import ConfigurationError

__all__ = ["StartFrom", "Position", "log_ignored", "parse_position", "position", "stamped_before"]

logger = logging.getLogger("messagebus")

#: What ``subscribe(start_from=...)`` takes: ``"latest"`` (the default: messages published
#: after the group was created), ``"earliest"`` (everything the broker retains), or an aware
#: ``datetime`` (what was published at or after it).
StartFrom: TypeAlias = Literal["earliest", "latest"] | datetime

#: A new group's start as a :class:`Destination` carries it: ``None`` for latest (the
#: transport's default, which Redis and NATS let a URL option change), ``"earliest"``, or an
#: aware UTC ``datetime``.
Position: TypeAlias = Literal["earliest"] | datetime | None


def position(value: object, what: str) -> Position:
    """Check a ``start_from`` argument and return its :data:`Position`. Pure.

    Raises :class:`ConfigurationError` naming ``what`` for anything but ``"earliest"``,
    ``"latest"`` or a timezone-aware ``datetime`` (a naive one is refused: whose clock?)."""
    if value == "latest":
        return None
    if value == "earliest":
        return "earliest"
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ConfigurationError(
                f"start_from for {what} is a naive datetime ({value.isoformat()}); give it a timezone, "
                "e.g. datetime(2026, 1, 1, tzinfo=UTC)"
            )
        return value.astimezone(UTC)
    raise ConfigurationError(
        f"start_from for {what} must be 'latest', 'earliest' or a timezone-aware datetime, got {value!r}"
    )


def parse_position(text: str) -> Position:
    """A :data:`Position` from command-line text: ``earliest``, ``latest``, an ISO 8601 time
    (UTC when it names no zone), or a span back from now: ``90s``, ``15m``, ``2h``, ``7d``.
    Raises :class:`ConfigurationError` saying what is allowed."""
    text = text.strip()
    if text in ("earliest", "latest"):
        return position(text, "--from")
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units and text[:-1].isdigit():
        return datetime.fromtimestamp(datetime.now(UTC).timestamp() - int(text[:-1]) * units[text[-1]], UTC)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigurationError(
            f"--from {text!r} is not earliest, latest, an ISO 8601 time (2026-11-29T08:00:00Z) "
            "or a span back from now (90s, 15m, 2h, 7d)"
        ) from None
    return position(moment if moment.tzinfo else moment.replace(tzinfo=UTC), "--from")


def stamped_before(headers: Mapping[str, str], since: datetime) -> bool:
    """Whether a delivery's ``ce-time`` is before ``since`` (so a group started at ``since``
    skips it). A message with no readable time is not: it is delivered. Pure."""
    moment = h.produced_at(headers)
    if moment is None:
        return False
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment < since


def log_ignored(source: Destination, system: str) -> None:
    """Say (INFO) that ``source`` already existed, so its ``start_from`` was not applied. For
    adapters: call it when the broker reports that the group existed before this subscribe."""
    if source.start_from is not None:
        logger.info(
            "%s group %r of %r already exists: start_from=%s ignored (it applies when a group is created; "
            "use a new group name to read history)",
            system,
            source.group,
            source.name,
            source.start_from if isinstance(source.start_from, str) else source.start_from.isoformat(),
        )
