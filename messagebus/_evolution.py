"""Schema evolution: versioned models, upcasters, the version a message carries.

A pydantic model declares its version with ``schema_version: ClassVar[int] = N`` (absent:
version 1, and the model is *unversioned*: no version is sent and none is checked). The bus
publishes a versioned model with the CloudEvents ``dataschema`` attribute
``messagebus:<type>/v<N>``; a received message's version is read from that attribute
(absent or not of that form: version 1).

A handler whose model is versioned decodes through :class:`Upcasters`: a message of the
model's version is validated as it is; an older one is parsed as a JSON object, passed
through the registered upcasters ``N -> N+1 -> ...`` up to the model's version, then
validated. A message newer than the model, a gap in the chain, an upcaster that raises or
returns something other than a dict: :class:`DecodeError` naming the type, both versions and
the registered upcasters; the Settler dead-letters a DecodeError at once, never retried.
Which decoder a handler gets is decided when it is bound: unversioned handlers pay nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import quote

import pydantic_core
from pydantic import BaseModel, ValidationError

from ._checks import positive_int
from ._errors import ConfigurationError, DecodeError
from ._headers import CE_CONTENT_TYPE
from ._message import Envelope
from ._serialization import JSON, OCTET_STREAM, _summary, decoder_for, is_structured, read_structured

__all__ = [
    "CE_DATASCHEMA",
    "DATASCHEMA_SCHEME",
    "Upcaster",
    "Upcasters",
    "dataschema_for",
    "message_version",
    "schema_version",
]

#: The CloudEvents ``dataschema`` attribute in messagebus's canonical (``ce-``) naming.
CE_DATASCHEMA = "ce-dataschema"
#: The URI scheme of the ``dataschema`` values messagebus writes: ``messagebus:<type>/v<N>``.
DATASCHEMA_SCHEME = "messagebus:"

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
U = TypeVar("U", bound=Upcaster)


def _declares_version(model: type) -> bool:
    # A pydantic field is not in dir(); it counts too, so that schema_version() refuses it.
    return (
        isinstance(model, type)
        and issubclass(model, BaseModel)
        and ("schema_version" in dir(model) or "schema_version" in model.model_fields)
    )


def schema_version(model: type) -> int:
    """The version a model declares with ``schema_version: ClassVar[int]``; 1 when it
    declares none. Raises :class:`ConfigurationError` when it is not an int >= 1 or is a
    pydantic field instead of a ``ClassVar``."""
    if isinstance(model, type) and issubclass(model, BaseModel) and "schema_version" in model.model_fields:
        raise ConfigurationError(
            f"{model.__qualname__}.schema_version is a pydantic field; declare it as "
            "'schema_version: ClassVar[int] = N' so it is not part of the message"
        )
    version = getattr(model, "schema_version", 1)
    return positive_int(version, f"{getattr(model, '__qualname__', model)!r}.schema_version")


def dataschema_for(cls: type) -> str | None:
    """The ``dataschema`` value a payload of class ``cls`` is published with:
    ``messagebus:<type>/v<N>`` for a model that declares ``schema_version``, else ``None``
    (the attribute is not sent). Raises :class:`ConfigurationError` for a bad version."""
    if not _declares_version(cls):
        return None
    # The CloudEvents type (see type_name), percent-encoded: a local class's "<locals>" is no URI.
    module = cls.__module__
    name = cls.__qualname__ if module in {"builtins", "__main__"} else f"{module}.{cls.__qualname__}"
    return f"{DATASCHEMA_SCHEME}{quote(name, safe='.')}/v{schema_version(cls)}"


def message_version(dataschema: str | None) -> int:
    """The schema version of a received message from its ``dataschema`` attribute:
    N for ``messagebus:<anything>/v<N>`` (N >= 1), else 1 (absent, a foreign URI, garbage).
    The type part is not compared: a consumer's copy of a model may live in another module."""
    if not dataschema or not dataschema.startswith(DATASCHEMA_SCHEME):
        return 1
    _, sep, number = dataschema.rpartition("/v")
    if not sep or not number.isdigit() or not number.isascii():
        return 1
    return max(int(number), 1)


class Upcasters:
    """The upcasters of one bus, per target model and from-version. Registered before the
    bus starts; read when handlers are bound."""

    def __init__(self) -> None:
        self._by_model: dict[type[BaseModel], dict[int, Upcaster]] = {}

    def register(self, model: type[BaseModel], from_version: int) -> Callable[[U], U]:
        """A decorator registering ``fn(data: dict) -> dict`` that turns a message of
        ``model`` at ``from_version`` into one at ``from_version + 1``.

        Raises :class:`ConfigurationError` when ``model`` is not a pydantic model, when
        ``from_version`` is not an int with ``1 <= from_version < model.schema_version``, when
        an upcaster for that model and version exists, or when ``fn`` is not callable."""
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise ConfigurationError(f"upcasters are registered for pydantic models, got {model!r}")
        target = schema_version(model)
        if isinstance(from_version, bool) or not isinstance(from_version, int) or not 1 <= from_version < target:
            allowed = f"1 to {target - 1}" if target > 1 else "none (declare schema_version: ClassVar[int] >= 2)"
            raise ConfigurationError(
                f"from_version for an upcaster of {model.__qualname__} (schema_version {target}) must be an int "
                f"from {allowed}, got {from_version!r}"
            )
        table = self._by_model.setdefault(model, {})
        if from_version in table:
            raise ConfigurationError(
                f"{model.__qualname__} already has an upcaster from version {from_version} "
                f"({getattr(table[from_version], '__qualname__', table[from_version])}); one per version"
            )

        def decorator(fn: U) -> U:
            if not callable(fn):
                raise ConfigurationError(f"an upcaster must be a function dict -> dict, got {fn!r}")
            table[from_version] = fn
            return fn

        return decorator

    def describe(self, model: type[BaseModel]) -> str:
        """The registered upcasters of ``model`` in words (for error messages)."""
        table = self._by_model.get(model, {})
        if not table:
            return "no upcasters registered"
        return "upcasters registered from versions " + ", ".join(
            f"{v} ({getattr(table[v], '__qualname__', table[v])})" for v in sorted(table)
        )

    def decoder(self, annotation: object) -> Callable[[Envelope], Any] | None:
        """The envelope decoder for a handler annotated ``annotation`` when it is a versioned
        model, else ``None`` (the caller keeps its plain decoder: no per-message cost).
        Raises :class:`ConfigurationError` for a bad ``schema_version``."""
        if not isinstance(annotation, type) or not _declares_version(annotation):
            return None
        model: type[BaseModel] = annotation
        target = schema_version(model)
        plain = decoder_for(model)
        table = dict(self._by_model.get(model, {}))
        validate_json = model.__pydantic_validator__.validate_json
        name = model.__qualname__
        known = self.describe(model)

        def reason(version: int, why: str) -> str:
            return f"{name}: message is schema version {version}, the handler reads version {target}; {why} ({known})"

        # A topic carries few distinct dataschema values: parse each once (bounded, so that
        # a stream of garbage values cannot grow it).
        versions: dict[str | None, int] = {}

        def decode(envelope: Envelope) -> Any:
            headers = envelope.wire_headers
            content_type = headers.get(CE_CONTENT_TYPE, JSON)
            dataschema = headers.get(CE_DATASCHEMA)
            version = versions.get(dataschema)
            if version is None:
                version = message_version(dataschema)
                if len(versions) < 64:
                    versions[dataschema] = version
            if version == target:
                return plain(envelope.body, content_type)
            if version > target:
                raise DecodeError(reason(version, "no upcaster turns a newer version into an older one"))
            missing = [v for v in range(version, target) if v not in table]
            if missing:
                raise DecodeError(reason(version, f"no upcaster from version {missing[0]}"))
            data = _json_object(envelope.body, content_type, headers, name)
            for v in range(version, target):
                fn = table[v]
                try:
                    data = fn(data)
                except Exception as exc:
                    raise DecodeError(
                        reason(
                            version,
                            f"upcaster {getattr(fn, '__qualname__', fn)} from version {v} raised "
                            f"{type(exc).__name__}: {exc}",
                        )
                    ) from exc
                if not isinstance(data, dict):
                    raise DecodeError(
                        reason(
                            version,
                            f"upcaster {getattr(fn, '__qualname__', fn)} from version {v} returned a "
                            f"{type(data).__name__}, not a dict",
                        )
                    )
            try:
                # Through JSON, so that an upcast message is validated exactly as a current one.
                return validate_json(pydantic_core.to_json(data))
            except ValidationError as exc:
                raise DecodeError(reason(version, f"the upcast message does not decode: {_summary(exc)}")) from exc
            except pydantic_core.PydanticSerializationError as exc:
                raise DecodeError(reason(version, f"an upcaster returned data that is not JSON: {exc}")) from exc

        return decode


def _json_object(body: bytes, content_type: str, headers: Mapping[str, str], name: str) -> dict[str, Any]:
    if is_structured(content_type):
        body, attributes = read_structured(body, headers)
        content_type = attributes.get(CE_CONTENT_TYPE, JSON)
    if content_type.startswith(OCTET_STREAM):
        raise DecodeError(f"message body is raw bytes ({content_type}); the handler expects {name}")
    try:
        data = pydantic_core.from_json(body)
    except ValueError as exc:
        raise DecodeError(f"message body is not valid JSON, so it cannot be upcast to {name}: {exc}") from exc
    if not isinstance(data, dict):
        raise DecodeError(f"message body is a JSON {type(data).__name__}, not an object: cannot upcast to {name}")
    return data
