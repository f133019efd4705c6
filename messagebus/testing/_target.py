"""ConformanceTarget: where both layers of the conformance kit find the transport under test.

Shared by :mod:`messagebus.testing.conformance` (the Bus-level kit, with its fault tests) and
:mod:`messagebus.testing.transport_kit` (the transport-level kit), so neither imports the
other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._bus import Bus
from .._config import TransportURL
from .._discovery import load_transport
from .._transport import Capabilities, Transport
from ._brokers import CrashableBroker

__all__ = ["ConformanceTarget"]


@dataclass(frozen=True)
class ConformanceTarget:
    """Where the kit finds the transport under test.

    - ``url``: the transport URL buses are built from (``Bus.from_url(url, service=...)``).
    - ``upstream``: the broker's ``(host, port)``; with ``via_proxy`` it enables the reconnect
      tests, which put a :class:`~messagebus.testing.TcpProxy` in between.
    - ``via_proxy``: builds a URL that reaches the broker through ``host:port`` of the proxy.
    - ``timeout``: seconds to wait for an expected message before failing.
    - ``scale``: multiplies the kit's message counts (0.1 for a slow local emulator).
    - ``crash_broker``: returns a private broker (started on first call) that the crash and
      restart tests may kill with SIGKILL, stop and start again; never give a shared broker
      here. The broker says whether confirmed messages survive (``keeps_messages``).
    - ``transport``: builds the transport for a URL instead of the transport registered for
      its scheme (a transport under development, or the kit's own deliberately broken ones).
    - ``history_url``: the URL the history tests use, with the broker's opt-in for keeping a
      topic's history (RabbitMQ streams, Pub/Sub topic retention); default :attr:`url`.
    """

    url: str
    upstream: tuple[str, int] | None = None
    via_proxy: Callable[[str, int], str] | None = None
    timeout: float = 30.0
    scale: float = 1.0
    transport: Callable[[str], Transport] | None = None
    crash_broker: Callable[[], CrashableBroker] | None = None
    history_url: str | None = None

    def count(self, n: int, minimum: int = 10) -> int:
        """``n`` scaled, at least ``minimum``."""
        return max(minimum, int(n * self.scale))

    def make_transport(self, url: str | None = None) -> Transport:
        """A new, unconnected transport for ``url`` (default: :attr:`url`)."""
        where = url or self.url
        if self.transport is not None:
            return self.transport(where)
        return load_transport(where)

    def make_bus(self, service: str = "svc", *, url: str | None = None, **kwargs: Any) -> Bus:
        """A new bus on the target (on ``url`` when given, e.g. one through a proxy)."""
        where = url or self.url
        return Bus(self.make_transport(where), service=service, url=TransportURL.parse(where), **kwargs)

    @property
    def capabilities(self) -> Capabilities:
        """What the transport under test declares."""
        return self.make_transport().capabilities
