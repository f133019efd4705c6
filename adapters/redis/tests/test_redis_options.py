"""URL and option validation (no server needed), physical names and the entry points."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest
from messagebus_redis import RedisTransport, physical_names
from messagebus_redis._options import RedisOptions

from messagebus import InvalidOption, InvalidURL
from messagebus.transports import Destination, DestinationKind


def test_defaults_and_typed_options() -> None:
    """Catches options parsed as text or lost: the defaults hold, and typed values arrive typed."""
    t = RedisTransport.from_url("redis://h:6380/2?prefix=app:&maxlen=1000&retention=3600&start_from=earliest")
    assert (t.options.maxlen, t.options.retention, t.options.start_from, t.options.prefix) == (
        1000,
        3600.0,
        "earliest",
        "app:",
    )
    assert t.connection.address == "h:6380/2"
    assert RedisTransport.from_url("redis://h").options.visibility_timeout == 30.0
    assert t.messaging_system == "redis"
    assert t.capabilities.max_message_size == 1024 * 1024
    assert not t.capabilities.ordering_across_instances


def test_unknown_option_lists_the_valid_ones_and_hides_the_password() -> None:
    """Catches a typo silently ignored, and the password echoed in the error."""
    with pytest.raises(InvalidOption, match="unknown option 'visibilty_timeout'") as info:
        RedisTransport.from_url("redis://u:hunter2@h/0?visibilty_timeout=3")
    text = str(info.value)
    assert "visibility_timeout" in text and "max_message_size" in text and "start_from" in text
    assert "hunter2" not in text and "hunter2" not in repr(RedisTransport.from_url("redis://u:hunter2@h"))


@pytest.mark.parametrize(
    ("query", "match"),
    [
        ("block_time=20", "block_time must be lower than socket_timeout"),
        ("start_from=yesterday", "start_from"),
        ("maxlen=-1", "maxlen"),
        ("ssl_ca_certs=/etc/hosts", "need a rediss:// URL"),
        ("prefix=a%20b", "prefix"),
    ],
)
def test_bad_option_values_say_what_is_allowed(query: str, match: str) -> None:
    """Catches bad values reaching redis-py (or failing later, at connect)."""
    with pytest.raises(InvalidOption, match=match):
        RedisTransport.from_url(f"redis://u:pw-secret@h?{query}")


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("redis://h1,h2/0", "several hosts"),
        ("redis://h/orders", "database number"),
        ("rediss://h?ssl_certfile=/etc/hosts", "go together"),
        ("rediss://h?ssl_ca_certs=/nonexistent.pem", "not a readable file"),
        ("amqp://h", "handles redis:// or rediss://"),
    ],
)
def test_bad_urls_are_refused_before_any_io(url: str, match: str) -> None:
    """Catches a URL the client would read otherwise (a path as db 0, a second host ignored)."""
    with pytest.raises((InvalidURL, InvalidOption), match=match):
        RedisTransport.from_url(url)


def test_physical_names_follow_the_prefix_and_share_a_hash_tag() -> None:
    """Catches names operators cannot find, and keys of one destination in different cluster slots."""
    group = Destination(DestinationKind.TOPIC, "orders", "billing")
    names = physical_names(group, RedisOptions.model_validate({"prefix": "x:"}))
    assert names == {
        "stream": "x:t:{orders}",
        "group": "billing",
        "retry": "x:t:{orders}:billing:retry",
        "due": "x:t:{orders}:billing:due",
        "dead_letter": "x:q:{orders.billing.dlq}",
    }
    assert physical_names(Destination(DestinationKind.TOPIC, "orders")) == {"stream": "mb:t:{orders}"}
    queue = physical_names(Destination(DestinationKind.QUEUE, "jobs"))
    assert (queue["stream"], queue["group"], queue["retry"]) == ("mb:q:{jobs}", "messagebus", "mb:q:{jobs}:retry")


def test_both_schemes_are_registered() -> None:
    """Catches a scheme missing from the entry points (Bus.from_url would not find it)."""
    found = {e.name: e.value for e in entry_points(group="messagebus.transports")}
    assert found["redis"] == found["rediss"] == "messagebus_redis:RedisTransport.from_url"
