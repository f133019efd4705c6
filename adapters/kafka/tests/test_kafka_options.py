"""URL and option validation (no broker needed) and physical name mapping."""

from __future__ import annotations

import pytest
from messagebus_kafka import KafkaTransport, physical_names
from messagebus_kafka._topology import kafka_name

from messagebus import ConfigurationError, InvalidOption, InvalidURL
from messagebus.transports import Destination, DestinationKind, TransportURL


def make(url: str) -> KafkaTransport:
    return KafkaTransport.from_url(TransportURL.parse(url))


def test_defaults_and_several_bootstrap_hosts() -> None:
    t = make("kafka://k1:9093,k2,[::1]:9094")
    assert t.bootstrap_servers == ["k1:9093", "k2:9092", "[::1]:9094"]
    kw = t.connection.client_kwargs()
    assert kw["security_protocol"] == "PLAINTEXT"
    assert "sasl_mechanism" not in kw
    assert t.options.idempotence is True
    assert t.messaging_system == "kafka"
    assert t.capabilities.max_message_size == t.options.max_request_size - 8192


def test_typed_options_are_parsed() -> None:
    t = make(
        "kafka://h:9092?client_id=svc&partitions=12&replication_factor=3&compression=gzip"
        "&session_timeout_ms=20000&max_request_size=2097152&idempotence=false&metadata_max_age_ms=1000"
    )
    o = t.options
    assert o.metadata_max_age_ms == 1000  # how soon a pattern subscription sees a new topic
    assert make("kafka://h:9092").options.metadata_max_age_ms == 5000
    assert (o.client_id, o.partitions, o.replication_factor, o.compression) == ("svc", 12, 3, "gzip")
    assert (o.session_timeout_ms, o.max_request_size, o.idempotence) == (20000, 2097152, False)


def test_unknown_option_lists_valid_ones() -> None:
    with pytest.raises(InvalidOption, match="unknown option 'partition'") as info:
        make("kafka://h?partition=3")
    assert "partitions" in str(info.value) and "sasl_mechanism" in str(info.value)


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("partitions=0", "partitions"),
        ("partitions=many", "partitions"),
        ("compression=brotli", "compression"),
        ("sasl_mechanism=GSSAPI&sasl_username=u&sasl_password=p", "sasl_mechanism"),
        ("security_protocol=TLS", "security_protocol"),
        ("heartbeat_interval_ms=5000&session_timeout_ms=4000", "heartbeat_interval_ms must be lower"),
        ("max_request_size=10", "max_request_size"),
    ],
)
def test_bad_option_values(query: str, fragment: str) -> None:
    with pytest.raises(InvalidOption, match=fragment):
        make(f"kafka://h:9092?{query}")


def test_sasl_from_userinfo_and_password_never_shown() -> None:
    t = make("kafka://alice:s3cr%40t@h:9092?sasl_mechanism=SCRAM-SHA-512")
    kw = t.connection.client_kwargs()
    assert kw["security_protocol"] == "SASL_PLAINTEXT"
    assert (kw["sasl_mechanism"], kw["sasl_plain_username"], kw["sasl_plain_password"]) == (
        "SCRAM-SHA-512",
        "alice",
        "s3cr@t",
    )
    assert "s3cr" not in repr(t) and "s3cr" not in str(t.options) and "s3cr" not in repr(t.options)


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("kafka://h?sasl_mechanism=PLAIN", "needs credentials"),
        ("kafka://h?security_protocol=SASL_SSL", "needs credentials"),
        ("kafka://u:topsecret@h?security_protocol=PLAINTEXT", "does not use SASL"),
        ("kafka://u@h", "both a user name and a password"),
        ("kafka://u:topsecret@h?sasl_username=x", "credentials given twice"),
        ("kafka://h?ssl_certfile=/nonexistent/cert.pem", "go together"),
        ("kafka://h?ssl_cafile=/nonexistent/ca.pem", "not a readable file"),
    ],
)
def test_conflicting_security_settings(url: str, fragment: str) -> None:
    with pytest.raises(InvalidOption, match=fragment) as info:
        make(url)
    assert "topsecret" not in str(info.value)


def test_ssl_protocol_derived_from_files(tmp_path: pytest.TempPathFactory) -> None:
    ca = tmp_path / "ca.pem"  # type: ignore[operator]
    ca.write_text("not really a certificate")
    t = make(f"kafka://u:pw@h?ssl_cafile={ca}")
    assert t.options.effective_protocol == "SASL_SSL"
    with pytest.raises(ConfigurationError, match="TLS files"):
        t.connection.client_kwargs()  # the file is read when connecting: a clear error, not a traceback


@pytest.mark.parametrize(
    "url",
    ["amqp://h", "kafka://", "kafka://h/path"],
)
def test_bad_urls(url: str) -> None:
    with pytest.raises(InvalidURL):
        make(url)


def test_from_url_accepts_a_string() -> None:
    assert KafkaTransport.from_url("kafka://h:1234").bootstrap_servers == ["h:1234"]


def test_kafka_names_are_legal_and_distinct() -> None:
    assert kafka_name("orders.created") == "orders.created"
    long = "x" * 200 + ".y" * 40
    mapped = kafka_name(long)
    assert len(mapped) <= 249 and mapped != kafka_name(long + "z")
    assert kafka_name("a+b") != kafka_name("a-b")
    assert all(c.isalnum() or c in "._-" for c in kafka_name("naïve name!"))
    assert kafka_name(".") not in (".", "..")


def test_subscription_and_queue_mapping() -> None:
    """Catches physical_names drifting from what the transport uses (groups, retry and
    dead-letter topics) or giving roles to a plain topic, which has no group."""
    assert physical_names(Destination(DestinationKind.TOPIC, "orders", "billing")) == {
        "topic": "orders",
        "group": "orders.billing",
        "retry": "orders.billing.retry",
        "dead_letter": "orders.billing.dlq",
    }
    assert physical_names(Destination(DestinationKind.QUEUE, "emails")) == {
        "topic": "emails",
        "group": "messagebus.queue.emails",
        "retry": "emails.retry",
        "dead_letter": "emails.dlq",
    }
    assert physical_names(Destination(DestinationKind.TOPIC, "orders")) == {"topic": "orders"}
