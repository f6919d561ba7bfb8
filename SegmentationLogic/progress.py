"""Progress reporting shared by the engine, the CLI, the background worker and the GUI.

The engine calls `progress(stage, fraction, message)` on a `Progress` object. Fractions
are per stage (0..1); a `Progress` maps them onto an overall fraction using stage
weights, so a GUI can show one monotone bar with the current stage name.

On the wire (CLI `--progress json`, the Slicer worker) every event is one JSON object
per line on stdout: {"event": "progress", "stage": ..., "fraction": ..., "overall": ...,
"message": ...}. Other events: "log", "result", "error". Anything else a library prints
goes to stderr so the stream stays parseable.
"""
import json
import sys
import threading
import time

from .errors import Cancelled

# Rough share of wall time per stage for one segmentation run (used only for the
# overall bar; stages that do not occur are skipped and the rest rescaled).
DEFAULT_STAGE_WEIGHTS = {
    "install": 0.05,
    "download": 0.15,
    "load": 0.05,
    "crop": 0.10,
    "preprocess": 0.05,
    "predict": 0.50,
    "postprocess": 0.05,
    "save": 0.05,
}


class CancelToken:
    """Thread-safe flag the caller sets; the engine checks it between steps."""

    def __init__(self):
        self._event = threading.Event()

    def cancel(self):
        self._event.set()

    @property
    def cancelled(self):
        return self._event.is_set()

    def check(self):
        if self._event.is_set():
            raise Cancelled()


class Progress:
    """Collects progress events and forwards them to a callback.

    `callback(event_dict)` receives every event. `cancel` is an optional CancelToken
    checked on each progress call, so long loops stop at the next report.
    """

    def __init__(self, callback=None, cancel=None, stages=None):
        self.callback = callback
        self.cancel = cancel
        weights = dict(DEFAULT_STAGE_WEIGHTS)
        if stages is not None:
            weights = {s: weights.get(s, 0.1) for s in stages}
        total = sum(weights.values()) or 1.0
        self._weights = {k: v / total for k, v in weights.items()}
        self._order = list(self._weights)
        self._overall = 0.0

    def _stage_start(self, stage):
        if stage not in self._weights:
            return self._overall
        idx = self._order.index(stage)
        return sum(self._weights[s] for s in self._order[:idx])

    def __call__(self, stage, fraction=None, message="", **extra):
        """Report progress; `extra` adds stage-specific fields (e.g. bytes, speed of a download)."""
        if self.cancel is not None:
            self.cancel.check()
        event = {"event": "progress", "stage": stage, "message": message, "time": round(time.time(), 3), **extra}
        if fraction is not None:
            fraction = min(max(float(fraction), 0.0), 1.0)
            event["fraction"] = round(fraction, 4)
            overall = self._stage_start(stage) + self._weights.get(stage, 0.0) * fraction
            self._overall = max(self._overall, min(overall, 1.0))  # never goes backwards
        event["overall"] = round(self._overall, 4)
        self.emit(event)

    def log(self, message, level="info"):
        self.emit({"event": "log", "level": level, "message": message})

    def emit(self, event):
        if self.callback is not None:
            self.callback(event)


class Reporter:
    """Maps a sub-task's 0..1 progress onto [lo, hi] of one stage of a Progress; checks cancel.

    Long jobs made of parts (a download: transfer, unpack, verify; an install: copy, verify)
    hand each part `report.sub(lo, hi)`, so the stage's bar moves once from 0 to 1."""

    def __init__(self, progress, stage, lo=0.0, hi=1.0):
        self.progress, self.stage, self.lo, self.hi = progress, stage, lo, hi

    def sub(self, lo, hi):
        span = self.hi - self.lo
        return Reporter(self.progress, self.stage, self.lo + span * lo, self.lo + span * hi)

    def __call__(self, fraction, message="", **extra):
        if self.progress is not None:
            self.progress(self.stage, self.lo + (self.hi - self.lo) * min(max(fraction, 0.0), 1.0), message, **extra)

    def check(self):
        cancel = getattr(self.progress, "cancel", None)
        if cancel is not None:
            cancel.check()

    @property
    def cancelled(self):
        cancel = getattr(self.progress, "cancel", None)
        return cancel is not None and cancel.cancelled

    def log(self, message, level="info"):
        if hasattr(self.progress, "log"):
            self.progress.log(message, level)


def as_progress(progress=None, cancel=None):
    """A Progress from what a caller gave: a Progress (given `cancel` if it has none), a
    callable receiving event dicts, or None."""
    if isinstance(progress, Progress):
        if cancel is not None and progress.cancel is None:
            progress.cancel = cancel
        return progress
    if cancel is not None and not hasattr(cancel, "check"):
        raise TypeError("cancel must be a CancelToken")
    return Progress(progress, cancel)


def json_lines_writer(stream=None):
    """Callback that writes each event as one JSON line (flushed) to `stream` (stdout)."""
    lock = threading.Lock()

    def write(event):
        out = stream or sys.stdout
        with lock:
            out.write(json.dumps(event, default=str) + "\n")
            out.flush()

    return write


def text_writer(stream=None):
    """Callback for humans: one short line per stage change or 10% step."""
    state = {"stage": None, "decile": -1}

    def write(event):
        out = stream or sys.stderr
        if event["event"] == "log":
            out.write(event["message"] + "\n")
        elif event["event"] == "progress":
            decile = int(event.get("fraction", 0) * 10)
            if event["stage"] != state["stage"] or decile > state["decile"] or event.get("message"):
                pct = f"{event.get('fraction', 0) * 100:5.1f}%" if "fraction" in event else "      "
                out.write(f"[{event['stage']:<11}] {pct} {event.get('message', '')}\n".rstrip() + "\n")
                state["stage"], state["decile"] = event["stage"], decile
        out.flush()

    return write
