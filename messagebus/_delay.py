"""Delayed delivery: ``delay=`` on publish and send, held back by the consumer until due.

A delayed message carries its due time (``messagebus-deliver-at``, Unix epoch milliseconds)
and goes to its destination at once. A consumer that receives it early does not run the
handler: it hands it to the transport's delayed redelivery (the same means retries use:
RabbitMQ's TTL delay buckets, Kafka's retry topic, SQS visibility, Pub/Sub's held
redelivery, Redis's due-time set, a held copy on NATS), so every transport delays without
new machinery, each group holds its own copy, and a held message never blocks others.
Adapters with a native per-message delay (SQS ``DelaySeconds``) may also use it on publish;
the check at the consumer stays, so a delay longer than the native limit still holds.
The due time is wall-clock: producer and consumer clocks should agree (NTP).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from datetime import timedelta

from . import _headers as h
from ._errors import ConfigurationError

__all__ = ["MAX_DELAY", "deliver_at", "remaining"]

#: The longest delay accepted (one year): a typo in units, not a plan, is beyond it.
MAX_DELAY = 365 * 24 * 3600.0


def deliver_at(delay: object, what: str) -> str | None:
    """The ``messagebus-deliver-at`` header value for ``delay`` (seconds as int/float, or a
    ``timedelta``), ``None`` for no delay (``None`` or 0). Raises :class:`ConfigurationError`
    for a negative, non-finite, too long or ill-typed delay."""
    if delay is None:
        return None
    if isinstance(delay, timedelta):
        seconds = delay.total_seconds()
    elif isinstance(delay, int | float) and not isinstance(delay, bool):
        seconds = float(delay)
    else:
        raise ConfigurationError(
            f"delay of {what} must be seconds (int or float) or a datetime.timedelta, got {type(delay).__name__}"
        )
    if not 0 <= seconds <= MAX_DELAY:  # also catches NaN
        raise ConfigurationError(f"delay of {what} must be between 0 and {MAX_DELAY:.0f} seconds, got {delay!r}")
    if seconds == 0:
        return None
    # Rounded up to the millisecond: never due before the exact instant.
    return str(math.ceil((time.time() + seconds) * 1000))


def remaining(headers: Mapping[str, str]) -> float:
    """Seconds until the message with ``headers`` is due (<= 0: due, or not delayed). A
    malformed due time from a foreign producer counts as due."""
    due = headers.get(h.DELIVER_AT)
    if not due:
        return 0.0
    try:
        due_ms = int(due)
    except ValueError:
        return 0.0
    return due_ms / 1000 - time.time()
