"""Small helpers shared by the adapter tests (direct use of the transport contract)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from messagebus.testing import free_port, missing_broker
from messagebus.testing._brokers import BrokerProcess
from messagebus.transports import Delivery, Destination, DestinationKind, OutgoingMessage

#: The RabbitMQ server of the project machines.
DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"

#: Debian's ``/usr/sbin/rabbitmq-server`` is a wrapper that switches to the ``rabbitmq`` user
#: (who cannot write the test's directory); the script behind it runs as whoever calls it.
_SERVER_SCRIPTS = ("/usr/lib/rabbitmq/bin/rabbitmq-server",)


def private_rabbitmq(base: str) -> BrokerProcess:
    """A private RabbitMQ node (never the shared one) with its data, logs, cookie and config
    in ``base``, on free AMQP and distribution ports: a broker the crash tests may kill with
    SIGKILL and start again on the same ports and data. Not started yet.

    ``RABBITMQ_ALLOW_INPUT`` makes the start script ``exec`` the Erlang VM instead of
    supervising it from a shell, so the launched pid is ``beam.smp`` itself (what a crash
    kills); ``-noinput`` keeps that VM from reading a shell from stdin."""
    script = next((s for s in _SERVER_SCRIPTS if os.access(s, os.X_OK)), None) or shutil.which("rabbitmq-server")
    if script is None:
        missing_broker("RabbitMQ (private node)", "rabbitmq-server is not installed")
    port, dist = free_port(), free_port()
    root = Path(base)
    (root / "enabled_plugins").write_text("[].\n")
    # The system's rabbitmq.conf names the shared node's listener (5672): never read it.
    (root / "rabbitmq.conf").write_text(f"listeners.tcp.1 = 127.0.0.1:{port}\n")
    (root / "rabbitmq-env.conf").write_text("ERL_EPMD_ADDRESS=127.0.0.1\n")
    env = {
        **os.environ,
        "HOME": base,  # the Erlang cookie is made here, not in the user's home
        "RABBITMQ_NODENAME": f"mb{port}@localhost",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(dist),
        "RABBITMQ_MNESIA_BASE": base,
        "RABBITMQ_LOG_BASE": base,
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(root / "enabled_plugins"),
        "RABBITMQ_CONFIG_FILE": str(root / "rabbitmq.conf"),
        "RABBITMQ_CONF_ENV_FILE": str(root / "rabbitmq-env.conf"),
        "RABBITMQ_PID_FILE": str(root / "node.pid"),
        "RABBITMQ_ALLOW_INPUT": "1",
        "RABBITMQ_SERVER_START_ARGS": "-noinput",
    }
    return BrokerProcess(
        "RabbitMQ (private node)",
        [script],
        port,
        f"amqp://guest:guest@127.0.0.1:{port}/",
        keeps_messages=True,  # durable queues, persistent messages, confirms after fsync
        log_path=str(root / "server.log"),
        env=env,
        cwd=base,
        start_timeout=90.0,
    )


def topic(name: str) -> Destination:
    """A topic destination (for publishing)."""
    return Destination(DestinationKind.TOPIC, name)


def group(name: str, group_name: str) -> Destination:
    """A topic subscription group."""
    return Destination(DestinationKind.TOPIC, name, group_name)


def queue(name: str) -> Destination:
    """A work queue."""
    return Destination(DestinationKind.QUEUE, name)


def message(
    dest: Destination, n: int, *, key: str | None = None, headers: Mapping[str, str] | None = None
) -> OutgoingMessage:
    """A small JSON message with a fresh CloudEvents id."""
    hdrs = {"ce-id": uuid.uuid4().hex, "ce-source": "tests", "ce-type": "Item", "ce-specversion": "1.0"}
    hdrs.update(headers or {})
    return OutgoingMessage(dest, json.dumps({"n": n}).encode(), hdrs, key)


def number(delivery: Delivery) -> int:
    """The ``n`` of a test message."""
    value: Any = json.loads(delivery.body)["n"]
    return int(value)


class Inbox:
    """Collects deliveries and lets a test wait for a condition (no sleeping)."""

    def __init__(self, *, ack: bool = True) -> None:
        self.items: list[Delivery] = []
        self.ack = ack
        self._changed = asyncio.Event()

    async def __call__(self, delivery: Delivery) -> None:
        if self.ack:
            await delivery.ack()
        self.items.append(delivery)
        self._changed.set()

    def numbers(self) -> list[int]:
        return [number(d) for d in self.items]

    async def wait_for(self, count: int, timeout: float = 20.0) -> list[Delivery]:
        async with asyncio.timeout(timeout):
            while len(self.items) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.items

    async def wait_numbers(self, wanted: set[int], timeout: float = 20.0) -> None:
        async with asyncio.timeout(timeout):
            while not wanted <= set(self.numbers()):
                self._changed.clear()
                await self._changed.wait()
