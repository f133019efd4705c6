"""Payload encoding and annotation-driven decoding.

Bodies are JSON by default (pydantic-core's encoder: models, dataclasses, TypedDicts, dicts,
lists, datetimes ...); ``bytes`` travel raw as ``application/octet-stream`` and ``str`` as
``text/plain``. Decoding follows the handler's first annotation. No pickle, ever.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pydantic_core
from pydantic import BaseModel, TypeAdapter, ValidationError

from ._errors import DecodeError, EncodeError, InvalidHandler

__all__ = ["JSON", "OCTET_STREAM", "TEXT", "Decoder", "decoder_for", "encode", "type_name"]

JSON = "application/json"
OCTET_STREAM = "application/octet-stream"
TEXT = "text/plain; charset=utf-8"

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
