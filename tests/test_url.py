"""Transport URL parsing, redaction and option validation."""

import pytest
from pydantic import model_validator

from messagebus import Bus, InvalidOption, InvalidURL, TransportNotFound, TransportURL
from messagebus.transports import TransportOptions, parse_options


def test_parses_every_part() -> None:
    url = TransportURL.parse("amqp://guest:s%3Acret@rabbit.local:5673/vhost?heartbeat=30&name=x")
    assert url.scheme == "amqp"
    assert url.hosts == (("rabbit.local", 5673),)
    assert url.username == "guest"
    assert url.password == "s:cret"
    assert url.path == "/vhost"
    assert url.query == {"heartbeat": "30", "name": "x"}


def test_several_hosts_and_ipv6() -> None:
    url = TransportURL.parse("kafka://k1:9092,k2:9093,[::1]:9094")
    assert url.hosts == (("k1", 9092), ("k2", 9093), ("::1", 9094))
    assert url.host == "k1"
    assert url.port == 9092


def test_password_never_shown() -> None:
    url = TransportURL.parse("amqp://user:hunter2@host/")
    assert "hunter2" not in str(url)
    assert "hunter2" not in repr(url)
    assert "***" in str(url)
    assert "hunter2" in url.render(redact=False)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("", "non-empty"),
        ("localhost:5672", "no scheme"),
        ("amqp://user:hunter2@host:99999/", "invalid port"),
        ("amqp://user:hunter2@host:abc/", "invalid port"),
        ("kafka://h?a=1&a=2", "repeats"),
        ("kafka://[::1/", "IPv6"),
    ],
)
def test_malformed_urls_say_what_is_wrong(raw: str, message: str) -> None:
    with pytest.raises(InvalidURL, match=message) as info:
        TransportURL.parse(raw)
    assert "hunter2" not in str(info.value)


def test_unknown_scheme_names_the_package_to_install() -> None:
    with pytest.raises(TransportNotFound, match="no known package provides it") as info:
        Bus.from_url("kafkaa://x")
    assert "Installed schemes" in str(info.value)


def test_known_but_missing_adapter_names_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from messagebus import _discovery

    monkeypatch.setattr(_discovery, "entry_points", lambda **kw: [])
    with pytest.raises(TransportNotFound, match=r"messagebus-sdk\[rabbitmq\]"):
        Bus.from_url("amqp://guest:pw@localhost/")


class Opts(TransportOptions):
    heartbeat: int = 60
    name: str = "x"
    verify: bool = True


def test_options_parse_typed_values() -> None:
    opts = parse_options(TransportURL.parse("x://h?heartbeat=5&verify=false"), Opts)
    assert opts.heartbeat == 5
    assert opts.verify is False


def test_unknown_option_lists_valid_ones() -> None:
    with pytest.raises(
        InvalidOption, match=r"unknown option 'hartbeat'.*Valid options for x://: heartbeat, name, verify"
    ):
        parse_options(TransportURL.parse("x://u:secret@h?hartbeat=5"), Opts)


def test_ill_typed_option_says_what_was_given() -> None:
    with pytest.raises(InvalidOption, match=r"option 'heartbeat'='soon'") as info:
        parse_options(TransportURL.parse("x://u:secret@h?heartbeat=soon"), Opts)
    assert "secret" not in str(info.value)


def test_memory_url_options_are_validated() -> None:
    with pytest.raises(InvalidOption, match="max_message_size"):
        Bus.from_url("memory://x?max_mesage_size=10")
    bus = Bus.from_url("memory://x?max_message_size=10")
    assert bus.transport.capabilities.max_message_size == 10


def test_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESSAGEBUS_URL", "memory://envtest")
    monkeypatch.setenv("MESSAGEBUS_SERVICE", "billing")
    bus = Bus.from_env()
    assert bus.service == "billing"
    assert str(bus.url) == "memory://envtest"
    monkeypatch.delenv("MESSAGEBUS_URL")
    assert str(Bus.from_env(service="x").url) == "memory://"


class SecretOpts(TransportOptions):
    sasl_password: str = ""
    mode: str = "plain"

    @model_validator(mode="after")
    def _needs_mode(self) -> "SecretOpts":
        if self.sasl_password and self.mode == "plain":
            raise ValueError("sasl_password needs mode=scram")
        return self


def test_option_errors_never_echo_secrets() -> None:
    with pytest.raises(InvalidOption, match="sasl_password needs mode=scram") as info:
        parse_options(TransportURL.parse("x://h?sasl_password=hunter2"), SecretOpts)
    assert "hunter2" not in str(info.value)
    with pytest.raises(InvalidOption, match=r"option 'sasl_password'=\*\*\*") as info:
        parse_options(TransportURL.parse("x://h"), SecretOpts, sasl_password=123)
    assert "123" not in str(info.value)


def test_secret_query_options_are_redacted() -> None:
    url = TransportURL.parse("kafka://h:9092?sasl_password=hunter2&client_id=me&api_key=k3y")
    assert str(url) == "kafka://h:9092?sasl_password=***&client_id=me&api_key=***"
    assert "hunter2" in url.render(redact=False)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("amqp://user:hunter2@:5699/", "host is missing"),
        ("amqps://user:hunter2@:5671/vhost", "host is missing"),
        ("kafka://user:hunter2@:9092", "host is missing"),
        ("kafka://k1:9092,:9093", "host is missing"),
        ("kafka://k1:9092,,k2:9092", "empty host"),
        ("kafka://k1:9092,", "empty host"),
        ("memory://user:hunter2@:5", "host is missing"),
        ("sqs://user:hunter2@:4566/?region=eu-west-1", "host is missing"),
        ("pubsub://user:hunter2@:8085", "host is missing"),
        ("amqp://user:hunter2@/", "names no host"),
        ("amqp://user:hunt/er2@host:5672/", "percent-encode"),
    ],
)
def test_an_empty_host_is_refused_without_showing_the_password(
    raw: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Catches `messagebus check amqp://user:pw@:5699/` passing: an empty host (a port with no
    host, an empty entry in a host list) was dropped or kept as "", so the URL validated and the
    client would connect to a default host the URL never named. Also a password with an
    unescaped '/' whose head was read as a port and echoed in the error."""
    from messagebus.__main__ import main

    with pytest.raises(InvalidURL, match=message) as info:
        Bus.from_url(raw)
    assert "hunter2" not in str(info.value) and "hunt" not in str(info.value)
    assert main(["check", raw]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "hunt" not in err


@pytest.mark.parametrize(
    "raw",
    [
        "memory://",
        "memory://shop",
        "memory://?max_message_size=10",
        "sqs://?region=eu-west-1",
        "pubsub://my-project",
        "kafka://k1:9092,k2:9093",
        "amqp://guest:guest@localhost:5672/%2F",
        "amqp://u:p%2Fw@h/v%40x",
    ],
)
def test_urls_without_a_host_where_the_scheme_needs_none_still_pass(raw: str) -> None:
    """Catches the empty-host check refusing schemes that have their own rules: memory://NAME,
    sqs:// (no host, the region in the query), pubsub://PROJECT; and escaped user info."""
    Bus.from_url(raw)
