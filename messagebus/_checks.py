"""Argument checks shared by the public API: one wording for one rule."""

from __future__ import annotations

from ._errors import ConfigurationError

__all__ = ["positive_int"]


def positive_int(value: object, what: str, allowed: str = "an int >= 1") -> int:
    """``value`` if it is an int >= 1 (a bool is not one); else :class:`ConfigurationError`
    saying ``{what} must be {allowed}, got {value!r}``. Pure."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{what} must be {allowed}, got {value!r}")
    return value
