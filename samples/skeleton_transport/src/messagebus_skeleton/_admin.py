"""What the operator's tools ask of the broker (:class:`~messagebus.transports.BrokerAdmin`):
the dead-letter queues, a queue's backlog, a group's own copy of a message, and deleting a
group. Plain queries, run in the connection's thread like every other one.

Reading and removing dead letters is not here: the core does that with ``subscribe`` (a
dead-letter queue is a queue). On this broker a queue exists while it holds rows.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator, Sequence

from messagebus import InvalidDestination
from messagebus.transports import Destination, DestinationKind, OutgoingMessage

from ._codec import encode_headers
from ._topology import declare, queue_name

__all__ = ["check_source", "dead_letter_queues", "delete_group", "depth", "store_for_group"]


def check_source(source: Destination, what: str, *, queue: bool = True) -> None:
    """Raise :class:`InvalidDestination` unless ``source`` is a topic's group (or, when
    ``queue``, a queue)."""
    if source.kind is DestinationKind.QUEUE and queue:
        return
    if source.kind is not DestinationKind.TOPIC or not source.group:
        allowed = "a topic with a group" + (" or a queue" if queue else "")
        raise InvalidDestination(f"{what} needs {allowed}, got the {source.kind} {source.name!r}")


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    # IMMEDIATE: take the write lock at BEGIN, so no read in the transaction sees a state
    # another process's commit changes before the writes.
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def dead_letter_queues(db: sqlite3.Connection) -> list[str]:
    """The queues that hold rows and are dead-letter queues (``is_dead_letter_queue`` in SQL:
    ``*.dlq`` but no group's ``topic:group``), sorted."""
    rows = db.execute("SELECT DISTINCT queue FROM messages WHERE queue GLOB '*.dlq' AND queue NOT GLOB '*:*'")
    return sorted(str(queue) for (queue,) in rows)


def depth(db: sqlite3.Connection, source: Destination) -> int:
    """Rows of ``source``'s queue that no consumer holds: never received, handed back,
    waiting for a retry's delay, or leased by a consumer whose lease ran out. 0 for a queue
    or group that does not exist. Read-only."""
    query = "SELECT count(*) FROM messages WHERE queue = ? AND (receipt IS NULL OR visible_at <= ?)"
    return int(db.execute(query, (queue_name(source), time.time())).fetchone()[0])


def store_for_group(db: sqlite3.Connection, source: Destination, messages: Sequence[OutgoingMessage]) -> None:
    """Store ``messages`` in ``source``'s queue only (subscribing the group first if it is
    not), in one transaction. Fresh rows: ``deliveries`` 0, so the next receive is attempt 1.
    This broker de-duplicates nothing, so a copy of a message is never dropped."""
    now = time.time()
    with _transaction(db):
        queue = declare(db, source)
        rows = [(queue, m.body, encode_headers(m.headers), m.key, now) for m in messages]
        db.executemany("INSERT INTO messages (queue, body, headers, key, visible_at) VALUES (?, ?, ?, ?, ?)", rows)


def delete_group(db: sqlite3.Connection, source: Destination) -> None:
    """Unsubscribe the group and delete every row of its queue and of its dead-letter queue,
    in one transaction. Idempotent; other groups' rows and subscriptions are left alone."""
    queue = queue_name(source)
    with _transaction(db):
        db.execute("DELETE FROM subscriptions WHERE topic = ? AND queue = ?", (source.name, queue))
        db.execute("DELETE FROM messages WHERE queue IN (?, ?)", (queue, source.dead_letter_queue))
