"""messagebus-skeleton: a small, complete transport of messagebus to copy when writing one.

The broker is a SQLite file (``skeleton:///path/to/broker.db``) shared by any number of
processes. Installed, it is found by URL scheme: ``Bus.from_url("skeleton:///tmp/b.db")``.
See docs/writing-a-transport.md in the messagebus repository for the walk-through.
"""

from ._codec import SkeletonMessage
from ._options import SkeletonOptions
from ._topology import physical_names
from ._transport import SkeletonTransport

__all__ = ["SkeletonMessage", "SkeletonOptions", "SkeletonTransport", "physical_names"]
