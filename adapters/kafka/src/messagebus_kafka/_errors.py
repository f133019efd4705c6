"""Translation of aiokafka errors into the messagebus error tree (always chained)."""

from __future__ import annotations

from aiokafka import errors as kerr

from messagebus import (
    ConnectError,
    ConsumeError,
    MessageTooLarge,
    PublishError,
    TopologyError,
    TransportError,
)

__all__ = ["connect_error", "consume_error", "publish_error", "topology_error"]

_SASL = (
    kerr.UnsupportedSaslMechanismError,
    kerr.SaslAuthenticationFailed,
    kerr.AuthenticationFailedError,
    kerr.AuthenticationMethodNotSupported,
    kerr.IllegalSaslStateError,
)


def connect_error(exc: BaseException, servers: str, *, sasl: str | None, timeout: float) -> ConnectError:
    """A :class:`ConnectError` explaining why ``servers`` could not be reached."""
    if isinstance(exc, _SASL):
        return ConnectError(
            f"Kafka at {servers} rejected SASL authentication ({exc}); check sasl_mechanism "
            "(PLAIN, SCRAM-SHA-256, SCRAM-SHA-512), security_protocol and the user name/password"
        )
    if sasl is not None and not isinstance(exc, kerr.KafkaError | OSError | TimeoutError):
        return ConnectError(
            f"SASL ({sasl}) handshake with Kafka at {servers} failed ({type(exc).__name__}: {exc}); check "
            "sasl_mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512), security_protocol and the user name/password"
        )
    hint = ""
    if sasl is not None:
        hint = (
            f"; SASL ({sasl}) is configured: if the broker does not speak SASL on this listener, "
            "or the credentials are wrong, the handshake fails the same way"
        )
    detail = str(exc) or type(exc).__name__
    return ConnectError(f"cannot connect to Kafka bootstrap servers {servers} within {timeout:g}s: {detail}{hint}")


def publish_error(exc: BaseException, topic: str) -> TransportError:
    """Map a failed send to :class:`MessageTooLarge` or :class:`PublishError`."""
    if isinstance(exc, kerr.MessageSizeTooLargeError | kerr.RecordListTooLargeError):
        return MessageTooLarge(f"Kafka rejected a message to topic {topic!r} as too large: {exc}")
    if isinstance(exc, kerr.TopicAuthorizationFailedError):
        return PublishError(f"not authorized to publish to Kafka topic {topic!r}: {exc}")
    if isinstance(exc, kerr.InvalidTopicError):
        return PublishError(f"Kafka rejected the topic name {topic!r}: {exc}")
    return PublishError(f"Kafka did not confirm a message to topic {topic!r}: {exc or type(exc).__name__}")


def topology_error(exc: BaseException, topic: str) -> TopologyError:
    """Map a failed topic creation or lookup."""
    return TopologyError(f"cannot create or look up Kafka topic {topic!r}: {exc or type(exc).__name__}")


def consume_error(exc: BaseException, what: str) -> ConsumeError:
    """Map a failed fetch / commit / retry publish."""
    return ConsumeError(f"{what}: {exc or type(exc).__name__}")
