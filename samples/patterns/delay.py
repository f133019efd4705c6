"""Delayed delivery: a reminder service gets one reminder due in 2 seconds and one due now.

    python -m samples.patterns.delay [URL]

The calendar service sends ``bus.send("reminders", Reminder(...), delay=2)`` first and an
undelayed reminder right after. The reminder service handles the undelayed one at once (the
delayed one, already on the queue ahead of it, holds nothing back) and the delayed one not
before its due time; the sample prints how late after the due time it came.
"""

from __future__ import annotations

import asyncio
import time

from pydantic import BaseModel

from messagebus import Bus

from ._scene import Checks, namespaced, run_cli, say

#: Seconds the first reminder is delayed.
DELAY = 2.0
#: Seconds to wait for both reminders beyond the delay before giving up.
PATIENCE = 30.0
#: The due time travels in whole milliseconds (rounded down): the slack it allows.
MS = 0.001


class Reminder(BaseModel):
    user: str
    text: str


async def main(url: str, *, namespace: str | None = None) -> int:
    """Run the scene on ``url``; 0 when the undelayed reminder was handled first and the
    delayed one not before its due time."""
    name = namespaced(url, namespace)
    reminders = name("reminders")
    checks = Checks()
    handled: dict[str, float] = {}
    order: list[str] = []
    both = asyncio.Event()

    service = Bus.from_url(url, service="reminders")

    @service.consume(reminders)
    async def remind(reminder: Reminder) -> None:
        handled[reminder.text] = time.time()
        order.append(reminder.text)
        say("reminders", f"to {reminder.user}: {reminder.text!r}")
        if len(handled) == 2:
            both.set()

    calendar = Bus.from_url(url, service="calendar")
    async with service, calendar:
        sent = time.time()
        await calendar.send(reminders, Reminder(user="ada", text="stand-up in 2 s"), delay=DELAY)
        say("calendar", f"sent 'stand-up in 2 s' with delay={DELAY}")
        await calendar.send(reminders, Reminder(user="ada", text="coffee is ready"))
        say("calendar", "sent 'coffee is ready' with no delay")
        try:
            await asyncio.wait_for(both.wait(), DELAY + PATIENCE)
        except TimeoutError:
            checks.expect(False, f"both reminders are handled within {DELAY + PATIENCE:.0f}s (handled: {order})")
            return checks.result()
    due = sent + DELAY
    late = handled["stand-up in 2 s"] - due
    say("sample", f"handled in this order: {order}")
    say("sample", f"'coffee is ready' handled {handled['coffee is ready'] - sent:.3f}s after the sends began")
    say("sample", f"'stand-up in 2 s' handled {late * 1000:+.0f} ms after its due time (lateness)")
    checks.expect(order == ["coffee is ready", "stand-up in 2 s"], "the undelayed reminder is handled first")
    checks.expect(late >= -MS, f"the delayed reminder is not handled before its due time (it came {-late:.3f}s early)")
    return checks.result()


if __name__ == "__main__":
    run_cli(main, __doc__)
