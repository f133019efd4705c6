"""Interop with services that do not use messagebus, on the emulator: Google's own
google-cloud-pubsub clients and the CloudEvents SDK's attribute form, both ways, and the
emulator's any-project-id rule.

Each test counts what arrives: every valid foreign message is handled exactly once (none
dead-lettered, none duplicated), and what messagebus publishes is read by the plain client.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from google.api_core.exceptions import NotFound
from google.cloud import pubsub_v1
from messagebus_pubsub import PubSubTransport, physical_names
from pubsub_helpers import PROJECT, url_for

from messagebus import Bus, Envelope, InvalidURL
from messagebus.testing import Collector
from messagebus.transports import Destination, DestinationKind

N = 5


@pytest.fixture
def google(pubsub_emulator: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any]]:
    """Google's plain (synchronous) publisher and subscriber clients on the emulator, made
    the way a service that does not use messagebus makes them: ``PUBSUB_EMULATOR_HOST``."""
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator)
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    yield publisher, subscriber
    subscriber.close()


def _path(kind: str, resource: str, project: str = PROJECT) -> str:
    return f"projects/{project}/{kind}/{resource}"


def _topic(name: str) -> str:
    return _path("topics", physical_names(Destination(DestinationKind.TOPIC, name))["topic"])


async def _publish(publisher: Any, topic: str, data: bytes, **attributes: str) -> str:
    """Publish with the plain client; returns Pub/Sub's message id."""
    future = publisher.publish(topic, data, **attributes)
    return str(await asyncio.to_thread(future.result, 30))


async def _pull(subscriber: Any, subscription: str, count: int) -> list[Any]:
    """Pull and ack ``count`` messages with the plain client; fails after 30 s."""
    got: list[Any] = []
    async with asyncio.timeout(30):
        while len(got) < count:
            request = {"subscription": subscription, "max_messages": 10}
            response = await asyncio.to_thread(subscriber.pull, request=request, timeout=5)
            if response.received_messages:
                got.extend(r.message for r in response.received_messages)
                ack_ids = [r.ack_id for r in response.received_messages]
                await asyncio.to_thread(subscriber.acknowledge, subscription=subscription, ack_ids=ack_ids)
    return got


def _group_bus(url: str, topic: str, failures: int = 0) -> tuple[Bus, Collector[tuple[Any, Envelope]]]:
    """A bus whose group ``g`` of ``topic`` collects (body, envelope), failing each message's
    first ``failures`` attempts."""
    bus = Bus.from_url(url, service="interop")
    got: Collector[tuple[Any, Envelope]] = Collector(30)

    @bus.subscribe(topic, group="g")
    async def handle(body: Any, envelope: Envelope) -> None:
        got.add((body, envelope))
        if envelope.attempt <= failures:
            raise RuntimeError("fails once")

    return bus, got


async def _dead_lettered(subscriber: Any, topic: str) -> bool:
    """Whether group ``g`` of ``topic`` ever dead-lettered: its dead-letter subscription is
    made with the first dead letter."""
    dlq = physical_names(Destination(DestinationKind.TOPIC, topic, "g"))["dead_letter"]
    try:
        await asyncio.to_thread(subscriber.get_subscription, subscription=_path("subscriptions", dlq))
    except NotFound:
        return False
    return True


async def test_a_plain_publisher_is_read_with_pubsub_id_and_publish_time_kept_across_a_retry(
    pubsub_url: str, google: tuple[Any, Any]
) -> None:
    """Catches a plain ``publish`` (no CloudEvents attributes) arriving with an empty
    ``Envelope.id`` or no timestamp: Pub/Sub's message id and publish time stand in, and stay
    the same on the retry (which the transport re-publishes under a new Pub/Sub id).
    Counts: each of N handled twice (one failure, one retry), none dead-lettered."""
    publisher, subscriber = google
    topic = f"interop.{uuid.uuid4().hex[:8]}"
    bus, got = _group_bus(pubsub_url, topic, failures=1)
    async with bus:
        sent = [await _publish(publisher, _topic(topic), json.dumps({"n": i}).encode(), region="eu") for i in range(N)]
        await got.wait_for(2 * N)
    by_n: dict[int, list[Envelope]] = {}
    for body, env in got.items:
        by_n.setdefault(body["n"], []).append(env)
    assert sorted(by_n) == list(range(N)) and all(len(v) == 2 for v in by_n.values()), "lost or duplicated"
    assert {env.id for envs in by_n.values() for env in envs} == set(sent)
    for first, retry in by_n.values():
        assert (retry.id, retry.timestamp) == (first.id, first.timestamp), "the retry lost the original id or time"
        assert isinstance(first.timestamp, datetime)
        assert first.headers == {"region": "eu"}
    assert not await _dead_lettered(subscriber, topic)


async def test_the_cloudevents_sdk_attribute_form_and_structured_mode_are_read(
    pubsub_url: str, google: tuple[Any, Any]
) -> None:
    """Catches the CloudEvents Pub/Sub binding not being read: binary mode (``ce-*``
    attributes, names in any case, ``Content-Type`` as datacontenttype) and structured mode
    (``Content-Type: application/cloudevents+json``) must give the event's id, type, source
    and time, not be dead-lettered, and leak nothing into the user headers."""
    publisher, subscriber = google
    topic = f"interop.{uuid.uuid4().hex[:8]}"
    bus, got = _group_bus(pubsub_url, topic)
    attrs = {"type": "com.example.order", "source": "/shop", "datacontenttype": "application/json"}
    events = [CloudEvent(dict(attrs), {"n": i}) for i in range(2 * N)]
    async with bus:
        for i, event in enumerate(events):
            if i % 2:
                wire = ce_http.to_structured(event, JSONFormat())
                attributes = {"Content-Type": "application/cloudevents+json; charset=utf-8"}
            else:
                wire = ce_http.to_binary(event, JSONFormat())
                attributes = {k.replace("ce-", "Ce-"): v for k, v in wire.headers.items()}
                attributes["Content-Type"] = attributes.pop("content-type")
            await _publish(publisher, _topic(topic), wire.body, **attributes)
        await got.wait_for(2 * N)
    by_id = {env.id: (body, env) for body, env in got.items}
    assert len(got.items) == 2 * N and set(by_id) == {e.get_id() for e in events}, "lost, duplicated or ids not read"
    for event in events:
        body, env = by_id[event.get_id()]
        assert body == event.get_data()
        assert (env.type, env.source, env.timestamp) == ("com.example.order", "/shop", event.get_time())
        assert env.content_type == "application/json"
        assert env.headers == {}, "binding attributes leaked into the user headers"
    assert not await _dead_lettered(subscriber, topic)


async def test_plain_and_cloudevents_sdk_subscribers_read_what_messagebus_publishes(
    pubsub_url: str, google: tuple[Any, Any]
) -> None:
    """Catches a messagebus publish a plain subscriber cannot use: the data as published, user
    headers as plain attributes, and the ``ce-*`` attributes the CloudEvents SDK reads back
    as the same event. Counts: N published, N pulled, each once."""
    _, subscriber = google
    topic = f"interop.{uuid.uuid4().hex[:8]}"
    subscription = _path("subscriptions", f"foreign-{uuid.uuid4().hex[:8]}")
    bus = Bus.from_url(pubsub_url, service="interop")
    async with bus:
        await bus.publish(topic, {"declare": True})  # creates the topic
        await asyncio.to_thread(subscriber.create_subscription, name=subscription, topic=_topic(topic))
        for i in range(N):
            await bus.publish(topic, {"n": i}, headers={"region": "eu"}, key=f"k{i}")
    messages = await _pull(subscriber, subscription, N)
    assert sorted(json.loads(m.data)["n"] for m in messages) == list(range(N)), "lost or duplicated"
    for m in messages:
        attributes = dict(m.attributes)
        assert attributes["region"] == "eu"
        assert m.ordering_key == f"k{json.loads(m.data)['n']}"
        event = ce_http.from_binary(ce_http.HTTPMessage(attributes, m.data), JSONFormat())
        assert event.get_data() == json.loads(m.data)
        assert event.get_source() == "interop" and event.get_type() == "dict" and event.get_id()


def test_any_project_id_is_accepted_with_an_emulator_and_refused_without(monkeypatch: pytest.MonkeyPatch) -> None:
    """Catches ``pubsub://p1?emulator_host=...`` refused with InvalidURL (the emulator takes
    any project id; only the real service has Google's 6-30 character rule), and the rule
    being dropped for the real service."""
    monkeypatch.delenv("PUBSUB_EMULATOR_HOST", raising=False)
    assert PubSubTransport.from_url("pubsub://p1?emulator_host=127.0.0.1:8085").project == "p1"
    with pytest.raises(InvalidURL, match=r"invalid Google Cloud project id 'p1'.*emulator"):
        PubSubTransport.from_url("pubsub://p1")
    with pytest.raises(InvalidURL, match="invalid project id"):
        PubSubTransport.from_url("pubsub://a*b?emulator_host=127.0.0.1:8085")
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:8085")
    assert PubSubTransport.from_url("pubsub://p1").project == "p1"
    with pytest.raises(InvalidURL, match="invalid Google Cloud project id"):
        PubSubTransport.from_url("pubsub://p1?credentials_file=/keys/sa.json")


async def test_a_short_project_id_works_on_the_emulator(pubsub_emulator: str) -> None:
    """Catches the emulator's any-project-id rule being accepted by the URL check but not
    working end to end (resource paths built from it): a round trip on project ``p1``."""
    bus = Bus.from_url(url_for(pubsub_emulator).replace(f"pubsub://{PROJECT}", "pubsub://p1"), service="interop")
    got: Collector[int] = Collector(30)
    queue = f"interop.{uuid.uuid4().hex[:8]}"

    @bus.consume(queue)
    async def handle(n: int) -> None:
        got.add(n)

    async with bus:
        for i in range(N):
            await bus.send(queue, i)
        assert sorted(await got.wait_for(N)) == list(range(N))
