"""Run every benchmark and gather the figures into benchmarks/RESULTS.md.

    python -m benchmarks              # full runs (minutes per broker)
    python -m benchmarks --quick      # smoke runs
    python -m benchmarks memory kafka # only some

Each ``bench_<name>.py`` writes ``results/<name>.md``; this collects them in one file with
the machine and the command.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from benchmarks._common import machine

HERE = Path(__file__).parent
ORDER = [
    "memory",
    "tracing",
    "latency",
    "lifecycle",
    "rabbitmq",
    "kafka",
    "sqs",
    "pubsub",
    "redis",
    "nats",
    "outbox",
    "patterns",
    "operating",
    "history",
]
SECTIONS = ["summary", *ORDER]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {ORDER})")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    names = args.names or [n for n in ORDER if (HERE / f"bench_{n}.py").exists()]
    failed = []
    for name in names:
        cmd = [sys.executable, "-m", f"benchmarks.bench_{name}", *(["--quick"] if args.quick else [])]
        print(f"\n=== {' '.join(cmd[1:])}", flush=True)
        if subprocess.run(cmd, cwd=HERE.parent).returncode != 0:
            failed.append(name)
    if not args.quick:
        collect()
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def collect() -> None:
    """Write RESULTS.md from results/*.md (full runs only)."""
    parts = [
        "# Benchmark results\n",
        f"Machine: {machine()}. Command: `python -m benchmarks` (or `nox -s bench`); each section",
        "names its own command. Same workload through messagebus and the raw client in one run.\n",
    ]
    for name in SECTIONS:
        path = HERE / "results" / f"{name}.md"
        if path.exists():
            parts.append(path.read_text().strip() + "\n")
    (HERE / "RESULTS.md").write_text("\n".join(parts))


if __name__ == "__main__":
    sys.exit(main())
