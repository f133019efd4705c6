"""ErrorMap: one table per adapter that turns native client errors into the messagebus tree.

Raise sites stay one line, ``raise errors.map(exc, PublishError, "publishing to x") from exc``
in an ``except`` clause that catches native client errors. ``map`` returns a messagebus error
unchanged, so a clause that may also catch one of ours must re-raise it first (``from exc``
would make it its own cause). What each native error means lives in the adapter's table,
in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

from ._errors import MessageBusError

__all__ = ["ErrorMap", "ErrorRule", "describe_error"]

Match: TypeAlias = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]
#: What a matching error becomes: an error class (given ``"<what>: <description>"``), or a
#: function ``(exc, what, default) -> MessageBusError`` for messages that need more.
Target: TypeAlias = type[MessageBusError] | Callable[[BaseException, str, type[MessageBusError]], MessageBusError]
ErrorRule: TypeAlias = tuple[Match, Target]


def describe_error(exc: BaseException) -> str:
    """``Type: message`` of a native error (``Type`` alone when its message is empty)."""
    try:
        text = str(exc)
    except Exception:  # an arbitrary __str__ may raise
        text = ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class ErrorMap:
    """Native error -> messagebus error, by the first matching rule; else the caller's
    ``default`` class. A messagebus error passes through unchanged; every other result has
    the native error as ``__cause__``. ``describe`` renders native errors (it must never
    include credentials). Immutable and thread-safe.
    """

    __slots__ = ("_describe", "_rules")

    def __init__(self, *rules: ErrorRule, describe: Callable[[BaseException], str] = describe_error) -> None:
        self._rules = rules
        self._describe = describe

    def map(self, exc: BaseException, default: type[MessageBusError], what: str) -> MessageBusError:
        """The messagebus error for ``exc`` raised while doing ``what`` (``"publishing to x"``)."""
        if isinstance(exc, MessageBusError):
            return exc
        target: Target = default
        for match, to in self._rules:
            hit = isinstance(exc, match) if isinstance(match, type | tuple) else match(exc)
            if hit:
                target = to
                break
        if isinstance(target, type):
            error: MessageBusError = target(f"{what}: {self._describe(exc)}")
        else:
            error = target(exc, what, default)
        if error.__cause__ is None and error is not exc:
            error.__cause__ = exc
        return error
