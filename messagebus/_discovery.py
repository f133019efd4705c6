"""Finding the transport for a URL scheme through the ``messagebus.transports`` entry points."""

from __future__ import annotations

from importlib.metadata import entry_points

from ._config import TransportURL
from ._errors import ConfigurationError, MessageBusError, TransportNotFound
from ._transport import Transport, TransportFactory

__all__ = ["KNOWN_ADAPTERS", "load_transport"]

#: Schemes with a first-party adapter, and the extra that installs it.
KNOWN_ADAPTERS = {
    "amqp": "rabbitmq",
    "amqps": "rabbitmq",
    "kafka": "kafka",
    "sqs": "sqs",
    "pubsub": "pubsub",
}


def _factory(scheme: str) -> TransportFactory | None:
    if scheme == "memory":
        from .transports.memory import MemoryTransport

        return MemoryTransport.from_url
    for ep in entry_points(group="messagebus.transports", name=scheme):
        loaded: TransportFactory = ep.load()
        return loaded
    return None


def available_schemes() -> list[str]:
    """Every scheme an installed transport handles."""
    return sorted({"memory", *(ep.name for ep in entry_points(group="messagebus.transports"))})


def load_transport(url: str | TransportURL) -> Transport:
    """Build the transport for ``url``. Raises :class:`InvalidURL`, :class:`InvalidOption` or
    :class:`TransportNotFound` (naming the package to install)."""
    parsed = url if isinstance(url, TransportURL) else TransportURL.parse(url)
    try:
        factory = _factory(parsed.scheme)
    except ImportError as exc:
        raise TransportNotFound(
            f"the transport for {parsed.scheme}:// is installed but failed to import: {exc}"
        ) from exc
    if factory is None:
        extra = KNOWN_ADAPTERS.get(parsed.scheme)
        hint = (
            f"install it with: pip install 'messagebus-sdk[{extra}]'"
            if extra
            else "no known package provides it; a third-party transport registers the "
            "'messagebus.transports' entry point"
        )
        raise TransportNotFound(
            f"no transport for {parsed.scheme}:// in {parsed}; {hint}. "
            f"Installed schemes: {', '.join(available_schemes())}"
        )
    try:
        return factory(parsed)
    except MessageBusError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"invalid transport URL {parsed}: {exc}") from exc
