"""History on Pub/Sub: the ``topic_retention`` option, topics made with it, subscriptions
sought to ``start_from`` when created, and ``start_from`` ignored (logged) for one that exists.
The kit's history tests (test_pubsub_conformance.py) cover the Bus-level behaviour."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from messagebus_pubsub import PubSubTransport, resource_id
from pubsub_helpers import PROJECT, Admin, Inbox, out, url_for

from messagebus import Bus, InvalidOption, TopologyError, UnsupportedFeature
from messagebus._history import Position
from messagebus.transports import Destination, DestinationKind, TransportURL


def make(url: str) -> PubSubTransport:
    return PubSubTransport.from_url(TransportURL.parse(url))


@pytest.fixture
async def kept(pubsub_emulator: str) -> AsyncIterator[PubSubTransport]:
    """A connected transport whose topics keep their messages for an hour (history on)."""
    t = make(url_for(pubsub_emulator, topic_retention="1h", ordering="false"))
    await t.connect()
    yield t
    await t.close()


async def retention_of(admin: Admin, topic: str) -> float:
    found = await admin.publisher.get_topic(topic=f"projects/{PROJECT}/topics/{resource_id(topic)}")
    return float(found.message_retention_duration.total_seconds())


def group(topic: str, start: Position = None, name: str = "g") -> Destination:
    return Destination(DestinationKind.TOPIC, topic, name, start_from=start)


@pytest.mark.parametrize(("given", "seconds"), [("7d", 604800), ("12H", 43200), ("10m", 600), ("3600", 3600)])
def test_topic_retention_spans_are_parsed(given: str, seconds: int) -> None:
    """Bug caught: a unit read wrongly (hours as minutes, upper case refused, plain seconds
    refused), so topics keep their history for the wrong time."""
    t = make(f"pubsub://my-project?emulator_host=127.0.0.1:8085&ordering=false&topic_retention={given}")
    assert t.options.topic_retention == seconds
    assert t.capabilities.history is True


@pytest.mark.parametrize("given", ["9m", "32d", "7w", "-1d", "1.5h", "week"])
def test_bad_topic_retention_is_refused_naming_the_limits(given: str) -> None:
    """Bug caught: a retention Pub/Sub refuses (under 10 minutes, over 31 days) or an
    unreadable one accepted, failing only at the first topic, or refused without saying what
    is allowed."""
    with pytest.raises(InvalidOption, match=r"topic_retention.*from 10m to 31d.*such as 7d"):
        make(f"pubsub://my-project?topic_retention={given}")


def test_history_needs_topic_retention_and_an_unordered_emulator() -> None:
    """Bug caught: history claimed without topic retention (a new group silently starts at the
    latest message), or on the emulator with ordering (its Seek answers 501 Unimplemented),
    or an error that does not say which option to add."""
    plain = make("pubsub://my-project")
    assert plain.capabilities.history is False
    assert "add topic_retention=7d to the URL" in plain.capabilities.history_reason
    with pytest.raises(UnsupportedFeature, match="topic_retention=7d"):
        Bus(plain).subscribe("orders", start_from="earliest")
    assert make("pubsub://my-project?topic_retention=7d").capabilities.history is True
    ordered = make("pubsub://my-project?emulator_host=127.0.0.1:8085&topic_retention=7d")
    assert ordered.capabilities.history is False
    assert "add ordering=false" in ordered.capabilities.history_reason


async def test_topics_get_the_retention_raised_never_lowered(
    pubsub_emulator: str, kept: PubSubTransport, admin: Admin, name: str
) -> None:
    """Bug caught: topics made without the retention (history lost before any group exists),
    an existing topic left without it, a longer one lowered (another service's history cut),
    or a queue's or retry topic's messages kept too (paid for, never read)."""
    plain = make(url_for(pubsub_emulator))
    await plain.connect()
    try:
        await plain.publish([out(Destination(DestinationKind.TOPIC, f"{name}.old"), b"x")])
    finally:
        await plain.close()
    assert await retention_of(admin, f"{name}.old") == 0
    await kept.publish([out(Destination(DestinationKind.TOPIC, f"{name}.old"), b"x")])
    assert await retention_of(admin, f"{name}.old") == 3600
    longer = make(url_for(pubsub_emulator, topic_retention="2h", ordering="false"))
    await longer.connect()
    try:
        await longer.publish([out(Destination(DestinationKind.TOPIC, f"{name}.new"), b"x")])
    finally:
        await longer.close()
    await kept.publish([out(Destination(DestinationKind.TOPIC, f"{name}.new"), b"x")])
    assert await retention_of(admin, f"{name}.new") == 7200
    consumers = [
        await kept.subscribe(source, Inbox(), concurrency=1)
        for source in (group(f"{name}.new"), Destination(DestinationKind.QUEUE, f"{name}.q"))
    ]
    for consumer in consumers:
        await consumer.stop(1)
    assert await retention_of(admin, f"{name}.q") == 0
    assert await retention_of(admin, f"{name}.new.g~retry") == 0


@pytest.mark.parametrize(
    ("start", "before_seen"), [(None, False), ("earliest", True), ("future", False)], ids=["latest", "earliest", "time"]
)
async def test_a_created_subscription_is_sought_to_its_start(
    kept: PubSubTransport, name: str, start: str | None, before_seen: bool
) -> None:
    """Bug caught: a new group not sought to its start: a time ignored (a retained message
    published before it delivered), "earliest" not reaching back, or a latest group handed the
    retained history (the emulator does that unless sought to the time it was made)."""
    topic = Destination(DestinationKind.TOPIC, name)
    await kept.publish([out(topic, b"before")])
    # A start a minute ahead: the seek marks everything retained before it as read, whatever
    # the clock margin it takes; what is published after the subscription exists still comes.
    position: Position = datetime.now(UTC) + timedelta(minutes=1) if start == "future" else None
    if start == "earliest":
        position = "earliest"
    inbox = Inbox()
    consumer = await kept.subscribe(group(name, position), inbox, concurrency=1)
    await kept.publish([out(topic, b"after")])
    await inbox.got.wait_until(lambda got: any(d.body == b"after" for d in got))
    await consumer.stop(1)
    bodies = sorted(d.body for d in inbox.got.items)
    assert bodies == ([b"after", b"before"] if before_seen else [b"after"])


async def test_start_is_ignored_and_logged_for_an_existing_subscription(
    pubsub_emulator: str, kept: PubSubTransport, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Bug caught: an existing group rewound by a later start_from (everything handled again),
    whether this transport made it or another did, or start_from dropped without the log line."""
    topic = Destination(DestinationKind.TOPIC, name)
    first = Inbox()
    consumer = await kept.subscribe(group(name), first, concurrency=1)
    await kept.publish([out(topic, b"one")])
    await first.got.wait_for(1)
    await consumer.stop(1)
    other = make(url_for(pubsub_emulator, topic_retention="1h", ordering="false"))
    await other.connect()
    try:
        for n, transport in enumerate((kept, other)):  # known to this transport; made by another
            caplog.clear()
            inbox = Inbox()
            with caplog.at_level(logging.INFO, logger="messagebus"):
                consumer = await transport.subscribe(group(name, "earliest"), inbox, concurrency=1)
            await kept.publish([out(topic, f"again{n}".encode())])
            await inbox.got.wait_for(1)
            await consumer.stop(1)
            assert [d.body for d in inbox.got.items] == [f"again{n}".encode()]
            assert f"gcp_pubsub group 'g' of {name!r} already exists: start_from=earliest ignored" in caplog.text
    finally:
        await other.close()


async def test_a_failed_seek_leaves_no_subscription_behind(pubsub_emulator: str, admin: Admin, name: str) -> None:
    """Bug caught: a subscription kept after its seek failed: the next subscribe finds it,
    ignores start_from and the group silently starts at the latest message. (The emulator
    cannot seek an ordered subscription: a real failure of Seek.)"""
    ordered = make(url_for(pubsub_emulator, topic_retention="1h"))
    await ordered.connect()
    try:
        with pytest.raises(TopologyError, match="cannot seek subscription"):
            await ordered.subscribe(group(name, "earliest"), Inbox(), concurrency=1)
    finally:
        await ordered.close()
    assert await admin.subscription_topic(f"{name}.g") is None
