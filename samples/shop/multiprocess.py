"""Run the shop with one OS process per service (used by the broker tests).

Starts payments, shipping and notifications as ``python -m samples.shop --service X``
processes on ``url``, waits until each has started its consumers, places the orders from a
fourth process, and waits until notifications reported every order's outcome.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("payments", "shipping", "notifications")
_OUTCOME = re.compile(r"(?:emailed \S+: 'Order (order-\d+) is on its way'|payment failed for (order-\d+))")


async def _spawn(url: str, service: str, orders: int) -> asyncio.subprocess.Process:
    env = {**os.environ, "MESSAGEBUS_URL": url, "PYTHONUNBUFFERED": "1"}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "samples.shop",
        "--service",
        service,
        "--orders",
        str(orders),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def _read_until(proc: asyncio.subprocess.Process, pattern: str, lines: list[str]) -> None:
    assert proc.stdout is not None
    while True:
        raw = await proc.stdout.readline()
        if not raw:
            raise AssertionError(f"process exited before printing {pattern!r}:\n" + "".join(lines))
        line = raw.decode()
        lines.append(line)
        if pattern in line:
            return


async def run_shop_processes(url: str, orders: int = 6, timeout: float = 120.0) -> dict[str, str]:
    """Run the shop across processes on ``url``; return ``{order_id: outcome}``.

    Raises :class:`AssertionError` with the processes' output if it does not finish in time.
    """
    procs: dict[str, asyncio.subprocess.Process] = {}
    output: dict[str, list[str]] = {s: [] for s in (*SERVICES, "orders")}
    outcomes: dict[str, str] = {}
    try:
        async with asyncio.timeout(timeout):
            for service in SERVICES:
                procs[service] = await _spawn(url, service, orders)
            for service in SERVICES:
                await _read_until(procs[service], "consumers running", output[service])
            procs["orders"] = await _spawn(url, "orders", orders)
            assert await procs["orders"].wait() == 0, "".join(output["orders"])
            notifications = procs["notifications"]
            assert notifications.stdout is not None
            while len(outcomes) < orders:
                raw = await notifications.stdout.readline()
                if not raw:
                    raise AssertionError("notifications exited:\n" + "".join(output["notifications"]))
                line = raw.decode()
                output["notifications"].append(line)
                match = _OUTCOME.search(line)
                if match:
                    shipped, failed = match.groups()
                    outcomes[shipped or failed] = "shipped" if shipped else "payment failed"
    except TimeoutError:
        dump = "\n".join(f"--- {s}\n{''.join(lines)}" for s, lines in output.items())
        raise AssertionError(f"shop did not finish in {timeout}s; {len(outcomes)} outcomes\n{dump}") from None
    finally:
        for proc in procs.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
    for service in SERVICES:
        assert procs[service].returncode == 0, f"{service} did not stop cleanly:\n" + "".join(output[service])
    return outcomes
