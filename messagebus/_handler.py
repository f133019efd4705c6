"""Handler introspection: from a user's ``async def`` to a middleware-level handler."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, get_args, get_origin, get_type_hints

from ._errors import InvalidHandler
from ._evolution import Upcasters
from ._headers import CE_CONTENT_TYPE
from ._message import Envelope
from ._middleware import Handler
from ._serialization import JSON, decoder_for

__all__ = ["UserHandler", "bind_batch_handler", "bind_handler", "may_reply"]

UserHandler = Callable[..., Any]
BatchFn = Callable[[list[object], list[Envelope]], Awaitable[None]]


def _is_async(fn: object) -> bool:
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - an async __call__ counts
    return call is not None and inspect.iscoroutinefunction(call)


def may_reply(fn: UserHandler) -> bool:
    """Whether ``fn`` may return a reply: its return annotation is not ``None`` (an
    unannotated handler may). Handlers annotated ``-> None`` skip the reply check."""
    try:
        hints = get_type_hints(fn)
    except (TypeError, ValueError, NameError):
        return True
    return hints.get("return", Any) is not type(None)


def _signature(fn: UserHandler, where: str) -> tuple[str, list[inspect.Parameter], dict[str, Any]]:
    name = getattr(fn, "__qualname__", repr(fn))
    if not _is_async(fn):
        raise InvalidHandler(
            f"handler {name} for {where} must be an 'async def' function (got {type(fn).__name__}); "
            "messagebus awaits handlers on the event loop"
        )
    try:
        signature = inspect.signature(fn)
        hints = get_type_hints(fn)
    except (TypeError, ValueError, NameError) as exc:
        raise InvalidHandler(f"cannot read the signature of handler {name} for {where}: {exc}") from exc
    params = [p for p in signature.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required_kw = [p.name for p in signature.parameters.values() if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
    if required_kw:
        raise InvalidHandler(f"handler {name} for {where} has required keyword-only parameters {required_kw}")
    extra = [p.name for p in params[2:] if p.default is p.empty]
    if extra:
        raise InvalidHandler(
            f"handler {name} for {where} has extra required parameters {extra}; "
            "it may take the message and optionally an Envelope"
        )
    return name, params, hints


def bind_batch_handler(
    fn: UserHandler, where: str, upcasters: Upcasters | None = None
) -> tuple[Callable[[Envelope], object], BatchFn]:
    """For ``batch=N``: ``fn(items: list[T])`` or ``fn(items: list[T], envelopes:
    list[Envelope])``. Returns ``(decode one envelope's body as T, call fn with a batch)``.
    Raises :class:`InvalidHandler` when the first parameter is not annotated ``list[T]``."""
    name, params, hints = _signature(fn, where)
    annotation = hints.get(params[0].name) if params else None
    if get_origin(annotation) is not list:
        raise InvalidHandler(
            f"batch handler {name} for {where} must take the batch as its first parameter annotated "
            "list[T], e.g. 'async def handle(orders: list[OrderCreated])' "
            "(optionally 'envelopes: list[Envelope]' second)"
        )
    (item_type,) = get_args(annotation) or (Any,)
    decode_body = decoder_for(item_type)
    versioned = (upcasters or Upcasters()).decoder(item_type)

    def decode_plain(envelope: Envelope) -> object:
        return decode_body(envelope.body, envelope.wire_headers.get(CE_CONTENT_TYPE, JSON))

    decode: Callable[[Envelope], object] = decode_plain if versioned is None else versioned

    if len(params) > 1:

        def call_with_envelopes(items: list[object], envelopes: list[Envelope]) -> Awaitable[None]:
            result: Awaitable[None] = fn(items, envelopes)
            return result

        return decode, call_with_envelopes

    def call(items: list[object], envelopes: list[Envelope]) -> Awaitable[None]:
        result: Awaitable[None] = fn(items)
        return result

    return decode, call


def bind_handler(fn: UserHandler, where: str, upcasters: Upcasters | None = None) -> Handler:
    """Turn ``fn`` into ``Handler(envelope)``: decode the body by its first parameter's
    annotation, pass an ``Envelope`` parameter if it has one. A versioned model (see
    :mod:`messagebus._evolution`) decodes through ``upcasters``. Raises :class:`InvalidHandler`."""
    name, params, hints = _signature(fn, where)

    def is_envelope(p: inspect.Parameter) -> bool:
        return hints.get(p.name) is Envelope or (p.name == "envelope" and p.name not in hints)

    if not params:
        raise InvalidHandler(
            f"handler {name} for {where} takes no parameters; it needs the message, e.g. "
            "'async def handle(order: OrderCreated)' or '(order: OrderCreated, envelope: Envelope)'"
        )
    first = params[0]
    if is_envelope(first):
        envelope_only: Handler = fn
        return envelope_only
    decode = decoder_for(hints.get(first.name, Any))
    with_envelope = len(params) > 1 and is_envelope(params[1])
    versioned = (upcasters or Upcasters()).decoder(hints.get(first.name, Any))
    if versioned is not None:
        # Only versioned models read the version header; the plain calls below stay as they are.
        decode_envelope = versioned

        def call_versioned(envelope: Envelope) -> Awaitable[None]:
            result: Awaitable[None] = (
                fn(decode_envelope(envelope), envelope) if with_envelope else fn(decode_envelope(envelope))
            )
            return result

        return call_versioned

    # Plain functions that hand back the user's coroutine: no frame of their own per message.
    # A body that does not decode raises DecodeError from the call itself, before anything
    # is awaited (see Handler).
    if with_envelope:

        def call_with_envelope(envelope: Envelope) -> Awaitable[None]:
            result: Awaitable[None] = fn(
                decode(envelope.body, envelope.wire_headers.get(CE_CONTENT_TYPE, JSON)), envelope
            )
            return result

        return call_with_envelope

    def call(envelope: Envelope) -> Awaitable[None]:
        result: Awaitable[None] = fn(decode(envelope.body, envelope.wire_headers.get(CE_CONTENT_TYPE, JSON)))
        return result

    return call
