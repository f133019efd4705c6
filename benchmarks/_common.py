"""Shared helpers for the benchmark scripts: timing, memory, machine info, tables."""

from __future__ import annotations

import asyncio
import platform
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


@dataclass
class Row:
    """One measured line of a results table."""

    name: str
    messages: int
    seconds: float
    note: str = ""
    cpu: float | None = None  # CPU seconds of this process: robust on a shared machine

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else float("inf")

    @property
    def cpu_rate(self) -> float | None:
        return self.messages / self.cpu if self.cpu else None


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    """Resident memory now, in MiB (Linux)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / (1024 * 1024)


def versions(*packages: str) -> str:
    out = []
    for name in packages:
        try:
            out.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            out.append(f"{name} (not installed)")
    return ", ".join(out)


def machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores ({cpu}), Python {sys.version.split()[0]}"


def table(rows: list[Row], baseline: str | None = None) -> str:
    base = next((r.rate for r in rows if r.name == baseline), None)
    lines = [
        "| workload | messages | seconds | msg/s | msg per CPU s | vs baseline | note |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        ratio = f"{r.rate / base:.2f}x" if base else ""
        cpu = f"{r.cpu_rate:,.0f}" if r.cpu_rate else ""
        lines.append(f"| {r.name} | {r.messages:,} | {r.seconds:.3f} | {r.rate:,.0f} | {cpu} | {ratio} | {r.note} |")
    return "\n".join(lines)


def write(name: str, text: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text(text)
    print(text)


class Count:
    """Counts handled messages; ``done`` is set at ``target``. Records wall-clock and CPU
    time at the first and the last message (timing starts at the first message handled)."""

    def __init__(self, target: int) -> None:
        self.n = 0
        self.target = target
        self.first = 0.0
        self.last = 0.0
        self.cpu_first = 0.0
        self.cpu_last = 0.0
        self.done = asyncio.Event()

    def hit(self) -> None:
        if self.n == 0:
            self.first = time.perf_counter()
            self.cpu_first = time.process_time()
        self.n += 1
        if self.n >= self.target:
            self.last = time.perf_counter()
            self.cpu_last = time.process_time()
            self.done.set()


def latency_ms(samples: list[float]) -> tuple[float, float]:
    """p50 and p99 of latency ``samples`` (seconds), in milliseconds."""
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
