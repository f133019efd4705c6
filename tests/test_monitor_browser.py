"""The monitor page in a real browser (Playwright driving Debian's Chromium, /usr/bin/chromium;
no browser download): two services on one memory:// broker publish their stats, and the page
shows them, counts that move, a dead letter that replays from the page, and payloads that
stay text."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
playwright = pytest.importorskip("playwright.async_api")

from messagebus import Bus, Retry  # noqa: E402
from messagebus.monitor import STATS_TOPIC, Monitor  # noqa: E402
from messagebus.testing import missing_broker  # noqa: E402

CHROMIUM = os.environ.get("MESSAGEBUS_TEST_CHROMIUM", "/usr/bin/chromium")
PAYLOAD = "<script>window.__pwned=1</script>"
EVIL_SERVICE = "<img src=x onerror=window.__pwned=2>"


@pytest.fixture
async def page() -> Any:
    if not os.access(CHROMIUM, os.X_OK):
        missing_broker("chromium", f"no browser at {CHROMIUM} (apt-get install chromium)")
    async with playwright.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True, chromium_sandbox=False)
        try:
            page = await browser.new_page()
            page.set_default_timeout(10_000)
            playwright.expect.set_options(timeout=10_000)
            yield page
        finally:
            await browser.close()


async def test_the_page_shows_the_flow_and_replays_a_dead_letter(page: Any) -> None:
    """Bug caught: services or topics missing from the picture, counts that do not move while
    messages flow, a dead letter that never shows or does not replay from the page, or a
    message body (or a service name from a forged snapshot) inserted as markup and run; the
    graph's last column drawn outside its box on a narrow window, a cut node name with no
    tooltip naming it whole, an empty dead-letter queue shown before the toggle asks for it
    (or never shown after) or listed above one that holds messages."""
    expect = playwright.expect
    url = f"memory://browser-{uuid.uuid4().hex[:8]}"
    handled: list[str] = []
    replayed = asyncio.Event()
    orders = Bus.from_url(url, service="orders", stats_interval=0.2)
    billing = Bus.from_url(url, service="billing", stats_interval=0.2, retry=Retry(max_attempts=1))
    refunds = Bus.from_url(url, service="refunds", stats_interval=0.2, retry=Retry(max_attempts=1))

    @refunds.subscribe("refunds.requested")
    async def refund(request: dict[str, Any]) -> None:
        raise RuntimeError("refunds are down")

    @billing.subscribe("orders.created")
    async def bill(order: dict[str, Any]) -> None:
        if order.get("fail") and order["id"] not in handled:
            handled.append(order["id"])
            raise RuntimeError("card declined")
        handled.append(order["id"])
        if order.get("fail"):
            replayed.set()

    async with Monitor(url, port=0, depth_interval=0.2, push_interval=0.2) as monitor, orders, billing, refunds:
        # Narrower than the graph's natural width (four columns, about 1,000 px).
        await page.set_viewport_size({"width": 860, "height": 900})
        await page.goto(monitor.page_url)
        graph = page.locator("#graph")
        for node in ("service:orders", "service:billing", "topic:orders.created"):
            await expect(graph.locator(f'g.node[data-id="{node}"]')).to_be_visible()
        handled_cell = page.locator('#handlers tr[data-service="billing"] td:nth-child(4) > span').first
        for n in range(3):
            await orders.publish("orders.created", {"id": f"o-{n}"})
        await expect(handled_cell).to_have_text("3")
        edge = graph.locator('g.edge.publish[data-from="service:orders"][data-to="topic:orders.created"]')
        await expect(edge).to_contain_text("(3)")
        for n in range(3, 5):
            await orders.publish("orders.created", {"id": f"o-{n}"})
        await expect(handled_cell).to_have_text("5")

        await orders.publish("orders.created", {"id": "evil", "fail": True, "note": PAYLOAD})
        dlq = page.locator('#dlq-list tr[data-queue="orders.created.billing.dlq"]')
        await expect(dlq.locator("td.depth")).to_have_text("1")
        await expect(graph.locator('g.node[data-id="dlq:orders.created.billing.dlq"]')).to_be_visible()
        await dlq.locator("button.peek").click()
        body = page.locator("#peek .message pre.body")
        await expect(body).to_contain_text(PAYLOAD)

        # A forged snapshot: its service name is drawn as text like any other.
        forged = {"service": EVIL_SERVICE, "instance": "x", "time": time.time(), "interval": 1.0,
                  "transport": "memory", "started": 0.0, "stopping": False, "handlers": [],
                  "published": [{"kind": "topic", "destination": "orders.created", "messages": 1}]}  # fmt: skip
        await orders.publish(STATS_TOPIC, forged)
        await expect(graph.locator("g.node.service text.name", has_text="<img src=x")).to_have_count(1)

        token = page.locator("#token")
        await token.fill("")
        await page.locator("#peek button.replay-one").click()
        await expect(page.locator("#action-status")).to_contain_text("Paste the token")
        await token.fill(monitor.token)
        await page.locator("#peek button.replay-one").click()
        await expect(page.locator("#action-status")).to_have_text("replayed 1 from orders.created.billing.dlq")
        await asyncio.wait_for(replayed.wait(), 10.0)
        await expect(dlq.locator("td.depth")).to_have_text("0")
        await expect(handled_cell).to_have_text("6")
        assert await page.evaluate("typeof window.__pwned") == "undefined"

        # A non-empty dead-letter queue shows, first; the one just emptied waits behind the toggle.
        await orders.publish("refunds.requested", {"id": "r-1"})
        full_name = "refunds.requested.refunds.dlq"
        full = page.locator(f'#dlq-list tr[data-queue="{full_name}"]')
        await expect(full.locator("td.depth")).to_have_text("1")
        await expect(full).to_be_visible()
        await expect(page.locator("#dlq-list tbody tr").first).to_have_attribute("data-queue", full_name)
        await expect(dlq).to_be_hidden()
        toggle = page.locator("#dlq-empty-toggle")
        await expect(toggle).to_have_text("show 1 empty")
        await toggle.click()
        await expect(dlq).to_be_visible()
        await expect(dlq.locator("button.purge")).to_be_visible()
        await expect(toggle).to_have_text("hide 1 empty")

        # The whole picture fits its box, the last column included; cut names are whole on hover.
        last = graph.locator(f'g.node[data-id="dlq:{full_name}"]')
        await expect(last).to_be_visible()
        outside = await page.evaluate(
            """() => {
                const box = document.querySelector(".graph-wrap").getBoundingClientRect();
                return [...document.querySelectorAll("#graph g.node")].filter((n) => {
                    const r = n.getBoundingClientRect();
                    return r.left < box.left || r.right > box.right || r.top < box.top || r.bottom > box.bottom;
                }).map((n) => n.dataset.id);
            }"""
        )
        assert outside == []
        assert await last.locator("text.name").text_content() == "refunds.requested.refun\u2026"
        assert await last.locator("title").text_content() == f"dlq {full_name}"
