"""Bad input: URLs, options, unreachable server, refused credentials, oversized messages."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from messagebus_nats import NatsOptions, NatsTransport, physical_names
from messagebus_nats._codec import decode_headers, encode_headers, pack, unpack

from messagebus import Bus, ConnectError, InvalidOption, InvalidURL, LifecycleError
from messagebus.testing import free_port, missing_broker
from messagebus.testing._brokers import BrokerProcess
from messagebus.transports import Destination, DestinationKind, OutgoingMessage

SECRET = "s3cr3t-pw"


def test_bus_finds_the_transport_by_scheme() -> None:
    """Catches a missing entry point: both schemes build a NatsTransport."""
    for url in ("nats://127.0.0.1:4222", "nats+tls://127.0.0.1:4222"):
        assert isinstance(Bus.from_url(url).transport, NatsTransport)


@pytest.mark.parametrize(
    ("url", "exc", "words"),
    [
        (f"nats://u:{SECRET}@h?ack_wait=soon", InvalidOption, ["ack_wait", "Valid options", "pull_expires"]),
        (f"nats://u:{SECRET}@h?bogus=1", InvalidOption, ["unknown option 'bogus'", "prefix"]),
        (f"nats://u:{SECRET}@h?prefix=a.b", InvalidOption, ["prefix"]),
        (f"nats://u:{SECRET}@h?storage=disk", InvalidOption, ["storage", "file", "memory"]),
        (f"nats://u:{SECRET}@h?tls_ca=/tmp/x.pem", InvalidOption, ["tls_ca"]),
        (f"nats+tls://u:{SECRET}@h?tls_ca=/no/such.pem", InvalidOption, ["/no/such.pem", "does not exist"]),
        (f"nats+tls://u:{SECRET}@h?tls_cert={__file__}", InvalidOption, ["tls_cert and tls_key"]),
        (f"nats://h?token={SECRET}&ack_wait=0", InvalidOption, ["ack_wait"]),
        (f"nats://u:{SECRET}@/", InvalidURL, ["names no server"]),
        (f"nats://u:{SECRET}@h/vhost", InvalidURL, ["has a path"]),
    ],
)
def test_bad_urls_fail_at_from_url_with_clear_redacted_errors(url: str, exc: type[Exception], words: list[str]) -> None:
    """Catches a typo reaching connect, an error not saying what is allowed, and a password
    or token shown in an error."""
    with pytest.raises(exc) as info:
        NatsTransport.from_url(url)
    text = str(info.value)
    for word in words:
        assert word in text
    assert SECRET not in text and SECRET not in repr(info.value)


def test_wrong_scheme_and_repr() -> None:
    """Catches another scheme accepted, and the password in the transport's repr."""
    with pytest.raises(InvalidURL, match="nats:// or nats\\+tls://"):
        NatsTransport.from_url("kafka://h:9092")
    transport = NatsTransport.from_url(f"nats://u:{SECRET}@h:4222?prefix=p1")
    assert SECRET not in repr(transport)
    assert transport.options == NatsOptions(prefix="p1")


async def test_unreachable_server_raises_connect_error_after_bounded_retry() -> None:
    """Catches a connect that hangs or leaks a raw nats-py error: ConnectError names the
    server and the attempts, never the password, with the native error chained."""
    port = free_port()  # nothing listens there
    transport = NatsTransport.from_url(f"nats://u:{SECRET}@127.0.0.1:{port}?connect_retries=1&connect_timeout=1")
    with pytest.raises(ConnectError) as info:
        await transport.connect()
    text = str(info.value)
    assert f"127.0.0.1:{port}" in text and "2 attempt(s)" in text
    assert SECRET not in text
    assert info.value.__cause__ is not None
    await transport.close()


async def test_refused_credentials_fail_at_once(tmp_path: Path) -> None:
    """Catches wrong credentials retried until a timeout or reported as unreachable: a
    server requiring a password refuses ours at once; the error says to check the
    credentials and never shows the password."""
    binary = shutil.which("nats-server")
    if binary is None:
        missing_broker("nats (private server)", "nats-server is not on PATH")
    port = free_port()
    server = BrokerProcess(
        "nats (auth)",
        [binary, "-a", "127.0.0.1", "-p", str(port), "--user", "app", "--pass", "right-one"],
        port,
        "",
        keeps_messages=False,
        log_path=str(tmp_path / "nats.log"),
    )
    server.start_sync()
    try:
        transport = NatsTransport.from_url(f"nats://app:{SECRET}@127.0.0.1:{port}?connect_retries=5")
        with pytest.raises(ConnectError, match="credentials") as info:
            await transport.connect()
        assert SECRET not in str(info.value)
        assert "1 attempt(s)" in str(info.value)
        await transport.close()
    finally:
        server.close()


async def test_publish_and_subscribe_before_connect_raise_lifecycle_error() -> None:
    """Catches an AttributeError on a missing client before connect."""
    transport = NatsTransport.from_url("nats://127.0.0.1:4222")
    queue = Destination(DestinationKind.QUEUE, "q")
    with pytest.raises(LifecycleError):
        await transport.publish([OutgoingMessage(queue, b"x", {}, None)])

    async def handler(delivery: object) -> None:
        return None

    with pytest.raises(LifecycleError):
        await transport.subscribe(queue, handler, concurrency=1)


def test_headers_round_trip_exactly_and_big_ones_are_packed() -> None:
    """Catches header names or values NATS cannot carry (non-ASCII names, surrounding
    spaces, line breaks, '%') changed on the way, and headers over JetStream's 64 KiB
    block refused instead of packed in front of the body."""
    logical = {"é" * 10: "v", "x-space": "  a b  ", "x-lines": "a\r\nb", "x-pct": "%mb:x", "a%20b": "%41"}
    assert decode_headers(encode_headers(logical)) == logical
    big = encode_headers({"x-big": "v" * 70_000})
    wire, body = pack(big, b"payload")
    assert "x-big" not in wire
    headers, rest = unpack(wire, body)
    assert rest == b"payload" and decode_headers(headers) == {"x-big": "v" * 70_000}


def test_physical_names() -> None:
    """Catches names JetStream refuses (dots in stream names) and topic/queue names that
    collide after sanitising."""
    topic = physical_names(Destination(DestinationKind.TOPIC, "orders.created", "billing"), NatsOptions(prefix="p"))
    assert topic["subject"] == "p.orders.created" and "." not in topic["stream"]
    assert topic["consumer"] == "billing" and topic["dead_letter_subject"] == "p.orders.created.billing.dlq"
    a = physical_names(Destination(DestinationKind.QUEUE, "a.b"))
    b = physical_names(Destination(DestinationKind.QUEUE, "a_b"))
    assert a["stream"] != b["stream"]
