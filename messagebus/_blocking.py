"""BlockingWorker: a blocking client's long calls on a daemon thread, abandoned on cancel.

Clients such as boto3 cannot cancel a call in flight (a 20 s SQS long poll). Running it in
the default executor makes ``stop()`` and the interpreter's exit wait for it. A worker runs
such calls one at a time on a daemon thread of its own; a caller that is cancelled returns
at once, and whatever the abandoned call still returns goes to a callback on the worker
thread (an adapter hands the messages back to the broker there), so nothing is lost and
nothing waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from typing import TypeVar

__all__ = ["BlockingWorker"]

T = TypeVar("T")


class BlockingWorker:
    """One daemon thread running blocking calls in order.

    :meth:`call` awaits one call; cancelled, it returns at once, and the call's result (now
    or when it returns) is passed to ``abandoned`` on the worker thread. Exactly one side
    gets a result: the awaiting caller if the call finished first, else ``abandoned`` (a
    ``concurrent.futures.Future`` decides atomically). :meth:`close` ends the thread after
    the calls queued; it is not waited for. Thread-safe; :meth:`call` from one event loop.
    """

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        threading.Thread(target=self._run, name=name, daemon=True).start()

    async def call(self, fn: Callable[[], T], abandoned: Callable[[T], None]) -> T:
        """``fn()`` on the worker thread; raises what it raises. Cancelled, ``abandoned``
        gets its result instead (exceptions of an abandoned call are dropped)."""
        job: Future[T] = Future()
        self._jobs.put(functools.partial(self._execute, fn, job, abandoned))
        try:
            return await asyncio.wrap_future(job)
        except asyncio.CancelledError:
            if not job.cancel() and job.exception() is None:
                # It returned just before the cancel reached us: the result is ours to give up.
                self._jobs.put(functools.partial(abandoned, job.result()))
            raise

    def close(self) -> None:
        """End the thread once the calls queued ran (not waited for). Idempotent."""
        self._jobs.put(None)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()

    @staticmethod
    def _execute(fn: Callable[[], T], job: Future[T], abandoned: Callable[[T], None]) -> None:
        if job.cancelled():
            return
        try:
            result = fn()
        except Exception as exc:
            with contextlib.suppress(InvalidStateError):
                job.set_exception(exc)
            return
        try:
            job.set_result(result)
        except InvalidStateError:  # the caller gave up on it: nobody else will take this result
            abandoned(result)
