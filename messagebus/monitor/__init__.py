"""``messagebus monitor URL``: a live web page of the message flow between services.

Every Bus publishes a stats snapshot on ``messagebus.stats``; :class:`Monitor` listens to it
with a throwaway group, reads queue and dead-letter depths from the broker and serves a page
(``GET /``) updated by server-sent events. Needs the ``monitor`` extra
(``pip install 'messagebus-sdk[monitor]'``: Starlette and uvicorn) for :class:`Monitor` and
:func:`create_app`; :class:`Collector` needs nothing more than the core.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._collector import STATS_TOPIC, Collector

if TYPE_CHECKING:
    from ._app import Monitor, create_app

__all__ = ["STATS_TOPIC", "Collector", "Monitor", "create_app"]


def __getattr__(name: str) -> Any:
    # The web stack is an optional extra: imported when asked for, with the fix in the error.
    if name in ("Monitor", "create_app"):
        try:
            from . import _app
        except ImportError as exc:
            raise ImportError(
                f"messagebus.monitor.{name} needs the monitor extra: pip install 'messagebus-sdk[monitor]' ({exc})"
            ) from exc
        return getattr(_app, name)
    raise AttributeError(f"module 'messagebus.monitor' has no attribute {name!r}")
