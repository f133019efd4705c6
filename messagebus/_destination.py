"""Logical destination names: validation, dead-letter names, and physical-name sanitising."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from enum import StrEnum

from ._errors import InvalidDestination

__all__ = ["Destination", "DestinationKind", "dead_letter_name", "sanitize_name", "validate_name"]

_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9._-]{0,198}[A-Za-z0-9_])?")
MAX_NAME_LENGTH = 200


class DestinationKind(StrEnum):
    """Whether a destination is a fan-out topic or a point-to-point queue."""

    TOPIC = "topic"
    QUEUE = "queue"


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a message goes or comes from: a topic (with a subscription group) or a queue.

    ``group`` is ``None`` for queues and for publishing to a topic. Immutable and hashable.
    """

    kind: DestinationKind
    name: str
    group: str | None = None

    @property
    def dead_letter_queue(self) -> str:
        """The logical dead-letter queue: ``<topic>.<group>.dlq`` or ``<queue>.dlq``."""
        return dead_letter_name(self.name, self.group)

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
