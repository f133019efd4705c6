"""The shop sample on Pub/Sub with one OS process per service (issue 7)."""

import uuid

from pubsub_helpers import TEST_OPTIONS

from samples.shop.multiprocess import run_shop_processes


async def test_shop_runs_one_process_per_service_on_pubsub(pubsub_emulator: str) -> None:
    # A project of its own: the sample's fixed topic names cannot meet other tests' traffic.
    options = "&".join(f"{k}={v}" for k, v in {"emulator_host": pubsub_emulator, **TEST_OPTIONS}.items())
    url = f"pubsub://shop-{uuid.uuid4().hex[:8]}?{options}"
    outcomes = await run_shop_processes(url, orders=6, timeout=180)
    assert outcomes == {
        **{f"order-{i}": "shipped" for i in (1, 2, 3, 4, 6)},
        "order-5": "payment failed",
    }
