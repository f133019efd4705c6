"""SQS/SNS specifics, through the Transport contract against moto's server."""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from messagebus_sqs import MAX_BODY_SIZE, SqsTransport, physical_names, queue_name, topic_name
from sqs_helpers import endpoint_port, make_url, message, queue, topic_arns

from messagebus import MessageTooLarge, PublishError, UnsupportedFeature
from messagebus.testing import TcpProxy
from messagebus.transports import Delivery, Destination, DestinationKind, OutgoingMessage, dead_letter_name
from messagebus.transports import headers as h

TIMEOUT = 30.0


def topic(name: str) -> Destination:
    return Destination(DestinationKind.TOPIC, name)


def group(name: str, grp: str) -> Destination:
    return Destination(DestinationKind.TOPIC, name, grp)


class Inbox:
    """Records deliveries; ``on`` decides how each is settled (default: ack)."""

    def __init__(self, on: Callable[[Delivery], Awaitable[None]] | None = None) -> None:
        self.items: list[Delivery] = []
        self._changed = asyncio.Event()
        self._on = on

    async def __call__(self, delivery: Delivery) -> None:
        if self._on is None:
            await delivery.ack()
        else:
            await self._on(delivery)
        self.items.append(delivery)
        self._changed.set()

    async def wait_for(self, n: int, timeout: float = TIMEOUT) -> list[Delivery]:
        async with asyncio.timeout(timeout):
            while len(self.items) < n:
                self._changed.clear()
                await self._changed.wait()
        return self.items


def count_calls(client: Any, service: str) -> collections.Counter[str]:
    calls: collections.Counter[str] = collections.Counter()
    client.meta.events.register(f"before-call.{service}.*", lambda model, **_: calls.update([model.name]))
    return calls


def queue_depth(sqs: Any, url: str) -> int:
    attrs = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])


async def test_fan_out_from_one_topic_to_three_group_queues(
    transport: SqsTransport, raw_clients: tuple[Any, Any], prefix: str
) -> None:
    sqs, sns = raw_clients
    inboxes = {g: Inbox() for g in ("billing", "shipping", "audit")}
    consumers = [
        await transport.subscribe(group("orders.created", g), inbox, concurrency=2) for g, inbox in inboxes.items()
    ]
    await transport.publish([message(topic("orders.created"), f'{{"n":{i}}}'.encode()) for i in range(5)])
    for g, inbox in inboxes.items():
        items = await inbox.wait_for(5)
        assert sorted(d.body for d in items) == sorted(f'{{"n":{i}}}'.encode() for i in range(5)), g
        assert all(d.attempt == 1 for d in items)
    for c in consumers:
        await c.stop(5)
    arn = sns.create_topic(Name=topic_name("orders.created", prefix=prefix))["TopicArn"]
    subs = sns.list_subscriptions_by_topic(TopicArn=arn)["Subscriptions"]
    assert len(subs) == 3
    for sub in subs:
        attrs = sns.get_subscription_attributes(SubscriptionArn=sub["SubscriptionArn"])["Attributes"]
        assert attrs["RawMessageDelivery"] == "true"
    for g in inboxes:
        url = sqs.get_queue_url(QueueName=queue_name(f"orders.created.{g}", prefix=prefix))["QueueUrl"]
        policy = json.loads(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["Policy"])["Attributes"]["Policy"])
        assert policy["Statement"][0]["Condition"]["ArnEquals"]["aws:SourceArn"] == arn
        assert queue_depth(sqs, url) == 0, f"group {g} left messages behind"


async def test_fifteen_headers_and_awkward_ones_round_trip(transport: SqsTransport) -> None:
    inbox = Inbox()
    consumer = await transport.subscribe(group("hdrs", "g"), inbox, concurrency=1)
    headers = {f"x-h{i:02d}": f"value {i} é" for i in range(15)}
    headers.update(
        {
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "empty": "",  # SQS refuses empty attribute values
            "has space": "name SQS refuses",
            "AWS.reserved": "prefix SQS refuses",
            "control": "tab\there\x01bell",  # \x01 is not allowed in SQS text
        }
    )
    await transport.publish([message(topic("hdrs"), b"{}", headers)])
    [d] = await inbox.wait_for(1)
    for name, value in headers.items():
        assert d.headers.get(name) == value, name
    assert d.headers[h.CE_ID]
    assert len(d.raw["MessageAttributes"]) <= 10
    assert "messagebus-headers" not in d.headers
    await consumer.stop(5)


async def test_binary_and_empty_bodies_round_trip(transport: SqsTransport) -> None:
    inbox = Inbox()
    consumer = await transport.subscribe(queue("bodies"), inbox, concurrency=1)
    bodies = [b"", b"\x00\xff\xfe binary", "text é ✓".encode(), b"ctrl \x07 char"]
    await transport.publish([message(queue("bodies"), b) for b in bodies])
    items = await inbox.wait_for(len(bodies))
    assert sorted(d.body for d in items) == sorted(bodies)
    await consumer.stop(5)


async def test_slow_handler_is_not_redelivered_while_it_runs(
    moto_endpoint: str, prefix: str, raw_clients: tuple[Any, Any]
) -> None:
    sqs, _ = raw_clients
    transport = SqsTransport.from_url(make_url(moto_endpoint, prefix, visibility_timeout=2))
    await transport.connect()
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow(d: Delivery) -> None:
        started.set()
        await release.wait()
        await d.ack()

    inbox = Inbox(slow)
    try:
        consumer = await transport.subscribe(queue("slow"), inbox, concurrency=1)
        await transport.publish([message(queue("slow"), b'{"slow":true}')])
        await asyncio.wait_for(started.wait(), TIMEOUT)
        url = sqs.get_queue_url(QueueName=queue_name("slow", prefix=prefix))["QueueUrl"]
        # Wait, for several visibility timeouts, for the message to reappear (it must not).
        for _ in range(3):
            seen = await asyncio.to_thread(sqs.receive_message, QueueUrl=url, WaitTimeSeconds=2, VisibilityTimeout=0)
            assert not seen.get("Messages"), "the message became visible while its handler ran"
        release.set()
        [d] = await inbox.wait_for(1)
        assert d.attempt == 1
        await consumer.stop(5)  # acks are batched; stop sends every queued delete
        assert queue_depth(sqs, url) == 0
    finally:
        release.set()
        await transport.close()
    assert len(inbox.items) == 1


async def test_retry_redelivers_after_delay_with_attempt_and_headers(transport: SqsTransport) -> None:
    async def fail_once(d: Delivery) -> None:
        if d.attempt == 1:
            await d.retry(0.5, {h.FIRST_FAILURE: "2026-01-01T00:00:00+00:00"})
        else:
            await d.ack()

    inbox = Inbox(fail_once)
    consumer = await transport.subscribe(queue("retry"), inbox, concurrency=1)
    await transport.publish([message(queue("retry"), b"{}", {"x-tenant": "acme"})])
    first, second = await inbox.wait_for(2)
    assert (first.attempt, second.attempt) == (1, 2)
    assert second.headers[h.FIRST_FAILURE] == "2026-01-01T00:00:00+00:00"
    assert second.headers["x-tenant"] == "acme"
    await consumer.stop(5)


async def test_stop_makes_unsettled_messages_visible_at_once(moto_endpoint: str, prefix: str) -> None:
    # A visibility timeout far beyond the test timeout: only an explicit release lets the
    # second consumer see the message in time.
    transport = SqsTransport.from_url(make_url(moto_endpoint, prefix, visibility_timeout=600))
    await transport.connect()
    try:
        started = asyncio.Event()

        async def hang(d: Delivery) -> None:
            started.set()
            await asyncio.Event().wait()

        first = await transport.subscribe(queue("stop"), Inbox(hang), concurrency=1)
        await transport.publish([message(queue("stop"), b'{"n":1}'), message(queue("stop"), b'{"n":2}')])
        await asyncio.wait_for(started.wait(), TIMEOUT)
        await first.stop(0.1)  # cancels the hanging handler; the prefetched one is released too
        inbox = Inbox()
        second = await transport.subscribe(queue("stop"), inbox, concurrency=2)
        items = await inbox.wait_for(2)
        assert sorted(d.body for d in items) == [b'{"n":1}', b'{"n":2}']
        # Received before: SQS counts receives, and a long poll of the first consumer still
        # in flight at stop may take a released message once more (and release it again).
        assert max(d.attempt for d in items) >= 2
        await second.stop(5)
    finally:
        await transport.close()


async def test_a_long_poll_running_at_stop_hands_back_what_it_receives(moto_endpoint: str, prefix: str) -> None:
    """Catches a consumer that stops while its ReceiveMessage long poll still runs in its thread
    and forgets what that poll then receives: the message would stay hidden for the whole
    visibility timeout (600 s here) instead of being made visible again at once."""
    url = make_url(moto_endpoint, prefix, visibility_timeout=600, wait_time=5)
    first, second = SqsTransport.from_url(url), SqsTransport.from_url(url)
    await first.connect()
    await second.connect()
    loop = asyncio.get_running_loop()
    polling, returned = asyncio.Event(), asyncio.Event()
    late: list[int] = []

    def before_receive(**_: Any) -> None:  # a value returned here would replace the call
        loop.call_soon_threadsafe(polling.set)

    def after_receive(parsed: dict[str, Any], **_: Any) -> None:
        if polling.is_set():
            late.append(len(parsed.get("Messages", [])))
            loop.call_soon_threadsafe(returned.set)

    try:
        first.sqs_client.meta.events.register("after-call.sqs.ReceiveMessage", after_receive)
        consumer = await first.subscribe(queue("late"), Inbox(), concurrency=1)
        first.sqs_client.meta.events.register("before-call.sqs.ReceiveMessage", before_receive)
        await asyncio.wait_for(polling.wait(), TIMEOUT)
        await consumer.stop(0)  # the long poll goes on in its thread
        await second.publish([message(queue("late"), b"late")])
        await asyncio.wait_for(returned.wait(), TIMEOUT)
        assert late == [1], "precondition: the poll running at stop received the message"
        inbox = Inbox()
        again = await second.subscribe(queue("late"), inbox, concurrency=1)
        [d] = await inbox.wait_for(1)
        assert (d.body, d.attempt) == (b"late", 2)
        await again.stop(5)
    finally:
        await first.close()
        await second.close()


async def test_handler_that_does_not_settle_gets_the_message_back(transport: SqsTransport) -> None:
    async def forget_first(d: Delivery) -> None:
        if d.attempt > 1:
            await d.ack()

    inbox = Inbox(forget_first)
    consumer = await transport.subscribe(queue("unsettled"), inbox, concurrency=1)
    await transport.publish([message(queue("unsettled"), b"{}")])
    first, second = await inbox.wait_for(2)
    assert (first.attempt, second.attempt) == (1, 2)
    await consumer.stop(5)


async def test_too_large_messages_are_refused_before_sending(
    transport: SqsTransport, raw_clients: tuple[Any, Any], prefix: str
) -> None:
    sqs, _ = raw_clients
    ok = message(queue("large"), b"x")
    with pytest.raises(MessageTooLarge, match="allows"):
        await transport.publish([ok, message(queue("large"), b"x" * (MAX_BODY_SIZE + 1))])
    big_headers = {f"x-big-{i}": "y" * 30_000 for i in range(9)}
    with pytest.raises(MessageTooLarge, match="attributes"):
        await transport.publish([message(queue("large"), b"x" * 1000, big_headers)])
    # Binary bodies travel as base64, which counts against the limit.
    with pytest.raises(MessageTooLarge):
        await transport.publish([message(queue("large"), b"\xff" * 200_000)])
    assert sqs.list_queues(QueueNamePrefix=prefix).get("QueueUrls", []) == [], "something was sent"


async def test_key_on_a_standard_destination_is_carried_or_refused(moto_endpoint: str, prefix: str) -> None:
    strict = SqsTransport.from_url(make_url(moto_endpoint, prefix, strict_keys=True))
    await strict.connect()
    try:
        with pytest.raises(UnsupportedFeature, match="fifo=true"):
            await strict.publish([message(queue("keys"), b"{}", key="k1")])
    finally:
        await strict.close()
    lax = SqsTransport.from_url(make_url(moto_endpoint, prefix))
    await lax.connect()
    try:
        assert lax.capabilities.ordering is False
        inbox = Inbox()
        consumer = await lax.subscribe(queue("keys"), inbox, concurrency=1)
        await lax.publish([message(queue("keys"), b"{}", key="k1")])
        [d] = await inbox.wait_for(1)
        assert d.key == "k1"
        assert h.KEY not in d.headers
        await consumer.stop(5)
    finally:
        await lax.close()


async def test_fifo_keeps_order_per_key(moto_endpoint: str, prefix: str, raw_clients: tuple[Any, Any]) -> None:
    sqs, _ = raw_clients
    transport = SqsTransport.from_url(make_url(moto_endpoint, prefix, fifo=True))
    await transport.connect()
    try:
        assert transport.capabilities.ordering is True
        got: list[tuple[str, int]] = []
        done = asyncio.Event()
        keys = ["alpha", "beta", "a key with spaces and more than 128 characters " * 3]
        per_key = 12
        expected = [per_key * len(keys)]

        async def record(d: Delivery) -> None:
            await asyncio.sleep(0)  # let keys interleave
            assert d.key is not None
            got.append((d.key, json.loads(d.body)["n"]))
            await d.ack()
            if len(got) >= expected[0]:
                done.set()

        consumer = await transport.subscribe(group("fifo.events", "g"), record, concurrency=3)
        # Half in one call (batched), half one call per message.
        first = [
            message(topic("fifo.events"), f'{{"n":{i}}}'.encode(), key=k) for i in range(per_key // 2) for k in keys
        ]
        await transport.publish(first)
        for i in range(per_key // 2, per_key):
            for k in keys:
                await transport.publish([message(topic("fifo.events"), f'{{"n":{i}}}'.encode(), key=k)])
        await asyncio.wait_for(done.wait(), TIMEOUT)
        for k in keys:
            assert [n for key, n in got if key == k] == list(range(per_key)), f"{k[:10]} out of order"
        # Messages without an id still get distinct deduplication ids (none is dropped).
        got.clear()
        done.clear()
        expected[0] = 3
        anonymous = [OutgoingMessage(topic("fifo.events"), f'{{"n":{i}}}'.encode(), {}, "anon") for i in range(3)]
        await transport.publish(anonymous)
        await asyncio.wait_for(done.wait(), TIMEOUT)
        assert got == [("anon", 0), ("anon", 1), ("anon", 2)]
        await consumer.stop(5)
        name = queue_name("fifo.events.g", prefix=prefix, fifo=True)
        assert name.endswith(".fifo") and len(name) <= 80
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
        assert sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["FifoQueue"])["Attributes"]["FifoQueue"] == "true"
    finally:
        await transport.close()


async def test_publish_and_consume_use_batch_calls(transport: SqsTransport) -> None:
    sqs_calls = count_calls(transport.sqs_client, "sqs")
    sns_calls = count_calls(transport.sns_client, "sns")
    n = 30
    await transport.publish([message(queue("batched"), f'{{"n":{i}}}'.encode()) for i in range(n)])
    await transport.publish([message(topic("batched-topic"), b"{}") for _ in range(n)])
    assert sqs_calls["SendMessageBatch"] == 3
    assert sns_calls["PublishBatch"] == 3
    assert "SendMessage" not in sqs_calls and "Publish" not in sns_calls
    inbox = Inbox()
    consumer = await transport.subscribe(queue("batched"), inbox, concurrency=10)
    await inbox.wait_for(n)
    await consumer.stop(5)
    assert "DeleteMessage" not in sqs_calls
    assert sqs_calls["DeleteMessageBatch"] < n
    assert sqs_calls["ReceiveMessage"] < n


async def test_telemetry_attributes_and_raw_message(transport: SqsTransport) -> None:
    inbox = Inbox()
    consumer = await transport.subscribe(group("telemetry", "g"), inbox, concurrency=1)
    await transport.publish([message(topic("telemetry"), b"{}")])
    [d] = await inbox.wait_for(1)
    attrs = d.messaging_attributes
    assert str(attrs["aws.sqs.queue.url"]).endswith(queue_name("telemetry.g", prefix=transport.options.queue_prefix))
    assert str(attrs["aws.sns.topic.arn"]).startswith("arn:aws:sns:us-east-1:")
    assert attrs["messaging.message.id"] == d.raw["MessageId"]
    assert "ReceiptHandle" in d.raw and "Body" in d.raw
    assert transport.messaging_system == "aws_sqs"
    assert transport.publish_attributes(topic("telemetry"))["messaging.system"] == "aws.sns"
    assert transport.publish_attributes(queue("q"))["messaging.system"] == "aws_sqs"
    await consumer.stop(5)


@pytest.mark.faults
async def test_consumer_and_publisher_resume_after_the_endpoint_was_down(moto_endpoint: str, prefix: str) -> None:
    with TcpProxy(("127.0.0.1", endpoint_port(moto_endpoint))) as proxy:
        url = make_url(
            f"http://{proxy.host}:{proxy.port}", prefix, max_attempts=2, visibility_timeout=3, publish_timeout=1
        )
        transport = SqsTransport.from_url(url)
        await transport.connect()
        try:
            inbox = Inbox()
            consumer = await transport.subscribe(queue("outage"), inbox, concurrency=2)
            await transport.publish([message(queue("outage"), f'{{"n":{i}}}'.encode()) for i in range(5)])
            await inbox.wait_for(5)
            proxy.refuse()  # the endpoint looks down: open connections cut, new ones refused
            with pytest.raises(PublishError, match="cannot reach"):
                await transport.publish([message(queue("outage"), b'{"n":99}')])
            proxy.accept()
            await transport.publish([message(queue("outage"), f'{{"n":{i}}}'.encode()) for i in range(5, 10)])
            proxy.cut()  # and a cut in the middle of the flow
            await transport.publish([message(queue("outage"), f'{{"n":{i}}}'.encode()) for i in range(10, 15)])
            # Deletes cut off by the proxy bring messages back: count distinct messages, not
            # deliveries (a duplicate must not make a lost message look delivered).
            while not set(range(15)) <= {json.loads(d.body)["n"] for d in inbox.items}:
                await inbox.wait_for(len(inbox.items) + 1)
            await consumer.stop(5)
        finally:
            await transport.close()


async def test_queue_deleted_behind_our_back_is_declared_again(
    transport: SqsTransport, raw_clients: tuple[Any, Any], prefix: str
) -> None:
    sqs, _ = raw_clients
    inbox = Inbox()
    consumer = await transport.subscribe(queue("jobs"), inbox, concurrency=2)
    await transport.publish([message(queue("jobs"), b"before")])
    await inbox.wait_for(1)
    name = queue_name("jobs", prefix=prefix)
    url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    await asyncio.to_thread(sqs.delete_queue, QueueUrl=url)
    # The transport still has the URL cached: the send finds the queue missing, declares it
    # again and sends the batch once more instead of failing.
    await transport.publish([message(queue("jobs"), b"after")])
    url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    items = await inbox.wait_for(2)
    assert [d.body for d in items] == [b"before", b"after"]
    await consumer.stop(5)
    assert queue_depth(sqs, url) == 0, "the redelivered message was not acked on the new queue"


async def test_topic_and_group_queue_deleted_are_declared_again(
    transport: SqsTransport, raw_clients: tuple[Any, Any], prefix: str
) -> None:
    sqs, sns = raw_clients
    inbox = Inbox()
    consumer = await transport.subscribe(group("events", "g"), inbox, concurrency=1)
    await transport.publish([message(topic("events"), b"before")])
    await inbox.wait_for(1)
    arn = sns.create_topic(Name=topic_name("events", prefix=prefix))["TopicArn"]
    url = sqs.get_queue_url(QueueName=queue_name("events.g", prefix=prefix))["QueueUrl"]
    await asyncio.to_thread(sns.delete_topic, TopicArn=arn)
    await asyncio.to_thread(sqs.delete_queue, QueueUrl=url)
    # The publish finds the topic gone, declares it again and, before sending the batch
    # again, has this process's group consumer declare its queue and subscription again.
    await transport.publish([message(topic("events"), b"after")])
    await inbox.wait_for(2)
    assert [d.body for d in inbox.items] == [b"before", b"after"], "lost, or wrapped in an SNS envelope?"
    subs = sns.list_subscriptions_by_topic(TopicArn=arn)["Subscriptions"]
    assert len(subs) == 1
    attrs = sns.get_subscription_attributes(SubscriptionArn=subs[0]["SubscriptionArn"])["Attributes"]
    assert attrs["RawMessageDelivery"] == "true"
    await consumer.stop(5)


@pytest.mark.parametrize("fifo", [False, True])
async def test_physical_names_are_the_names_the_transport_declares(
    moto_endpoint: str, prefix: str, raw_clients: tuple[Any, Any], fifo: bool
) -> None:
    """Catches physical_names() drifting from the names the transport really declares (an
    operator or a script looking up, purging or alarming on the wrong queue or topic)."""
    sqs, sns = raw_clients
    transport = SqsTransport.from_url(make_url(moto_endpoint, prefix, fifo=fifo))
    await transport.connect()
    try:
        source = group("names.topic", "billing")
        consumer = await transport.subscribe(source, Inbox(), concurrency=1)
        # The bus dead-letters by sending to this queue: publish there as it does.
        await transport.publish([message(queue(dead_letter_name(source.name, source.group)), b"{}")])
        await consumer.stop(5)
        names = physical_names(source, transport.options)
        assert set(names) == {"topic", "queue", "dead_letter"}
        topics = topic_arns(sns)
        assert any(arn.endswith(":" + names["topic"]) for arn in topics), names["topic"]
        for role in ("queue", "dead_letter"):
            assert sqs.get_queue_url(QueueName=names[role])["QueueUrl"], role
        assert physical_names(topic("names.topic"), transport.options) == {"topic": names["topic"]}
        assert physical_names(queue("q"), transport.options)["queue"] == queue_name("q", prefix=prefix, fifo=fifo)
    finally:
        await transport.close()
