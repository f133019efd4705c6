"""Headers and keys on the wire: the CloudEvents Kafka binding, retry metadata.

Binary mode to the letter: attributes are ``ce_<name>`` headers except ``datacontenttype``,
which is the ``content-type`` header; the message key is the record key (the binding's
default key mapping; a foreign record with no key gets its ``partitionkey`` attribute as key
from the core). Read back: ``ce_*`` headers, ``content-type`` (any case) and, from earlier
messagebus versions, ``ce_datacontenttype``; the record's timestamp stands in for a missing
``time``. Structured mode (``content-type: application/cloudevents+json``) is unpacked by the
core for every transport.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from messagebus.transports import headers

__all__ = ["CE_PREFIX", "DUE", "TOPIC", "HeaderEncoder", "RecordHeaders", "decode_headers", "encode_headers"]

CE_PREFIX = "ce_"
#: The binding's header for ``datacontenttype``.
CONTENT_TYPE = "content-type"
#: When a message in a retry topic becomes due (epoch milliseconds). Adapter-internal.
DUE = "messagebus-due"
#: The topic a pattern subscription's message was published to, on its retry records. Adapter-internal.
TOPIC = "messagebus-topic"

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
    if name == headers.CE_CONTENT_TYPE:
        wire = CONTENT_TYPE
    else:
        wire = (CE_PREFIX + name[_N:]) if name.startswith(_LOGICAL_CE) else name
    if len(_TO_WIRE) < _CACHE_LIMIT:
        _TO_WIRE[name] = wire
    return wire


def _logical_name(name: str) -> str:
    if name.lower() == CONTENT_TYPE:
        logical = headers.CE_CONTENT_TYPE
    else:
        logical = (_LOGICAL_CE + name[_M:]) if name.startswith(CE_PREFIX) else name
    if len(_FROM_WIRE) < _CACHE_LIMIT:
        _FROM_WIRE[name] = logical
    return logical


def _wire_header(name: str, value: str) -> tuple[str, bytes]:
    return (_TO_WIRE.get(name) or _wire_name(name), value.encode())


def encode_headers(logical: Mapping[str, str]) -> list[tuple[str, bytes]]:
    """Logical headers -> Kafka record headers (``ce-x`` becomes ``ce_x``, ``ce-datacontenttype``
    becomes ``content-type``; values UTF-8). Pure."""
    return [_wire_header(k, v) for k, v in logical.items()]


class HeaderEncoder:
    """:func:`encode_headers` for the messages of one publish, which mostly repeat the same
    headers (source, type, spec version, content type, time of a batch): each distinct
    ``(name, value)`` is encoded once. Also sums the encoded sizes for the size check.
    Use for one publish call, then drop it (it keeps what it encoded); not thread-safe."""

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], tuple[tuple[str, bytes], int]] = {}

    def encode(self, logical: Mapping[str, str]) -> tuple[list[tuple[str, bytes]], int]:
        """The record headers of ``logical`` and their total size in bytes (names + values). Pure."""
        seen = self._seen
        wire: list[tuple[str, bytes]] = []
        append = wire.append
        size = 0
        for item in logical.items():
            known = seen.get(item)
            if known is None:
                encoded = _wire_header(*item)
                known = seen[item] = (encoded, len(encoded[0]) + len(encoded[1]))
            append(known[0])
            size += known[1]
        return wire, size


def decode_headers(wire: Sequence[tuple[str, bytes | None]]) -> dict[str, str]:
    """Kafka record headers -> logical headers (inverse of :func:`encode_headers`; a foreign
    ``Content-Type`` in any case counts). Undecodable bytes are replaced, never raised."""
    get = _FROM_WIRE.get
    return {(get(k) or _logical_name(k)): ("" if v is None else v.decode("utf-8", "replace")) for k, v in wire}


WireHeaders = Sequence[tuple[str, bytes | None]]
#: Adapter-internal headers: on the wire, never in a delivery's logical headers.
_HIDDEN = frozenset({DUE, TOPIC, headers.ATTEMPT})
_CE_TIME = headers.CE_TIME


class RecordHeaders(Mapping[str, str]):
    """The logical headers of one consumed record, decoded on demand.

    A delivery usually needs one or two headers (the content type; the trace context when an
    OpenTelemetry SDK is installed), so :meth:`get` scans the record's few wire headers for
    the one asked for instead of decoding all of them. Anything else (iteration, ``len``,
    equality) decodes every header once. The same view as :func:`decode_headers` gives, minus
    the adapter-internal headers; when a name repeats, the last one wins. ``timestamp_ms``
    (the record's timestamp) stands in for a missing CloudEvents ``time``. Read-only; not
    thread-safe (one belongs to one delivery).
    """

    __slots__ = ("_decoded", "_timestamp_ms", "_wire")

    def __init__(self, wire: WireHeaders, timestamp_ms: int | None = None) -> None:
        self._wire = wire
        self._timestamp_ms = timestamp_ms
        self._decoded: dict[str, str] | None = None

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        """The header ``key`` (logical name), or ``default``; decodes only that header."""
        decoded = self._decoded
        if decoded is not None:
            return decoded.get(key, default)
        if key in _HIDDEN:
            return default
        logical = _FROM_WIRE.get
        for name, value in reversed(self._wire):
            if (logical(name) or _logical_name(name)) == key:
                if value or key != _CE_TIME or self._timestamp_ms is None:
                    return "" if value is None else value.decode("utf-8", "replace")
                break
        if key == _CE_TIME and self._timestamp_ms is not None:
            return headers.iso_utc(self._timestamp_ms / 1000) or default
        return default

    def __getitem__(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def _all(self) -> dict[str, str]:
        decoded = self._decoded
        if decoded is None:
            decoded = decode_headers(self._wire)
            for name in _HIDDEN:
                decoded.pop(name, None)
            if self._timestamp_ms is not None:
                decoded = dict(headers.with_broker_defaults(decoded, None, self._timestamp_ms / 1000))
            self._decoded = decoded
        return decoded

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())

    def __repr__(self) -> str:
        return f"RecordHeaders({self._all()!r})"
