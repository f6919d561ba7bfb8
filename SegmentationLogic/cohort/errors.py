"""Errors of a cohort run as a whole (a case's own errors are the engine's, per case)."""
from ..errors import SegmentationError


class CohortError(SegmentationError):
    """The cohort cannot run as asked: a bad manifest, an output folder in use, Ray missing."""

    kind = "cohort"
