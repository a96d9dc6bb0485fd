"""The monitoring package's own error, a :class:`cblab_teach.errors.CBLabError`."""

from ..errors import CBLabError


class MonitoringError(CBLabError, ValueError):
    """A monitoring tool was given something it cannot measure (the message names it)."""
