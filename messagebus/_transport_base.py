"""TransportBase: the lifecycle every adapter's transport shares, written once.

URL checks of :meth:`TransportBase.from_url`, options loading, the guards of ``subscribe``
(concurrency, a topic needs a group), tracking of running consumers and the close order
(stop every consumer, then the adapter's own teardown). An adapter's transport sets a few
class attributes and supplies its broker parts: a connection, a publisher and
:meth:`TransportBase.open_consumer`.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any, ClassVar, Generic, Protocol, Self, TypeVar, get_args, get_origin

from ._config import OptionsT, TransportURL, parse_options
from ._consumer import check_concurrency
from ._destination import Destination, DestinationKind
from ._errors import InvalidDestination, InvalidURL
from ._message import OutgoingMessage
from ._transport import Capabilities, Consumer, DeliveryHandler

__all__ = ["TransportBase"]


class Connecting(Protocol):
    """An adapter's connection, as the base drives it."""

    async def open(self) -> None:
        """Connect (idempotent); raises :class:`ConnectError` after a bounded retry."""
        ...

    async def close(self) -> None:
        """Release every resource (idempotent, never raises for a connection already gone)."""
        ...


class Publishing(Protocol):
    """An adapter's publisher, as the base drives it."""

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """The contract's ``publish`` (see :meth:`Transport.publish`)."""
        ...


ConnectionT = TypeVar("ConnectionT", bound=Connecting)
PublisherT = TypeVar("PublisherT", bound=Publishing)


class TransportBase(Generic[OptionsT, ConnectionT, PublisherT]):
    """Base of an adapter's :class:`~messagebus.transports.Transport`.

    A subclass names its options, connection and publisher types as the generic arguments
    and its URL schemes and ``messaging.system`` as class keywords::

        class MyTransport(TransportBase[MyOptions, Connection, Publisher], schemes=("my",), system="my"):
            def build(self) -> tuple[Capabilities, Connection, Publisher]: ...
            async def open_consumer(self, source, handler, concurrency) -> Consumer: ...

    :meth:`build` makes the broker parts once the options are known. A subclass may
    override :meth:`load_options` (URL checks, userinfo, cross-field rules) and
    :meth:`teardown`.

    Use from one event loop; ``publish`` may be called concurrently from many tasks.
    ``connect`` and ``close`` are idempotent; ``publish`` and ``subscribe`` before
    ``connect`` raise :class:`LifecycleError`. What ``Delivery.attempt`` counts on the
    broker is stated in the subclass docstring and the adapter README.
    """

    #: URL schemes the adapter handles, the first one named in errors.
    schemes: ClassVar[tuple[str, ...]]
    #: OpenTelemetry ``messaging.system`` value.
    messaging_system: ClassVar[str]
    #: The adapter's options model (parsed from the URL query).
    options_type: ClassVar[type]

    capabilities: Capabilities
    connection: ConnectionT
    publisher: PublisherT

    def __init_subclass__(cls, *, schemes: tuple[str, ...] | None = None, system: str | None = None, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if schemes is not None:
            cls.schemes = schemes
        if system is not None:
            cls.messaging_system = system
        for base in getattr(cls, "__orig_bases__", ()):
            if get_origin(base) is TransportBase:
                cls.options_type = get_args(base)[0]

    def __init__(self, url: TransportURL, options: OptionsT | None = None) -> None:
        """Validate ``url`` (and its options unless ``options`` are given) without I/O.
        Raises :class:`InvalidURL` or :class:`InvalidOption` saying what is allowed."""
        if url.scheme not in self.schemes:
            expected = " or ".join(f"{s}://" for s in self.schemes)
            raise InvalidURL(f"{type(self).__name__} handles {expected} URLs, got {url.render()!r}")
        loaded = self.load_options(url)  # the URL is checked even when options are given
        self.url = url
        self.options: OptionsT = loaded if options is None else options
        self.consumers: weakref.WeakSet[Consumer] = weakref.WeakSet()
        self.capabilities, self.connection, self.publisher = self.build()

    def build(self) -> tuple[Capabilities, ConnectionT, PublisherT]:
        """The transport's capabilities, connection and publisher for ``self.url`` and
        ``self.options`` (called once by the constructor; no I/O)."""
        raise NotImplementedError

    @classmethod
    def from_url(cls, url: TransportURL | str) -> Self:
        """Build a transport from a URL string or parsed URL; validates without I/O.
        Raises :class:`InvalidURL` or :class:`InvalidOption` (listing the valid options)."""
        return cls(url if isinstance(url, TransportURL) else TransportURL.parse(url))

    @classmethod
    def load_options(cls, url: TransportURL) -> OptionsT:
        """The URL's query validated into :attr:`options_type`; adapters add their URL rules."""
        options: OptionsT = parse_options(url, cls.options_type)
        return options

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url.render()!r})"

    async def connect(self) -> None:
        """Open the connection (idempotent). Raises :class:`ConnectError` after a bounded
        retry, saying what to fix; never with the password in it."""
        await self.connection.open()

    async def close(self) -> None:
        """Stop every running consumer with no grace (unsettled deliveries go back to the
        broker), then release the connection. Idempotent."""
        for consumer in list(self.consumers):
            await consumer.stop(0.0)
        await self.teardown()

    async def teardown(self) -> None:
        """After the consumers stopped: close what the adapter holds (default: the connection)."""
        await self.connection.close()

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """The contract's ``publish`` (:meth:`Transport.publish`); broker specifics are in the
        adapter README."""
        await self.publisher.publish(messages)

    async def subscribe(self, source: Destination, handler: DeliveryHandler, *, concurrency: int) -> Consumer:
        """The contract's ``subscribe``. Raises :class:`ConfigurationError` for a concurrency
        that is not an int >= 1, :class:`InvalidDestination` for a topic without a group,
        :class:`LifecycleError` before ``connect``, :class:`TopologyError` when declaring fails."""
        check_concurrency(concurrency, f"{source.name!r}")
        if source.kind is DestinationKind.TOPIC and not source.group:
            raise InvalidDestination(f"subscribing to topic {source.name!r} needs a group")
        consumer = await self.open_consumer(source, handler, concurrency)
        self.consumers.add(consumer)
        return consumer

    async def open_consumer(self, source: Destination, handler: DeliveryHandler, concurrency: int) -> Consumer:
        """Declare ``source`` and start a consumer on it (arguments already checked)."""
        raise NotImplementedError
