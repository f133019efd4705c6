"""Built-in middleware and policies: retry, timeout, dead-letter headers."""

from .dead_letter import dead_letter_headers
from .retry import Retry
from .timeout import HandlerTimeout, timeout

__all__ = ["HandlerTimeout", "Retry", "dead_letter_headers", "timeout"]
