"""Dead-letter tooling in the Bus-level kit: list, peek, replay (to the failed group only,
by id, across a connection cut) and purge, as every transport must show them.

Mixed into :class:`~messagebus.testing.conformance.TransportConformance`. The transport
must implement :class:`~messagebus.transports.BrokerAdmin`. Each test waits on events with
the target's timeout; none measures speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from .. import Bus, Envelope, MessageBusError, Reject
from .._headers import DLQ_ERROR_TYPE, DLQ_REPLAYED
from ..transports import BrokerAdmin, Destination, DestinationKind
from ._collect import Collector
from ._faults import _needs_proxy
from ._proxy import TcpProxy
from ._target import ConformanceTarget

__all__ = ["DeadLetterTests"]

BusFactory = Callable[..., Bus]


def _name(prefix: str) -> str:
    return f"conf.{prefix}.{uuid.uuid4().hex[:10]}"


class Refused(Exception):
    """What the failing handlers of these tests raise (a qualified name to find in dlq-error-type)."""


async def _depth_reaches(bus: Bus, dlq: str, count: int, timeout: float) -> None:
    """Wait until ``dlq`` reports ``count`` messages (or, where the broker does not count,
    until a look finds them)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        listed = {q.name: q.depth for q in await bus.dead_letter_queues()}
        if listed.get(dlq, -1) == count:
            return
        # A broker that does not count (Pub/Sub): a look, which removes nothing, counts instead.
        if dlq in listed and listed[dlq] is None and len(await bus.peek_dead_letters(dlq, limit=count)) == count:
            return
        if loop.time() > deadline:
            raise AssertionError(f"{dlq} never reported {count} dead letters; listed: {listed}")
        await asyncio.sleep(0.05)  # polling the broker's own count: there is no event for it


async def _group_depth_reaches(bus: Bus, topic: str, group: str, count: int, timeout: float) -> None:
    """Wait until the group's depth is ``count`` (``None``, not told, passes): a broker's
    count may trail the confirm of a publish by a moment."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (depth := await bus.queue_depth(topic, group)) not in (count, None):
        if loop.time() > deadline:
            raise AssertionError(f"the depth of group {group} of {topic} stayed {depth}, not {count}")
        await asyncio.sleep(0.05)  # polling the broker's own count: there is no event for it


class DeadLetterTests:
    """``dead_letter_queues``, ``peek_dead_letters``, ``replay_dead_letters`` and
    ``purge_dead_letters`` on the target's broker."""

    async def test_dead_letters_replay_goes_to_the_failed_group_only(
        self, target: ConformanceTarget, buses: BusFactory
    ) -> None:
        """Catches a peek that removes (or hides same-key) dead letters, a replay published to
        the topic (a healthy group handles the message twice), a replay that loses the id,
        key, type or headers or keeps the attempt count, and a DLQ not emptied by the replay."""
        assert isinstance(target.make_transport(), BrokerAdmin), "the transport must implement BrokerAdmin"
        topic = _name("dlq")
        dlq = f"{topic}.billing.dlq"
        service = buses("billing")
        failing = True
        billing: Collector[Envelope] = Collector(target.timeout)
        audit: Collector[int] = Collector(target.timeout)

        @service.subscribe(topic, group="billing")
        async def bill(order: dict[str, Any], envelope: Envelope) -> None:
            if failing:
                raise Reject("refused by the test")
            billing.add(envelope)

        @service.subscribe(topic, group="audit")
        async def record(order: dict[str, Any], envelope: Envelope) -> None:
            audit.add(order["n"])

        producer = buses("shop")
        async with service, producer:
            # Two of one key: a look that holds the first must still see the second.
            for n, key in ((1, "k1"), (2, "k1"), (3, "k3")):
                await producer.publish(topic, {"n": n}, key=key, headers={"tenant": f"t{n}"})
            await audit.wait_for(3)
            await _depth_reaches(service, dlq, 3, target.timeout)

            looked = await service.peek_dead_letters(dlq, limit=10)
            again = await service.peek_dead_letters(dlq, limit=10)
            assert sorted(e.headers["tenant"] for e in looked) == ["t1", "t2", "t3"], "peek must show every one"
            assert {e.id for e in again} == {e.id for e in looked}, "a peek removed dead letters"
            assert all(e.wire_headers[DLQ_ERROR_TYPE].endswith("Reject") for e in looked)

            failing = False
            assert await service.replay_dead_letters(dlq) == 3
            replayed = await billing.wait_for(3)
            by_tenant = {e.headers["tenant"]: e for e in replayed}
            original = {e.headers["tenant"]: e for e in looked}
            for tenant, envelope in by_tenant.items():
                assert envelope.id == original[tenant].id
                assert envelope.key == original[tenant].key
                assert envelope.type == original[tenant].type
                assert envelope.attempt == 1, "a replay must start over at attempt 1"
                assert DLQ_REPLAYED in envelope.wire_headers
                assert DLQ_ERROR_TYPE not in envelope.wire_headers
            # A replay sent to the topic would reach audit again, before this marker or near it.
            await producer.publish(topic, {"n": 99}, key="k1")
            await audit.wait_for(4)
            await billing.wait_for(4)
            assert sorted(audit.items) == [1, 2, 3, 99], "the healthy group got a replayed message"
            assert await service.peek_dead_letters(dlq, limit=10) == []

    async def test_dead_letters_replay_by_id_then_purge(self, target: ConformanceTarget, buses: BusFactory) -> None:
        """Catches a replay by id that sends others too (or none), dead letters lost by a
        look, and a purge that leaves some or removes more than the queue held."""
        queue = _name("dlqq")
        dlq = f"{queue}.dlq"
        worker = buses("mailer")
        handled: Collector[Envelope] = Collector(target.timeout)

        @worker.consume(queue)
        async def mail(job: dict[str, Any], envelope: Envelope) -> None:
            # The fix is "deployed" for replays only, so the consumer keeps running throughout.
            if DLQ_REPLAYED not in envelope.wire_headers:
                raise Refused(f"job {job['n']}")
            handled.add(envelope)

        async with worker:
            for n in range(3):
                await worker.send(queue, {"n": n})
            await _depth_reaches(worker, dlq, 3, target.timeout)
            looked = await worker.peek_dead_letters(dlq)
            assert len(looked) == 3
            assert all(e.wire_headers[DLQ_ERROR_TYPE].endswith(".Refused") for e in looked)
            chosen = looked[1]
            assert await worker.replay_dead_letters(dlq, ids=[chosen.id]) == 1
            [got] = await handled.wait_for(1)
            assert got.id == chosen.id and got.attempt == 1
            left = await worker.peek_dead_letters(dlq)
            assert {e.id for e in left} == {e.id for e in looked} - {chosen.id}
            assert await worker.purge_dead_letters(dlq) == 2
            assert await worker.peek_dead_letters(dlq) == []
        assert len(handled.items) == 1, "a replay by id sent more than the one asked for"

    async def test_dead_letters_depth_and_delete_group(self, target: ConformanceTarget, buses: BusFactory) -> None:
        """Catches a depth that counts another group's messages or creates what it asks
        about, and a delete_group (``messagebus tail``'s clean-up) that leaves the group to
        fill up, touches another group, or fails the second time."""
        topic = _name("depth")
        made = buses("maker")

        @made.subscribe(topic, group="kept")
        async def kept(event: dict[str, Any]) -> None: ...

        @made.subscribe(topic, group="gone")
        async def gone(event: dict[str, Any]) -> None: ...

        async with made:
            pass  # both groups exist from here on, with no consumer
        operator = buses("operator")
        async with operator:
            admin = operator.transport
            assert isinstance(admin, BrokerAdmin)
            assert await operator.queue_depth(_name("nothing"), "g") == 0
            await operator.publish_many(topic, [{"n": i} for i in range(3)])
            await _group_depth_reaches(operator, topic, "kept", 3, target.timeout)
            await admin.delete_group(Destination(DestinationKind.TOPIC, topic, "gone"))
            await admin.delete_group(Destination(DestinationKind.TOPIC, topic, "gone"))
            await operator.publish(topic, {"n": 3})
            await _group_depth_reaches(operator, topic, "kept", 4, target.timeout)
            assert await operator.queue_depth(topic, "gone") == 0, "the deleted group still fills"
        got: Collector[int] = Collector(target.timeout)
        again = buses("maker")

        @again.subscribe(topic, group="kept")
        async def count(event: dict[str, Any]) -> None:
            got.add(event["n"])

        async with again:
            assert sorted(await got.wait_for(4)) == [0, 1, 2, 3], "delete_group took messages of another group"

    async def test_dead_letters_of_a_pattern_group_replay_with_their_topic(
        self, target: ConformanceTarget, buses: BusFactory
    ) -> None:
        """Catches a pattern subscription's dead letter that cannot be replayed (it named only
        the pattern, not the topic it came from) or comes back as a message of the pattern."""
        if not target.capabilities.wildcards:
            pytest.skip("no wildcard subscriptions on this transport")
        base = _name("dlqpat")
        topic = f"{base}.created"
        dlq = f"{base}._star_.audit.dlq"
        service = buses("audit")
        failing = True
        seen: Collector[Envelope] = Collector(target.timeout)

        @service.subscribe(f"{base}.*", group="audit")
        async def audit(event: dict[str, Any], envelope: Envelope) -> None:
            if failing:
                raise Reject("refused by the test")
            seen.add(envelope)

        async with service:
            await service.publish(topic, {"n": 1})
            await _depth_reaches(service, dlq, 1, target.timeout)
            [letter] = await service.peek_dead_letters(dlq)
            failing = False
            assert await service.replay_dead_letters(dlq) == 1
            [got] = await seen.wait_for(1)
        assert got.id == letter.id and got.attempt == 1
        assert got.destination == topic, "a replayed pattern dead letter lost its topic"

    @pytest.mark.faults
    async def test_dead_letters_replay_survives_a_connection_cut(
        self, target: ConformanceTarget, buses: BusFactory
    ) -> None:
        """Catches a replay that removes a dead letter whose replay was not confirmed (a
        connection cut mid-replay then loses it): every dead letter is handled after the
        replay is run again, none lost."""
        upstream, via_proxy = _needs_proxy(target)
        queue = _name("dlqcut")
        dlq = f"{queue}.dlq"
        n = 20
        handled: Collector[str] = Collector(target.timeout * 2)
        refused: Collector[str] = Collector(target.timeout)
        cut = asyncio.Event()
        with TcpProxy(upstream) as proxy:
            # Both buses through the proxy: on Kafka the proxied broker is a broker of its own.
            url = via_proxy(proxy.host, proxy.port)
            worker = buses("cutter", url=url)

            @worker.consume(queue, concurrency=4)
            async def work(job: dict[str, Any], envelope: Envelope) -> None:
                if DLQ_REPLAYED not in envelope.wire_headers:
                    refused.add(envelope.id)
                    raise Reject("first time")
                handled.add(envelope.id)
                if len(handled.items) == 5:
                    cut.set()

            operator = buses("operator", url=url)
            async with worker, operator:
                await worker.send_many(queue, [{"n": i} for i in range(n)])
                ids = set(await refused.wait_for(n))
                await _depth_reaches(operator, dlq, n, target.timeout)
                replay = asyncio.create_task(operator.replay_dead_letters(dlq))
                await asyncio.wait_for(cut.wait(), target.timeout * 2)
                proxy.cut()
                # The cut may fail the replay: the rest must still be in the queue.
                with contextlib.suppress(MessageBusError):
                    await asyncio.wait_for(replay, target.timeout * 2)
                # Again after the reconnect: whatever the first run did not confirm is still there.
                for _ in range(3):
                    with contextlib.suppress(MessageBusError):
                        await operator.replay_dead_letters(dlq)
                    if not await operator.peek_dead_letters(dlq, limit=1):
                        break
                got = await handled.wait_until(lambda items: set(items) >= ids)
        lost = ids - set(got)
        assert not lost, f"{len(lost)} dead letters lost by a replay cut mid-way"
