"""The monitor's web side: a Starlette app (page, server-sent events, JSON API) and
:class:`Monitor`, which runs it with uvicorn next to a Bus that listens to the stats topic."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import secrets
import socket
import uuid
from collections.abc import Awaitable, Callable, Generator, Sequence
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._bus import Bus
from .._config import TransportURL
from .._destination import Destination, DestinationKind, validate_name
from .._discovery import load_transport
from .._errors import InvalidDestination, MessageBusError
from .._message import Envelope
from .._transport import BrokerAdmin
from ._collector import STATS_TOPIC, Collector, DeadLetterAdmin

__all__ = ["Monitor", "create_app"]

log = logging.getLogger("messagebus.monitor")

_STATIC = Path(__file__).parent / "static"
_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
#: No inline script or style, nothing from elsewhere: a payload that slipped into markup
#: would still not run.
_SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
        b"base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]
_BODY_LIMIT = 64 * 1024
_PEEK_LIMIT = 100
TOKEN_HEADER = "x-monitor-token"


class _SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _envelope_json(envelope: Envelope) -> dict[str, Any]:
    body = envelope.body
    timestamp = envelope.timestamp
    return {
        "id": envelope.id,
        "type": envelope.type,
        "source": envelope.source,
        "destination": envelope.destination,
        "group": envelope.group,
        "key": envelope.key,
        "attempt": envelope.attempt,
        "timestamp": timestamp.isoformat() if timestamp else None,
        "content_type": envelope.content_type,
        "headers": envelope.headers,
        "size": len(body),
        "body": body[:_BODY_LIMIT].decode("utf-8", errors="replace"),
        "truncated": len(body) > _BODY_LIMIT,
    }


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(
    collector: Collector,
    *,
    token: str,
    push_interval: float = 1.0,
    closing: asyncio.Event | None = None,
    allowed_hosts: Sequence[str] = ("127.0.0.1", "localhost", "::1", "[::1]"),
    on_change: Callable[[], Awaitable[None]] | None = None,
) -> Starlette:
    """The monitor's ASGI app over ``collector``.

    ``GET /`` the page; ``GET /events`` server-sent events, the state every ``push_interval``
    seconds until ``closing`` is set; ``GET /api/state``; ``GET /api/dlq/{name}?limit=N``
    peeks at a dead-letter queue (removes nothing); ``POST /api/dlq/{name}/replay`` (JSON body
    ``{"ids": [...]}`` or ``{"limit": N}``, both optional) and ``POST /api/dlq/{name}/purge``
    change it and answer 403 unless header ``X-Monitor-Token`` equals ``token``. Requests
    whose Host is not in ``allowed_hosts`` get 400 (a DNS-rebinding page cannot reach a
    loopback monitor). ``on_change`` runs after a replay or purge (to refresh depths).
    """
    if not token:
        raise ValueError("the monitor needs a non-empty token for replay and purge")
    done = closing or asyncio.Event()

    async def page(request: Request) -> Response:
        name = request.path_params.get("file", "index.html")
        if name not in _FILES:
            return _error(404, "not found")
        return Response((_STATIC / name).read_bytes(), media_type=_FILES[name])

    async def no_icon(request: Request) -> Response:
        return Response(status_code=204)

    async def state(request: Request) -> Response:
        return JSONResponse(collector.state())

    async def events(request: Request) -> Response:
        async def stream() -> Any:
            while not done.is_set():
                yield f"data: {json.dumps(collector.state())}\n\n"
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), push_interval)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"x-accel-buffering": "no"})

    def admin_and_queue(request: Request) -> tuple[DeadLetterAdmin, str] | Response:
        admin = collector.admin
        if admin is None:
            return _error(501, "this monitor's bus cannot read dead-letter queues")
        name = request.path_params["name"]
        try:
            validate_name(name, "dead-letter queue")
        except InvalidDestination as exc:
            return _error(400, str(exc))
        if not name.endswith(".dlq"):
            return _error(400, f"{name!r} is not a dead-letter queue; their names end with '.dlq'")
        return admin, name

    async def peek(request: Request) -> Response:
        found = admin_and_queue(request)
        if isinstance(found, Response):
            return found
        admin, name = found
        text = request.query_params.get("limit", "20")
        if not text.isdigit() or not 1 <= int(text) <= _PEEK_LIMIT:
            return _error(400, f"limit must be an integer from 1 to {_PEEK_LIMIT}, got {text!r}")
        try:
            messages = await admin.peek_dead_letters(name, limit=int(text))
        except MessageBusError as exc:
            return _error(502, str(exc))
        return JSONResponse({"queue": name, "messages": [_envelope_json(m) for m in messages]})

    def authorized(request: Request) -> bool:
        given = request.headers.get(TOKEN_HEADER, "")
        return secrets.compare_digest(given.encode(), token.encode())

    async def change(request: Request) -> Response:
        if not authorized(request):
            return _error(403, f"replay and purge need the monitor's token in the {TOKEN_HEADER} header")
        found = admin_and_queue(request)
        if isinstance(found, Response):
            return found
        admin, name = found
        try:
            if request.path_params["action"] == "purge":
                result = {"purged": await admin.purge_dead_letters(name)}
            else:
                raw = await request.body()
                options = json.loads(raw) if raw.strip() else {}
                if not isinstance(options, dict) or set(options) - {"ids", "limit"}:
                    return _error(400, 'replay takes a JSON object {"ids": [...]} or {"limit": N}, both optional')
                ids, limit = options.get("ids"), options.get("limit")
                if ids is not None and (not isinstance(ids, list) or not all(isinstance(i, str) for i in ids)):
                    return _error(400, "ids must be a list of message id strings")
                if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
                    return _error(400, "limit must be an integer >= 1")
                result = {"replayed": await admin.replay_dead_letters(name, limit=limit, ids=ids)}
        except json.JSONDecodeError:
            return _error(400, "the request body is not JSON")
        except MessageBusError as exc:
            return _error(502, str(exc))
        if on_change is not None:
            await on_change()
        return JSONResponse(result)

    return Starlette(
        routes=[
            Route("/", page, methods=["GET"]),
            Route("/static/{file}", page, methods=["GET"]),
            Route("/favicon.ico", no_icon, methods=["GET"]),
            Route("/events", events, methods=["GET"]),
            Route("/api/state", state, methods=["GET"]),
            Route("/api/dlq/{name}", peek, methods=["GET"]),
            Route("/api/dlq/{name}/{action:str}", change, methods=["POST"]),
        ],
        middleware=[
            Middleware(_SecurityHeaders),
            Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts)),
        ],
    )


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the monitor's owner decides when it stops."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Monitor:
    """The monitor of the services on transport ``url``: a Bus of its own subscribed to
    ``messagebus.stats`` with a throwaway group (``monitor-<8 hex>``, deleted at :meth:`stop`),
    depths and dead-letter queues read every ``depth_interval`` seconds, and the web page
    served on ``host``:``port`` (port 0: any free one; see :attr:`port`).

    Replay and purge need :attr:`token` (random unless given); :attr:`page_url` carries it in
    the URL fragment, which browsers never send to a server. ``host`` is 127.0.0.1 by default;
    any other non-loopback address exposes the page (and its message bodies) to the network.
    Use as ``async with Monitor(url) as monitor:``. Raises :class:`MessageBusError` subclasses
    for a bad URL or an unreachable broker, :class:`OSError` when the port is taken.
    """

    def __init__(
        self,
        url: str | TransportURL,
        *,
        host: str = "127.0.0.1",
        port: int = 8765,
        token: str | None = None,
        depth_interval: float = 5.0,
        push_interval: float = 1.0,
    ) -> None:
        self.url = url if isinstance(url, TransportURL) else TransportURL.parse(url)
        self.host = host
        self.port = port
        self.token = token or secrets.token_urlsafe(24)
        self.group = f"monitor-{uuid.uuid4().hex[:8]}"
        self.depth_interval = depth_interval
        self.push_interval = push_interval
        # The monitor's own bus publishes no stats: it is no service of the system it watches.
        self.bus = Bus(load_transport(self.url), service=self.group, url=self.url, stats_interval=None)
        admin = self.bus if isinstance(self.bus.transport, BrokerAdmin) else None
        self.collector = Collector(admin, transport=str(self.url), ignore_services=[self.group])
        self._closing = asyncio.Event()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._server: _Server | None = None
        collector = self.collector

        @self.bus.subscribe(STATS_TOPIC, group=self.group)
        async def on_stats(envelope: Envelope) -> None:
            if collector.ingest(envelope.body):
                self._wake.set()  # a new service or handler: read its depths now

    @property
    def page_url(self) -> str:
        """The page's address with the token in its fragment (print it; open it)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/#token={self.token}"

    async def start(self) -> None:
        """Bind the port, start the Bus and the server. Raises like the class says; on
        failure nothing is left running."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.create_server((self.host, self.port), family=family)
        self.port = sock.getsockname()[1]
        try:
            await self.bus.start()
        except BaseException:
            sock.close()
            raise
        hosts = ["127.0.0.1", "localhost", "::1", "[::1]"] if _is_loopback(self.host) else ["*"]
        app = create_app(
            self.collector,
            token=self.token,
            push_interval=self.push_interval,
            closing=self._closing,
            allowed_hosts=hosts,
            on_change=self._refresh,
        )
        config = uvicorn.Config(
            app, lifespan="off", log_config=None, access_log=False, server_header=False, timeout_graceful_shutdown=2
        )
        self._server = _Server(config)
        # The socket listens already: connections wait in its backlog until uvicorn serves them.
        self._tasks = [
            asyncio.create_task(self._server.serve(sockets=[sock]), name="messagebus-monitor-http"),
            asyncio.create_task(self._poll(), name="messagebus-monitor-depths"),
        ]

    async def _refresh(self) -> None:
        await self.collector.poll_depths()

    async def _poll(self) -> None:
        while not self._closing.is_set():
            await self.collector.poll_depths()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.depth_interval)

    async def stop(self) -> None:
        """Stop serving, stop the Bus and delete the throwaway group. Idempotent."""
        self._closing.set()
        if self._server is not None:
            self._server.should_exit = True
        for task in self._tasks:
            if task.get_name() == "messagebus-monitor-depths":
                task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, SystemExit):
                await task
        self._tasks = []
        if self.bus.state.value in ("stopped", "new"):
            return
        await self.bus.stop(grace=5.0)
        await self._delete_group()

    async def _delete_group(self) -> None:
        # The bus's transport is closed by now; a short-lived one deletes the group.
        transport = load_transport(self.url)
        if not isinstance(transport, BrokerAdmin):
            return
        try:
            await transport.connect()
            await asyncio.wait_for(
                transport.delete_group(Destination(DestinationKind.TOPIC, STATS_TOPIC, self.group)), 10.0
            )
        except (MessageBusError, TimeoutError) as exc:
            log.warning("could not delete the monitor's group %s of %s: %s", self.group, STATS_TOPIC, exc)
        finally:
            await transport.close()

    async def __aenter__(self) -> Monitor:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
