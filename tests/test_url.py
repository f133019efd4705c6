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
