"""Messages as rows: headers as a JSON object, the key in its own column.

The CloudEvents headers keep their canonical ``ce-`` names (this broker's binding uses the
same prefix as the core; a broker whose binding differs renames them with
``messagebus.transports.to_wire`` / ``from_wire``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from messagebus import DecodeError

__all__ = ["SkeletonMessage", "decode_headers", "encode_headers"]


@dataclass(frozen=True, slots=True)
class SkeletonMessage:
    """A received row: what ``Envelope.raw`` is on this transport. ``receipt`` is the lease
    of this receive; a settle with an older receipt does nothing."""

    id: int
    queue: str
    receipt: str
    deliveries: int


def encode_headers(headers: Mapping[str, str]) -> str:
    """The JSON text stored in the ``headers`` column."""
    return json.dumps(dict(headers), ensure_ascii=False, separators=(",", ":"))


def decode_headers(text: object) -> dict[str, str]:
    """Inverse of :func:`encode_headers`. Raises :class:`DecodeError` for anything that is not
    a JSON object of strings (a row written by a foreign producer)."""
    try:
        value = json.loads(text) if isinstance(text, str | bytes) else None
    except ValueError as exc:
        raise DecodeError(f"headers are not valid JSON: {exc}") from None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise DecodeError(f"headers must be a JSON object of strings, got {str(text)[:80]!r}")
    return value
