"""Header names on the wire: CloudEvents 1.0 binary mode, trace context, retry metadata.

Inside messagebus every header is a ``str -> str`` pair. CloudEvents attributes use their
canonical ``ce-`` names (``ce-id``, ``ce-source`` ...); each adapter renames that prefix to
its binding's (``ce_`` for Kafka, ``cloudEvents:`` for AMQP, ``ce-`` for SQS and Pub/Sub)
with :func:`to_wire` and back with :func:`from_wire`.
"""

from __future__ import annotations

from collections.abc import Mapping

from ._errors import InvalidHeaders

__all__ = [
    "ATTEMPT",
    "CE_CONTENT_TYPE",
    "CE_ID",
    "CE_PREFIX",
    "CE_SOURCE",
    "CE_SPECVERSION",
    "CE_TIME",
    "CE_TYPE",
    "DLQ_ATTEMPTS",
    "DLQ_DESTINATION",
    "DLQ_ERROR_MESSAGE",
    "DLQ_ERROR_TYPE",
    "DLQ_FIRST_FAILURE",
    "DLQ_GROUP",
    "DLQ_LAST_FAILURE",
    "FIRST_FAILURE",
    "KEY",
    "RESERVED_PREFIXES",
    "from_wire",
    "to_wire",
    "validate_headers",
]

CE_PREFIX = "ce-"
CE_ID = "ce-id"
CE_SOURCE = "ce-source"
CE_TYPE = "ce-type"
CE_SPECVERSION = "ce-specversion"
CE_TIME = "ce-time"
CE_CONTENT_TYPE = "ce-datacontenttype"

#: Delivery attempt carried by transports whose retries re-publish the message.
ATTEMPT = "messagebus-attempt"
#: When the first failed attempt happened (ISO 8601 UTC), carried across retries.
FIRST_FAILURE = "messagebus-first-failure"
#: The message key, for transports with no native key field.
KEY = "messagebus-key"

DLQ_DESTINATION = "dlq-destination"
DLQ_GROUP = "dlq-group"
DLQ_ERROR_TYPE = "dlq-error-type"
DLQ_ERROR_MESSAGE = "dlq-error-message"
DLQ_ATTEMPTS = "dlq-attempts"
DLQ_FIRST_FAILURE = "dlq-first-failure"
DLQ_LAST_FAILURE = "dlq-last-failure"

RESERVED_PREFIXES = (CE_PREFIX, "messagebus-")


def validate_headers(headers: object) -> dict[str, str]:
    """Return a copy of ``headers`` if it is a ``str -> str`` mapping with no reserved names.

    Raises :class:`InvalidHeaders` saying which entry is wrong and what is allowed.
    """
    if headers is None:
        return {}
    if not isinstance(headers, Mapping):
        raise InvalidHeaders(f"headers must be a mapping of str to str, got {type(headers).__name__}")
    out: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not name:
            raise InvalidHeaders(f"header names must be non-empty str, got {name!r}")
        if not isinstance(value, str):
            raise InvalidHeaders(
                f"header {name!r} has a {type(value).__name__} value {value!r}; header values must be str"
            )
        if name.lower().startswith(RESERVED_PREFIXES):
            raise InvalidHeaders(
                f"header {name!r} uses a reserved prefix ({', '.join(RESERVED_PREFIXES)}); choose another name"
            )
        out[name] = value
    return out


def to_wire(headers: Mapping[str, str], ce_prefix: str) -> dict[str, str]:
    """Rename the CloudEvents ``ce-`` prefix to a binding's prefix (``ce_``, ``cloudEvents:``)."""
    if ce_prefix == CE_PREFIX:
        return dict(headers)
    n = len(CE_PREFIX)
    return {(ce_prefix + k[n:] if k.startswith(CE_PREFIX) else k): v for k, v in headers.items()}


def from_wire(headers: Mapping[str, str], ce_prefix: str) -> dict[str, str]:
    """Inverse of :func:`to_wire`: rename a binding's CloudEvents prefix back to ``ce-``."""
    if ce_prefix == CE_PREFIX:
        return dict(headers)
    n = len(ce_prefix)
    return {(CE_PREFIX + k[n:] if k.startswith(ce_prefix) else k): v for k, v in headers.items()}
