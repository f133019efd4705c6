"""The broker's schema, and logical destinations -> its physical names.

The whole broker is two tables. ``messages`` holds every stored message of every queue,
with a visibility time (SQS-like: a received message is hidden until its lease runs out or
it is settled). ``subscriptions`` lists each topic's groups: publishing to a topic stores one
copy per group subscribed at that moment. A queue needs no declaration: its name is enough.
"""

from __future__ import annotations

import sqlite3

from messagebus.transports import Destination, DestinationKind, dead_letter_name

from ._options import SkeletonOptions

__all__ = ["SCHEMA", "declare", "is_dead_letter_queue", "physical_names", "queue_name", "queues_for"]

SCHEMA = """
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- publish order; never reused
    queue TEXT NOT NULL,
    body BLOB NOT NULL,
    headers TEXT NOT NULL,                 -- a JSON object of str -> str
    key TEXT,
    deliveries INTEGER NOT NULL DEFAULT 0, -- how many times it was received: the attempt
    visible_at REAL NOT NULL,              -- unix time from which it may be received
    receipt TEXT                           -- the lease of the last receive
);
CREATE INDEX IF NOT EXISTS messages_by_queue ON messages (queue, visible_at, id);
CREATE INDEX IF NOT EXISTS messages_by_key ON messages (queue, key, id);
CREATE TABLE IF NOT EXISTS subscriptions (
    topic TEXT NOT NULL,
    queue TEXT NOT NULL,
    PRIMARY KEY (topic, queue)
);
"""


def queue_name(destination: Destination) -> str:
    """The physical queue a destination is consumed from: the queue's own name, or
    ``topic:group`` for a topic's group (``:`` is not allowed in logical names, so a group's
    queue never collides with a queue). Pure."""
    if destination.kind is DestinationKind.QUEUE:
        return destination.name
    return f"{destination.name}:{destination.group or ''}"


def is_dead_letter_queue(queue: str) -> bool:
    """Whether physical queue ``queue`` is a dead-letter queue (``<topic>.<group>.dlq`` or
    ``<queue>.dlq``; a group's queue ``topic:group`` never is, whatever the group). Pure."""
    return queue.endswith(".dlq") and ":" not in queue


def physical_names(destination: Destination, options: SkeletonOptions | None = None) -> dict[str, str]:
    """Role -> physical name for ``destination``: ``topic`` for a topic; for a queue or a
    topic's group also ``queue`` (the rows' ``queue`` value) and ``dead_letter`` (the queue
    the bus dead-letters to). ``options`` change no name on this broker. Pure."""
    names: dict[str, str] = {}
    if destination.kind is DestinationKind.TOPIC:
        names["topic"] = destination.name
        if destination.group is None:
            return names
    names["queue"] = queue_name(destination)
    names["dead_letter"] = dead_letter_name(destination.name, destination.group)
    return names


def declare(db: sqlite3.Connection, source: Destination) -> str:
    """Subscribe a topic's group (from now on, each publish to the topic stores a copy for
    it); return the queue to consume. Runs in the connection's thread."""
    queue = queue_name(source)
    if source.kind is DestinationKind.TOPIC:
        db.execute("INSERT OR IGNORE INTO subscriptions (topic, queue) VALUES (?, ?)", (source.name, queue))
    return queue


def queues_for(db: sqlite3.Connection, destination: Destination) -> list[str]:
    """The queues a message published to ``destination`` is stored in: every group of a topic
    subscribed now (none: the message is dropped, as on any broker), or the queue itself."""
    if destination.kind is DestinationKind.QUEUE:
        return [destination.name]
    rows = db.execute("SELECT queue FROM subscriptions WHERE topic = ?", (destination.name,))
    return [str(queue) for (queue,) in rows]
