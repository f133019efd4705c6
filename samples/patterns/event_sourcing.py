"""Event sourcing: a read model of account balances, lost in a restart and rebuilt from history.

    python -m samples.patterns.event_sourcing [URL]

The bank publishes an account ledger to ``ledger.events``: ``AccountOpened``, ``Deposited``
and ``Withdrawn``, one pydantic model each (told apart by their ``kind`` field), keyed by
account so each account's events keep their order; every event carries the account's
sequence number. The balances read model (group ``balances``) keeps balances in memory; a
statements service (group ``statements``) runs all along. Then the read model restarts and
its memory is gone. Its group ``balances`` would go on from where it stopped, so the
restarted process subscribes a NEW group, ``balances-v2``, with ``start_from="earliest"``:
it rebuilds every balance from the broker's history and then goes on live. The bank
publishes more events, which the rebuilt read model gets too; finally an operator rebuilds
the projection once more with ``await bus.replay(topic, handler)`` (a throwaway group read
until caught up) and compares it with the live one. The same from a shell::

    messagebus replay URL ledger.events --from earliest

It needs a broker that keeps history (memory://, Redis, NATS with ``?retention=limits``;
each adapter's README says how it keeps history); elsewhere ``subscribe(start_from=...)``
raises ``UnsupportedFeature``: the sample prints its reason and exits 2.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from messagebus import Bus, UnsupportedFeature

from ._scene import Checks, namespaced, run_cli, say

#: Seconds to wait for each step before giving up.
PATIENCE = 30.0

#: The exit code when the broker keeps no history (the pattern cannot run there).
UNSUPPORTED = 2


class AccountOpened(BaseModel):
    kind: Literal["opened"] = "opened"
    account: str
    seq: int
    owner: str


class Deposited(BaseModel):
    kind: Literal["deposited"] = "deposited"
    account: str
    seq: int
    cents: int


class Withdrawn(BaseModel):
    kind: Literal["withdrawn"] = "withdrawn"
    account: str
    seq: int
    cents: int


#: What a handler of the ledger reads: one of the three events, by its ``kind``.
LedgerEvent = Annotated[AccountOpened | Deposited | Withdrawn, Field(discriminator="kind")]

#: (account, kind, amount in cents or the owner) in publish order, before the restart.
HISTORY: list[tuple[str, str, int | str]] = [
    ("acc-1", "opened", "Ada"),
    ("acc-2", "opened", "Grace"),
    ("acc-1", "deposited", 10_000),
    ("acc-2", "deposited", 2_500),
    ("acc-1", "withdrawn", 3_000),
    ("acc-3", "opened", "Linus"),
    ("acc-2", "withdrawn", 500),
    ("acc-3", "deposited", 700),
    ("acc-1", "deposited", 125),
]

#: Published after the rebuild: the rebuilt read model must get them live.
LATER: list[tuple[str, str, int | str]] = [
    ("acc-2", "deposited", 1_000),
    ("acc-3", "withdrawn", 200),
]


@dataclass
class Ledger:
    """A projection: balance and last sequence number per account, and what did not fit
    (an event out of order, twice or for an unopened account)."""

    balances: dict[str, int] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    anomalies: list[str] = field(default_factory=list)
    applied: int = 0

    def apply(self, event: AccountOpened | Deposited | Withdrawn) -> None:
        expected = self.versions.get(event.account, 0) + 1
        if event.seq != expected:
            # A duplicate, a gap or a reordering: the projection would be wrong, so say it.
            self.anomalies.append(f"{event.account} #{event.seq} ({event.kind}) when #{expected} was due")
            return
        if isinstance(event, AccountOpened):
            self.balances[event.account] = 0
        elif isinstance(event, Deposited):
            self.balances[event.account] += event.cents
        else:
            self.balances[event.account] -= event.cents
        self.versions[event.account] = event.seq
        self.applied += 1


def ledger_events(script: list[tuple[str, str, int | str]], seqs: dict[str, int]) -> list[LedgerEvent]:
    """The events of ``script``, numbered per account on from ``seqs`` (updated)."""
    events: list[LedgerEvent] = []
    for account, kind, value in script:
        seqs[account] = seq = seqs.get(account, 0) + 1
        if kind == "opened":
            events.append(AccountOpened(account=account, seq=seq, owner=str(value)))
        elif kind == "deposited":
            events.append(Deposited(account=account, seq=seq, cents=int(value)))
        else:
            events.append(Withdrawn(account=account, seq=seq, cents=int(value)))
    return events


def shown(balances: dict[str, int]) -> str:
    return ", ".join(f"{account}={cents / 100:.2f}" for account, cents in sorted(balances.items()))


async def _wait(done: asyncio.Event, checks: Checks, what: str) -> bool:
    try:
        await asyncio.wait_for(done.wait(), PATIENCE)
    except TimeoutError:
        checks.expect(False, f"{what} within {PATIENCE:.0f}s")
        return False
    return True


class Projection:
    """A :class:`Ledger` fed by a handler, with an event set once it has applied ``want``."""

    def __init__(self) -> None:
        self.ledger = Ledger()
        self.reached = asyncio.Event()
        self.want = 0

    def expect(self, count: int) -> asyncio.Event:
        self.want = count
        self.reached.clear()
        if self.ledger.applied + len(self.ledger.anomalies) >= count:
            self.reached.set()
        return self.reached

    async def handle(self, event: LedgerEvent) -> None:
        self.ledger.apply(event)
        if self.want and self.ledger.applied + len(self.ledger.anomalies) >= self.want:
            self.reached.set()


async def main(url: str, *, namespace: str | None = None) -> int:
    """Run the scene on ``url``; 0 when the rebuilt read model (group ``balances-v2`` from
    the earliest message, and ``Bus.replay``) equals the bank's own balances, the live group
    got each event exactly once, and the events after the rebuild reached the rebuilt read
    model; 2 when the broker keeps no history."""
    name = namespaced(url, namespace)
    topic = name("ledger.events")
    checks = Checks()
    seqs: dict[str, int] = {}
    truth = Ledger()  # the bank's own balances, computed as it publishes
    history = ledger_events(HISTORY, seqs)
    later = ledger_events(LATER, seqs)

    first, statements = Projection(), Projection()
    read_model = Bus.from_url(url, service="read-model")
    read_model.subscribe(topic, group="balances")(first.handle)
    statement_service = Bus.from_url(url, service="statements")
    statement_service.subscribe(topic, group="statements")(statements.handle)
    bank = Bus.from_url(url, service="bank")

    async def publish(events: list[LedgerEvent]) -> None:
        for event in events:
            await bank.publish(topic, event, key=event.account)
            truth.apply(event)
            say("bank", f"{event.account} #{event.seq} {event.kind}")

    async with bank, statement_service:
        async with read_model:
            await publish(history)
            for who, projection in (("read model", first), ("statements service", statements)):
                if not await _wait(projection.expect(len(history)), checks, f"the {who} gets every event"):
                    return checks.result()
            say("read-model", f"balances: {shown(first.ledger.balances)}")
        say("read-model", "restarted: the balances in memory are gone")

        # The restarted process: group "balances" would resume where it stopped (an existing
        # group ignores start_from), so a new group reads the history from its start.
        rebuilt = Projection()
        restarted = Bus.from_url(url, service="read-model")
        try:
            restarted.subscribe(topic, group="balances-v2", start_from="earliest")(rebuilt.handle)
        except UnsupportedFeature as error:
            say("read-model", f"cannot rebuild from history here: {error}")
            print("UNSUPPORTED: this broker keeps no history; run on one that does (see the docstring)", flush=True)
            return UNSUPPORTED
        async with restarted:
            if await _wait(rebuilt.expect(len(history)), checks, f"the rebuild applies the {len(history)} past events"):
                say("read-model", f"rebuilt from history: {shown(rebuilt.ledger.balances)}")
            checks.expect(
                rebuilt.ledger.balances == truth.balances,
                f"the rebuilt balances equal the bank's: {shown(rebuilt.ledger.balances)} vs {shown(truth.balances)}",
            )
            await publish(later)
            total = len(history) + len(later)
            await _wait(rebuilt.expect(total), checks, "the rebuilt read model gets the events published after it")
            await _wait(statements.expect(total), checks, "the statements service gets the later events")
            say("read-model", f"live again: {shown(rebuilt.ledger.balances)}")

            replayed = Ledger()

            async def project(event: LedgerEvent) -> None:
                replayed.apply(event)

            count = await restarted.replay(topic, project, start_from="earliest")
            say("operator", f"bus.replay handled {count} events: {shown(replayed.balances)}")

    checks.expect(
        rebuilt.ledger.balances == truth.balances,
        f"the rebuilt read model stays equal to the bank after the later events: "
        f"{shown(rebuilt.ledger.balances)} vs {shown(truth.balances)}",
    )
    checks.expect(
        replayed.balances == rebuilt.ledger.balances == truth.balances,
        f"Bus.replay rebuilds the same balances: {shown(replayed.balances)}",
    )
    checks.expect(count == total, f"Bus.replay handles each of the {total} events once, handled {count}")
    for who, ledger, want in (
        ("the first read model", first.ledger, len(history)),
        ("the live group 'statements'", statements.ledger, total),
        ("the rebuilt read model", rebuilt.ledger, total),
        ("Bus.replay", replayed, total),
    ):
        checks.expect(
            not ledger.anomalies and ledger.applied == want,
            f"{who} gets each event exactly once, in order per account "
            f"(applied {ledger.applied} of {want}, out of place: {ledger.anomalies})",
        )
    return checks.result()


if __name__ == "__main__":
    run_cli(main, __doc__)
