"""Headers on the wire: NATS headers, made to carry any messagebus header exactly.

NATS header names are ASCII tokens and nats-py strips values and folds line breaks: a name
outside the token alphabet (or holding ``%``) is percent-encoded, a value that would not
survive is sent as ``%mb:`` plus its percent-encoding; the rest travels as it is. JetStream
refuses header blocks over 64 KiB, which the core's budget can exceed: those headers travel
as JSON in front of the body (length in ``messagebus-packed``). CloudEvents keep ``ce-``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from urllib.parse import quote, unquote

from messagebus.transports import headers

__all__ = ["DUE", "FOR", "INTERNAL", "decode_headers", "encode_headers", "pack", "unpack", "wire_size"]

#: When a redelivered copy becomes due (epoch milliseconds). Adapter-internal.
DUE = "messagebus-due"
#: The durable consumer a redelivered copy is for (other groups of a topic skip it).
FOR = "messagebus-for"
#: JetStream's de-duplication id: a publish sent again is stored once.
MSG_ID = "Nats-Msg-Id"
#: Bytes of headers packed in front of the body (headers too big for a NATS header block).
PACKED = "messagebus-packed"
#: Adapter-internal headers: on the wire, never in a delivery's logical headers.
INTERNAL = frozenset({DUE, FOR, PACKED, MSG_ID, headers.ATTEMPT, headers.KEY})
#: Largest header block sent as NATS headers (JetStream's limit is 64 KiB).
MAX_HEADER_BLOCK = 60 * 1024

_TOKEN = re.compile(r"[!#$&'*+\-.^_`|~0-9A-Za-z]+")  # nats-py's name alphabet minus '%'
_NAME_SAFE = "!#$&'*+-.^_`|~"
_VALUE_MARK = "%mb:"


def _wire_name(name: str) -> str:
    return name if _TOKEN.fullmatch(name) else quote(name, safe=_NAME_SAFE)


def _wire_value(value: str) -> str:
    if value == value.strip() and "\r" not in value and "\n" not in value and not value.startswith(_VALUE_MARK):
        return value
    return _VALUE_MARK + quote(value, safe="")


def encode_headers(logical: Mapping[str, str]) -> dict[str, str]:
    """Logical headers -> NATS headers (exact round trip through :func:`decode_headers`). Pure."""
    return {_wire_name(k): _wire_value(v) for k, v in logical.items()}


def decode_headers(wire: Mapping[str, str] | None) -> dict[str, str]:
    """NATS headers -> logical headers, without the adapter-internal ones. Pure."""
    if not wire:
        return {}
    out: dict[str, str] = {}
    for name, value in wire.items():
        if "%" in name:
            name = unquote(name)
        if name in INTERNAL:
            continue
        out[name] = unquote(value[len(_VALUE_MARK) :]) if value.startswith(_VALUE_MARK) else value
    return out


def wire_size(wire: Mapping[str, str]) -> int:
    """Bytes the headers take in a NATS message (``NATS/1.0`` line, ``name: value`` lines)."""
    return 12 + sum(len(k) + len(v.encode()) + 4 for k, v in wire.items())


def pack(wire: dict[str, str], body: bytes) -> tuple[dict[str, str], bytes]:
    """``wire`` and ``body`` as sent: headers over :data:`MAX_HEADER_BLOCK` go in front of
    the body as JSON (the adapter-internal ones stay NATS headers). Pure."""
    if wire_size(wire) <= MAX_HEADER_BLOCK:
        return wire, body
    kept = {k: v for k, v in wire.items() if k in INTERNAL}
    blob = json.dumps({k: v for k, v in wire.items() if k not in INTERNAL}).encode()
    kept[PACKED] = str(len(blob))
    return kept, blob + body


def unpack(wire: Mapping[str, str] | None, body: bytes) -> tuple[Mapping[str, str] | None, bytes]:
    """Inverse of :func:`pack`; a packed prefix that does not parse is left in the body."""
    size = wire.get(PACKED) if wire else None
    if wire is None or size is None or not size.isdigit():
        return wire, body
    n = int(size)
    try:
        packed = json.loads(body[:n])
    except ValueError:
        return wire, body
    return {**packed, **wire}, body[n:]
