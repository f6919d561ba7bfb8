"""The one interface of every background operation: segmentation, install, download,
weights import, device detection, a vessel-review edit.

    op = logic.processAsync(volume)          # or installDependenciesAsync(plan), ...
    while not op.done:                       # the GUI calls op.poll() from a QTimer instead
        for event in op.poll(): ...          # progress / log / result / error events, never blocks
    op.outcome                               # "succeeded" | "failed" | "cancelled"
    op.result or op.error                    # error: {"kind", "cause", "fix"[, "details"]}

Events are the engine's progress protocol (one dict per event: "event" is progress, log,
result or error). An operation advances only inside `poll()` (or `wait()`): no threads,
so it behaves the same under Slicer's PythonQt (whose main thread holds the GIL while
Qt waits) as in plain Python.
"""
import time

from SegmentationLogic.errors import Cancelled, error_event

CANCELLED = error_event(Cancelled())


def cancelled(cause=None):
    """The error of a cancelled operation (`cause`: why, when it was not the user)."""
    return {**CANCELLED, "cause": cause} if cause else dict(CANCELLED)


class Operation:
    def __init__(self, description=""):
        self.description = description
        self.outcome = None  # "succeeded" | "failed" | "cancelled"
        self.result = None
        self.error = None
        self.stage = None
        self.fraction = None
        self.overall = 0.0
        self.message = ""
        self.started = time.monotonic()
        self.finished_at = None
        self._pending = []

    @property
    def done(self):
        return self.outcome is not None

    @property
    def seconds(self):
        return (self.finished_at or time.monotonic()) - self.started

    # -- for subclasses ----------------------------------------------------------------
    def _emit(self, event):
        if event.get("event") == "progress":
            self.stage = event.get("stage", self.stage)
            self.fraction = event.get("fraction")
            self.overall = event.get("overall", self.overall)
            self.message = event.get("message", "")
        self._pending.append(event)

    def _finish(self, outcome, result=None, error=None):
        if self.outcome is None:
            self.outcome, self.result, self.error = outcome, result, error
            self.finished_at = time.monotonic()

    def _step(self):
        """Advance: read what arrived, start the next step. Never blocks."""

    def _stop(self, error):
        """Stop what runs now (kill or ask to stop); finish as cancelled unless it stops cooperatively."""
        self._finish("cancelled", error=error)

    # -- public ------------------------------------------------------------------------
    def poll(self):
        """The events since the last call (never blocks)."""
        if not self.done:
            self._step()
        events, self._pending = self._pending, []
        return events

    def cancel(self, cause=None):
        """Stop the operation; nothing it would have added is kept."""
        if not self.done:
            self._stop(cancelled(cause))

    def wait(self, timeout=None, on_event=None, interval=0.05):
        """Block until done (scripts, tests, the Python console); returns self."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            for event in self.poll():
                if on_event:
                    on_event(event)
            if self.done:
                return self
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                while not self.done:
                    self.poll()
                    time.sleep(interval)
                raise TimeoutError(f"{self.description or 'The operation'} took longer than {timeout} s and was "
                                   "cancelled.")
            time.sleep(interval)


class Steps(Operation):
    """Operations run one after another (the first-run install: PyTorch, then the engine's
    packages); stops at the first failure or on cancel. `steps` are callables that start
    the next operation (so each starts only when the previous one succeeded)."""

    def __init__(self, steps, description="", stage="install", result=None):
        super().__init__(description)
        self._steps, self._stage, self._result = list(steps), stage, result
        self._index = -1
        self.current = None
        self._next()

    def _next(self):
        self._index += 1
        if self._index >= len(self._steps):
            self._finish("succeeded", result={"event": "result", **(self._result or {})})
            return
        self.current = self._steps[self._index]()
        self._emit({"event": "progress", "stage": self._stage, "fraction": 0.0,
                    "overall": round(self._index / len(self._steps), 4), "message": self.current.description})

    def _step(self):
        for event in self.current.poll():
            if event.get("event") == "progress":  # each step's share of one bar
                inner = float(event.get("overall") or event.get("fraction") or 0.0)
                event = {**event, "overall": round((self._index + inner) / len(self._steps), 4)}
            if event.get("event") in ("progress", "log"):
                self._emit(event)
        if self.current.done:
            if self.current.outcome != "succeeded":
                self._finish(self.current.outcome, error=self.current.error)
            else:
                self._next()

    def _stop(self, error):
        self.current.cancel()
        self._finish("cancelled", error=error)
