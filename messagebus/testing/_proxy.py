"""TcpProxy: a loopback TCP proxy that tests use to cut, stall or break broker connections."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Self

__all__ = ["TcpProxy"]


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``upstream``, on a thread of its own.

    Fault controls (all thread-safe, usable from sync or async tests):

    - :meth:`cut`: close every open connection at once (a dropped network).
    - :meth:`stall` / :meth:`resume`: stop forwarding bytes without closing.
    - :meth:`cut_after`: let ``n`` more bytes through each way, then cut.
    - :meth:`refuse` / :meth:`accept`: refuse new connections (broker unreachable).
    - :meth:`half_open`: the connections open now go silent for good (bytes are read and
      dropped, nothing is forwarded, nothing is closed) while new connections work: a peer
      that vanished without a FIN or RST, which only heartbeats or timeouts detect.

    :attr:`cuts` counts the cuts made so far (by :meth:`cut`, :meth:`cut_after` or
    :meth:`refuse`); :meth:`wait_cut` waits for the next one without polling.

    Use as a context manager (``with TcpProxy(("127.0.0.1", 5672)) as proxy:``).
    """

    def __init__(self, upstream: tuple[str, int], *, port: int = 0) -> None:
        self.upstream = upstream
        self.host = "127.0.0.1"
        self.port = port
        self.connections_total = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="messagebus-tcp-proxy", daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._refusing = False
        self._budget: int | None = None
        self._silenced: set[asyncio.StreamWriter] = set()
        self._cut_done = threading.Condition()
        self.cuts = 0
        #: Bytes forwarded so far, both directions together.
        self.bytes_forwarded = 0

    def start(self) -> Self:
        """Start listening; :attr:`port` holds the bound port afterwards."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def close(self) -> None:
        """Stop the proxy and close every connection. Idempotent."""
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` clients should connect to."""
        return self.host, self.port

    def cut(self) -> None:
        """Close every open connection now (new connections are still accepted)."""
        self._call(self._cut_all)

    def stall(self) -> None:
        """Hold every byte in both directions until :meth:`resume`."""
        self._call(self._flowing.clear)

    def resume(self) -> None:
        """Forward bytes again after :meth:`stall`."""
        self._call(self._flowing.set)

    def cut_after(self, nbytes: int) -> None:
        """Forward ``nbytes`` more bytes (both directions together), then cut everything.

        The cut happens when the traffic gets there; :meth:`wait_cut` waits for it."""

        def arm() -> None:
            self._budget = nbytes

        self._call(arm)

    def refuse(self) -> None:
        """Refuse new connections and cut open ones (the broker looks down)."""

        def arm() -> None:
            self._refusing = True
            self._cut_all()

        self._call(arm)

    def accept(self) -> None:
        """Accept new connections again after :meth:`refuse`."""

        def arm() -> None:
            self._refusing = False

        self._call(arm)

    def half_open(self) -> None:
        """Make every open connection a black hole: whatever either side writes is accepted
        and dropped, nothing is forwarded and nothing is closed until the client gives up on
        it. New connections are forwarded normally (a half-open connection, not an outage)."""

        def arm() -> None:
            self._silenced.update(self._writers)

        self._call(arm)

    def wait_cut(self, after: int, timeout: float) -> bool:
        """Block until more than ``after`` cuts were made (compare with :attr:`cuts` read
        before arming one); False on timeout. Call it through ``asyncio.to_thread``."""
        with self._cut_done:
            return self._cut_done.wait_for(lambda: self.cuts > after, timeout)

    @property
    def open_connections(self) -> int:
        """How many client connections are open right now."""
        return len(self._writers) // 2

    def _call(self, fn: object) -> None:
        assert callable(fn)
        done = threading.Event()

        def run() -> None:
            try:
                fn()
            finally:
                done.set()

        self._loop.call_soon_threadsafe(run)
        done.wait(10)

    async def _start(self) -> None:
        self._flowing.set()
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._cut_all()
        # Connection handlers still waiting on a dead peer end here, not when the loop is dropped.
        current = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not current]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def _cut_all(self) -> None:
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                writer.transport.abort()
        self._writers.clear()
        self._silenced.clear()
        with self._cut_done:
            self.cuts += 1
            self._cut_done.notify_all()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self.connections_total += 1
        self._writers.update((writer, up_writer))
        pair = (writer, up_writer)
        try:
            await asyncio.gather(self._pipe(reader, up_writer, pair), self._pipe(up_reader, writer, pair))
        except asyncio.CancelledError:
            # Cancelled by close(): the proxy is going away, this handler just ends.
            for w in pair:
                w.transport.abort()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pair: tuple[asyncio.StreamWriter, ...]
    ) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                await self._flowing.wait()
                if writer in self._silenced or pair[0] in self._silenced:
                    continue  # half-open: the bytes vanish, the sender is not told
                if self._budget is not None:
                    if len(data) >= self._budget:
                        writer.write(data[: self._budget])
                        self._budget = None
                        self._cut_all()
                        return
                    self._budget -= len(data)
                self.bytes_forwarded += len(data)
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            for w in pair:
                self._writers.discard(w)
                self._silenced.discard(w)
                with contextlib.suppress(Exception):
                    w.transport.abort()
