"""Connection supervision: one sqlite3 connection, opened with bounded retries, used from a
thread of its own (sqlite3 blocks; the event loop must not).

A networked adapter puts its reconnect supervisor here (a dropped connection reopened with
:class:`~messagebus.transports.Backoff`, consumers restored on it). A local file does not
drop, so this one only retries the first open.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Concatenate, ParamSpec, TypeVar

from messagebus import ConnectError, LifecycleError
from messagebus.transports import Backoff, describe_error

from ._errors import ERRORS, is_transient
from ._options import SkeletonOptions
from ._topology import SCHEMA

__all__ = ["Connection"]

logger = logging.getLogger("messagebus.skeleton")

P = ParamSpec("P")
T = TypeVar("T")

#: UPDATE ... RETURNING (3.35) and json_patch built in (3.38).
MIN_SQLITE = (3, 38)


class Connection:
    """The broker connection of one transport. Not thread-safe: use it from one event loop.

    Every query runs in the connection's one thread, in submission order, so work submitted
    later (a close, an undo) always runs after work submitted earlier.
    """

    def __init__(self, path: str, options: SkeletonOptions) -> None:
        self.path = path
        self.options = options
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None

    @property
    def is_open(self) -> bool:
        """True between :meth:`open` and :meth:`close`."""
        return self._db is not None

    async def open(self) -> None:
        """Open the file and create the schema; retry a transient failure ``connect_retries``
        times with back-off. Idempotent. Raises :class:`ConnectError`."""
        if self._db is not None:
            return
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise ConnectError(
                f"the skeleton broker needs SQLite {'.'.join(map(str, MIN_SQLITE))} or newer; "
                f"this Python has {sqlite3.sqlite_version}"
            )
        executor = ThreadPoolExecutor(1, thread_name_prefix="messagebus-skeleton")
        backoff = Backoff(0.05, 1.0)
        attempts = self.options.connect_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                self._db = await asyncio.get_running_loop().run_in_executor(executor, self._open)
                self._executor = executor
                return
            except Exception as exc:
                if attempt == attempts or not is_transient(exc):
                    executor.shutdown(wait=False)
                    raise ERRORS.map(exc, ConnectError, f"opening the skeleton broker {self.path!r}") from exc
                logger.warning(
                    "opening the skeleton broker %r failed (%s); attempt %d of %d",
                    *(self.path, describe_error(exc), attempt, attempts),
                )
                await backoff.wait()

    def _open(self) -> sqlite3.Connection:
        # isolation_level=None: autocommit; multi-statement work says BEGIN IMMEDIATE itself.
        db = sqlite3.connect(self.path, timeout=self.options.busy_timeout, isolation_level=None)
        try:
            db.executescript(SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    def submit(
        self, fn: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> asyncio.Future[T]:
        """Run ``fn(db, *args, **kwargs)`` in the connection's thread; the future of its result.
        Raises :class:`LifecycleError` when the connection is not open."""
        if self._db is None or self._executor is None:
            raise LifecycleError(f"the skeleton broker {self.path!r} is not connected; call connect() first")
        call = functools.partial(fn, self._db, *args, **kwargs)
        return asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def run(self, fn: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        """:meth:`submit` and wait for the result (native sqlite3 errors escape: callers map
        them with ``ERRORS``). Cancelling the caller does not cancel the query: once asked, a
        broker operation (a hand-back during stop, say) runs to the end."""
        return await asyncio.shield(self.submit(fn, *args, **kwargs))

    async def close(self) -> None:
        """Close after every query submitted so far has run. Idempotent."""
        db, executor = self._db, self._executor
        self._db = self._executor = None
        if db is None or executor is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(executor, db.close)
        finally:
            executor.shutdown(wait=False)
