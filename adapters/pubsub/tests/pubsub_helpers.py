"""Helpers shared by the Pub/Sub adapter tests (a uniquely named module: every adapter's
tests have a ``conftest``, so tests import helpers from here, not from ``conftest``)."""

from __future__ import annotations

PROJECT = "messagebus-test"
# Short ack deadline: a message lost with a dropped stream comes back within seconds.
TEST_OPTIONS = {"ack_deadline": "10", "connect_timeout": "10", "publish_timeout": "30"}


def url_for(emulator_host: str, **extra: str) -> str:
    """The test URL for an emulator at ``emulator_host``, with extra (or overriding) options."""
    options = {"emulator_host": emulator_host, **TEST_OPTIONS, **extra}
    return f"pubsub://{PROJECT}?" + "&".join(f"{k}={v}" for k, v in options.items())


def url_via(host: str, port: int) -> str:
    """The test URL pointing at ``host:port`` (a proxy in front of the emulator)."""
    return url_for(f"{host}:{port}")
