"""The shop sample runs end to end on memory://."""

import uuid

import pytest

from samples.shop.__main__ import run_all


async def test_shop_runs_on_memory(capsys: pytest.CaptureFixture[str]) -> None:
    assert await run_all(f"memory://shop-{uuid.uuid4().hex[:8]}", 6, timeout=30) == 0
    out = capsys.readouterr().out
    assert "6 orders" in out
    assert "5 shipped, 1 payment failed" in out
    assert "charged order-3 $59.97 (attempt 2)" in out
    assert "payment failed for order-5 (card ending 0000 declined)" in out
