"""The messagebus command: run, check, schemes."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from messagebus.__main__ import main


def test_check_validates_and_redacts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "memory://x?max_message_size=5"]) == 0
    assert "MemoryTransport" in capsys.readouterr().out
    assert main(["check", "memory://u:hunter2@x?bogus=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown option 'bogus'" in err
    assert "hunter2" not in err


def test_schemes_lists_memory(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schemes"]) == 0
    assert "memory" in capsys.readouterr().out.split()


def test_run_starts_the_bus_and_stops_on_sigterm(tmp_path: Path) -> None:
    (tmp_path / "svc.py").write_text(
        textwrap.dedent(
            """
            from messagebus import Bus
            bus = Bus.from_url("memory://cli", service="svc")

            @bus.consume("jobs")
            async def job(n: int) -> None: ...
            """
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "messagebus", "run", "svc:bus", "--grace", "5"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert "Bus(service='svc', url='memory://cli', state=running) running" in line
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def test_run_rejects_a_non_bus(tmp_path: Path) -> None:
    (tmp_path / "notbus.py").write_text("bus = 42\n")
    result = subprocess.run(
        [sys.executable, "-m", "messagebus", "run", "notbus:bus"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "is int, not a messagebus.Bus" in result.stderr
