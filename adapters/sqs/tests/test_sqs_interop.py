"""Interop with services that do not use messagebus, on moto: plain boto3 SQS and SNS clients
(raw and non-raw SNS subscriptions) and the CloudEvents SDK's attribute form, both ways.

Each test counts what arrives: every valid foreign message is handled exactly once (nothing
dead-lettered, nothing duplicated), and what messagebus sends is readable by the plain
client with its attributes where SNS filter policies can see them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from datetime import datetime
from typing import Any

import pytest
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from messagebus_sqs import SqsTransport, physical_names
from messagebus_sqs._codec import MAX_ATTRIBUTES, PACKED, decode_message
from sqs_helpers import topic_arns

from messagebus import Bus, Envelope
from messagebus.testing import Collector
from messagebus.transports import Destination, DestinationKind

N = 5
USER_HEADERS = {f"x-h{i}": f"v{i}" for i in range(1, 6)}


def _names(sqs_url: str, kind: DestinationKind, name: str, group: str | None = None) -> dict[str, str]:
    options = SqsTransport.from_url(sqs_url).options
    return physical_names(Destination(kind, name, group), options)


async def _call(fn: Any, **kwargs: Any) -> Any:
    # boto3 blocks: off the loop, so the bus's consumers keep running meanwhile.
    return await asyncio.to_thread(fn, **kwargs)


async def _queue_url(sqs: Any, sqs_url: str, queue: str) -> str:
    """The URL of the SQS queue behind messagebus queue ``queue``."""
    name = _names(sqs_url, DestinationKind.QUEUE, queue)["queue"]
    return str((await _call(sqs.get_queue_url, QueueName=name))["QueueUrl"])


async def _topic_arn(sns: Any, sqs_url: str, topic: str) -> str:
    """The ARN of the SNS topic behind messagebus topic ``topic`` (it exists)."""
    suffix = ":" + _names(sqs_url, DestinationKind.TOPIC, topic)["topic"]
    return next(arn for arn in await asyncio.to_thread(topic_arns, sns) if arn.endswith(suffix))


async def _queue_arn(sqs: Any, url: str) -> str:
    attrs = await _call(sqs.get_queue_attributes, QueueUrl=url, AttributeNames=["QueueArn"])
    return str(attrs["Attributes"]["QueueArn"])


async def _receive_all(sqs: Any, url: str, count: int) -> list[dict[str, Any]]:
    """Receive (and delete) ``count`` messages with a plain client, long-polling; fails after
    30 s with what arrived."""
    got: list[dict[str, Any]] = []
    async with asyncio.timeout(30):
        while len(got) < count:
            response = await _call(
                sqs.receive_message,
                QueueUrl=url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=1,
                MessageAttributeNames=["All"],
                MessageSystemAttributeNames=["All"],
            )
            for m in response.get("Messages", []):
                got.append(m)
                await _call(sqs.delete_message, QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
    return got


def _dead_lettered(sqs: Any, sqs_url: str, name: str) -> int:
    """Messages in the dead-letter queue of queue ``name`` (0 when it was never created)."""
    dlq = _names(sqs_url, DestinationKind.QUEUE, name)["dead_letter"]
    urls = sqs.list_queues(QueueNamePrefix=dlq).get("QueueUrls", [])
    total = 0
    for url in urls:
        attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
        total += int(attrs["Attributes"]["ApproximateNumberOfMessages"])
    return total


def _collecting_bus(sqs_url: str, queue: str) -> tuple[Bus, Collector[tuple[dict[str, Any], Envelope]]]:
    bus = Bus.from_url(sqs_url, service="interop")
    got: Collector[tuple[dict[str, Any], Envelope]] = Collector(30)

    @bus.consume(queue)
    async def handle(body: dict[str, Any], envelope: Envelope) -> None:
        got.add((body, envelope))

    return bus, got


async def test_a_plain_sqs_producer_is_read_with_its_attributes_and_the_broker_id_and_time(
    sqs_url: str, raw_clients: tuple[Any, Any]
) -> None:
    """Catches a plain ``SendMessage`` (no CloudEvents attributes; String, Number and Binary
    attributes; a ``content-type`` attribute) being dead-lettered, losing attributes, or
    arriving with no id or time: ``Envelope.id`` is SQS's MessageId and ``timestamp`` its
    SentTimestamp. Counts: each of N handled once, none dead-lettered."""
    sqs, _ = raw_clients
    queue = f"interop.{uuid.uuid4().hex[:8]}"
    bus, got = _collecting_bus(sqs_url, queue)
    attributes = {
        "region": {"DataType": "String", "StringValue": "eu"},
        "count": {"DataType": "Number", "StringValue": "3"},
        "blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01"},
        "Content-Type": {"DataType": "String", "StringValue": "application/json"},
    }
    async with bus:
        url = await _queue_url(sqs, sqs_url, queue)
        sent = [
            (
                await _call(
                    sqs.send_message, QueueUrl=url, MessageBody=json.dumps({"n": i}), MessageAttributes=attributes
                )
            )["MessageId"]
            for i in range(N)
        ]
        await got.wait_for(N)
    assert sorted(body["n"] for body, _ in got.items) == list(range(N)), "lost or duplicated"
    assert {env.id for _, env in got.items} == set(sent)
    for _, env in got.items:
        assert env.headers == {"region": "eu", "count": "3", "blob": base64.b64encode(b"\x00\x01").decode()}
        assert env.content_type == "application/json"
        assert isinstance(env.timestamp, datetime)
    assert _dead_lettered(sqs, sqs_url, queue) == 0


async def test_the_cloudevents_sdk_attribute_form_both_ways(sqs_url: str, raw_clients: tuple[Any, Any]) -> None:
    """Catches the CloudEvents SDK's binary form (``ce-*`` attributes, ``content-type``) not
    being read as the envelope (id, type, source, time, content type), and what messagebus
    sends not being readable by the SDK as the same event (its data, id, type, source)."""
    sqs, _ = raw_clients
    queue = f"interop.{uuid.uuid4().hex[:8]}"
    outbound = f"interop.{uuid.uuid4().hex[:8]}"
    bus, got = _collecting_bus(sqs_url, queue)
    events = [
        CloudEvent({"type": "com.example.order", "source": "/shop", "subject": f"o{i}"}, {"n": i}) for i in range(N)
    ]
    async with bus:
        url = await _queue_url(sqs, sqs_url, queue)
        for event in events:
            wire = ce_http.to_binary(event, JSONFormat())
            attrs = {k: {"DataType": "String", "StringValue": v} for k, v in wire.headers.items()}
            await _call(sqs.send_message, QueueUrl=url, MessageBody=wire.body.decode(), MessageAttributes=attrs)
        await got.wait_for(N)
        await bus.send(outbound, {"n": 42}, headers={"region": "eu"})
    by_id = {env.id: (body, env) for body, env in got.items}
    assert len(got.items) == N and set(by_id) == {e.get_id() for e in events}, "lost, duplicated or ids not read"
    for event in events:
        body, env = by_id[event.get_id()]
        assert body == event.get_data()
        assert (env.type, env.source, env.content_type) == ("com.example.order", "/shop", "application/json")
        assert env.timestamp == event.get_time()
        assert env.headers == {}, "CloudEvents attributes leaked into the user headers"
    assert _dead_lettered(sqs, sqs_url, queue) == 0

    out_url = await _queue_url(sqs, sqs_url, outbound)
    [message] = await _receive_all(sqs, out_url, 1)
    headers = {k: a["StringValue"] for k, a in message["MessageAttributes"].items()}
    event = ce_http.from_binary(ce_http.HTTPMessage(headers, message["Body"].encode()), JSONFormat())
    assert event.get_data() == {"n": 42}
    assert event.get_type() == "dict" and event.get_source() == "interop" and event.get_id()
    assert headers["region"] == "eu"


@pytest.mark.parametrize("raw", [False, True], ids=["sns-envelope", "raw-delivery"])
async def test_a_plain_sns_publisher_reaches_a_messagebus_queue_raw_or_not(
    sqs_url: str, raw_clients: tuple[Any, Any], raw: bool
) -> None:
    """Catches a message that SNS delivered through a subscription without raw delivery (the
    body wrapped in SNS's JSON envelope) being dead-lettered as undecodable (the bug), or read
    as the envelope instead of the message: body, attributes, and ``Envelope.id`` = SNS's
    MessageId with the envelope's Timestamp. Counts: each of N handled once."""
    sqs, sns = raw_clients
    queue = f"interop.{uuid.uuid4().hex[:8]}"
    bus, got = _collecting_bus(sqs_url, queue)
    async with bus:
        url = await _queue_url(sqs, sqs_url, queue)
        topic_arn = (await _call(sns.create_topic, Name=f"foreign-{uuid.uuid4().hex[:8]}"))["TopicArn"]
        await _call(
            sns.subscribe,
            TopicArn=topic_arn,
            Protocol="sqs",
            Endpoint=await _queue_arn(sqs, url),
            Attributes={"RawMessageDelivery": "true" if raw else "false"},
        )
        sent = [
            (
                await _call(
                    sns.publish,
                    TopicArn=topic_arn,
                    Message=json.dumps({"n": i}),
                    MessageAttributes={"region": {"DataType": "String", "StringValue": "eu"}},
                )
            )["MessageId"]
            for i in range(N)
        ]
        await got.wait_for(N)
    assert sorted(body["n"] for body, _ in got.items) == list(range(N)), "lost or duplicated"
    for _, env in got.items:
        assert env.headers == {"region": "eu"}
        assert isinstance(env.timestamp, datetime)
    if not raw:
        assert {env.id for _, env in got.items} == set(sent), "the SNS MessageId is not the envelope id"
    assert _dead_lettered(sqs, sqs_url, queue) == 0


async def test_a_messagebus_publish_read_through_an_sns_envelope_keeps_every_header_and_byte(
    sqs_url: str, raw_clients: tuple[Any, Any]
) -> None:
    """Catches our own attributes (packed headers, the base64 body marker) being lost when an
    operator subscribed a queue to a messagebus topic without raw delivery: a binary body
    and 15 headers come back exactly, with the publisher's id."""
    sqs, sns = raw_clients
    topic, queue = f"interop.t.{uuid.uuid4().hex[:8]}", f"interop.q.{uuid.uuid4().hex[:8]}"
    bus = Bus.from_url(sqs_url, service="interop")
    got: Collector[tuple[bytes, Envelope]] = Collector(30)

    @bus.consume(queue)
    async def handle(body: bytes, envelope: Envelope) -> None:
        got.add((body, envelope))

    headers = {f"x-h{i:02d}": f"value {i}" for i in range(15)}
    bodies = [bytes([0, 255, i]) for i in range(N)]
    async with bus:
        url = await _queue_url(sqs, sqs_url, queue)
        # The topic exists once messagebus published to it; the operator subscribes after that.
        await bus.publish(topic, b"before the subscription")
        topic_arn = await _topic_arn(sns, sqs_url, topic)
        await _call(sns.subscribe, TopicArn=topic_arn, Protocol="sqs", Endpoint=await _queue_arn(sqs, url))
        for body in bodies:
            await bus.publish(topic, body, headers=headers)
        await got.wait_for(N)
    assert sorted(body for body, _ in got.items) == sorted(bodies), "lost, duplicated or altered"
    for _, env in got.items:
        assert {k: v for k, v in env.headers.items() if k not in ("traceparent", "tracestate")} == headers
        assert env.type == "bytes" and env.source == "interop"
    assert len({env.id for _, env in got.items}) == N
    assert _dead_lettered(sqs, sqs_url, queue) == 0


async def test_user_headers_are_real_attributes_so_sns_filter_policies_match_them(
    sqs_url: str, raw_clients: tuple[Any, Any]
) -> None:
    """Catches user headers being packed while the envelope's attributes take the 10 slots
    (with 6 user headers and a key only 3 were real attributes): an SNS filter policy on the
    6th header then silently matched nothing. A foreign queue subscribed with that policy
    gets exactly the matching messages, raw and through an SNS envelope; a second policy on
    another header checks every user header got a slot."""
    sqs, sns = raw_clients
    topic = f"interop.f.{uuid.uuid4().hex[:8]}"
    bus = Bus.from_url(sqs_url, service="interop")
    async with bus:
        await bus.publish(topic, {"declare": True})  # creates the topic
        topic_arn = await _topic_arn(sns, sqs_url, topic)
        inboxes: dict[str, str] = {}
        for label, raw, policy in [
            ("raw", True, {"region": ["eu"]}),
            ("envelope", False, {"region": ["eu"]}),
            ("first", True, {"x-h1": ["v1"]}),
        ]:
            url = (await _call(sqs.create_queue, QueueName=f"foreign-{label}-{uuid.uuid4().hex[:8]}"))["QueueUrl"]
            await _call(
                sns.subscribe,
                TopicArn=topic_arn,
                Protocol="sqs",
                Endpoint=await _queue_arn(sqs, url),
                Attributes={"RawMessageDelivery": str(raw).lower(), "FilterPolicy": json.dumps(policy)},
            )
            inboxes[label] = url
        for i in range(2 * N):
            region = "eu" if i % 2 == 0 else "us"
            await bus.publish(topic, {"n": i}, headers={**USER_HEADERS, "region": region}, key=f"k{i}")
    eu = {i for i in range(2 * N) if i % 2 == 0}
    raw_got = await _receive_all(sqs, inboxes["raw"], len(eu))
    assert sorted(json.loads(m["Body"])["n"] for m in raw_got) == sorted(eu), "filter matched the wrong messages"
    for m in raw_got:
        attrs = m["MessageAttributes"]
        assert len(attrs) <= MAX_ATTRIBUTES
        assert {k: attrs[k]["StringValue"] for k in [*USER_HEADERS, "region"]} == {**USER_HEADERS, "region": "eu"}
        assert "messagebus-key" in json.loads(attrs[PACKED]["StringValue"]), "the key should yield its slot"
    wrapped = await _receive_all(sqs, inboxes["envelope"], len(eu))
    notes = [json.loads(m["Body"]) for m in wrapped]
    assert sorted(json.loads(n["Message"])["n"] for n in notes) == sorted(eu)
    assert all(n["MessageAttributes"]["region"]["Value"] == "eu" for n in notes)
    assert len(await _receive_all(sqs, inboxes["first"], 2 * N)) == 2 * N
    # Every publish was delivered by now (the unfiltered inbox has all): nothing unexpected left.
    for label in ("raw", "envelope"):
        attrs = await _call(sqs.get_queue_attributes, QueueUrl=inboxes[label], AttributeNames=["All"])
        assert attrs["Attributes"]["ApproximateNumberOfMessages"] == "0", f"{label}: a filtered-out message arrived"


@pytest.mark.parametrize(
    "body",
    [
        '{"Type": "Notification", "Message": "x", "MessageAttributes": [1]}',
        '{"Type": "Notification", "Message": 5}',
        '{"Type": "Notification", "Message": "x", "MessageAttributes": {"a": 1, "b": {"Value": 2}}, "Timestamp": 3}',
        '["Notification"]',
        '{"Type": "Notification", ',
    ],
)
def test_a_body_that_only_looks_like_an_sns_envelope_never_breaks_decoding(body: str) -> None:
    """Catches a foreign JSON body shaped almost like an SNS notification raising something
    other than DecodeError in the decoder (the consumer only turns DecodeError into a dead
    letter; anything else would fail every receive of that queue): it is read as a plain
    body, or as the envelope's message with the malformed parts left out."""
    got_body, headers, _ = decode_message({"Body": body, "MessageId": "m-1"})
    assert got_body in (body.encode(), b"x")
    assert headers.get("ce-id") == "m-1" or got_body == b"x"
