"""Run engine commands in the background and follow them without blocking.

Two ways to run the engine (`python -m SegmentationLogic ...` in Slicer's Python):
- `ProcessRun`: one process per command (`segment`, `download-weights`, `liver-vessels`,
  pip ...). Cancel kills its whole process tree at once.
- `WorkerEngine`: a persistent `worker` process that keeps models loaded between runs,
  so a second segmentation skips interpreter start-up, imports and model loading.
  Cancel asks the worker to stop (it stays alive with its models); if it does not stop
  within `cancel_grace` seconds its whole process tree is killed and the next run
  starts a new one.

Both give a `Run`: `poll()` returns the new events and never blocks (call it from a
QTimer in the GUI); `wait()` loops over it for scripts. A run ends as "succeeded"
(`result`), "failed" (`error`: kind, cause, fix - from the engine's error event, or
from `diagnosis.diagnose()` when the engine crashed) or "cancelled".
"""
import itertools
import os
import shutil
import sys
import time
from pathlib import Path

from .diagnosis import diagnose, refine
from .process import BackgroundProcess

# After the result event a process gets this long to exit before it is killed: nnU-Net
# worker pools are known to hang at exit (the incumbent extension kills on "Saved in").
EXIT_GRACE_SECONDS = 15.0
CANCELLED = {"event": "error", "kind": "cancelled", "type": "Cancelled", "cause": "Cancelled by the user.", "fix": ""}


def engine_package_root():
    """Folder that holds the `SegmentationLogic` package (put on the engine's PYTHONPATH)."""
    import SegmentationLogic

    return Path(SegmentationLogic.__file__).resolve().parent.parent


def python_executable():
    """Slicer's Python launcher inside the Slicer application, this interpreter elsewhere."""
    try:
        import slicer
    except ImportError:
        slicer = None
    if slicer is not None and getattr(slicer, "app", None) is not None:
        exe = shutil.which("PythonSlicer")
        if not exe:
            candidate = Path(sys.executable).with_name("PythonSlicer" + (".exe" if os.name == "nt" else ""))
            exe = str(candidate) if candidate.exists() else None
        if exe:
            return exe
    return sys.executable


def engine_environment(tmpdir=None, extra=None):
    """Environment for an engine process: our package importable, UTF-8 output, temp files in `tmpdir`."""
    env = dict(os.environ)
    root = str(engine_package_root())
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"  # a non-English Windows locale must not break decoding
    if tmpdir:
        for name in ("TMPDIR", "TEMP", "TMP"):
            env[name] = str(tmpdir)
    if extra:
        env.update({k: str(v) for k, v in extra.items() if v is not None})
    return env


def engine_command(*args, python=None):
    return [python or python_executable(), "-m", "SegmentationLogic", *[str(a) for a in args]]


class Run:
    """One engine request in flight."""

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
        self._cancel_requested = False

    @property
    def done(self):
        return self.outcome is not None

    @property
    def seconds(self):
        return (self.finished_at or time.monotonic()) - self.started

    def _track(self, event):
        if event.get("event") == "progress":
            self.stage = event.get("stage", self.stage)
            self.fraction = event.get("fraction")
            self.overall = event.get("overall", self.overall)
            self.message = event.get("message", "")

    def _finish(self, outcome, result=None, error=None):
        if self.outcome is None:
            self.outcome, self.result, self.error = outcome, result, error
            self.finished_at = time.monotonic()

    def poll(self):
        raise NotImplementedError

    def cancel(self):
        raise NotImplementedError

    def wait(self, timeout=None, on_event=None, interval=0.05):
        """Block until done (scripts, tests, the console); the GUI polls instead."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            for event in self.poll():
                if on_event:
                    on_event(event)
            if self.done:
                return self
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                for event in self.poll():
                    if on_event:
                        on_event(event)
                raise TimeoutError(f"{self.description or 'Engine run'} took longer than {timeout} s and was cancelled.")
            time.sleep(interval)


class ProcessRun(Run):
    """A one-shot engine (or any JSON-lines) process."""

    def __init__(self, argv, env=None, cwd=None, description="", diagnoser=None):
        super().__init__(description or " ".join(str(a) for a in argv[2:4]))
        self.process = BackgroundProcess(argv, env=env, cwd=cwd).start()
        self._result_at = None
        self._diagnose = diagnoser or (lambda rc, process: diagnose(rc, process.stderr_tail()))

    def poll(self):
        if self.done:
            return []
        events = self.process.events()
        for event in events:
            self._track(event)
            if event.get("event") == "result" and self.result is None:
                self.result, self._result_at = event, time.monotonic()
            elif event.get("event") == "error" and self.error is None:
                self.error = event
        if self.process.finished:
            self._settle()
        elif self._result_at and time.monotonic() - self._result_at > EXIT_GRACE_SECONDS:
            self.process.kill_tree()  # finished its work but hangs at exit
            self._settle()
        return events

    def _settle(self):
        for event in self.process.events():
            self._track(event)
            if event.get("event") == "result" and self.result is None:
                self.result = event
            elif event.get("event") == "error" and self.error is None:
                self.error = event
        if self.result is not None and self.error is None:
            self._finish("succeeded", result=self.result)
        elif self.error is not None:
            self._finish("cancelled" if self.error.get("kind") == "cancelled" else "failed",
                         error=refine(self.error, self.process.stderr_tail()))
        elif self.process.returncode == 0:
            self._finish("succeeded", result={"event": "result"})
        else:
            self._finish("failed", error=self._diagnose(self.process.returncode, self.process))

    def cancel(self):
        if self.done:
            return
        self.process.kill_tree()
        self.process.events()  # drop what it said before it died
        self._finish("cancelled", error=dict(CANCELLED))


class SequenceRun(Run):
    """Processes run one after another (pip passes); stops at the first failure or on cancel."""

    def __init__(self, commands, env=None, cwd=None, description="", stage="install", diagnoser=None):
        super().__init__(description)
        self.commands, self.env, self.cwd, self.stage_name = list(commands), env, cwd, stage
        self.diagnoser = diagnoser
        self.step = -1
        self.current = None
        self._next()

    def _next(self):
        self.step += 1
        if self.step >= len(self.commands):
            self._finish("succeeded", result={"event": "result", "steps": len(self.commands)})
            return None
        argv = self.commands[self.step]
        self.current = ProcessRun(argv, env=self.env, cwd=self.cwd, diagnoser=self.diagnoser)
        event = {"event": "progress", "stage": self.stage_name, "fraction": self.step / len(self.commands),
                 "overall": self.step / len(self.commands), "message": " ".join(str(a) for a in argv[1:6]) + " ..."}
        self._track(event)
        return event

    def poll(self):
        if self.done:
            return []
        events = self.current.poll()
        if self.current.done:
            if self.current.outcome != "succeeded":
                self._finish(self.current.outcome, error=self.current.error)
            else:
                started = self._next()
                if started:
                    events.append(started)
        return events

    def cancel(self):
        if not self.done:
            self.current.cancel()
            self._finish("cancelled", error=dict(CANCELLED))


class WorkerRun(Run):
    def __init__(self, engine, request_id, description=""):
        super().__init__(description)
        self.engine = engine
        self.request_id = request_id
        self._pending = []
        self._cancel_deadline = None

    def _deliver(self, event):
        self._pending.append(event)
        self._track(event)
        kind = event.get("event")
        if kind == "result":
            self._finish("succeeded", result=event)
        elif kind == "error":
            self._finish("cancelled" if event.get("kind") == "cancelled" else "failed",
                         error=refine(event, self.engine.process.stderr_tail() if self.engine.process else []))

    def poll(self):
        if not self.done:
            self.engine.pump()
            if not self.done and self._cancel_deadline and time.monotonic() > self._cancel_deadline:
                self.engine.kill()  # did not stop in time: lose the loaded models, not the user's time
                self._finish("cancelled", error=dict(CANCELLED))
        events, self._pending = self._pending, []
        return events

    def cancel(self):
        if self.done or self._cancel_deadline:
            return
        if self.engine.send({"command": "cancel", "id": self.request_id}):
            self._cancel_deadline = time.monotonic() + self.engine.cancel_grace
        else:
            self.engine.kill()
            self._finish("cancelled", error=dict(CANCELLED))


class WorkerEngine:
    """A persistent `python -m SegmentationLogic worker` process, started on first use.

    Requests queue in the worker and run one at a time; each gets its own Run, and
    events are routed to it by request id.
    """

    def __init__(self, python=None, env=None, cancel_grace=3.0):
        self.python = python
        self.env_extra = env
        self.cancel_grace = cancel_grace
        self.process = None
        self.ready = False
        self.runs_served = 0
        self._ids = itertools.count(1)
        self._runs = {}  # request id -> WorkerRun not yet done
        self._tmpdir = None

    @property
    def alive(self):
        return self.process is not None and self.process.running

    @property
    def busy(self):
        return bool(self._runs)

    def start(self):
        if not self.alive:
            import tempfile

            self._fail_all("The segmentation engine stopped; run again.")
            self._cleanup_tmpdir()
            self._tmpdir = tempfile.mkdtemp(prefix="TotalSegmentator-worker-")
            self.process = BackgroundProcess(engine_command("worker", python=self.python),
                                             env=engine_environment(self._tmpdir, self.env_extra),
                                             keep_stdin=True).start()
            self.ready = False
            self.runs_served = 0
        return self

    def send(self, obj):
        return self.process is not None and self.process.send(obj)

    def submit(self, command, description="", **fields):
        """Queue a request (`segment` with argv=[...], tmpdir=...; `devices`; `ping`) and return its Run."""
        self.start()
        run = WorkerRun(self, str(next(self._ids)), description or command)
        self._runs[run.request_id] = run
        if not self.send({"id": run.request_id, "command": command, **fields}):
            self.pump()
        return run

    def pump(self):
        """Move the worker's output to the runs it belongs to; notice a dead worker."""
        if self.process is None:
            return
        for event in self.process.events():
            kind = event.get("event")
            if kind == "ready":
                self.ready = True
                continue
            request_id = event.get("id")
            if request_id is None:  # a library's output line: belongs to whatever is running
                targets = list(self._runs.values())[:1]
            else:
                targets = [self._runs[request_id]] if request_id in self._runs else []
            for run in targets:
                run._deliver(event)
                if run.done:
                    self._runs.pop(run.request_id, None)
                    self.runs_served += 1
        if self._runs and self.process.finished:
            error = diagnose(self.process.returncode, self.process.stderr_tail())
            for run in list(self._runs.values()):
                if run._cancel_deadline:
                    run._finish("cancelled", error=dict(CANCELLED))
                else:
                    run._finish("failed", error=error)
            self._runs.clear()

    def _fail_all(self, cause):
        for run in list(self._runs.values()):
            run._finish("failed", error={"event": "error", "kind": "crash", "type": "EngineStopped", "cause": cause,
                                         "fix": ""})
        self._runs.clear()

    def kill(self):
        """Kill the worker's whole process tree; runs still in flight end as cancelled."""
        if self.process is not None:
            self.process.kill_tree()
            self.process = None
        for run in list(self._runs.values()):
            run._finish("cancelled", error=dict(CANCELLED))
        self._runs.clear()
        self.ready = False
        self._cleanup_tmpdir()

    def shutdown(self, timeout=5.0):
        """Ask the worker to exit (models are freed); kill it if it does not."""
        if self.process is None:
            return
        if self.process.running:
            self.process.send({"command": "shutdown"})
            self.process.close_stdin()
            deadline = time.monotonic() + timeout
            while self.process.running and time.monotonic() < deadline:
                time.sleep(0.02)
        self.kill()

    def _cleanup_tmpdir(self):
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __del__(self):
        try:
            self.kill()
        except Exception:
            pass
