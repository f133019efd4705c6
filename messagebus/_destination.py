"""Logical destination names: validation, dead-letter names, and physical-name sanitising."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from ._errors import InvalidDestination

if TYPE_CHECKING:
    from ._history import Position

__all__ = [
    "Destination",
    "DestinationKind",
    "dead_letter_name",
    "matches_pattern",
    "sanitize_name",
    "validate_name",
    "validate_pattern",
]

_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9._-]{0,198}[A-Za-z0-9_])?")
MAX_NAME_LENGTH = 200
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")


class DestinationKind(StrEnum):
    """Whether a destination is a fan-out topic or a point-to-point queue."""

    TOPIC = "topic"
    QUEUE = "queue"


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a message goes or comes from: a topic (with a subscription group) or a queue.

    ``group`` is ``None`` for queues and for publishing to a topic. A subscription's
    ``name`` may be a pattern (:attr:`is_pattern`: ``*`` one dot-separated segment, ``#``
    any number of them); ``filter`` holds the header equalities a subscription's messages
    must match (sorted pairs; empty: every message); ``start_from`` is where a subscription
    group starts when the broker creates it (``None``: the transport's default, the latest
    message; ``"earliest"``; an aware UTC ``datetime``; see ``messagebus._history``).
    Immutable and hashable.
    """

    kind: DestinationKind
    name: str
    group: str | None = None
    filter: tuple[tuple[str, str], ...] = ()
    start_from: Position = None

    @property
    def is_pattern(self) -> bool:
        """Whether ``name`` is a wildcard pattern (a subscription to many topics)."""
        return "*" in self.name or "#" in self.name

    @property
    def dead_letter_queue(self) -> str:
        """The logical dead-letter queue: ``<topic>.<group>.dlq`` or ``<queue>.dlq``; a
        pattern's wildcards are spelled ``_star_`` and ``_hash_`` there (a legal name)."""
        name = self.name.replace("*", "_star_").replace("#", "_hash_") if self.is_pattern else self.name
        return dead_letter_name(name, self.group)

    def __str__(self) -> str:
        return f"{self.name} (group {self.group})" if self.group else self.name


def validate_name(name: object, what: str = "destination") -> str:
    """Return ``name`` if it is a legal logical name, else raise :class:`InvalidDestination`.

    Legal: 1-200 characters of letters, digits, ``.``, ``-`` and ``_``, not starting or ending
    with ``.`` or ``-``. Adapters map these names to each broker's own rules.
    """
    if not isinstance(name, str):
        raise InvalidDestination(f"{what} name must be a str, got {type(name).__name__}")
    if not name:
        raise InvalidDestination(f"{what} name must not be empty")
    if _NAME.fullmatch(name) is None:
        raise InvalidDestination(
            f"illegal {what} name {name!r}: use 1-{MAX_NAME_LENGTH} letters, digits, '.', '-' or '_', "
            "not starting or ending with '.' or '-'"
        )
    return name


def validate_pattern(pattern: object, what: str = "topic") -> str:
    """Return ``pattern`` if it is a legal topic name or wildcard pattern, else raise
    :class:`InvalidDestination`. A pattern is a legal name whose dot-separated segments may
    also be ``*`` (exactly one segment) or ``#`` (zero or more segments)."""
    if not isinstance(pattern, str) or ("*" not in pattern and "#" not in pattern):
        return validate_name(pattern, what)
    segments = pattern.split(".")
    for segment in segments:
        if segment in ("*", "#"):
            continue
        if not segment or _SEGMENT.fullmatch(segment) is None:
            raise InvalidDestination(
                f"illegal {what} pattern {pattern!r}: each dot-separated segment must be '*' (one segment), "
                "'#' (any number of segments) or letters, digits, '-' and '_'"
            )
    if len(pattern) > MAX_NAME_LENGTH:
        raise InvalidDestination(f"{what} pattern {pattern!r} is longer than {MAX_NAME_LENGTH} characters")
    return pattern


def matches_pattern(pattern: str, topic: str) -> bool:
    """Whether ``topic`` matches ``pattern`` (``*`` one segment, ``#`` zero or more), as
    AMQP topic bindings match routing keys. Pure."""
    return _matches(pattern.split("."), topic.split("."))


def _matches(pattern: list[str], topic: list[str]) -> bool:
    if not pattern:
        return not topic
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_matches(rest, topic[i:]) for i in range(len(topic) + 1))
    if not topic:
        return False
    return (head == "*" or head == topic[0]) and _matches(rest, topic[1:])


def dead_letter_name(name: str, group: str | None) -> str:
    """The logical dead-letter queue name for a subscription (``group`` set) or a queue."""
    return f"{name}.{group}.dlq" if group else f"{name}.dlq"


def sanitize_name(name: str, *, max_length: int, allowed: str = r"A-Za-z0-9_-", replacement: str = "-") -> str:
    """Map a logical name to a broker's physical rules, deterministically.

    Characters outside ``allowed`` (a regex character-class body) become ``replacement``.
    A name that had to change, or is longer than ``max_length``, gets a short hash of the
    original (cut to fit), so two logical names never map to one physical name: ``a.b``
    and ``a-b`` stay apart. Pure and thread-safe.
    """
    cleaned = re.sub(f"[^{allowed}]", replacement, name)
    if cleaned == name and len(name) <= max_length:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{cleaned[: max_length - 9]}{replacement}{digest}"
