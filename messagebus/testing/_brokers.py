"""Helpers for test fixtures that start or find real brokers."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import NoReturn, Protocol

__all__ = [
    "BrokerProcess",
    "CrashableBroker",
    "SPAWNER",
    "brokers_required",
    "die_with_parent",
    "free_port",
    "missing_broker",
    "wait_for_port",
]


def brokers_required() -> bool:
    """True in CI (``CI`` set) or with ``MESSAGEBUS_REQUIRE_BROKERS=1``: a missing broker fails."""
    return bool(os.environ.get("CI")) or os.environ.get("MESSAGEBUS_REQUIRE_BROKERS") == "1"


def missing_broker(name: str, reason: str) -> NoReturn:
    """Skip the test (normal machine) or fail it (CI) because broker ``name`` is unavailable."""
    import pytest  # here, not at import: the demo imports messagebus.testing without pytest

    message = f"{name} broker unavailable: {reason}"
    if brokers_required():
        pytest.fail(message + " (CI requires every broker; set MESSAGEBUS_TEST_<BROKER>_URL or install it)")
    pytest.skip(message)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(host: str, port: int, timeout: float = 30.0) -> bool:
    """Poll until ``host:port`` accepts TCP connections; False after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return True
        except OSError:
            time.sleep(0.1)
    return False


class CrashableBroker(Protocol):
    """A broker the crash tests of the conformance kit may kill (never a shared one).

    - ``url``: the transport URL that reaches it.
    - ``keeps_messages``: confirmed messages survive a crash (durable storage that outlives
      the process); ``False`` for in-memory servers, whose crash loses everything.
    - :meth:`crash`: SIGKILL the process serving the broker (no goodbye on any connection);
      returns once it is dead. :meth:`start`: start it again on the same ports and data;
      returns once it accepts connections. :meth:`restart`: a graceful stop, then start.
    """

    @property
    def url(self) -> str: ...

    @property
    def keeps_messages(self) -> bool: ...

    async def crash(self) -> None: ...

    async def start(self) -> None: ...

    async def restart(self) -> None: ...


def die_with_parent() -> None:
    """``preexec_fn`` for broker processes (Linux): the child gets SIGKILL when the test
    process dies, so a killed test run leaves no broker behind. Preserved across ``exec``.

    Linux sends it when the *thread* that forked the child ends: spawn from the main thread
    or from :data:`SPAWNER`, never from a short-lived worker thread (``asyncio.to_thread``
    threads end with each test's event loop, and would take the broker with them)."""
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


#: One thread that lives as long as the test process and forks every broker
#: :class:`BrokerProcess` starts (see :func:`die_with_parent`).
SPAWNER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="messagebus-broker-spawner")


class BrokerProcess:
    """One broker server process a test session owns: started on fixed ports (so a restart
    comes back where clients reconnect), crashed with SIGKILL, stopped gracefully, closed
    at session end. Implements :class:`CrashableBroker` once a subclass (or the caller)
    gives the command, the port to wait for and the URL.

    ``command``/``env``/``cwd`` start the server; its OS pid should be the serving process
    itself (``exec`` all the way down), or a subclass overrides :meth:`server_pid`.
    ``start_timeout`` bounds the wait for ``port``; a server that does not listen in time (or
    exits) is reported through :func:`missing_broker` with the tail of its log.
    """

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        port: int,
        url: str,
        *,
        keeps_messages: bool,
        log_path: str,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self.name = name
        self.command = list(command)
        self.port = port
        self._url = url
        self._keeps_messages = keeps_messages
        self.log_path = log_path
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        #: The exit status of the last start that ended while starting (None: none did).
        self.exit_status: int | None = None

    def __repr__(self) -> str:
        state = f"pid {self.proc.pid}" if self.proc is not None and self.proc.poll() is None else "not running"
        return f"<{type(self).__name__} {self.name} port {self.port} {state}>"

    @property
    def url(self) -> str:
        """The transport URL reaching this broker."""
        return self._url

    @property
    def keeps_messages(self) -> bool:
        """Confirmed messages survive :meth:`crash`."""
        return self._keeps_messages

    def server_pid(self, proc: subprocess.Popen[bytes]) -> int:
        """The OS pid of the process serving the broker that ``proc`` launched (the one
        :meth:`crash` kills): ``proc`` itself unless a subclass says otherwise."""
        return proc.pid

    def running(self) -> bool:
        """True while the started process has not exited."""
        return self.proc is not None and self.proc.poll() is None

    def start_sync(self, attempts: int = 3) -> None:
        """Start the server (unless running) and wait until ``port`` accepts connections. A
        server that exits while starting is started again, up to ``attempts`` times in all
        (a JVM broker restarted on the port of one just killed has been seen to die at once,
        writing nothing); then :func:`missing_broker` with its exit status and log."""
        for attempt in range(1, attempts + 1):
            if self._start_once(last=attempt == attempts):
                return
            print(f"\n{self.name}: exited while starting (status {self.exit_status}); starting it again")

    def _start_once(self, *, last: bool) -> bool:
        if self.running():
            return True
        with open(self.log_path, "ab") as log:
            self.proc = SPAWNER.submit(
                subprocess.Popen,
                self.command,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of the test run reaches the tests, not the broker
                preexec_fn=die_with_parent if sys.platform == "linux" else None,
            ).result()
        deadline = time.monotonic() + self.start_timeout
        while not wait_for_port("127.0.0.1", self.port, timeout=0.5):
            self.exit_status = self.proc.poll()
            if self.exit_status is not None and not last:
                self.proc = None
                return False
            if self.exit_status is not None or time.monotonic() > deadline:
                why = (
                    f"exited with status {self.exit_status}"
                    if self.exit_status is not None
                    else f"did not listen within {self.start_timeout}s"
                )
                self.kill_sync()
                missing_broker(self.name, f"{self.command[0]} {why} on port {self.port}; {self.log_tail()}")
        return True

    def kill_sync(self) -> None:
        """SIGKILL the serving process and reap it; nothing if it is not running."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.server_pid(proc), signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()  # the launcher too, when the server was its child
        proc.wait(30)

    def stop_sync(self, timeout: float = 15.0) -> None:
        """SIGTERM (a graceful shutdown), SIGKILL after ``timeout`` seconds (said on stdout:
        some servers drain their clients first and never finish while they reconnect)."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            self.proc = None
            return
        os.kill(self.server_pid(proc), signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            print(f"\n{self.name}: still running {timeout}s after SIGTERM; killed")
            self.kill_sync()
        self.proc = None

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of the server's log, for failure messages."""
        try:
            with open(self.log_path, "rb") as f:
                text = f.read()[-4000:].decode(errors="replace")
        except OSError:
            return f"no log at {self.log_path}"
        return f"log {self.log_path} ends:\n" + "\n".join(text.splitlines()[-lines:])

    async def crash(self) -> None:
        """SIGKILL the serving process; returns once it has exited (it is not started again)."""
        await asyncio.to_thread(self.kill_sync)

    async def start(self) -> None:
        """Start it again on the same ports and data; returns once it accepts connections."""
        await asyncio.to_thread(self.start_sync)

    async def restart(self) -> None:
        """A graceful stop (SIGTERM), then :meth:`start`."""
        await asyncio.to_thread(self.stop_sync)
        await self.start()

    def close(self) -> None:
        """Kill the server for good (session teardown)."""
        self.kill_sync()
