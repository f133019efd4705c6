"""Bad URLs, options, endpoints and credentials: clear messagebus errors, no botocore traceback."""

from __future__ import annotations

import http.server
import threading

import pytest
from messagebus_sqs import SqsTransport, queue_name, topic_name
from sqs_helpers import make_url

from messagebus import (
    Bus,
    ConfigurationError,
    ConnectError,
    InvalidOption,
    InvalidURL,
    LifecycleError,
)
from messagebus.testing import free_port
from messagebus.transports import Destination, DestinationKind, OutgoingMessage


@pytest.fixture
def no_aws_config(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    """An environment where the AWS chain finds no region and no credentials."""
    for name in (
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.mark.usefixtures("no_aws_config")
def test_no_region_is_a_configuration_error_naming_the_fix() -> None:
    with pytest.raises(ConfigurationError, match=r"region.*sqs://\?region="):
        SqsTransport.from_url("sqs://")


@pytest.mark.parametrize(
    ("url", "error", "match"),
    [
        ("sqs://?region=us-east-1&colour=blue", InvalidOption, r"unknown option 'colour'.*visibility_timeout"),
        ("sqs://?region=mars", InvalidOption, "region"),
        ("sqs://?region=us-east-1&visibility_timeout=0", InvalidOption, "visibility_timeout"),
        ("sqs://?region=us-east-1&wait_time=21", InvalidOption, "wait_time"),
        ("sqs://?region=us-east-1&fifo=maybe", InvalidOption, "fifo"),
        ("sqs://?region=us-east-1&max_workers=0", InvalidOption, "max_workers"),
        ("sqs://?region=us-east-1&publish_timeout=0", InvalidOption, "publish_timeout"),
        ("sqs://?region=us-east-1&endpoint_url=ftp://host", InvalidOption, "http"),
        ("sqs://?region=us-east-1&endpoint_url=http://user:pw@host:1", InvalidOption, "credentials"),
        ("sqs://?region=us-east-1&queue_prefix=bad.prefix", InvalidOption, "queue_prefix"),
        ("sqs://somehost:4566/?region=us-east-1", InvalidURL, "endpoint_url"),
        ("sqs://key:secret@/?region=us-east-1", InvalidURL, "credential"),
        ("sqs://?region=us-east-1/path", InvalidOption, "region"),
    ],
)
def test_bad_urls_are_refused_without_io(url: str, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match) as info:
        SqsTransport.from_url(url)
    assert "secret" not in str(info.value)


def test_bus_finds_the_transport_by_scheme() -> None:
    bus = Bus.from_url("sqs://?region=eu-west-1&fifo=true&wait_time=5")
    assert isinstance(bus.transport, SqsTransport)
    assert bus.transport.options.region == "eu-west-1"
    assert bus.transport.capabilities.ordering is True


async def test_unreachable_endpoint_is_a_connect_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    port = free_port()  # nothing listens there
    transport = SqsTransport.from_url(
        f"sqs://?region=us-east-1&endpoint_url=http://127.0.0.1:{port}&max_attempts=1&connect_timeout=2"
    )
    with pytest.raises(ConnectError, match=f"127.0.0.1:{port}.*cannot reach the AWS endpoint") as info:
        await transport.connect()
    assert info.value.__cause__ is not None
    assert "Traceback" not in str(info.value)
    await transport.close()  # closing an unconnected transport is fine


async def test_endpoint_that_is_not_sqs_is_a_connect_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")

    class NotAws(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = b"<html>nothing here</html>"
            self.send_response(404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotAws)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        transport = SqsTransport.from_url(
            f"sqs://?region=us-east-1&endpoint_url=http://127.0.0.1:{port}&max_attempts=1"
        )
        with pytest.raises(ConnectError, match=f"127.0.0.1:{port}.*ListQueues") as info:
            await transport.connect()
        assert info.value.__cause__ is not None
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


async def test_missing_credentials_are_a_clear_connect_error(
    moto_endpoint: str, prefix: str, monkeypatch: pytest.MonkeyPatch, no_aws_config: None
) -> None:
    transport = SqsTransport.from_url(make_url(moto_endpoint, prefix))
    with pytest.raises(ConnectError, match="no AWS credentials found: set AWS_ACCESS_KEY_ID"):
        await transport.connect()


async def test_secrets_never_show_in_repr_or_errors(
    moto_endpoint: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value")
    transport = SqsTransport.from_url(make_url(moto_endpoint, prefix))
    await transport.connect()
    try:
        assert "very-secret-value" not in repr(transport)
        assert "very-secret-value" not in repr(transport.options)
        assert transport.publish_attributes(Destination(DestinationKind.TOPIC, "t"))["messaging.system"] == "aws.sns"
    finally:
        await transport.close()


async def test_using_an_unconnected_transport_is_a_lifecycle_error() -> None:
    transport = SqsTransport.from_url("sqs://?region=us-east-1")
    dest = Destination(DestinationKind.QUEUE, "q")
    with pytest.raises(LifecycleError, match="connect"):
        await transport.publish([OutgoingMessage(dest, b"{}", {})])


async def test_subscribe_needs_a_positive_concurrency(transport: SqsTransport) -> None:
    async def handler(_: object) -> None:
        return None

    with pytest.raises(ConfigurationError, match="concurrency"):
        await transport.subscribe(Destination(DestinationKind.QUEUE, "q"), handler, concurrency=0)


def test_physical_names_follow_aws_rules() -> None:
    long = "orders." + "x" * 200
    for fifo in (False, True):
        name = queue_name(long, prefix="p-", fifo=fifo)
        assert len(name) <= 80
        assert name.startswith("p-")
        assert name.endswith(".fifo") == fifo
        assert all(c.isalnum() or c in "-_" for c in name.removesuffix(".fifo"))
    # A changed name carries a hash of the logical one, so similar names stay apart.
    assert queue_name("a.b") != queue_name("a-b")
    assert queue_name("plain_name") == "plain_name"
    assert queue_name("orders.billing.dlq") != queue_name("orders.billing")
    assert len(topic_name("t" * 300)) <= 256
