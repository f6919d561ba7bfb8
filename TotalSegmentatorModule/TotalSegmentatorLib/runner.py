"""The engine in background processes, followed through the one Operation interface.

- `WorkerEngine`: the engine worker (`python -m SegmentationLogic worker` with the vessel-review
  commands as a plugin) answering JSON requests: every
  segmentation, the vessel-review edits and device detection go through it, so there is
  one path. With keep_alive it stays between requests and keeps the models loaded (a
  second Apply skips start-up, imports and model loading); Cancel asks it to stop (at the
  engine's next progress report: one tile on a CPU can take seconds) and kills it only if
  it does not within `cancel_grace` seconds. Without keep_alive it
  serves its requests and exits, and Cancel kills it at once (a run relayed to a
  segmentation server is asked to stop first, so the job on the server is cancelled too).
- `ProcessRun`: one engine CLI command (download or import weights, liver vessels) or
  pip; Cancel kills its whole process tree.

A run ends as "succeeded" (`result`), "failed" (`error`: kind, cause, fix - from the
engine's error event, or from `diagnosis.diagnose()` when the process died) or
"cancelled".
"""
import itertools
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from SegmentationLogic.errors import error_event

from .diagnosis import diagnose, refine
from .operation import Operation, Steps, cancelled
from .process import BackgroundProcess

# After the result event a process gets this long to exit before it is killed: nnU-Net
# worker pools are known to hang at exit (the incumbent extension kills on "Saved in").
EXIT_GRACE_SECONDS = 15.0
WORKER_PLUGINS = ("SegmentationLogic.vessels.worker_commands",)  # the vessel-review edits


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
    """Environment for an engine process: our packages importable, UTF-8 output, temp files in `tmpdir`."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(engine_package_root())]
                                        + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
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


class ProcessRun(Operation):
    """One engine CLI command (or any JSON-lines process, e.g. pip)."""

    def __init__(self, argv, env=None, cwd=None, description="", diagnoser=None):
        super().__init__(description or " ".join(str(a) for a in argv[1:6]))
        self.process = BackgroundProcess(argv, env=env, cwd=cwd).start()
        self._result_at = None
        self._diagnose = diagnoser or (lambda rc, process: diagnose(rc, process.stderr_tail()))

    def _take(self, events):
        for event in events:
            kind = event.get("event")
            if kind == "result" and self.result is None:
                self.result, self._result_at = event, time.monotonic()
            elif kind == "error" and self.error is None:
                self.error = event
            else:
                self._emit(event)

    def _step(self):
        self._take(self.process.events())
        if self.process.finished:
            self._settle()
        elif self._result_at and time.monotonic() - self._result_at > EXIT_GRACE_SECONDS:
            self.process.kill_tree()  # finished its work but hangs at exit
            self._settle()

    def _settle(self):
        result, error, self.result, self.error = self.result, self.error, None, None
        if result is not None and error is None:
            self._finish("succeeded", result=result)
        elif error is not None:
            self._finish("cancelled" if error.get("kind") == "cancelled" else "failed",
                         error=refine(error, self.process.stderr_tail()))
        elif self.process.returncode == 0:
            self._finish("succeeded", result={"event": "result"})
        else:
            self._finish("failed", error=self._diagnose(self.process.returncode, self.process))

    def _stop(self, error):
        self.process.kill_tree()  # what it said before it died is dropped with it
        self._finish("cancelled", error=error)


class SequenceRun(Steps):
    """Processes run one after another (pip passes); stops at the first failure or on cancel."""

    def __init__(self, commands, env=None, cwd=None, description="", stage="install", diagnoser=None):
        steps = [lambda argv=argv: ProcessRun(argv, env=env, cwd=cwd, diagnoser=diagnoser) for argv in commands]
        super().__init__(steps, description, stage, result={"steps": len(steps)})


class WorkerRun(Operation):
    """One request to a WorkerEngine."""

    def __init__(self, engine, request_id, description="", cooperative=False):
        super().__init__(description)
        self.engine = engine
        self.request_id = request_id
        # also a one-shot worker is asked to stop first: a run relayed to a server then cancels the job there
        self.cooperative = cooperative
        self._cancel_deadline = None

    @property
    def process(self):
        return self.engine.process

    def _deliver(self, event):
        kind = event.get("event")
        if kind == "result":
            self._finish("succeeded", result=event)
        elif kind == "error":
            self._finish("cancelled" if event.get("kind") == "cancelled" else "failed",
                         error=refine(event, self.engine.process.stderr_tail() if self.engine.process else []))
        else:
            self._emit(event)

    def _step(self):
        self.engine.pump()
        if not self.done and self._cancel_deadline and time.monotonic() > self._cancel_deadline:
            self.engine.kill()  # did not stop in time: lose the loaded models, not the user's time

    def _stop(self, error):
        if self._cancel_deadline:
            return
        if (self.engine.keep_alive or self.cooperative) and self.engine.send({"command": "cancel",
                                                                               "id": self.request_id}):
            self._cancel_deadline = time.monotonic() + self.engine.cancel_grace  # it answers "cancelled"
        else:
            self.engine.kill()
            self._finish("cancelled", error=error)


class WorkerEngine:
    """The engine worker process, started on first use.

    Requests queue in the worker and run one at a time; each gets its own WorkerRun, and
    events are routed to it by request id. keep_alive=False: the worker ends once it has
    no request left (and Cancel kills it at once).
    """

    def __init__(self, python=None, env=None, cancel_grace=10.0, keep_alive=True):
        self.python = python
        self.env_extra = env
        self.cancel_grace = cancel_grace
        self.keep_alive = keep_alive
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
            self._end_runs("failed", error_event(kind="crash", type="EngineStopped",
                                                  cause="The segmentation engine stopped; run again."))
            self._cleanup_tmpdir()
            self._tmpdir = tempfile.mkdtemp(prefix="TotalSegmentator-worker-")
            argv = engine_command("worker", *[a for p in WORKER_PLUGINS for a in ("--plugin", p)],
                                  python=self.python)
            self.process = BackgroundProcess(argv, env=engine_environment(self._tmpdir, self.env_extra),
                                             keep_stdin=True, output_dir=self._tmpdir).start()
            self.ready = False
            self.runs_served = 0
        return self

    def send(self, obj):
        return self.process is not None and self.process.send(obj)

    def submit(self, command, description="", **fields):
        """Queue a request and return its run: `segment` (request=SegmentRequest.to_json(), tmpdir=...
        [, remote={"url", "token_file", "ca_cert"}]), `devices`, `ping`, `server.info` (remote=...),
        `vessels.reassign`, `vessels.resplit`."""
        self.start()
        run = WorkerRun(self, str(next(self._ids)), description or command, cooperative=bool(fields.get("remote")))
        self._runs[run.request_id] = run
        if not self.send({"id": run.request_id, "command": command, **fields}):
            self.pump()
        return run

    def pump(self):
        """Move the worker's output to the runs it belongs to; notice a dead worker."""
        if self.process is None:
            return
        for event in self.process.events():
            if event.get("event") == "ready":
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
                if run._cancel_deadline:  # it died while stopping: that is the cancel the user asked for
                    run._finish("cancelled", error=cancelled())
                else:
                    run._finish("failed", error=error)
            self._runs.clear()
        if not self.keep_alive and not self._runs:
            self.kill()  # its work is done (or it died): end it and remove its folder now

    def _end_runs(self, outcome, error):
        for run in list(self._runs.values()):
            run._finish(outcome, error=error)
        self._runs.clear()

    def kill(self):
        """Kill the worker's whole process tree; runs still in flight end as cancelled."""
        if self.process is not None:
            self.process.kill_tree()
            self.process = None
        self._end_runs("cancelled", cancelled())
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
            for _ in range(20):  # Windows keeps files of a just-killed process locked for a moment
                shutil.rmtree(self._tmpdir, ignore_errors=True)
                if not os.path.exists(self._tmpdir):
                    break
                time.sleep(0.1)
            self._tmpdir = None

    def __del__(self):
        try:
            self.kill()
        except Exception:
            pass
