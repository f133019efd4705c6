"""What the operator's tools ask of Redis (:class:`~messagebus.transports.BrokerAdmin`):
the dead-letter streams, a group's backlog, and a group's own keys.

Reading never creates a key. Keys are found with ``SCAN ... TYPE stream`` (on every master
of a cluster), never ``KEYS``.
"""

from __future__ import annotations

from typing import Any

from redis import exceptions as rex

from messagebus import InvalidDestination, TopologyError
from messagebus.transports import Destination, DestinationKind

from ._errors import ERRORS
from ._topology import Names, delete_queue, names_for

__all__ = ["dead_letter_queues", "delete_group", "depth", "group_names"]

#: Entries read per XRANGE when a group's lag has to be counted.
_PAGE = 1000


def group_names(source: Destination, prefix: str, what: str, *, queue: bool = False) -> Names:
    """The names of ``source``: a topic's group, or a queue when ``queue``. Raises
    :class:`InvalidDestination` for anything else (a topic without a group, a pattern)."""
    if queue and source.kind is DestinationKind.QUEUE:
        return names_for(source, prefix)
    if source.kind is not DestinationKind.TOPIC or not source.group or source.is_pattern:
        allowed = "a topic and one of its groups" + (" or a queue" if queue else "")
        raise InvalidDestination(f"{what} needs {allowed}, got the {source.kind} {source}")
    return names_for(source, prefix)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def dead_letter_queues(client: Any, prefix: str) -> list[str]:
    """The logical names of the dead-letter streams under ``prefix``, sorted. Raises
    :class:`TopologyError` or :class:`ConnectError`."""
    head = f"{prefix}q:{{"
    try:
        keys = [_text(k) async for k in client.scan_iter(match=f"{head}*.dlq}}", count=1000, _type="stream")]
    except rex.RedisError as exc:
        raise ERRORS.map(exc, TopologyError, "cannot list the dead-letter streams") from exc
    return sorted({k[len(head) : -1] for k in keys})


async def depth(client: Any, source: Destination, prefix: str) -> int:
    """Entries of a queue or a topic's group not yet delivered to its consumer group, in its
    stream and its retry stream, plus the retries waiting for their delay. A queue's entries
    sent before its group exists count (the group will start at the stream's start); a
    missing topic group is 0. Read-only. Raises :class:`InvalidDestination` (a topic without
    a group), :class:`TopologyError` (a key of another type) or :class:`ConnectError`."""
    names = group_names(source, prefix, "depth", queue=True)
    try:
        total = await _undelivered(client, names.stream, names.group, whole=names.queue)
        total += await _undelivered(client, names.retry, names.group, whole=True)
        return total + int(await client.zcard(names.due))
    except rex.RedisError as exc:
        raise ERRORS.map(exc, TopologyError, f"cannot read the depth of {names.stream!r}") from exc


async def _undelivered(client: Any, stream: str, group: str, *, whole: bool) -> int:
    """Entries of ``stream`` after ``group``'s last delivered one; without the group, the
    whole stream when ``whole`` (the group starts at the beginning when created), else 0."""
    try:
        groups = await client.xinfo_groups(stream)
    except rex.ResponseError as exc:
        if "no such key" in str(exc):
            return 0
        raise
    info = next((g for g in groups if _text(g["name"]) == group), None)
    if info is None:
        return int(await client.xlen(stream)) if whole else 0
    if info.get("lag") is not None:
        return int(info["lag"])
    # Redis cannot tell the lag when entries after the group's position were deleted: count.
    count, after = 0, _text(info["last-delivered-id"])
    while True:
        page = await client.xrange(stream, min=f"({after}", max="+", count=_PAGE)
        count += len(page)
        if len(page) < _PAGE:
            return count
        after = _text(page[-1][0])


async def delete_group(client: Any, source: Destination, prefix: str) -> None:
    """Destroy the consumer group on the topic's stream, and delete its retry stream, its due
    set and its dead-letter queue (see :func:`delete_queue`). Idempotent; the stream and the
    other groups are left alone. Raises :class:`InvalidDestination` (not a topic's group),
    :class:`TopologyError` or :class:`ConnectError`."""
    names = group_names(source, prefix, "delete_group")
    try:
        try:
            await client.xgroup_destroy(names.stream, names.group)
        except rex.ResponseError as exc:
            if "requires the key to exist" not in str(exc):  # else no stream, so no group
                raise
        for key in (names.retry, names.due):
            await client.delete(key)
    except rex.RedisError as exc:
        raise ERRORS.map(exc, TopologyError, f"cannot delete group {names.group!r} of {names.stream!r}") from exc
    await delete_queue(client, source.dead_letter_queue, prefix)
