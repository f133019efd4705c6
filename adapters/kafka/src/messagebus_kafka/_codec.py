"""Headers and keys on the wire: CloudEvents Kafka binding (``ce_`` prefix), retry metadata."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from messagebus.transports import from_wire, headers

__all__ = ["CE_PREFIX", "DUE", "decode_headers", "encode_headers"]

CE_PREFIX = "ce_"
#: When a message in a retry topic becomes due (epoch milliseconds). Adapter-internal.
DUE = "messagebus-due"

_LOGICAL_CE = headers.CE_PREFIX
_N = len(_LOGICAL_CE)


def encode_headers(logical: Mapping[str, str]) -> list[tuple[str, bytes]]:
    """Logical headers -> Kafka record headers (``ce-x`` becomes ``ce_x``; values UTF-8)."""
    return [((CE_PREFIX + k[_N:]) if k.startswith(_LOGICAL_CE) else k, v.encode()) for k, v in logical.items()]


def decode_headers(wire: Sequence[tuple[str, bytes | None]]) -> dict[str, str]:
    """Kafka record headers -> logical headers. Undecodable bytes are replaced, never raised."""
    out: dict[str, str] = {}
    for k, v in wire:
        out[k] = "" if v is None else v.decode("utf-8", "replace")
    return from_wire(out, CE_PREFIX)
