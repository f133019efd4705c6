"""Headers and keys on the wire: CloudEvents Kafka binding (``ce_`` prefix), retry metadata."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from messagebus.transports import headers

__all__ = ["CE_PREFIX", "DUE", "decode_headers", "encode_headers"]

CE_PREFIX = "ce_"
#: When a message in a retry topic becomes due (epoch milliseconds). Adapter-internal.
DUE = "messagebus-due"

_LOGICAL_CE = headers.CE_PREFIX
_N = len(_LOGICAL_CE)
_M = len(CE_PREFIX)

# Header names repeat on every message (ce-id, ce-type, traceparent ...): map each name once
# and keep it, instead of prefix tests per header per message. Bounded so that arbitrary
# per-message names cannot grow them without limit.
_TO_WIRE: dict[str, str] = {}
_FROM_WIRE: dict[str, str] = {}
_CACHE_LIMIT = 4096


def _wire_name(name: str) -> str:
    wire = (CE_PREFIX + name[_N:]) if name.startswith(_LOGICAL_CE) else name
    if len(_TO_WIRE) < _CACHE_LIMIT:
        _TO_WIRE[name] = wire
    return wire


def _logical_name(name: str) -> str:
    logical = (_LOGICAL_CE + name[_M:]) if name.startswith(CE_PREFIX) else name
    if len(_FROM_WIRE) < _CACHE_LIMIT:
        _FROM_WIRE[name] = logical
    return logical


def encode_headers(logical: Mapping[str, str]) -> list[tuple[str, bytes]]:
    """Logical headers -> Kafka record headers (``ce-x`` becomes ``ce_x``; values UTF-8). Pure."""
    get = _TO_WIRE.get
    return [(get(k) or _wire_name(k), v.encode()) for k, v in logical.items()]


def decode_headers(wire: Sequence[tuple[str, bytes | None]]) -> dict[str, str]:
    """Kafka record headers -> logical headers. Undecodable bytes are replaced, never raised."""
    get = _FROM_WIRE.get
    return {(get(k) or _logical_name(k)): ("" if v is None else v.decode("utf-8", "replace")) for k, v in wire}
