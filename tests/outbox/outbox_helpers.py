"""Helpers of the outbox/inbox tests: PostgreSQL and broker URLs, a fresh schema per test,
and a ledger of handled messages (lost, duplicated, unexpected, order per key)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from messagebus.testing import missing_broker, wait_for_port

#: The PostgreSQL server of the project machines; MESSAGEBUS_TEST_POSTGRES_URL points elsewhere.
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
RABBITMQ = "amqp://guest:guest@127.0.0.1:5672/"
REDIS = "redis://127.0.0.1:6379/0"
#: Redis keys of this session start with it (deleted at session end).
REDIS_PREFIX = f"mbtob{uuid.uuid4().hex[:6]}-"


def pg_dsn() -> str:
    """The PostgreSQL DSN of the tests (skips, or fails in CI, when nothing listens)."""
    dsn = os.environ.get("MESSAGEBUS_TEST_POSTGRES_URL", DEFAULT_PG)
    if not wait_for_port("127.0.0.1" if "127.0.0.1" in dsn or "localhost" in dsn else dsn, 5432, timeout=2.0):
        missing_broker("PostgreSQL", "nothing listens on 127.0.0.1:5432 (set MESSAGEBUS_TEST_POSTGRES_URL)")
    return dsn


def rabbitmq_vhost() -> str:
    """A fresh vhost on the shared RabbitMQ (deleted by :func:`drop_vhost`); its URL."""
    if not shutil.which("rabbitmqctl") or not wait_for_port("127.0.0.1", 5672, timeout=2.0):
        missing_broker("RabbitMQ", "nothing listens on 127.0.0.1:5672 or rabbitmqctl is missing")
    vhost = f"outbox-{uuid.uuid4().hex[:8]}"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True, capture_output=True)
    subprocess.run(
        ["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
        check=True,
        capture_output=True,
    )
    return f"{RABBITMQ}{vhost}"


def drop_vhost(url: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", url.rsplit("/", 1)[1]], capture_output=True)


def redis_url() -> str:
    """The shared Redis with a key prefix of its own for one test."""
    if not wait_for_port("127.0.0.1", 6379, timeout=2.0):
        missing_broker("Redis", "nothing listens on 127.0.0.1:6379")
    return f"{REDIS}?prefix={REDIS_PREFIX}{uuid.uuid4().hex[:8]}:&visibility_timeout=5"


@dataclass
class Ledger:
    """What was expected and what handlers saw: counts the three faults of a delivery test
    (lost, duplicated, unexpected) and per-key order. Wait on it, never sleep."""

    expected: dict[str, tuple[str | None, int]] = field(default_factory=dict)  # id -> (key, seq in key)
    handled: list[str] = field(default_factory=list)
    by_key: dict[str | None, list[int]] = field(default_factory=lambda: defaultdict(list))
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def expect(self, message_id: str, key: str | None = None, seq: int = 0) -> None:
        self.expected[message_id] = (key, seq)

    def handle(self, message_id: str) -> None:
        self.handled.append(message_id)
        key, seq = self.expected.get(message_id, (None, -1))
        if key is not None:
            self.by_key[key].append(seq)
        self._changed.set()

    @property
    def lost(self) -> set[str]:
        return set(self.expected) - set(self.handled)

    @property
    def duplicated(self) -> dict[str, int]:
        return {k: n for k, n in Counter(self.handled).items() if n > 1}

    @property
    def unexpected(self) -> set[str]:
        return set(self.handled) - set(self.expected)

    def out_of_order(self) -> dict[str | None, list[int]]:
        """Keys whose first handlings were not in the order written (first 10 seqs shown)."""
        bad = {}
        for key, seqs in self.by_key.items():
            first = list(dict.fromkeys(seqs))
            if first != sorted(first):
                bad[key] = first[:10]
        return bad

    async def wait(self, predicate: Callable[[Ledger], bool], what: str, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not predicate(self):
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}: {self.report()}") from None

    async def wait_all(self, timeout: float) -> None:
        await self.wait(lambda ledger: not ledger.lost, "every expected message", timeout)

    def report(self) -> str:
        return (
            f"expected={len(self.expected)} handled={len(self.handled)} lost={len(self.lost)} "
            f"dup={len(self.duplicated)} unexpected={len(self.unexpected)} out_of_order_keys={len(self.out_of_order())}"
        )


def ids(rows: Iterable[object]) -> list[str]:
    return [str(r) for r in rows]
