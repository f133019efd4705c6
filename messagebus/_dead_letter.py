"""Dead-letter headers: what failed, how often, and when."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from . import _headers as h

__all__ = ["dead_letter_headers", "error_message", "error_type_name", "utc_now"]

_MAX_ERROR_MESSAGE = 1024


def utc_now() -> str:
    """Now as ISO 8601 UTC."""
    return datetime.now(UTC).isoformat()


def error_type_name(error: BaseException) -> str:
    """The qualified class name of ``error`` (``builtins.ValueError``, ``app.errors.Boom``)."""
    cls = type(error)
    return f"{cls.__module__}.{cls.__qualname__}"


def error_message(error: BaseException) -> str:
    """``str(error)``, or a placeholder naming its type when its ``__str__`` raises.

    An exception that cannot print itself must still be retried and dead-lettered: a raise
    here would leave the message unsettled and its consumer slot taken.
    """
    try:
        return str(error)
    except Exception as exc:  # an arbitrary user __str__ may raise anything
        return f"<{error_type_name(error)} whose str() raised {type(exc).__name__}>"


def dead_letter_headers(
    headers: Mapping[str, str],
    *,
    destination: str,
    group: str | None,
    error: BaseException,
    attempts: int,
    topic: str | None = None,
) -> dict[str, str]:
    """The headers of a dead-lettered copy: the original ones (without retry bookkeeping)
    plus ``dlq-destination``, ``dlq-group``, ``dlq-error-type``, ``dlq-error-message``,
    ``dlq-attempts``, ``dlq-first-failure`` and ``dlq-last-failure`` (``dlq-replayed`` of an
    earlier replay is kept). ``attempts`` counts the
    failed deliveries (``Nack`` redeliveries are not failures)."""
    now = utc_now()
    first = headers.get(h.FIRST_FAILURE) or now
    out = {
        k: v
        for k, v in headers.items()
        if k not in (h.ATTEMPT, h.FIRST_FAILURE, h.NACKS) and (not k.startswith("dlq-") or k == h.DLQ_REPLAYED)
    }
    out.update(
        {
            h.DLQ_DESTINATION: destination,
            h.DLQ_GROUP: group or "",
            h.DLQ_ERROR_TYPE: error_type_name(error),
            h.DLQ_ERROR_MESSAGE: error_message(error)[:_MAX_ERROR_MESSAGE],
            h.DLQ_ATTEMPTS: str(attempts),
            h.DLQ_FIRST_FAILURE: first,
            h.DLQ_LAST_FAILURE: now,
        }
    )
    if topic and topic != destination:
        out[h.DLQ_TOPIC] = topic
    return out
