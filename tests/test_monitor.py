"""``messagebus monitor`` (issue 18): the collector that turns ``messagebus.stats`` snapshots
into services, rates and a graph, and the web app (JSON API, server-sent events, dead-letter
actions behind a token) served by a real uvicorn on memory:// and RabbitMQ."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from messagebus import Bus, Retry  # noqa: E402
from messagebus.monitor import STATS_TOPIC, Collector, Monitor  # noqa: E402
from messagebus.monitor import _cli as monitor_cli  # noqa: E402
from messagebus.monitor._collector import FORGET_AFTER  # noqa: E402
from messagebus.testing import missing_broker, wait_for_port  # noqa: E402

State = dict[str, Any]


def handler(source: str, group: str | None = None, kind: str = "subscribe", **counts: Any) -> dict[str, Any]:
    dlq = f"{source}.{group}.dlq" if group else f"{source}.dlq"
    row = {"kind": kind, "source": source, "group": group, "dead_letter_queue": dlq, "in_flight": 0}
    row.update({"handled": 0, "failed": 0, "retried": 0, "dead_lettered": 0, "p50_ms": None, "p99_ms": None})
    row.update(counts)
    return row


def snapshot(
    service: str,
    time: float,
    handlers: list[dict[str, Any]] = (),  # type: ignore[assignment]
    published: dict[tuple[str, str], int] | None = None,
    *,
    instance: str = "i1",
    interval: float = 1.0,
    stopping: bool = False,
) -> dict[str, Any]:
    return {
        "service": service,
        "instance": f"{service}-{instance}",
        "time": time,
        "interval": interval,
        "transport": "memory",
        "started": 0.0,
        "stopping": stopping,
        "handlers": list(handlers),
        "published": [{"kind": k, "destination": d, "messages": n} for (k, d), n in (published or {}).items()],
    }


def body(data: object) -> bytes:
    return json.dumps(data).encode()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def row_of(state: State, service: str, source: str) -> dict[str, Any]:
    return next(r for r in state["handlers"] if r["service"] == service and r["source"] == source)


# -- the collector ---------------------------------------------------------------------------


def test_rates_are_counter_differences_over_the_time_between_snapshots() -> None:
    """Bug caught: rates computed from the cumulative totals (or over the wrong time span),
    so a busy handler shows its lifetime count as a rate, or a restarted instance whose
    counters went down shows a negative rate."""
    collector = Collector(clock=Clock())
    assert collector.ingest(body(snapshot("billing", 100.0, [handler("orders", "billing", handled=10)], {})))
    first = row_of(collector.state(), "billing", "orders")
    assert first["handled"] == 10
    assert first["rates"]["handled"] is None  # one snapshot: no rate yet

    later = snapshot(
        "billing", 102.0, [handler("orders", "billing", handled=30, failed=4, retried=3)], {("topic", "paid"): 9}
    )
    earlier_publish = snapshot("billing", 101.0, [handler("orders", "billing", handled=20)], {("topic", "paid"): 5})
    collector.ingest(body(earlier_publish))
    collector.ingest(body(later))
    state = collector.state()
    row = row_of(state, "billing", "orders")
    assert row["handled"] == 30
    assert row["rates"] == {"handled": 10.0, "failed": 4.0, "retried": 3.0, "dead_lettered": 0.0}
    assert state["published"] == [
        {"service": "billing", "kind": "topic", "destination": "paid", "messages": 9, "rate": 4.0}
    ]

    collector.ingest(body(snapshot("billing", 99.0, [handler("orders", "billing", handled=1)])))
    assert row_of(collector.state(), "billing", "orders")["handled"] == 30  # an older snapshot is ignored
    collector.ingest(body(snapshot("billing", 103.0, [handler("orders", "billing", handled=2)])))
    assert row_of(collector.state(), "billing", "orders")["rates"]["handled"] == 0.0


def test_instances_add_up_and_a_stopped_instance_keeps_its_counts() -> None:
    """Bug caught: two instances of one service shown as one (the last snapshot wins), or the
    messages a stopped instance handled vanishing from the service's totals."""
    collector = Collector(clock=Clock())
    a = handler("orders", "billing", handled=5, in_flight=2, p50_ms=1.0, p99_ms=8.0)
    b = handler("orders", "billing", handled=7, in_flight=1, p50_ms=3.0, p99_ms=4.0)
    collector.ingest(body(snapshot("billing", 1.0, [a], instance="a")))
    collector.ingest(body(snapshot("billing", 1.0, [b], instance="b")))
    state = collector.state()
    row = row_of(state, "billing", "orders")
    assert (row["handled"], row["in_flight"], row["instances"]) == (12, 3, 2)
    assert (row["p50_ms"], row["p99_ms"]) == (3.0, 8.0)
    assert state["services"][0]["instances"] == 2

    final = handler("orders", "billing", handled=9)
    collector.ingest(body(snapshot("billing", 2.0, [final], instance="b", stopping=True)))
    row = row_of(collector.state(), "billing", "orders")
    assert (row["handled"], row["in_flight"], row["instances"]) == (14, 2, 1)


def test_a_stopped_service_stays_greyed_with_its_counts_then_goes() -> None:
    """Bug caught: a short-lived publisher (a batch job, the shop's order placer) vanishing
    from the picture the moment it stops, or stopped services piling up forever."""
    clock = Clock()
    collector = Collector(clock=clock)
    collector.ingest(body(snapshot("orders", 1.0, [], {("topic", "orders.created"): 6}, stopping=True)))
    collector.ingest(body(snapshot("billing", 1.0, [handler("orders.created", "billing", handled=6)], stopping=True)))
    state = collector.state()
    assert [(s["name"], s["instances"]) for s in state["services"]] == [("billing", 0), ("orders", 0)]
    assert state["published"][0]["messages"] == 6 and state["published"][0]["rate"] is None
    row = row_of(state, "billing", "orders.created")
    assert (row["handled"], row["instances"], row["dead_letter_queue"]) == (6, 0, "orders.created.billing.dlq")
    assert len(state["graph"]["edges"]) == 2
    clock.now += FORGET_AFTER + 1
    state = collector.state()
    assert state["services"] == state["handlers"] == state["published"] == []


def test_a_silent_instance_is_dropped_after_a_few_intervals() -> None:
    """Bug caught: a crashed service (no stopping snapshot) shown as running forever."""
    clock = Clock()
    collector = Collector(clock=clock)
    collector.ingest(body(snapshot("billing", 1.0, [handler("orders", "billing")], interval=10.0)))
    clock.now += 30.0
    assert [(s["name"], s["instances"]) for s in collector.state()["services"]] == [("billing", 1)]
    clock.now += 10.0
    assert [(s["name"], s["instances"]) for s in collector.state()["services"]] == [("billing", 0)]


@pytest.mark.parametrize(
    "bad",
    [
        b"not json",
        b"[1, 2]",
        body({"instance": "x", "time": 1.0}),
        body(snapshot("", 1.0)),
        body(snapshot("s", float("nan"))),
        body({**snapshot("s", 1.0), "handlers": [handler("orders", "g", handled=-1)]}),
        body({**snapshot("s", 1.0), "handlers": [handler("orders", "g", handled=True)]}),
        body({**snapshot("s", 1.0), "handlers": [handler("orders", "g", kind="steal")]}),
        body({**snapshot("s", 1.0), "handlers": ["x"]}),
        body({**snapshot("s", 1.0), "published": [{"kind": "topic", "destination": 3, "messages": 1}]}),
        b"[" * 100_000,
    ],
)
def test_a_malformed_snapshot_is_dropped_whole(bad: bytes) -> None:
    """Bug caught: anyone who can publish to messagebus.stats crashing the monitor's handler
    (or poisoning the page with half a snapshot) with a body that is not the v1 format."""
    collector = Collector(clock=Clock())
    assert collector.ingest(bad) is False
    state = collector.state()
    assert state["services"] == [] and state["handlers"] == []
    assert state["dropped_snapshots"] == 1


def test_the_graph_links_publishers_topics_queues_handlers_and_dead_letters() -> None:
    """Bug caught: the picture missing an arrow (a queue's consumer, a pattern's matching
    topic, a dead-letter queue), pointing one the wrong way, drawing a dead-letter queue
    that a service consumes as a second, unrelated box, or no box for a service that has not
    published or handled anything yet."""
    collector = Collector(clock=Clock())
    collector.ingest(body(snapshot("orders", 1.0, [], {("topic", "orders.created"): 3, ("queue", "mail"): 1})))
    collector.ingest(body(snapshot("billing", 1.0, [handler("orders.created", "billing", handled=3, dead_lettered=1)])))
    collector.ingest(body(snapshot("audit", 1.0, [handler("orders.*", "audit", handled=3)])))
    collector.ingest(body(snapshot("mailer", 1.0, [handler("mail", kind="consume", handled=1)])))
    collector.ingest(body(snapshot("notify", 1.0, [handler("orders.created.billing.dlq", kind="consume")])))
    collector.ingest(body(snapshot("idle", 1.0)))
    graph = collector.state()["graph"]
    edges = {(e["from"], e["to"], e["kind"]) for e in graph["edges"]}
    assert edges == {
        ("service:orders", "topic:orders.created", "publish"),
        ("service:orders", "queue:mail", "publish"),
        ("topic:orders.created", "service:billing", "subscribe"),
        ("service:billing", "dlq:orders.created.billing.dlq", "dead_letter"),
        ("pattern:orders.*", "service:audit", "subscribe"),
        ("topic:orders.created", "pattern:orders.*", "match"),
        ("queue:mail", "service:mailer", "consume"),
        ("dlq:orders.created.billing.dlq", "service:notify", "consume"),
    }
    assert {n["id"] for n in graph["nodes"]} == {e[0] for e in edges} | {e[1] for e in edges} | {"service:idle"}


# -- the web app on a real server ------------------------------------------------------------


@pytest.fixture
async def monitor() -> AsyncIterator[Monitor]:
    async with Monitor(f"memory://monitor-{uuid.uuid4().hex[:8]}", port=0, depth_interval=0.2, push_interval=0.1) as m:
        yield m


def client(monitor: Monitor, **kwargs: Any) -> Any:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{monitor.port}", timeout=10.0, **kwargs)


async def wait_state(
    monitor: Monitor,
    predicate: Callable[[State], bool],
    timeout: float = 10.0,
    after_first: Callable[[], Awaitable[None]] | None = None,
) -> State:
    """The first state pushed on /events for which ``predicate`` holds; ``after_first`` runs
    once the first state arrived (to change something while the stream is open)."""
    async with asyncio.timeout(timeout), client(monitor) as http, http.stream("GET", "/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                state: State = json.loads(line.removeprefix("data: "))
                if after_first is not None:
                    await after_first()
                    after_first = None
                elif predicate(state):
                    return state
    raise AssertionError("the event stream ended")


async def test_a_published_snapshot_appears_on_the_event_stream(monitor: Monitor) -> None:
    """Bug caught: the monitor's bus not subscribed to messagebus.stats (or the event stream
    pushing one state and going quiet), so a page never shows a service."""
    feeder = Bus.from_url(str(monitor.url), service="feeder")

    async def publish() -> None:
        await feeder.publish(STATS_TOPIC, snapshot("billing", 1.0, [handler("orders", "billing", handled=4)]))

    async with feeder:
        state = await wait_state(
            monitor, lambda s: any(h["service"] == "billing" for h in s["handlers"]), after_first=publish
        )
    assert row_of(state, "billing", "orders")["handled"] == 4
    assert state["transport"] == str(monitor.url)
    async with client(monitor) as http:
        assert row_of((await http.get("/api/state")).json(), "billing", "orders")["handled"] == 4


async def test_dead_letters_peek_freely_but_replay_and_purge_need_the_token(monitor: Monitor) -> None:
    """Bug caught: replay or purge reachable without the token (any local process or web page
    could empty a dead-letter queue), a wrong token accepted, or replay not reaching the
    handler again."""
    calls: list[str] = []
    second = asyncio.Event()
    service = Bus.from_url(str(monitor.url), service="billing", retry=Retry(max_attempts=1))

    @service.subscribe("orders")
    async def bill(order: dict[str, str]) -> None:
        calls.append(order["id"])
        if len(calls) == 1:
            raise RuntimeError("card declined")
        second.set()

    dlq = "orders.billing.dlq"
    async with service:
        await service.publish("orders", {"id": "o-1", "note": "<script>alert(1)</script>"})
        state = await wait_state(monitor, lambda s: any(q["depth"] == 1 for q in s["dead_letters"]["queues"]))
        assert state["dead_letters"] == {"supported": True, "queues": [{"name": dlq, "depth": 1}]}
        async with client(monitor) as http:
            peeked = (await http.get(f"/api/dlq/{dlq}")).json()["messages"]
            assert [json.loads(m["body"]) for m in peeked] == [{"id": "o-1", "note": "<script>alert(1)</script>"}]
            assert peeked[0]["headers"]["dlq-error-message"] == "card declined"
            message_id = peeked[0]["id"]
            for headers in ({}, {"X-Monitor-Token": "wrong"}, {"X-Monitor-Token": monitor.token[:-1]}):
                for action in ("replay", "purge"):
                    response = await http.post(f"/api/dlq/{dlq}/{action}", headers=headers)
                    assert response.status_code == 403, (action, headers)
            assert len((await http.get(f"/api/dlq/{dlq}")).json()["messages"]) == 1  # nothing was removed

            token = {"X-Monitor-Token": monitor.token}
            replayed = await http.post(f"/api/dlq/{dlq}/replay", headers=token, json={"ids": [message_id]})
            assert replayed.json() == {"replayed": 1}
            await asyncio.wait_for(second.wait(), 10.0)
            assert calls == ["o-1", "o-1"]

            await service.publish("orders", {"id": "o-2"})  # handled at once: the DLQ stays empty
            assert (await http.post(f"/api/dlq/{dlq}/purge", headers=token)).json() == {"purged": 0}


async def test_bad_dead_letter_requests_say_what_is_allowed(monitor: Monitor) -> None:
    """Bug caught: a request the monitor cannot do answered with a 500 and a traceback, or a
    queue that is not a dead-letter queue (a live work queue) purged from the page."""
    token = {"X-Monitor-Token": monitor.token}
    async with client(monitor) as http:
        response = await http.post("/api/dlq/orders/purge", headers=token)
        assert response.status_code == 400 and "end with '.dlq'" in response.json()["error"]
        response = await http.get("/api/dlq/orders.dlq?limit=0")
        assert response.status_code == 400 and "limit" in response.json()["error"]
        response = await http.post("/api/dlq/orders.dlq/replay", headers=token, content=b"{not json")
        assert response.status_code == 400
        response = await http.post("/api/dlq/orders.dlq/replay", headers=token, json={"ids": "abc"})
        assert response.status_code == 400 and "ids" in response.json()["error"]


async def test_the_page_refuses_foreign_hosts_and_forbids_inline_script(monitor: Monitor) -> None:
    """Bug caught: a web page on another domain rebinding its name to 127.0.0.1 and reading
    the API (peeked message bodies), or a page whose policy would run an injected inline
    script."""
    async with client(monitor) as http:
        page = await http.get("/")
        assert page.status_code == 200 and "/static/app.js" in page.text
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy
        assert page.headers["x-content-type-options"] == "nosniff"
        assert (await http.get("/static/app.js")).headers["content-type"].startswith("text/javascript")
        assert (await http.get("/static/../_app.py")).status_code == 404
        evil = await http.get("/api/state", headers={"Host": f"evil.example:{monitor.port}"})
        assert evil.status_code == 400
        assert (await http.get("/api/state", headers={"Host": f"localhost:{monitor.port}"})).status_code == 200


async def test_monitor_binds_loopback_and_deletes_its_group_on_stop() -> None:
    """Bug caught: the monitor listening on every interface by default, or leaving its
    throwaway messagebus.stats group behind (on a real broker a queue that fills forever)."""
    url = f"memory://monitor-{uuid.uuid4().hex[:8]}"
    monitor = Monitor(url, port=0)
    assert monitor.host == "127.0.0.1"
    async with monitor:
        assert monitor.page_url == f"http://127.0.0.1:{monitor.port}/#token={monitor.token}"
    assert await stats_kept_for(monitor) == 0


async def stats_kept_for(monitor: Monitor) -> int | None:
    """How many of a fresh stats message the monitor's (stopped) group keeps: 0 once deleted."""
    async with Bus.from_url(str(monitor.url.render(redact=False)), service="feeder") as feeder:
        await feeder.publish(STATS_TOPIC, {})
        return await feeder.queue_depth(STATS_TOPIC, monitor.group)


def test_cli_options_are_checked() -> None:
    """Bug caught: a port or interval the server cannot use accepted and failing later with
    a traceback instead of a usage error naming what is allowed."""
    parser = argparse.ArgumentParser()
    monitor_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["monitor", "memory://"])
    assert (args.host, args.port, args.depth_interval) == ("127.0.0.1", 8765, 5.0)
    for bad in (["--port", "70000"], ["--port", "x"], ["--depth-interval", "0"], ["--depth-interval", "nan"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["monitor", "memory://", *bad])


async def test_on_rabbitmq_the_page_hides_the_password_and_the_group_goes_away() -> None:
    """Bug caught: the broker password shown on the page, or the monitor's stats queue left
    on a real broker after it stops."""
    pytest.importorskip("messagebus_rabbitmq")
    if not wait_for_port("127.0.0.1", 5672, timeout=5.0):
        missing_broker("rabbitmq", "nothing listens on 127.0.0.1:5672")
    async with Monitor("amqp://guest:guest@127.0.0.1:5672/", port=0, push_interval=0.1) as monitor:
        feeder = Bus.from_url("amqp://guest:guest@127.0.0.1:5672/", service="feeder")
        service = f"svc-{uuid.uuid4().hex[:6]}"
        async with feeder:
            await feeder.publish(STATS_TOPIC, snapshot(service, 1.0, [handler("orders", service, handled=2)]))
            state = await wait_state(monitor, lambda s: any(h["service"] == service for h in s["handlers"]))
        async with client(monitor) as http:
            text = (await http.get("/api/state")).text
        assert state["transport"] == "amqp://guest:***@127.0.0.1:5672/"
        assert "guest:guest" not in text
    assert await stats_kept_for(monitor) == 0


async def test_the_command_prints_the_page_address_and_stops_on_sigint() -> None:
    """Bug caught: ``messagebus monitor`` printing the broker password, serving no page at
    the printed address, or not stopping (and leaving its group) on Ctrl-C."""
    pytest.importorskip("messagebus_rabbitmq")
    if not wait_for_port("127.0.0.1", 5672, timeout=5.0):
        missing_broker("rabbitmq", "nothing listens on 127.0.0.1:5672")
    url = "amqp://guest:guest@127.0.0.1:5672/"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "messagebus", "monitor", url, "--port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        async with asyncio.timeout(30):
            lines = [(await process.stdout.readline()).decode() for _ in range(3)]
        assert lines[0].startswith("monitoring amqp://guest:***@127.0.0.1:5672/ (group monitor-")
        page_url = lines[1].removeprefix("open ").strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/#token=[\w-]{20,}", page_url), page_url
        assert lines[2].strip() == f"token for replay and purge: {page_url.partition('#token=')[2]}"
        async with httpx.AsyncClient(timeout=10.0) as http:
            assert (await http.get(page_url.partition("#")[0])).status_code == 200
        group = lines[0].partition("(group ")[2].partition(" ")[0]
    finally:
        process.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            _, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    async with Bus.from_url(url, service="feeder") as feeder:
        await feeder.publish(STATS_TOPIC, {})
        assert await feeder.queue_depth(STATS_TOPIC, group) == 0
