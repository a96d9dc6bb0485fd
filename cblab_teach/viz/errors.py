"""Typed errors of the visual layer: a bad argument names itself."""

from __future__ import annotations

from ..errors import CBLabError


class VizError(CBLabError, ValueError):
    """A view was asked for something the records cannot show."""


class StepOutOfRangeError(VizError, IndexError):
    """A step index outside the run's records."""


class UnknownViewError(VizError):
    """A view name the player does not know."""


class NotPagedError(VizError):
    """A block map needs paged records; a dense run has no block tables."""


class NoRecordsError(VizError):
    """Nothing to draw: the record list is empty."""


class UnknownLanguageError(VizError):
    """A language the figures and widgets have no labels for (``lang=`` or ``CBLAB_TEACH_LANG``)."""
