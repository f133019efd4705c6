"""BrokerProcess, the test servers' supervisor (messagebus/testing/_brokers.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from messagebus.testing._brokers import BrokerProcess, free_port


def _server(tmp_path: Path, failures: int) -> BrokerProcess:
    """A server that exits with status 3 on its first ``failures`` starts, then listens."""
    port = free_port()
    script = tmp_path / "server.py"
    script.write_text(
        "import pathlib, socket, sys, time\n"
        f"runs = pathlib.Path({str(tmp_path / 'runs')!r})\n"
        "n = int(runs.read_text()) if runs.exists() else 0\n"
        "runs.write_text(str(n + 1))\n"
        f"if n < {failures}:\n"
        "    sys.exit(3)\n"
        "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"s.bind(('127.0.0.1', {port})); s.listen()\n"
        "while True:\n"
        "    s.accept()[0].close()\n"
    )
    return BrokerProcess(
        "flaky test server",
        [sys.executable, str(script)],
        port,
        f"tcp://127.0.0.1:{port}",
        keeps_messages=False,
        log_path=str(tmp_path / "server.log"),
        start_timeout=20.0,
    )


def test_a_server_that_dies_while_starting_is_started_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug caught: one failed start of a broker (a JVM emulator restarted on the port of one
    just killed has died at once in CI) failing the crash test that restarts it, when a
    second start brings it up."""
    monkeypatch.setenv("MESSAGEBUS_REQUIRE_BROKERS", "1")  # a failed start fails here, never skips
    server = _server(tmp_path, failures=2)
    try:
        server.start_sync()
        assert server.running() and server.exit_status == 3
        assert (tmp_path / "runs").read_text() == "3"
    finally:
        server.close()


def test_a_server_that_never_starts_fails_with_its_exit_status(tmp_path: Path) -> None:
    """Bug caught: a broker that can never start retried for ever, or failing without the
    exit status that tells why."""
    server = _server(tmp_path, failures=99)
    with pytest.raises((pytest.fail.Exception, pytest.skip.Exception), match="exited with status 3"):
        server.start_sync()
    assert (tmp_path / "runs").read_text() == "3"
