"""Errors a user can act on.

Every error the engine raises on purpose is a `SegmentationError` with a one-line cause
and a fix. The CLI prints both, the progress protocol sends them as an `error` event
(built by `error_event`, the only place that makes one), and the Slicer module shows
them in a dialog, so no user ever sees a bare exit code.
"""

INTERNAL_FIX = ("This is a bug: report it with the log, which holds the traceback (on the command line, "
                "run again with --debug to see it).")


class SegmentationError(Exception):
    """Base class: `cause` says what went wrong, `fix` what the user can do about it."""

    kind = "error"

    def __init__(self, cause, fix=""):
        super().__init__(cause)
        self.cause = cause
        self.fix = fix

    def __str__(self):
        return f"{self.cause}\n  Fix: {self.fix}" if self.fix else self.cause

    def to_dict(self):
        return {"kind": self.kind, "type": type(self).__name__, "cause": self.cause, "fix": self.fix}


class InputImageError(SegmentationError):
    """The input image cannot be segmented as it is (2D/4D, NaN, empty, bad geometry...)."""

    kind = "input"


class UnknownTaskError(SegmentationError):
    kind = "task"


class WeightsMissingError(SegmentationError):
    """Weights for a model are not installed and may not be downloaded now."""

    kind = "weights"


class WeightsDownloadError(SegmentationError):
    """A download failed: offline, firewall, HTTP error, timeout, corrupt archive."""

    kind = "download"


class InvalidWeightsError(SegmentationError):
    """A weights folder or zip is not a usable nnU-Net model."""

    kind = "weights"


class WeightsFolderError(SegmentationError):
    """The weights folder cannot be created or written (permissions, read-only disk, a file in the way, disk full)."""

    kind = "weights"


class LicenseError(SegmentationError):
    kind = "license"


class OutOfMemoryError(SegmentationError):
    kind = "memory"


class DeviceError(SegmentationError):
    kind = "device"


class Cancelled(SegmentationError):
    """Raised when the user cancels; nothing is written."""

    kind = "cancelled"

    def __init__(self, cause="Cancelled by the user.", fix=""):
        super().__init__(cause, fix)


class SceneImportError(SegmentationError):
    """A result cannot be imported into the Slicer scene (bad labelmap, unreadable file)."""

    kind = "import"


class OutputPathError(SegmentationError):
    """An output that cannot or must not be written: it would replace the input or a file the
    run did not create, its folder is not writable, the disk is full..."""

    kind = "output"


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived (system/signals.py): the run stops as on Ctrl+C (SIGINT),
    temporary and partial files are removed, and the process exits with 128 + the signal number."""

    def __init__(self, signum, name):
        super().__init__(name)
        self.signum = signum
        self.name = name


def error_event(error=None, **fields):
    """The progress protocol's `error` event: {"event": "error", "kind", "type", "cause", "fix"}.

    `error` is a SegmentationError (its kind, cause and fix), a KeyboardInterrupt (kind
    "cancelled"), any other exception (kind "internal": a bug, named), a dict of those
    fields, or None; `fields` add to or override them (e.g. details, a better cause).
    """
    if isinstance(error, SegmentationError):
        data = error.to_dict()
    elif isinstance(error, Terminated):
        data = {"kind": "cancelled", "type": "Terminated", "signal": error.name,
                "cause": f"Stopped by {error.name}; partial and temporary files were removed.",
                "fix": ""}
    elif isinstance(error, KeyboardInterrupt):
        data = {"kind": "cancelled", "type": "KeyboardInterrupt",
                "cause": "Interrupted; partial and temporary files were removed.", "fix": ""}
    elif isinstance(error, BaseException):
        data = {"kind": "internal", "type": type(error).__name__, "cause": f"Internal error: {error}",
                "fix": INTERNAL_FIX}
    else:
        data = {"kind": "error", "type": "Error", "cause": "", "fix": "", **(error or {})}
    return {"event": "error", **data, **fields}
