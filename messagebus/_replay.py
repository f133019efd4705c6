"""When a replay (``Bus.replay``) has caught up with the history it was started on."""

from __future__ import annotations

import asyncio

from ._destination import Destination
from ._stats import HandlerStats
from ._transport import BrokerAdmin

__all__ = ["caught_up"]

#: Seconds between two looks at the group's depth (a broker count: there is no event for it).
POLL = 0.1


async def caught_up(admin: BrokerAdmin, source: Destination, stats: HandlerStats, idle: float) -> None:
    """Return once group ``source`` has nothing left: the broker's depth is 0 with no call
    in flight, seen twice in a row (a depth read between a delivery and its handler call
    looks like 0 once). Where the broker does not count (depth ``None``), and before the
    first message arrives, ``idle`` seconds with no call ended stand for it. Raises what
    ``admin.depth`` raises."""
    loop = asyncio.get_running_loop()
    quiet_since = loop.time()
    seen = stats.handled + stats.dead_lettered + stats.retried
    settled_zero = 0
    while True:
        await asyncio.sleep(POLL)
        now = loop.time()
        done = stats.handled + stats.dead_lettered + stats.retried
        if done != seen or stats.in_flight:
            seen, quiet_since, settled_zero = done, now, 0
            continue
        depth = await admin.depth(source)
        if depth is None or done == 0:
            # Nothing counted (or nothing delivered yet: a broker may still be positioning the group).
            if depth == 0 and done == 0 and now - quiet_since >= idle:
                return
            if depth is None and now - quiet_since >= idle:
                return
            continue
        settled_zero = settled_zero + 1 if depth == 0 else 0
        if settled_zero >= 2:
            return
