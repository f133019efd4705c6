"""The shop sample, unchanged, on Redis by URL: one OS process per service."""

import uuid

from redis_helpers import SESSION_PREFIX, url_for

from samples.shop.multiprocess import run_shop_processes


async def test_shop_runs_one_process_per_service_on_redis(redis_url: str) -> None:
    """Catches a transport that works in the kit but not for an application: the shop's
    services (payments, shipping, notifications) in their own processes, found by URL
    scheme, settle every order (the sample's fixed names get a key prefix of their own)."""
    url = url_for(redis_url, f"{SESSION_PREFIX}shop-{uuid.uuid4().hex[:8]}:")
    outcomes = await run_shop_processes(url, orders=6, timeout=120)
    assert outcomes == {
        **{f"order-{i}": "shipped" for i in (1, 2, 3, 4, 6)},
        "order-5": "payment failed",
    }
