"""The shop sample on NATS by URL, one OS process per service."""

from __future__ import annotations

import uuid

from messagebus.transports import TransportURL
from samples.shop.multiprocess import run_shop_processes


async def test_shop_runs_one_process_per_service_on_nats(nats_url: str) -> None:
    """Catches a sample that needs NATS-specific code: the unchanged shop runs by URL
    (a prefix of its own keeps its fixed names apart from other runs)."""
    parsed = TransportURL.parse(nats_url)
    url = f"nats://{parsed.host}:{parsed.port}?prefix=shop{uuid.uuid4().hex[:8]}&ack_wait=5"
    outcomes = await run_shop_processes(url, orders=6, timeout=120)
    assert outcomes == {
        **{f"order-{i}": "shipped" for i in (1, 2, 3, 4, 6)},
        "order-5": "payment failed",
    }
