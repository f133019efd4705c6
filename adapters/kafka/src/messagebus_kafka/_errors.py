"""What aiokafka's errors mean, in one table: raise sites call ``errors.map(exc, Default, what)``."""

from __future__ import annotations

from aiokafka import errors as kerr

from messagebus import ConnectError, MessageBusError, MessageTooLarge
from messagebus.transports import ErrorMap, describe_error

__all__ = ["IDEMPOTENCE_HINT", "SASL_HINT", "errors"]

SASL_HINT = "check sasl_mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512), security_protocol and the user name/password"
IDEMPOTENCE_HINT = (
    "brokers without support for the idempotent producer (Tansu with memory storage, old or "
    "locked-down clusters) need idempotence=false in the URL"
)

_SASL = (
    kerr.UnsupportedSaslMechanismError,
    kerr.SaslAuthenticationFailed,
    kerr.AuthenticationFailedError,
    kerr.AuthenticationMethodNotSupported,
    kerr.IllegalSaslStateError,
)


def _sasl_rejected(exc: BaseException, what: str, default: type[MessageBusError]) -> MessageBusError:
    return ConnectError(f"{what}: Kafka rejected SASL authentication ({describe_error(exc)}); {SASL_HINT}")


def _unknown(exc: BaseException, what: str, default: type[MessageBusError]) -> MessageBusError:
    # InitProducerId (at connect) and produce requests fail with UnknownError on such brokers.
    return default(f"{what}: {describe_error(exc)}; if the idempotent producer is on, {IDEMPOTENCE_HINT}")


#: aiokafka error -> messagebus error; anything else becomes the caller's default class.
errors = ErrorMap(
    (_SASL, _sasl_rejected),
    ((kerr.MessageSizeTooLargeError, kerr.RecordListTooLargeError), MessageTooLarge),
    (kerr.UnknownError, _unknown),
)
