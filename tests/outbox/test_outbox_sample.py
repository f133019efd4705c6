"""The outbox sample runs end to end by URL."""

from __future__ import annotations

import uuid

import pytest

from samples.outbox.__main__ import run


async def test_outbox_sample_on_memory(dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Catches: a sample that no longer runs, charges twice, or publishes the rolled-back order."""
    assert await run(f"memory://sample-{uuid.uuid4().hex[:8]}", dsn) == 0
    out = capsys.readouterr().out
    assert "3 orders placed, 3 charged once each" in out
    assert "order-3 rolled back" in out and "charged order-3" not in out
