"""Fixtures: Google's Pub/Sub emulator for the tests.

``MESSAGEBUS_TEST_PUBSUB_URL`` (a ``pubsub://PROJECT?emulator_host=HOST:PORT`` URL) points the
tests at a running emulator. Otherwise a session fixture starts one on a free port, through
the emulator's own launcher script when it is found (about 2 s) or ``gcloud beta emulators
pubsub start`` (slower), and kills its whole process group at the end: the Java process
outlives a killed gcloud wrapper otherwise. Without an emulator the tests skip (fail in CI).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pubsub_helpers import url_for

from messagebus.testing import free_port, missing_broker, wait_for_port
from messagebus.transports import TransportURL

_SDK_ROOTS = ("/usr/lib/google-cloud-sdk", "/usr/share/google-cloud-sdk", "/opt/google-cloud-sdk")


def _emulator_command(port: int, data_dir: str) -> list[str] | None:
    roots = list(_SDK_ROOTS)
    gcloud = shutil.which("gcloud")
    if gcloud:
        roots.insert(0, str(Path(os.path.realpath(gcloud)).parent.parent))
    for root in roots:
        script = Path(root) / "platform" / "pubsub-emulator" / "bin" / "cloud-pubsub-emulator"
        if script.is_file() and shutil.which("java"):
            return [str(script), "--host=127.0.0.1", f"--port={port}"]
    if gcloud:
        return [
            gcloud, "beta", "emulators", "pubsub", "start",
            f"--host-port=127.0.0.1:{port}", f"--data-dir={data_dir}", "--quiet",
        ]  # fmt: skip
    return None


@pytest.fixture(scope="session")
def pubsub_emulator() -> Iterator[str]:
    """``host:port`` of a running Pub/Sub emulator (skips/fails the tests when there is none)."""
    url = os.environ.get("MESSAGEBUS_TEST_PUBSUB_URL")
    if url:
        host = TransportURL.parse(url).query.get("emulator_host") or os.environ.get("PUBSUB_EMULATOR_HOST", "")
        if not host:
            missing_broker("Pub/Sub emulator", f"MESSAGEBUS_TEST_PUBSUB_URL={url!r} names no emulator_host")
        h, _, p = host.rpartition(":")
        if not wait_for_port(h, int(p), timeout=5.0):
            missing_broker("Pub/Sub emulator", f"nothing listens on {host}")
        yield host
        return
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="messagebus-pubsub-") as data_dir:
        cmd = _emulator_command(port, data_dir)
        if cmd is None:
            missing_broker("Pub/Sub emulator", "neither the emulator script nor gcloud is installed")
        log = open(Path(data_dir) / "emulator.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            if not wait_for_port("127.0.0.1", port, timeout=60.0):
                missing_broker("Pub/Sub emulator", f"it did not listen on port {port} within 60 s")
            yield f"127.0.0.1:{port}"
        finally:
            # The emulator runs in its own session: kill the whole group (wrapper and Java).
            with _suppress():
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with _suppress():
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
            log.close()


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is not None and issubclass(exc[0], ProcessLookupError | PermissionError)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def pubsub_url(pubsub_emulator: str) -> str:
    """A ``pubsub://`` URL for the test emulator."""
    url = os.environ.get("MESSAGEBUS_TEST_PUBSUB_URL")
    if url:
        return url
    return url_for(pubsub_emulator)


@pytest.fixture
def name() -> str:
    """A unique logical name prefix for one test (the emulator is shared)."""
    return f"t.ps.{uuid.uuid4().hex[:10]}"
