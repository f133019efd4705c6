"""Ledger: Jepsen's three counts (lost, duplicated, unexpected) for the fault tests.

A fault test tags every message it sends with a run id of its own and records what was
confirmed and what was handled. The ledger then says, strictly:

- **lost**: confirmed (``publish`` returned) but never handled;
- **duplicated**: handled more than once; each duplicate must be explained by something that
  was in flight at a fault (see :func:`in_flight_window`), so the test passes the most it
  allows and more fails it;
- **unexpected**: handled but never sent by this run (an id it never used, or a message of
  another run, i.e. a leak between tests or a resurrected message).

Every report prints one line ``FAULT <name> <transport>: sent=N lost=L dup=D unexpected=U
(bound B)`` and appends it to the file named by ``MESSAGEBUS_FAULT_LOG`` when set, so the
figures of a run can be collected (docs/faults.md).
"""

from __future__ import annotations

import os
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from ..transports import TransportURL
from ._collect import Collector

__all__ = ["Ledger", "in_flight_window", "transport_label"]


class Ledger:
    """What one fault test sent, had confirmed and saw handled, keyed by message number.

    ``handled`` is a :class:`Collector` of ``(run, n)`` pairs; handlers add to it (see
    :meth:`handle`), tests wait on it with :meth:`wait_all`, which fails at once when an
    unexpected message arrives instead of timing out later.
    """

    def __init__(self, name: str, transport: str, timeout: float) -> None:
        self.name = name
        self.transport = transport
        self.run = uuid.uuid4().hex[:12]
        self.sent: set[int] = set()
        self.confirmed: set[int] = set()
        self.handled: Collector[tuple[str, int]] = Collector(timeout)

    def item(self, n: int) -> dict[str, Any]:
        """The payload of message ``n`` of this run (and records it as sent)."""
        self.sent.add(n)
        return {"n": n, "run": self.run}

    def items(self, ns: Iterable[int]) -> list[dict[str, Any]]:
        """Payloads of several messages (each recorded as sent)."""
        return [self.item(n) for n in ns]

    def confirm(self, ns: Iterable[int]) -> None:
        """Record that the broker confirmed these messages (``publish`` returned)."""
        self.confirmed.update(ns)

    def handle(self, item: Mapping[str, Any]) -> None:
        """Record one handled payload (call it from the handler)."""
        self.handled.add((str(item.get("run")), int(item.get("n", -1))))

    async def handle_async(self, item: dict[str, Any]) -> None:
        """:meth:`handle` as a handler (``bus.consume(queue)(ledger.handle_async)``)."""
        self.handle(item)

    # -- counts ---------------------------------------------------------------------------

    def unexpected(self) -> list[tuple[str, int]]:
        """Handled messages this run never sent."""
        return [(run, n) for run, n in self.handled.items if run != self.run or n not in self.sent]

    def handled_ns(self) -> set[int]:
        """Numbers of this run's messages handled at least once."""
        return {n for run, n in self.handled.items if run == self.run}

    def lost(self) -> set[int]:
        """Confirmed messages never handled."""
        return self.confirmed - self.handled_ns()

    def duplicates(self) -> int:
        """How many handlings were beyond the first of their message (a message handled three
        times counts two)."""
        counts = Counter(n for run, n in self.handled.items if run == self.run)
        return sum(c - 1 for c in counts.values() if c > 1)

    # -- waiting and reporting ------------------------------------------------------------

    def _check_unexpected(self) -> None:
        strange = self.unexpected()
        if strange:
            raise AssertionError(
                f"FAULT {self.name} {self.transport}: {len(strange)} unexpected messages handled "
                f"(never sent by run {self.run}), e.g. {strange[:5]}"
            )

    async def wait_all(self, ns: Iterable[int] | None = None, *, timeout: float | None = None) -> None:
        """Wait until every message of ``ns`` (default: every confirmed one) was handled;
        fail at once on an unexpected message, and on timeout with the lost ones named."""
        wanted = set(self.confirmed if ns is None else ns)

        def done(_: list[tuple[str, int]]) -> bool:
            self._check_unexpected()
            return wanted <= self.handled_ns()

        try:
            await self.handled.wait_until(done, f"{len(wanted)} messages", timeout=timeout)
        except AssertionError as exc:
            missing = sorted(wanted - self.handled_ns())
            if not missing:
                raise
            raise AssertionError(
                f"FAULT {self.name} {self.transport}: {len(missing)} of {len(wanted)} messages never "
                f"handled, e.g. {missing[:10]} ({exc})"
            ) from None

    async def wait_count(self, count: int, *, timeout: float | None = None) -> None:
        """Wait until ``count`` distinct messages were handled (failing on unexpected ones)."""

        def done(_: list[tuple[str, int]]) -> bool:
            self._check_unexpected()
            return len(self.handled_ns()) >= count

        await self.handled.wait_until(done, f"{count} distinct messages", timeout=timeout)

    def report(self, dup_bound: int, *, why: str = "") -> None:
        """Print the summary line, then fail on any lost or unexpected message and on more
        duplicates than ``dup_bound`` (``why`` says how the bound was derived)."""
        lost = sorted(self.lost())
        strange = self.unexpected()
        dups = self.duplicates()
        line = (
            f"FAULT {self.name} {self.transport}: sent={len(self.sent)} confirmed={len(self.confirmed)} "
            f"lost={len(lost)} dup={dups} unexpected={len(strange)} (bound {dup_bound})"
        )
        print("\n" + line)
        log = os.environ.get("MESSAGEBUS_FAULT_LOG")
        if log:
            with open(log, "a", encoding="utf-8") as f:
                f.write(line + "\n")
        assert not lost, f"{line}: confirmed messages never handled, e.g. {lost[:10]}"
        assert not strange, f"{line}: messages never sent by this run, e.g. {strange[:5]}"
        assert dups <= dup_bound, f"{line}: more duplicates than were in flight at the faults ({why})"


def transport_label(url: str) -> str:
    """A short name of the transport under test for the summary line (``amqp``, ``kafka``,
    ``sqs``, ``sqs-fifo``, ``pubsub``, ``memory``)."""
    parsed = TransportURL.parse(url)
    fifo = str(parsed.query.get("fifo", "")).lower() == "true"
    return parsed.scheme + ("-fifo" if fifo else "")


def in_flight_window(url: str, concurrency: int) -> int:
    """The most messages one consumer of ``url`` can hold delivered but not settled on the
    broker, with handler ``concurrency``: what a single connection fault may redeliver.

    Derived from each transport's documented defaults and the URL's own options:

    - ``memory``: ``concurrency`` (handlers in flight; there is no network to fault).
    - ``amqp``/``amqps``: the channel prefetch (``prefetch``, default ``concurrency``): unacked
      deliveries are requeued when the channel dies, and only those.
    - ``kafka``: records handed over but not committed. One fetch per partition is buffered
      and is handed over ``fetch_max_records`` at a time; the commit loop commits every
      settled offset as soon as the previous commit returned, so what a cut can send back is
      the hand-over being handled plus the one whose commit was in flight, for each of the
      ``partitions`` partitions of the main and the retry topic:
      ``2 * 2 * partitions * fetch_max_records``.
    - ``sqs``: ``prefetch`` (default 10) received ahead plus ``concurrency`` being handled,
      plus one batch of 10 deletes not yet sent.
    - ``pubsub``: the flow control ``max_messages`` (default ``concurrency + 100``, the
      adapter's ``PubSubOptions``). It counts a message from its pull until Pub/Sub confirmed
      its ack (queued, held, handled, ack in flight), so a cut can send back at most that
      many handled messages: acks lost with the connection that the retry cannot deliver
      before the lease runs out, and, on the emulator, copies of leased messages it
      redelivers when a lease lost with the connection (a pull whose response never
      arrived) runs out. Acked messages the emulator sends back then are recognised by
      message id and not handled again, so they are not part of the window.
    - ``redis``/``rediss`` and ``nats``/``nats+tls``: ``concurrency``. A NATS consumer pulls
      only as many messages as it has free workers; a Redis consumer re-sends an ack lost
      with the connection on its next tick and renews the entry meanwhile, so the entries a
      cut can send back are those being handled. (A Redis consumer holds up to ``prefetch``
      entries; those not yet handled come back unhandled, so they are not duplicates.)
    """
    parsed = TransportURL.parse(url)
    q = parsed.query

    def opt(name: str, default: int) -> int:
        value = q.get(name)
        return int(str(value)) if value is not None else default

    scheme = parsed.scheme
    if scheme in ("amqp", "amqps"):
        return opt("prefetch", concurrency)
    if scheme == "kafka":
        return 2 * 2 * opt("partitions", 3) * opt("fetch_max_records", 200)
    if scheme == "sqs":
        return opt("prefetch", 10) + concurrency + 10
    if scheme == "pubsub":
        return opt("max_messages", concurrency + 100)
    # memory, redis(s), nats(+tls) as documented; any other transport: its handlers in flight.
    return concurrency
