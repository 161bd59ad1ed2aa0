"""One exception type per family of user error.

Every message says *what* was wrong, *where* (file:line, name) and *what to do*.
"""

from __future__ import annotations


class LRGDError(Exception):
    """Base class of all errors raised on purpose by :mod:`lrgd`."""


class ConfigError(LRGDError, ValueError):
    """An unknown profile, device, parameter or an inconsistent configuration."""


class DataError(LRGDError, ValueError):
    """A missing dataset, a malformed data line, an unknown id or an empty history."""


class ModelError(LRGDError, ValueError):
    """An unknown model name, a broken model path, or a prompt over the context window."""
