"""Built-in middleware: handler timeout, tracing and metrics.

``Retry`` and ``dead_letter_headers`` are re-exported here for code written against the
first release; they are policies of the bus, not middleware, and live in the core.
"""

from .._dead_letter import dead_letter_headers
from .._retry import Retry
from .timeout import HandlerTimeout, timeout

__all__ = ["HandlerTimeout", "Retry", "dead_letter_headers", "timeout"]
