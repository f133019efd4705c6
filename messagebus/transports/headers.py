"""Header names used on the wire (CloudEvents ``ce-*``, retry and dead-letter headers)."""

from .._headers import *  # noqa: F403
from .._headers import __all__ as __all__
