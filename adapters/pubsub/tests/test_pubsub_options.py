"""URL and option validation (no I/O), name mapping and attribute encoding."""

from __future__ import annotations

import pytest
from messagebus_pubsub import PubSubOptions, PubSubTransport, physical_names, resource_id
from messagebus_pubsub._codec import MAX_BODY, check_size, decode_attributes, encode_attributes

from messagebus import Bus, InvalidOption, InvalidURL, MessageTooLarge
from messagebus.transports import Destination, DestinationKind, TransportURL


def make(url: str) -> PubSubTransport:
    return PubSubTransport.from_url(TransportURL.parse(url))


@pytest.fixture(autouse=True)
def no_emulator_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PUBSUB_EMULATOR_HOST", raising=False)


def test_entry_point_builds_the_transport() -> None:
    bus = Bus.from_url("pubsub://my-project?emulator_host=127.0.0.1:8085")
    assert isinstance(bus.transport, PubSubTransport)
    assert bus.transport.messaging_system == "gcp_pubsub"
    assert bus.transport.capabilities.ordering is True
    assert bus.transport.capabilities.max_message_size == MAX_BODY
    assert bus.transport.capabilities.persistence is False  # the emulator is in-memory
    assert Bus.from_url("pubsub://my-project").transport.capabilities.persistence is True


def test_project_and_options_are_parsed() -> None:
    t = make("pubsub://my-project?emulator_host=localhost:8085&ack_deadline=30&max_messages=50&ordering=false")
    assert t.project == "my-project"
    assert t.emulator_host == "localhost:8085"
    assert t.capabilities.ordering is False


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("pubsub://", "exactly one Google Cloud project"),
        ("pubsub://My-Project", "invalid Google Cloud project id"),
        ("pubsub://abc", "invalid Google Cloud project id"),
        ("pubsub://1project", "invalid Google Cloud project id"),
        ("pubsub://project-", "invalid Google Cloud project id"),
        ("pubsub://my-project:8085", "names a port"),
        ("pubsub://user:secret@my-project", "no user or password"),
        ("pubsub://my-project/topics", "has a path"),
        ("pubsub://a-project,b-project", "exactly one Google Cloud project"),
    ],
)
def test_bad_urls_are_refused_with_a_clear_message(url: str, fragment: str) -> None:
    with pytest.raises(InvalidURL, match=fragment) as info:
        make(url)
    assert "secret" not in str(info.value)


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("colour=blue", "unknown option 'colour'"),
        ("ack_deadline=5", "ack_deadline"),
        ("ack_deadline=601", "ack_deadline"),
        ("max_messages=0", "max_messages"),
        ("ordering=maybe", "ordering"),
        ("emulator_host=localhost", "host:port"),
        ("emulator_host=localhost:99999", "host:port"),
        ("connect_timeout=0", "connect_timeout"),
        ("credentials_file=%20", "credentials"),
    ],
)
def test_bad_options_are_refused_listing_valid_ones(query: str, fragment: str) -> None:
    with pytest.raises(InvalidOption, match=fragment) as info:
        make(f"pubsub://my-project?{query}")
    assert "Valid options for pubsub://" in str(info.value)
    assert "emulator_host" in str(info.value)


def test_emulator_host_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:8681")
    assert make("pubsub://my-project").emulator_host == "127.0.0.1:8681"
    # The URL wins over the environment; an explicit credentials file means the real service.
    assert make("pubsub://my-project?emulator_host=127.0.0.1:9000").emulator_host == "127.0.0.1:9000"
    assert make("pubsub://my-project?credentials_file=/keys/sa.json").emulator_host is None


def test_malformed_emulator_environment_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "not-a-host-port")
    with pytest.raises(InvalidOption, match="PUBSUB_EMULATOR_HOST"):
        make("pubsub://my-project")


def test_credentials_file_and_emulator_exclude_each_other() -> None:
    with pytest.raises(InvalidOption, match="exclude each other"):
        make("pubsub://my-project?emulator_host=127.0.0.1:8085&credentials_file=/keys/sa.json")


@pytest.mark.parametrize(
    "name",
    ["orders", "orders.created.billing", "a", "1st-topic", "google-events", "goog", "x" * 300, "_private"],
)
def test_resource_ids_follow_pubsub_rules(name: str) -> None:
    rid = resource_id(name)
    assert 3 <= len(rid) <= 255
    assert rid[0].isalpha()
    assert not rid.lower().startswith("goog")
    assert all(c.isalnum() or c in "-_.~+%" for c in rid)


def test_resource_ids_keep_legal_names_and_never_collide() -> None:
    assert resource_id("orders.created") == "orders.created"
    assert resource_id("orders.created.billing~retry") == "orders.created.billing~retry"
    names = ["ab", "1ab", "goog-a", "x" * 300, "x" * 299 + "y", "_ab", "mb-ab"]
    ids = [resource_id(n) for n in names]
    assert len(set(ids)) == len(names)


def test_headers_that_do_not_fit_attributes_are_packed_and_restored() -> None:
    headers = {
        "x-long": "v" * 5000,
        "googly": "reserved prefix",
        "topic": "collides with a publish() argument",
        "k" * 300: "long key",
        "ce-id": "abc",
        "x-normal": "é",
    }
    attributes, ordering_key = encode_attributes(headers, "order-1", True)
    assert ordering_key == "order-1"
    assert all(len(k.encode()) <= 256 and len(v.encode()) <= 1024 for k, v in attributes.items())
    assert not any(k.lower().startswith("goog") or k == "topic" for k in attributes)
    assert attributes["ce-id"] == "abc"
    assert decode_attributes(attributes) == headers


def test_long_keys_and_keys_without_ordering_travel_in_an_attribute() -> None:
    long_key = "k" * 2000
    attributes, ordering_key = encode_attributes({}, long_key, True)
    assert ordering_key.startswith("sha256:") and len(ordering_key) < 1024
    assert decode_attributes(attributes)["messagebus-key"] == long_key
    attributes, ordering_key = encode_attributes({}, "order-1", False)
    assert ordering_key == ""
    assert attributes["messagebus-key"] == "order-1"


def test_too_many_headers_are_refused_as_too_large() -> None:
    headers = {f"x-{i}": "v" * 1000 for i in range(200)}
    with pytest.raises(MessageTooLarge, match="attributes"):
        encode_attributes(headers, None, True)


def test_size_limits() -> None:
    topic = "projects/p/topics/t"
    check_size(topic, b"x" * MAX_BODY, {"ce-id": "1"}, "")
    with pytest.raises(MessageTooLarge, match="larger than"):
        check_size(topic, b"x" * (MAX_BODY + 1), {}, "")
    with pytest.raises(MessageTooLarge, match="request limit"):
        check_size(topic, b"x" * MAX_BODY, {f"h{i}": "v" * 1024 for i in range(130)}, "")


def test_physical_names_give_every_resource_of_a_destination() -> None:
    """Catches physical_names disagreeing with what the transport declares: a retry or
    dead-letter id mapped other than by resource_id, or a subscription given to a bare topic."""
    group = Destination(DestinationKind.TOPIC, "orders.created", "billing")
    assert physical_names(group) == {
        "topic": "orders.created",
        "subscription": "orders.created.billing",
        "retry_topic": "orders.created.billing~retry",
        "retry_subscription": "orders.created.billing~retry",
        "dead_letter": "orders.created.billing.dlq",
    }
    assert physical_names(Destination(DestinationKind.TOPIC, "orders.created")) == {"topic": "orders.created"}
    queue = physical_names(Destination(DestinationKind.QUEUE, "1st"), PubSubOptions())
    assert queue["topic"] == queue["subscription"] == resource_id("1st") != "1st"
    assert queue["dead_letter"] == resource_id("1st.dlq")


def test_options_given_to_the_constructor_replace_the_query() -> None:
    """Catches the constructor ignoring its options argument (the common shape of every
    adapter: XTransport(url, options))."""
    url = TransportURL.parse("pubsub://my-project?emulator_host=127.0.0.1:8085")
    t = PubSubTransport(url, PubSubOptions(emulator_host="127.0.0.1:9999", ordering=False))
    assert t.emulator_host == "127.0.0.1:9999"
    assert t.capabilities.ordering is False
    assert PubSubTransport.from_url("pubsub://my-project?ordering=false").capabilities.ordering is False
