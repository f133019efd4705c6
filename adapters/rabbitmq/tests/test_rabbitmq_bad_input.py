"""Bad input: URLs, options, unreachable broker, wrong credentials/vhost, oversized messages."""

from __future__ import annotations

import pytest
from messagebus_rabbitmq import RabbitMQTransport
from rmq_helpers import message, queue

from messagebus import (
    Bus,
    ConnectError,
    InvalidOption,
    InvalidURL,
    LifecycleError,
    MessageTooLarge,
)
from messagebus.testing import free_port
from messagebus.transports import TransportURL

SECRET = "s3cr3t-pw"


def build(url: str) -> RabbitMQTransport:
    return RabbitMQTransport.from_url(TransportURL.parse(url))


def test_bus_finds_the_transport_by_scheme() -> None:
    for url in ("amqp://guest:guest@localhost/", "amqps://guest:guest@localhost/?verify=false"):
        assert isinstance(Bus.from_url(url).transport, RabbitMQTransport)


@pytest.mark.parametrize(
    ("url", "exc", "words"),
    [
        (f"amqp://u:{SECRET}@h/?heartbeat=soon", InvalidOption, ["heartbeat", "Valid options", "prefetch"]),
        (f"amqp://u:{SECRET}@h/?prefetch=0", InvalidOption, ["prefetch"]),
        (f"amqp://u:{SECRET}@h/?bogus=1", InvalidOption, ["unknown option 'bogus'", "connection_name"]),
        (f"amqp://u:{SECRET}@h/?max_message_size=999999999999", InvalidOption, ["max_message_size"]),
        (f"amqp://u:{SECRET}@h/?cafile=/tmp/ca.pem", InvalidOption, ["cafile", "amqps://"]),
        (f"amqps://u:{SECRET}@h/?cafile=/no/such/ca.pem", InvalidOption, ["/no/such/ca.pem", "does not exist"]),
        (f"amqps://u:{SECRET}@h/?keyfile={__file__}", InvalidOption, ["keyfile", "certfile"]),
        (f"amqps://u:{SECRET}@h/?verify=maybe", InvalidOption, ["verify"]),
        (f"amqp://u:{SECRET}@/vhost", InvalidURL, ["names no host"]),
    ],
)
def test_bad_urls_fail_at_from_url_with_clear_redacted_errors(url: str, exc: type[Exception], words: list[str]) -> None:
    with pytest.raises(exc) as info:
        build(url)
    text = str(info.value)
    for word in words:
        assert word in text
    assert SECRET not in text
    assert SECRET not in repr(info.value)


def test_wrong_scheme_is_refused() -> None:
    with pytest.raises(InvalidURL, match="amqp:// or amqps://"):
        RabbitMQTransport.from_url(TransportURL.parse("kafka://h:9092"))


def test_repr_and_options_never_show_the_password() -> None:
    t = build(f"amqp://u:{SECRET}@h:5672/prod?heartbeat=10&prefetch=50&connection_name=billing")
    assert SECRET not in repr(t)
    assert t.vhost == "prod"
    assert t.options.heartbeat == 10 and t.options.prefetch == 50
    assert build("amqp://h/").vhost == "/"
    assert build("amqp://h/%2F").vhost == "/"
    assert build("amqp://h").vhost == "/"


async def test_unreachable_host_raises_connect_error_after_bounded_retry() -> None:
    port = free_port()  # nothing listens there
    t = build(f"amqp://guest:{SECRET}@127.0.0.1:{port}/?connect_retries=1&connect_timeout=2")
    with pytest.raises(ConnectError) as info:
        await t.connect()
    text = str(info.value)
    assert f"127.0.0.1:{port}" in text
    assert "2 attempt(s)" in text
    assert SECRET not in text and "***" in text
    assert info.value.__cause__ is not None
    await t.close()


async def test_wrong_credentials(rabbitmq_url: str) -> None:
    parsed = TransportURL.parse(rabbitmq_url)
    bad = TransportURL(parsed.scheme, parsed.hosts, "guest", SECRET, parsed.path, {"connect_retries": "5"})
    t = RabbitMQTransport.from_url(bad)
    with pytest.raises(ConnectError) as info:
        await t.connect()
    text = str(info.value)
    assert "refused the credentials" in text and "'guest'" in text
    assert SECRET not in text


async def test_wrong_vhost(rabbitmq_url: str) -> None:
    parsed = TransportURL.parse(rabbitmq_url)
    bad = TransportURL(parsed.scheme, parsed.hosts, parsed.username, parsed.password, "/no-such-vhost", {})
    t = RabbitMQTransport.from_url(bad)
    with pytest.raises(ConnectError) as info:
        await t.connect()
    text = str(info.value)
    assert "'no-such-vhost'" in text and "virtual host" in text
    assert f":{parsed.password}@" not in text and ":***@" in text


async def test_tls_to_a_plain_port_fails_clearly(rabbitmq_url: str) -> None:
    parsed = TransportURL.parse(rabbitmq_url)
    url = TransportURL(
        "amqps",
        parsed.hosts,
        parsed.username,
        parsed.password,
        parsed.path,
        {"verify": "false", "connect_retries": "0", "connect_timeout": "3"},
    )
    t = RabbitMQTransport.from_url(url)
    with pytest.raises(ConnectError) as info:
        await t.connect()
    assert "amqps://" in str(info.value)
    await t.close()


async def test_message_over_the_maximum_is_refused_before_sending_anything(rabbitmq_url: str, name: str, admin) -> None:
    admin.cleanup_later(queues=(name,))
    parsed = TransportURL.parse(rabbitmq_url)
    url = TransportURL(
        parsed.scheme, parsed.hosts, parsed.username, parsed.password, parsed.path, {"max_message_size": "1000"}
    )
    t = RabbitMQTransport.from_url(url)
    assert t.capabilities.max_message_size == 1000
    await t.connect()
    try:
        small = message(queue(name), 1)
        big = message(queue(name), 2)
        big.body = b"x" * 1001
        with pytest.raises(MessageTooLarge) as info:
            await t.publish([small, big])
        assert "1001 bytes" in str(info.value) and "1000" in str(info.value)
        assert not await admin.queue_exists(name), "nothing may be sent when one message is too large"
        await t.publish([small])
        assert await admin.queue_info(name) == (1, 0)
    finally:
        await t.close()


async def test_use_before_connect_and_after_close(rabbitmq_url: str, name: str) -> None:
    t = build(rabbitmq_url)
    with pytest.raises(LifecycleError, match="not connected"):
        await t.publish([message(queue(name), 1)])
    await t.connect()
    await t.connect()  # idempotent
    await t.close()
    await t.close()  # idempotent
    with pytest.raises(LifecycleError):
        await t.publish([message(queue(name), 1)])
    with pytest.raises(LifecycleError):
        await t.connect()


def test_constructor_with_options_still_validates_the_url() -> None:
    """Catches ``RabbitMQTransport(url, options)`` skipping the URL checks when options are
    given: a wrong scheme or a bad query must fail at construction, not at connect; the given
    options replace the URL's."""
    from messagebus_rabbitmq import RabbitMQOptions

    with pytest.raises(InvalidURL, match="amqp:// or amqps://"):
        RabbitMQTransport(TransportURL.parse("kafka://h:9092"), RabbitMQOptions())
    with pytest.raises(InvalidOption, match="bogus"):
        RabbitMQTransport(TransportURL.parse("amqp://h/?bogus=1"), RabbitMQOptions())
    t = RabbitMQTransport(TransportURL.parse("amqp://h/prod?heartbeat=7"), RabbitMQOptions(heartbeat=5))
    assert t.options.heartbeat == 5 and t.vhost == "prod"
