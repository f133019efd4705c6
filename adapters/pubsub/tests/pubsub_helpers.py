"""Helpers shared by the Pub/Sub adapter tests (a uniquely named module: every adapter's
tests have a ``conftest``, so tests import helpers from here, not from ``conftest``)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import uuid
from pathlib import Path

import grpc
from google.api_core import exceptions as gexc
from google.pubsub_v1 import PublisherAsyncClient, SubscriberAsyncClient
from google.pubsub_v1.services.publisher.transports import PublisherGrpcAsyncIOTransport
from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcAsyncIOTransport
from messagebus_pubsub import resource_id

from messagebus.testing import free_port, missing_broker, wait_for_port
from messagebus.testing._brokers import BrokerProcess
from messagebus.testing._collect import Collector
from messagebus.transports import Delivery, Destination, OutgoingMessage

PROJECT = "messagebus-test"
# Short ack deadline: a message lost with a dropped stream comes back within seconds.
TEST_OPTIONS = {"ack_deadline": "10", "connect_timeout": "10", "publish_timeout": "30"}


class Admin:
    """The emulator inspected through Google's own async clients."""

    def __init__(self, host: str) -> None:
        channel = grpc.aio.insecure_channel
        self.publisher = PublisherAsyncClient(transport=PublisherGrpcAsyncIOTransport(channel=channel(host)))
        self.subscriber = SubscriberAsyncClient(transport=SubscriberGrpcAsyncIOTransport(channel=channel(host)))

    async def resources(self, containing: str) -> list[str]:
        """Ids of the project's topics and subscriptions whose id contains ``containing``."""
        project = f"projects/{PROJECT}"
        topics = [t.name async for t in await self.publisher.list_topics(project=project)]
        subs = [s.name async for s in await self.subscriber.list_subscriptions(project=project)]
        return sorted(p.rsplit("/", 1)[-1] for p in topics + subs if containing in p.rsplit("/", 1)[-1])

    async def filter_of(self, subscription: str) -> str:
        """The filter of subscription ``subscription`` (logical name; empty: none)."""
        sub = await self.subscriber.get_subscription(
            subscription=f"projects/{PROJECT}/subscriptions/{resource_id(subscription)}"
        )
        return str(sub.filter)

    async def subscription_topic(self, name: str) -> str | None:
        """The topic id of subscription ``name`` (logical name), ``None`` if it does not exist."""
        try:
            sub = await self.subscriber.get_subscription(
                subscription=f"projects/{PROJECT}/subscriptions/{resource_id(name)}"
            )
        except gexc.NotFound:
            return None
        return str(sub.topic).rsplit("/", 1)[-1]

    async def close(self) -> None:
        """Close both clients."""
        await self.publisher.transport.close()
        await self.subscriber.transport.close()


def out(dest: Destination, body: bytes, key: str | None = None, **headers: str) -> OutgoingMessage:
    """An outgoing message to ``dest`` with a fresh ``ce-id`` and ``headers``."""
    return OutgoingMessage(dest, body, {"ce-id": uuid.uuid4().hex, **headers}, key)


class Inbox:
    """A delivery handler that records deliveries and acks them."""

    def __init__(self) -> None:
        self.got: Collector[Delivery] = Collector(30.0)

    async def __call__(self, delivery: Delivery) -> None:
        self.got.add(delivery)
        await delivery.ack()


def url_for(emulator_host: str, **extra: str) -> str:
    """The test URL for an emulator at ``emulator_host``, with extra (or overriding) options."""
    options = {"emulator_host": emulator_host, **TEST_OPTIONS, **extra}
    return f"pubsub://{PROJECT}?" + "&".join(f"{k}={v}" for k, v in options.items())


# Leased messages per consumer in the kit's fault tests (through the proxy). Their duplicate
# bound is this lease (``in_flight_window``); the default, concurrency + 100, would let about a
# hundred wrongly redelivered messages per fault pass unnoticed.
FAULT_LEASE = 20


def url_via(host: str, port: int) -> str:
    """The test URL pointing at ``host:port`` (a proxy in front of the emulator), with a lease
    of ``FAULT_LEASE`` messages."""
    return url_for(f"{host}:{port}", max_messages=str(FAULT_LEASE))


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


class Emulator:
    """An emulator process this test session started; it can be restarted on the same port."""

    def __init__(self, port: int, data_dir: str) -> None:
        self.port = port
        self.data_dir = data_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = open(Path(data_dir) / "emulator.log", "ab")  # noqa: SIM115 - closed in stop()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = _emulator_command(self.port, self.data_dir)
        if cmd is None:
            missing_broker("Pub/Sub emulator", "neither the emulator script nor gcloud is installed")
        # Its own session, so the whole group (a gcloud wrapper and the Java process) is killed.
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        if not wait_for_port("127.0.0.1", self.port, timeout=60.0):
            self.kill()
            missing_broker("Pub/Sub emulator", f"it did not listen on port {self.port} within 60 s")

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with _suppress():
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with _suppress():
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    async def restart(self) -> None:
        """Kill and start again on the same port (everything in it is lost: it is in-memory)."""
        await asyncio.to_thread(self.kill)
        await asyncio.to_thread(self.start)


class _EmulatorProcess(BrokerProcess):
    """The emulator as a :class:`BrokerProcess`: a crash kills its Java process, which is the
    launched process itself (the emulator script ``exec``s java) or, under the gcloud
    wrapper, a descendant of it."""

    def server_pid(self, proc: subprocess.Popen[bytes]) -> int:
        pending, seen = [proc.pid], set()
        while pending:
            pid = pending.pop()
            seen.add(pid)
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "java":
                    return pid
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                continue
            pending.extend(int(c) for c in children if int(c) not in seen)
        return proc.pid


def crashable_emulator(data_dir: str) -> BrokerProcess:
    """An emulator of its own for the crash tests, on a free port, not started yet. It keeps
    nothing across a crash (it lives in memory)."""
    port = free_port()
    cmd = _emulator_command(port, data_dir)
    if cmd is None:
        missing_broker("Pub/Sub emulator", "neither the emulator script nor gcloud is installed")
    return _EmulatorProcess(
        "Pub/Sub emulator (crashable)",
        cmd,
        port,
        url_for(f"127.0.0.1:{port}"),
        keeps_messages=False,
        log_path=str(Path(data_dir) / "crash-emulator.log"),
        start_timeout=60.0,
    )


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is not None and issubclass(exc[0], ProcessLookupError | PermissionError)  # type: ignore[arg-type]
