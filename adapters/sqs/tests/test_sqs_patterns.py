"""Issue 17 on SQS/SNS, against moto's server: native ``DelaySeconds`` for delayed messages
to standard queues, SNS filter policies for subscription filters, reply queues deleted on
stop, and patterns refused with SNS's reason. (The generic behaviour is the conformance kit's.)
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from messagebus_sqs import SqsTransport, queue_name, topic_name
from messagebus_sqs._codec import PACKED
from messagebus_sqs._topology import filter_policy
from sqs_helpers import make_url

from messagebus import Bus, Envelope, InvalidDestination, UnsupportedFeature
from messagebus.testing import Collector
from messagebus.transports import DeleteQueue, Destination, DestinationKind, OutgoingMessage
from messagebus.transports import headers as h

TIMEOUT = 30.0


def _out(dest: Destination, body: bytes, headers: dict[str, str] | None = None) -> OutgoingMessage:
    wire = {h.CE_ID: uuid.uuid4().hex, h.CE_SOURCE: "tests", h.CE_TYPE: "t", h.CE_SPECVERSION: "1.0"}
    return OutgoingMessage(dest, body, {**wire, **(headers or {})}, None)


def _due_in(seconds: float) -> dict[str, str]:
    return {h.DELIVER_AT: str(int((time.time() + seconds) * 1000))}


def _sent_delays(client: Any) -> list[int | None]:
    """Records the ``DelaySeconds`` of every SendMessageBatch entry ``client`` sends."""
    delays: list[int | None] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        delays.extend(e.get("DelaySeconds") for e in params["Entries"])

    client.meta.events.register("provide-client-params.sqs.SendMessageBatch", record)
    return delays


def _depth(sqs: Any, url: str) -> dict[str, int]:
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesDelayed"]
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
    return {"visible": int(attrs[names[0]]), "delayed": int(attrs[names[1]])}


# -- delayed delivery: DelaySeconds ------------------------------------------------------------


async def test_delayed_send_to_a_standard_queue_is_delayed_by_sqs(
    transport: SqsTransport, raw_clients: tuple[Any, Any], prefix: str
) -> None:
    """Bug caught: a delayed message sent without ``DelaySeconds`` (receivable at once, each
    consumer receiving and holding it: a receive and a visibility change per message), or
    with a delay SQS refuses (over 900 s: the publish fails)."""
    sqs, _ = raw_clients
    delays = _sent_delays(transport.sqs_client)
    dest = Destination(DestinationKind.QUEUE, "later")
    await transport.publish([_out(dest, b"soon", _due_in(600)), _out(dest, b"next month", _due_in(30 * 86400))])
    await transport.publish([_out(dest, b"now")])
    assert delays[0] is not None and 599 <= delays[0] <= 600
    assert delays[1:] == [900, None]
    url = sqs.get_queue_url(QueueName=queue_name("later", prefix=prefix))["QueueUrl"]
    assert _depth(sqs, url) == {"visible": 1, "delayed": 2}
    # A raw receive gets the undelayed message only: the delayed ones are not receivable.
    got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)["Messages"]
    assert [m["Body"] for m in got] == ["now"]


async def test_delayed_bus_send_arrives_once_due_without_being_held(sqs_url: str) -> None:
    """Bug caught: the native delay not applied end to end (the consumer then receives the
    message early and holds it: ``messagebus-held`` set), or applied and the message never
    coming (a delay far beyond the due time)."""
    got: Collector[Envelope] = Collector(TIMEOUT)
    bus = Bus.from_url(sqs_url, service="delays")

    @bus.consume("soon")
    async def handle(payload: dict[str, int], envelope: Envelope) -> None:
        got.add(envelope)

    async with bus:
        due = time.time() + 2
        await bus.send("soon", {"n": 1}, delay=2)
        (envelope,) = await got.wait_for(1)
    assert h.HELD not in envelope.wire_headers, "received before due and held: DelaySeconds not applied"
    assert int(envelope.wire_headers[h.DELIVER_AT]) / 1000 >= due - 0.002


async def test_no_per_message_delay_on_fifo_queues_nor_topics(moto_endpoint: str, prefix: str) -> None:
    """Bug caught: ``DelaySeconds`` on a FIFO queue entry (SQS refuses the whole publish) or
    a delayed publish to a topic failing: there the consumers hold the message."""
    for fifo, dest in (
        (True, Destination(DestinationKind.QUEUE, "fifo-later")),
        (False, Destination(DestinationKind.TOPIC, "topic-later")),
    ):
        transport = SqsTransport.from_url(make_url(moto_endpoint, prefix, fifo=fifo))
        await transport.connect()
        try:
            delays = _sent_delays(transport.sqs_client)
            await transport.publish([_out(dest, b"later", _due_in(60))])
            assert delays == ([None] if fifo else [])
        finally:
            await transport.close()


# -- filters: SNS filter policies --------------------------------------------------------------


def test_filter_policy_lets_through_matches_and_packed_headers_only() -> None:
    """Bug caught: a policy that drops a matching message whose headers did not all fit in
    attributes (packed), or one SNS refuses (too many keys, names it cannot match)."""
    policy = filter_policy((("region", "eu"), ("tier", "1")))
    assert policy == ('{"$or": [{"region": ["eu"], "tier": ["1"]}, {"messagebus-headers": [{"exists": true}]}]}')
    assert PACKED == "messagebus-headers"
    assert filter_policy(()) == "{}"
    assert filter_policy(tuple((f"h{i}", "v") for i in range(5))) == "{}"  # SNS allows 5 keys
    assert filter_policy((("aws.region", "eu"),)) == "{}"  # never an attribute: always packed
    assert filter_policy((("region", ""),)) == "{}"


async def test_sns_filter_policy_keeps_non_matching_messages_out_of_the_queue(
    sqs_url: str, raw_clients: tuple[Any, Any], prefix: str
) -> None:
    """Bug caught: a filter not mapped to a filter policy (every message reaches the group's
    queue), a changed filter that keeps the old policy, a dropped filter that keeps filtering,
    or a matching message with packed headers dropped by SNS."""
    sqs, sns = raw_clients
    eu_queue = queue_name("orders.eu", prefix=prefix)
    many = {f"x{i}": "1" for i in range(10)}  # region comes 11th: packed, not an attribute

    async def publish_and_count(transport: SqsTransport, witness: Collector[bytes]) -> list[bytes]:
        """Publish four messages; once the unfiltered group got them all, SNS fanned them out
        to every queue: drain the filtered group's queue and return what reached it."""
        topic = Destination(DestinationKind.TOPIC, "orders")
        await transport.publish(
            [
                _out(topic, b"eu", {"region": "eu"}),
                _out(topic, b"us", {"region": "us"}),
                _out(topic, b"none"),
                _out(topic, b"eu-packed", {**many, "region": "eu"}),
            ]
        )
        await witness.wait_for(4)
        witness.items.clear()
        queue_url = sqs.get_queue_url(QueueName=eu_queue)["QueueUrl"]
        bodies = []
        while batch := sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", []):
            bodies += [m["Body"].encode() for m in batch]
            sqs.delete_message_batch(
                QueueUrl=queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)],
            )
        return sorted(bodies)

    async def ack(delivery: Any) -> None:
        await delivery.ack()

    first = SqsTransport.from_url(sqs_url)
    await first.connect()
    rounds = (
        (first, (("region", "eu"),), [b"eu", b"eu-packed"]),
        # Changed in the same process (the transport's cache must not keep the old policy).
        (first, (("region", "us"),), [b"eu-packed", b"us"]),
        # Dropped by a service restarted without the filter.
        (SqsTransport.from_url(sqs_url), (), [b"eu", b"eu-packed", b"none", b"us"]),
    )
    try:
        for transport, filter_pairs, expected in rounds:
            await transport.connect()
            witness: Collector[bytes] = Collector(TIMEOUT)

            async def record(delivery: Any, witness: Collector[bytes] = witness) -> None:
                witness.add(delivery.body)
                await delivery.ack()

            filtered = Destination(DestinationKind.TOPIC, "orders", "eu", filter_pairs)
            # Declares the group and its policy; stopped at once so the raw drain counts.
            consumer = await transport.subscribe(filtered, ack, concurrency=1)
            await consumer.stop(5)
            everyone = await transport.subscribe(
                Destination(DestinationKind.TOPIC, "orders", "all"), record, concurrency=4
            )
            assert await publish_and_count(transport, witness) == expected, filter_pairs
            await everyone.stop(5)
    finally:
        for transport, *_ in rounds:
            await transport.close()
    arn = sns.create_topic(Name=topic_name("orders", prefix=prefix))["TopicArn"]
    for sub in sns.list_subscriptions_by_topic(TopicArn=arn)["Subscriptions"]:
        attrs = sns.get_subscription_attributes(SubscriptionArn=sub["SubscriptionArn"])["Attributes"]
        assert attrs.get("FilterPolicy", "{}") in ("", "{}"), "a dropped filter left its policy"


# -- reply queues: delete_queue ----------------------------------------------------------------


async def test_reply_queue_is_deleted_when_a_bus_that_made_requests_stops(
    sqs_url: str, raw_clients: tuple[Any, Any], prefix: str
) -> None:
    """Bug caught: a reply queue (one per bus instance) left on AWS by every stopped bus."""
    sqs, _ = raw_clients
    responder = Bus.from_url(sqs_url, service="pricing")
    caller = Bus.from_url(sqs_url, service="shop")
    assert isinstance(caller.transport, DeleteQueue)

    @responder.consume("prices")
    async def price(item: dict[str, int]) -> dict[str, int]:
        return {"price": item["n"] * 2}

    async with responder:
        async with caller:
            assert await caller.request("prices", {"n": 21}, reply_type=dict, timeout=TIMEOUT) == {"price": 42}
            names = [u.rsplit("/", 1)[1] for u in sqs.list_queues(QueueNamePrefix=prefix).get("QueueUrls", [])]
            assert any("replies" in n for n in names), names
        names = [u.rsplit("/", 1)[1] for u in sqs.list_queues(QueueNamePrefix=prefix).get("QueueUrls", [])]
    assert not [n for n in names if "replies" in n], f"reply queue left behind: {names}"
    assert queue_name("prices", prefix=prefix) in names


async def test_delete_queue_deletes_the_queue_and_its_dead_letters_idempotently(
    transport: SqsTransport, raw_clients: tuple[Any, Any], prefix: str
) -> None:
    """Bug caught: a dead-letter queue left behind, a second delete (or one of a queue never
    made) raising, or an illegal name reaching AWS."""
    sqs, _ = raw_clients
    for name in ("gone", "gone.dlq"):
        await transport.publish([_out(Destination(DestinationKind.QUEUE, name), b"x")])
    await transport.delete_queue("gone")
    await transport.delete_queue("gone")
    await transport.delete_queue("never-made")
    assert sqs.list_queues(QueueNamePrefix=prefix).get("QueueUrls", []) == []
    with pytest.raises(InvalidDestination):
        await transport.delete_queue("no spaces")
    # Sending again declares the queue again (the cache forgot it).
    await transport.publish([_out(Destination(DestinationKind.QUEUE, "gone"), b"y")])
    assert len(sqs.list_queues(QueueNamePrefix=prefix)["QueueUrls"]) == 1


# -- patterns ------------------------------------------------------------------------------------


def test_patterns_are_refused_naming_sns(sqs_url: str) -> None:
    """Bug caught: a pattern subscribed as a literal SNS topic named ``orders.*`` (silently
    receiving nothing) instead of an error at registration saying why."""
    bus = Bus.from_url(sqs_url)
    with pytest.raises(UnsupportedFeature, match="SNS has no wildcard subscriptions"):
        bus.subscribe("orders.*", group="g")
