"""Payload encoding and annotation-driven decoding.

Bodies are JSON by default (pydantic-core's encoder: models, dataclasses, TypedDicts, dicts,
lists, datetimes ...); ``bytes`` travel raw as ``application/octet-stream`` and ``str`` as
``text/plain``. Decoding follows the handler's first annotation. No pickle, ever.

A message in CloudEvents *structured* mode (``application/cloudevents+json``: the attributes
and the data in one JSON object, Dapr's default) is unpacked by :func:`read_structured`
before anything else sees it, so that middleware and handlers get the same envelope as for
binary mode.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from typing import Any

import pydantic_core
from pydantic import BaseModel, TypeAdapter, ValidationError

from ._errors import DecodeError, EncodeError, InvalidHandler
from ._headers import CE_CONTENT_TYPE, CE_PREFIX

__all__ = [
    "CLOUDEVENTS_JSON",
    "JSON",
    "OCTET_STREAM",
    "TEXT",
    "Decoder",
    "decoder_for",
    "encode",
    "is_structured",
    "read_structured",
    "type_name",
]

JSON = "application/json"
OCTET_STREAM = "application/octet-stream"
TEXT = "text/plain; charset=utf-8"
#: The media type of the CloudEvents JSON event format (structured mode).
CLOUDEVENTS_JSON = "application/cloudevents+json"
_CE_JSON_LEN = len(CLOUDEVENTS_JSON)

Decoder = Callable[[bytes, str], Any]


def type_name(payload: object) -> str:
    """The CloudEvents ``type`` for a payload: its class's qualified name."""
    cls = type(payload)
    return cls.__qualname__ if cls.__module__ in {"builtins", "__main__"} else f"{cls.__module__}.{cls.__qualname__}"


def encode(payload: object) -> tuple[bytes, str]:
    """Encode ``payload`` to ``(body, content_type)``. Raises :class:`EncodeError`."""
    if isinstance(payload, BaseModel):
        return payload.__pydantic_serializer__.to_json(payload), JSON
    if isinstance(payload, bytes | bytearray | memoryview):
        return bytes(payload), OCTET_STREAM
    if isinstance(payload, str):
        return payload.encode(), TEXT
    try:
        return pydantic_core.to_json(payload), JSON
    except pydantic_core.PydanticSerializationError as exc:
        raise EncodeError(
            f"cannot encode a {type(payload).__name__} payload as JSON ({exc}); publish a pydantic model, "
            "dataclass, TypedDict, dict, list, str, bytes or another JSON-serialisable value"
        ) from exc


def decoder_for(annotation: Any) -> Decoder:
    """Build the decoder for a handler parameter annotation (pydantic model, dataclass,
    TypedDict, dict/list, str, bytes, ``Any`` ...). The decoder raises :class:`DecodeError`."""
    if annotation is bytes:
        return _decode_bytes
    if annotation is str:
        return _decode_str
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        validator = annotation.__pydantic_validator__
        return _json_decoder(annotation, validator.validate_json)
    try:
        adapter: TypeAdapter[Any] = TypeAdapter(annotation)
    except Exception as exc:  # pydantic raises several types for unsupported annotations
        raise InvalidHandler(f"cannot decode messages into {annotation!r}: {exc}") from exc
    # The validator itself: TypeAdapter.validate_json adds a Python call per message.
    return _json_decoder(annotation, adapter.validator.validate_json)


def _decode_bytes(body: bytes, content_type: str) -> bytes:
    return body


def _decode_str(body: bytes, content_type: str) -> str:
    try:
        return body.decode()
    except UnicodeDecodeError as exc:
        raise DecodeError(f"message body is not valid UTF-8 text: {exc}") from exc


def _json_decoder(target: Any, validate: Callable[[bytes], Any]) -> Decoder:
    name = getattr(target, "__qualname__", None) or repr(target)

    def decode(body: bytes, content_type: str) -> Any:
        if is_structured(content_type):
            # Only an event the bus could not unpack (or an Envelope built by hand) gets here:
            # this raises the DecodeError saying what is wrong with it.
            body, attributes = read_structured(body, {})
            content_type = attributes.get(CE_CONTENT_TYPE, JSON)
        if content_type.startswith(OCTET_STREAM):
            raise DecodeError(f"message body is raw bytes ({content_type}); the handler expects {name}")
        try:
            return validate(body)
        except ValidationError as exc:
            raise DecodeError(f"message body does not decode into {name}: {_summary(exc)}") from exc

    return decode


def _summary(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    parts = [f"{'.'.join(str(p) for p in e['loc']) or '(body)'}: {e['msg']}" for e in errors[:5]]
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def is_structured(content_type: str) -> bool:
    """True when ``content_type`` is the CloudEvents JSON event format
    (``application/cloudevents+json``, any case, parameters such as ``; charset=utf-8``
    allowed). Other CloudEvents formats (``+avro``, the ``-batch+json`` format) are not: the
    bindings let a receiver treat those as binary mode. Cheap for the common types (one
    length test)."""
    return (
        len(content_type) >= _CE_JSON_LEN
        and content_type[:_CE_JSON_LEN].lower() == CLOUDEVENTS_JSON
        and content_type[_CE_JSON_LEN:].lstrip()[:1] in ("", ";")
    )


def _is_json(media_type: str) -> bool:
    # The JSON event format's rule: subtype "json" or a "+json" suffix, parameters stripped.
    essence = media_type.split(";", 1)[0].strip().lower()
    return essence.endswith(("/json", "+json"))


def _attribute_text(value: object) -> str:
    # The canonical string form of the CloudEvents type system (JSON format, section 2.2).
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return pydantic_core.to_json(value).decode()  # not a CloudEvents type; kept, not lost


def read_structured(body: bytes, headers: Mapping[str, str]) -> tuple[bytes, dict[str, str]]:
    """Unpack a structured-mode CloudEvent (the JSON event format) into ``(data, headers)``.

    Every attribute of the event becomes a ``ce-<name>`` header, overriding the transport's
    headers of the same name (the event is authoritative); ``null`` attributes are unset.
    ``data_base64`` becomes the body as decoded bytes; ``data`` becomes the body as JSON
    text when ``datacontenttype`` declares JSON or is absent (then set to
    ``application/json``, as the format says), or as the UTF-8 string it holds for any other
    type; no data is an empty body. Other headers (trace context, retry counters, user
    headers) are kept. Pure.

    Raises :class:`DecodeError` saying what is wrong: not a JSON object, ``data_base64`` not
    Base64, or non-JSON ``datacontenttype`` with ``data`` that is not a string.
    """
    try:
        event = pydantic_core.from_json(body)
    except ValueError as exc:
        raise DecodeError(f"structured CloudEvent ({CLOUDEVENTS_JSON}) is not valid JSON: {exc}") from exc
    if not isinstance(event, dict):
        raise DecodeError(
            f"structured CloudEvent ({CLOUDEVENTS_JSON}) must be a JSON object, got a {type(event).__name__}"
        )
    out = {name: value for name, value in headers.items() if name != CE_CONTENT_TYPE}
    for name, value in event.items():
        if name in ("data", "data_base64"):
            continue
        if value is None:
            out.pop(CE_PREFIX + name, None)
        else:
            out[CE_PREFIX + name] = _attribute_text(value)
    content_type = out.get(CE_CONTENT_TYPE)
    encoded = event.get("data_base64")
    if encoded is not None:
        if not isinstance(encoded, str):
            raise DecodeError(
                f"structured CloudEvent: data_base64 must be a Base64 string, got {type(encoded).__name__}"
            )
        try:
            return base64.b64decode(encoded, validate=True), out
        except binascii.Error as exc:
            raise DecodeError(f"structured CloudEvent: data_base64 is not valid Base64 ({exc})") from exc
    if "data" not in event:
        return b"", out
    data = event["data"]
    if content_type is None or _is_json(content_type):
        out.setdefault(CE_CONTENT_TYPE, JSON)
        return pydantic_core.to_json(data), out
    if not isinstance(data, str):
        raise DecodeError(
            f"structured CloudEvent: datacontenttype {content_type!r} is not JSON, so data must be a string "
            f"holding the encoded content, got a {type(data).__name__}"
        )
    return data.encode(), out
