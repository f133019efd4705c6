"""Messages as stream entries: one field per header under its logical name (CloudEvents as
``ce-*``, as in the HTTP binding), the body, the key and the attempt under reserved
``messagebus-`` names that no user header may take."""

from __future__ import annotations

from collections.abc import Mapping

from messagebus.transports import OutgoingMessage, headers

__all__ = ["ATTEMPT", "BODY", "KEY", "decode", "encode"]

BODY = "messagebus-body"
KEY = headers.KEY
ATTEMPT = headers.ATTEMPT
_BODY, _KEY, _ATTEMPT = BODY.encode(), KEY.encode(), ATTEMPT.encode()

Fields = dict[str, str | bytes]


def encode(message: OutgoingMessage) -> Fields:
    """The fields of the entry ``message`` becomes. Pure."""
    fields: Fields = dict(message.headers)
    if message.key is not None:
        fields[KEY] = message.key
    fields[BODY] = message.body
    return fields


def decode(fields: Mapping[bytes, bytes]) -> tuple[bytes, dict[str, str], str | None, int]:
    """Body, logical headers, key and stored attempt (1 if none) of an entry's fields.
    Undecodable text is replaced, never raised: a foreign producer's entry is still delivered
    (an entry with no body field arrives with an empty body and the bus dead-letters it)."""
    logical = {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in fields.items()}
    body = fields.get(_BODY, b"")
    logical.pop(BODY, None)
    key = logical.pop(KEY, None)
    attempt_text = logical.pop(ATTEMPT, "1")
    attempt = int(attempt_text) if attempt_text.isdigit() else 1
    return body, logical, key, max(attempt, 1)
