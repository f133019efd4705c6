"""Redis Streams transport for messagebus (redis-py asyncio): ``MESSAGEBUS_URL=redis://host:6379``.

Installed as the ``redis`` and ``rediss`` entry points of the ``messagebus.transports`` group;
the bus finds it by URL scheme. See the package README for URL options and the topology.
"""

from ._consuming import RedisEntry
from ._options import RedisOptions
from ._topology import physical_names
from ._transport import RedisTransport

__all__ = ["RedisEntry", "RedisOptions", "RedisTransport", "physical_names"]
