"""The messaging patterns of DESIGN section 2b in the Bus-level kit: request/reply, delayed
delivery, batch handlers, wildcard subscriptions and filters.

Mixed into :class:`~messagebus.testing.conformance.TransportConformance`, so every transport
runs them; wildcard tests are gated by ``capabilities.wildcards`` (a transport without them
must refuse a pattern with :class:`UnsupportedFeature` at registration). Each test waits on
events with the target's timeout; none measures speed.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from typing_extensions import TypedDict

from .. import Bus, ConfigurationError, Envelope, RequestFailed, RequestTimeout, Retry, UnsupportedFeature
from ._collect import Collector
from ._target import ConformanceTarget

__all__ = ["PatternTests"]

BusFactory = Callable[..., Bus]


class Job(TypedDict):
    """The payload of the pattern tests."""

    n: int
    run: str


def _name(prefix: str) -> str:
    return f"conf.{prefix}.{uuid.uuid4().hex[:10]}"


class PatternTests:
    """Request/reply, delay, batch and routing, as every transport must show them."""

    # -- request/reply ---------------------------------------------------------------------

    async def test_request_reply_concurrent_requests_never_cross(
        self, target: ConformanceTarget, buses: BusFactory
    ) -> None:
        """Catches replies correlated to the wrong caller, a reply lost or sent twice, and a
        caller that waits forever for a queue nobody serves (it must raise RequestTimeout)."""
        queue = _name("rpc")
        n = 8
        responder = buses("pricing")
        seen: Collector[int] = Collector(target.timeout)
        # The responder answers the first n requests in reverse order of arrival, so a reply
        # given to whichever caller waits longest (not the one that asked) is caught.
        turns = [asyncio.Event() for _ in range(n)]
        arrived: list[int] = []

        @responder.consume(queue, concurrency=n)
        async def double(job: Job) -> Job:
            seen.add(job["n"])
            if job["run"] == "rpc":
                arrived.append(job["n"])
                if len(arrived) == n:
                    turns[arrived[-1]].set()
                await asyncio.wait_for(turns[job["n"]].wait(), target.timeout)
                position = arrived.index(job["n"])
                if position > 0:
                    turns[arrived[position - 1]].set()
            return Job(n=job["n"] * 2, run=job["run"])

        caller = buses("shop")
        async with responder, caller:
            replies = await asyncio.gather(
                *(caller.request(queue, Job(n=i, run="rpc"), reply_type=Job, timeout=target.timeout) for i in range(n))
            )
            envelope = await caller.request(queue, Job(n=100, run="raw"), timeout=target.timeout)
            with pytest.raises(RequestTimeout, match="no reply"):
                await caller.request(_name("nobody"), Job(n=0, run="x"), reply_type=Job, timeout=0.5)
        assert replies == [Job(n=2 * i, run="rpc") for i in range(n)]
        assert isinstance(envelope, Envelope) and b"200" in envelope.body
        assert sorted(seen.items) == [*range(n), 100], "each request handled exactly once"

    async def test_request_to_a_failing_handler_fails_fast_with_its_error_type(
        self, target: ConformanceTarget, buses: BusFactory
    ) -> None:
        """Catches a caller left waiting for its timeout when the responder failed for good:
        it must get RequestFailed naming the error type (and the request is dead-lettered)."""
        queue = _name("rpcfail")
        responder = buses("pricing", retry=Retry(max_attempts=2, initial_delay=0.01, jitter=0.0))
        dead: Collector[Envelope] = Collector(target.timeout)

        @responder.consume(queue)
        async def broken(job: Job) -> Job:
            raise ValueError(f"no price for {job['n']}")

        @responder.consume(f"{queue}.dlq")
        async def dlq(envelope: Envelope) -> None:
            dead.add(envelope)

        caller = buses("shop")
        async with responder, caller:
            # A timeout far beyond the test's own: only a fast failure passes.
            request = caller.request(queue, Job(n=7, run="f"), reply_type=Job, timeout=target.timeout * 10)
            with pytest.raises(RequestFailed) as failed:
                await asyncio.wait_for(request, target.timeout)
            await dead.wait_for(1)
        assert failed.value.error_type == "builtins.ValueError"
        assert "no price for 7" in failed.value.error_message
        assert dead.items[0].wire_headers["dlq-attempts"] == "2"

    # -- delayed delivery --------------------------------------------------------------------

    async def test_delayed_message_waits_and_holds_back_nothing(
        self, target: ConformanceTarget, buses: BusFactory
    ) -> None:
        """Catches a delayed message handled early, one that holds back a message sent after
        it, one counted as a failed attempt while held, and a delay lost on a topic's groups."""
        queue, topic = _name("delayq"), _name("delayt")
        delay = 1.5
        got: Collector[tuple[str, int, float, int]] = Collector(target.timeout + delay)
        bus = buses("svc")

        @bus.consume(queue)
        async def work(job: Job, envelope: Envelope) -> None:
            got.add(("queue", job["n"], time.time(), envelope.attempt))

        @bus.subscribe(topic, group="a")
        async def group_a(job: Job, envelope: Envelope) -> None:
            got.add(("a", job["n"], time.time(), envelope.attempt))

        @bus.subscribe(topic, group="b")
        async def group_b(job: Job, envelope: Envelope) -> None:
            got.add(("b", job["n"], time.time(), envelope.attempt))

        async with bus:
            sent = time.time()
            await bus.send(queue, Job(n=1, run="d"), delay=delay)
            await bus.publish(topic, Job(n=1, run="d"), delay=delay)
            await bus.send(queue, Job(n=2, run="d"))
            await got.wait_until(lambda items: any(i[:2] == ("queue", 2) for i in items), "the undelayed message")
            early = [i for i in got.items if i[1] == 1]
            assert early == [], f"a delayed message was handled before its undelayed successor: {early}"
            await got.wait_for(4)
        delayed = [i for i in got.items if i[1] == 1]
        assert sorted(i[0] for i in delayed) == ["a", "b", "queue"]
        for where, _, handled, attempt in delayed:
            assert handled >= sent + delay, f"{where}: handled {sent + delay - handled:.4f}s early"
            assert attempt == 1, f"{where}: held deliveries counted as attempts ({attempt})"

    async def test_bad_delay_is_refused_before_sending(self, target: ConformanceTarget, buses: BusFactory) -> None:
        """Catches a negative or ill-typed delay reaching the broker (or silently ignored)."""
        bus = buses("svc")
        async with bus:
            with pytest.raises(ConfigurationError, match="delay"):
                await bus.send(_name("neg"), Job(n=1, run="x"), delay=-1)
            with pytest.raises(ConfigurationError, match="delay"):
                await bus.publish(_name("str"), Job(n=1, run="x"), delay="5")  # type: ignore[arg-type]

    # -- batch handlers ------------------------------------------------------------------------

    async def test_batch_handler_gets_batches_of_at_most_n(self, target: ConformanceTarget, buses: BusFactory) -> None:
        """Catches batches over the limit, messages lost or doubled between batches, a batch
        handler that is only ever given one message, and a partial batch never delivered."""
        queue = _name("batch")
        n = 25
        batches: Collector[list[int]] = Collector(target.timeout)
        bus = buses("svc")

        @bus.consume(queue, batch=10, batch_timeout=0.3)
        async def bulk(jobs: list[Job]) -> None:
            batches.add([j["n"] for j in jobs])

        async with bus:
            await bus.send_many(queue, [Job(n=i, run="b") for i in range(n)])
            await batches.wait_until(lambda b: sum(map(len, b)) >= n, f"{n} messages in batches")
        sizes = [len(b) for b in batches.items]
        assert max(sizes) <= 10, f"batch over the limit: {sizes}"
        assert max(sizes) > 1, f"never more than one message per batch: {sizes}"
        assert sorted(i for b in batches.items for i in b) == list(range(n))

    async def test_batch_failure_retries_each_message_and_poison_goes_alone(
        self, target: ConformanceTarget, buses: BusFactory
    ) -> None:
        """Catches a raising batch that loses or dead-letters its messages at once, and a
        poison message that fails the rest of its batch."""
        topic = _name("batchfail")
        handled: Collector[tuple[int, int]] = Collector(target.timeout)
        dead: Collector[Envelope] = Collector(target.timeout)
        failed_once: set[int] = set()
        bus = buses("svc")

        @bus.subscribe(topic, group="bulk", batch=5, batch_timeout=0.2)
        async def bulk(jobs: list[Job], envelopes: list[Envelope]) -> None:
            fresh = [j["n"] for j in jobs if j["n"] not in failed_once]
            if fresh:
                failed_once.update(fresh)
                raise RuntimeError(f"index down for {fresh}")
            for job, envelope in zip(jobs, envelopes, strict=True):
                handled.add((job["n"], envelope.attempt))

        @bus.consume(f"{topic}.bulk.dlq")
        async def dlq(envelope: Envelope) -> None:
            dead.add(envelope)

        async with bus:
            await bus.publish(topic, {"n": "not a number", "run": "poison"})
            await bus.publish_many(topic, [Job(n=i, run="b") for i in range(6)])
            await handled.wait_for(6)
            await dead.wait_for(1)
        assert sorted(n for n, _ in handled.items) == list(range(6)), "each message handled once after its retry"
        assert all(attempt >= 2 for _, attempt in handled.items)
        assert dead.items[0].wire_headers["dlq-error-type"] == "messagebus.DecodeError"
        assert dead.items[0].wire_headers["dlq-attempts"] == "1"

    # -- routing -------------------------------------------------------------------------------

    async def test_filter_handles_only_matching_headers(self, target: ConformanceTarget, buses: BusFactory) -> None:
        """Catches a filter ignored (non-matching messages handled) or over-applied (a group
        without the filter missing messages, a matching one dropped)."""
        topic = _name("filter")
        eu: Collector[int] = Collector(target.timeout)
        everyone: Collector[int] = Collector(target.timeout)
        bus = buses("svc")

        @bus.subscribe(topic, group="eu", filter={"region": "eu"})
        async def eu_only(job: Job) -> None:
            eu.add(job["n"])

        @bus.subscribe(topic, group="all")
        async def all_regions(job: Job) -> None:
            everyone.add(job["n"])

        async with bus:
            for i in range(6):
                region = "eu" if i % 2 == 0 else "us"
                await bus.publish(topic, Job(n=i, run="f"), key="k", headers={"region": region, "tier": "1"})
            # A last matching message: on ordered transports everything before it was decided.
            await bus.publish(topic, Job(n=6, run="f"), key="k", headers={"region": "eu"})
            await everyone.wait_for(7)
            await eu.wait_until(lambda items: 6 in items, "the last matching message")
        assert sorted(eu.items) == [0, 2, 4, 6]
        assert sorted(everyone.items) == list(range(7))

    async def test_wildcard_subscription_gets_every_matching_topic(
        self, target: ConformanceTarget, buses: BusFactory
    ) -> None:
        """Catches ``*`` matching more or less than one segment, ``#`` not matching many,
        a topic made after the subscription started being missed, and Envelope.destination
        naming the pattern instead of the topic. A transport without wildcards must refuse
        the pattern at registration, naming itself."""
        base = _name("wild")
        bus = buses("audit")
        if not target.capabilities.wildcards:
            with pytest.raises(UnsupportedFeature, match=bus.transport.messaging_system):
                bus.subscribe(f"{base}.*")
            return
        one: Collector[tuple[str, int]] = Collector(target.timeout)
        many: Collector[tuple[str, int]] = Collector(target.timeout)

        @bus.subscribe(f"{base}.*", group="one")
        async def single(job: Job, envelope: Envelope) -> None:
            one.add((envelope.destination, job["n"]))

        @bus.subscribe(f"{base}.#", group="many")
        async def deep(job: Job, envelope: Envelope) -> None:
            many.add((envelope.destination, job["n"]))

        async with bus:
            for i, topic in enumerate((f"{base}.created", f"{base}.paid.late", f"{base}x.created", f"{base}.shipped")):
                await bus.publish(topic, Job(n=i, run="w"))
            await one.wait_for(2)
            await many.wait_for(3)
        assert sorted(one.items) == [(f"{base}.created", 0), (f"{base}.shipped", 3)]
        assert sorted(many.items) == [(f"{base}.created", 0), (f"{base}.paid.late", 1), (f"{base}.shipped", 3)]

    async def test_bad_patterns_and_filters_are_refused(self, target: ConformanceTarget, buses: BusFactory) -> None:
        """Catches an illegal pattern or filter accepted at registration (to fail later)."""
        bus = buses("svc")
        bad: list[tuple[str, dict[str, Any]]] = [
            ("orders.*x", {}),
            ("orders.**", {}),
            ("orders.created", {"filter": {"ce-type": "x"}}),
            ("orders.created", {"filter": {"region": 1}}),
            ("orders.created", {"filter": {}}),
        ]
        for topic, kwargs in bad:
            with pytest.raises(ConfigurationError):
                bus.subscribe(topic, **kwargs)
