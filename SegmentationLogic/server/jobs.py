"""The server's job queue: one warm engine, one job at a time, first in first out.

Each job lives in its own private folder (job-<random>) under the server's jobs folder:
the upload under a server-chosen name, the engine's temporary files, its outputs. The
upload is deleted as soon as the run ends; the outputs, packed in one zip, when the
client has fetched them. Everything of a job is deleted on cancel, when its client goes
away, when nobody comes back for it within the time-out, and when the server stops. A
job whose folder survives a crash (SIGKILL, power loss) is deleted at the next start.

Nothing about a patient goes to the log: jobs are named by their random id, and the log
says what happened (queued, started, finished, the error's kind) and how long it took,
never a file name, a path or an error message (those go to the job's client only).
"""
import collections
import logging
import os
import re
import secrets
import shutil
import threading
import time
import traceback
import zipfile
from pathlib import Path

from ..errors import Cancelled, SegmentationError
from ..progress import CancelToken, Progress
from ..system import files
from .protocol import TERMINAL_EVENTS

log = logging.getLogger("SegmentationLogic.server")

JOB_PREFIX = "job-"
_JOB_NAME = re.compile(r"^job-[A-Za-z0-9_-]{16,64}$")
RESULT_ZIP = "result.zip"

# job states
UPLOADING, QUEUED, RUNNING, DONE, FAILED, CANCELLED = "uploading", "queued", "running", "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)


class QueueFullError(SegmentationError):
    kind = "busy"


class Job:
    def __init__(self, job_id, folder):
        self.id = job_id
        self.folder = folder
        self.state = UPLOADING
        self.request = None
        self.input = None  # the upload, under a server-chosen name
        self.events = []
        self.token = CancelToken()
        self.created = self.touched = time.monotonic()
        self.queued_at = self.started_at = None
        self.listeners = 0
        self.wakeups = set()  # callables the queue calls after each new event (the app's streams)
        self.busy = False  # the worker thread has it: only the worker may delete its folder now
        self.discard = False  # delete everything as soon as the worker lets go of it
        self.result_path = None

    @property
    def terminal(self):
        return bool(self.events) and self.events[-1]["event"] in TERMINAL_EVENTS

    @property
    def output_dir(self):
        return self.folder / "out"


class JobQueue:
    """Jobs by id, the FIFO of queued ones and the one worker thread that runs them."""

    def __init__(self, root, segmenter_factory, timeout=60.0, max_jobs=16):
        self.root = Path(root)
        self.segmenter_factory = segmenter_factory  # called once, in the worker thread: the one warm engine
        self.timeout = float(timeout)
        self.max_jobs = int(max_jobs)
        self._jobs = {}
        self._fifo = collections.deque()
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._current = None
        self._stopping = None  # the reason, once the server shuts down
        self._segmenter = None
        self._thread = threading.Thread(target=self._work, name="segmentation-worker", daemon=True)

    # -- set-up ------------------------------------------------------------------------------
    def start(self):
        prepare_root(self.root)
        self._thread.start()
        return self

    def segmenter(self):
        if self._segmenter is None:
            self._segmenter = self.segmenter_factory()
        return self._segmenter

    # -- jobs ----------------------------------------------------------------------------------
    def new_job(self):
        with self._lock:
            if self._stopping:
                raise QueueFullError("The server is shutting down.", "Try again in a minute.")
            if len(self._jobs) >= self.max_jobs:
                raise QueueFullError(f"The server's queue is full ({self.max_jobs} jobs).",
                                     "Try again in a few minutes, or ask the admin to raise --max_jobs.")
            job_id = secrets.token_urlsafe(18)
            folder = self.root / f"{JOB_PREFIX}{job_id}"
            folder.mkdir(mode=0o700)
            job = Job(job_id, folder)
            self._jobs[job_id] = job
        return job

    def get(self, job_id):
        with self._lock:
            return self._jobs.get(job_id)

    def __len__(self):
        with self._lock:
            return len(self._jobs)

    def waiting(self):
        with self._lock:
            return len(self._fifo) + (1 if self._current else 0)

    def submit(self, job, request):
        """Queue an uploaded job; tells its client how many jobs are ahead."""
        with self._lock:
            job.request = request
            job.state = QUEUED
            job.queued_at = job.touched = time.monotonic()
            self._fifo.append(job)
            position = len(self._fifo) - 1 + (1 if self._current else 0)
            self._queued_event(job, position)
            self._wake.notify_all()
        log.info("job %s queued (%d ahead)", job.id, position)
        return position

    def _queued_event(self, job, position):
        message = f"waiting for {position} job(s) ahead on the server" if position else "starting on the server"
        self._event(job, {"event": "progress", "stage": "queued", "message": message, "time": round(time.time(), 3),
                          "overall": 0.0, "position": position})

    def attach(self, job, wakeup):
        with self._lock:
            job.listeners += 1
            job.wakeups.add(wakeup)
            job.touched = time.monotonic()

    def detach(self, job, wakeup, saw_end):
        """A client stopped listening: before the end of the run that means it is gone, so the job goes too."""
        with self._lock:
            job.listeners -= 1
            job.wakeups.discard(wakeup)
            job.touched = time.monotonic()
            if job.listeners:
                return
            if not saw_end:
                self.discard(job, "client disconnected")
            elif job.state in (FAILED, CANCELLED):
                self.discard(job, None)

    def discard(self, job, reason):
        """Cancel a job and delete everything of it (at once, or when the worker lets go of it)."""
        with self._lock:
            if self._jobs.get(job.id) is not job:
                return
            if reason and job.state in (UPLOADING, QUEUED, RUNNING):
                log.info("job %s %s", job.id, reason)
            job.token.cancel()
            if job.state == QUEUED:
                self._fifo.remove(job)
                job.state = CANCELLED
                self._error(job, Cancelled().to_dict())
                self._positions_changed()
            if job.busy:
                job.discard = True  # the worker deletes it when the engine has stopped
                return
            del self._jobs[job.id]
        _remove(job.folder)

    def finished_result(self, job):
        """The result zip of a finished job, or None; the caller discards the job once it is sent."""
        with self._lock:
            return job.result_path if job.state == DONE else None

    def reap(self, now=None):
        """Delete what nobody came back for: jobs without a listener, results not fetched."""
        now = time.monotonic() if now is None else now
        with self._lock:
            stale = [j for j in self._jobs.values()
                     if j.state != UPLOADING and j.listeners == 0 and now - j.touched > self.timeout]
        for job in stale:
            self.discard(job, "abandoned (time-out)")
        return len(stale)

    def shut_down(self, reason):
        """Stop every job (their clients are told `reason`); the worker thread ends."""
        with self._lock:
            self._stopping = reason
            jobs = list(self._jobs.values())
            self._wake.notify_all()
        for job in jobs:
            if job.state in (QUEUED, RUNNING) and not job.terminal:
                with self._lock:
                    if job.state == QUEUED:
                        self._fifo.remove(job)
                        job.state = CANCELLED
                        self._error(job, self._shutdown_error())
                    else:  # its client hears it now, not when the engine reaches its next progress report
                        job.token.cancel()
                        self._error(job, self._shutdown_error())
        return jobs

    def _shutdown_error(self):
        return {"kind": "server", "type": "ServerShutdown", "cause": self._stopping,
                "fix": "Run again when the server is back."}

    def close(self, wait=30.0):
        """After shut_down: wait for the engine to stop, then delete every job's folder."""
        if self._thread.is_alive():
            self._thread.join(wait)
        with self._lock:
            jobs = list(self._jobs.values())
            self._jobs.clear()
        for job in jobs:
            _remove(job.folder)

    # -- events ----------------------------------------------------------------------------------
    def _event(self, job, event):
        event = _scrub(event, str(job.folder))
        with self._lock:
            job.events.append(event)
            wakeups = list(job.wakeups)
        for wakeup in wakeups:
            wakeup()

    def _error(self, job, error):
        self._event(job, {"event": "error", **error})

    def _positions_changed(self):
        for position, job in enumerate(self._fifo, start=1 if self._current else 0):
            self._queued_event(job, position)

    # -- the worker thread ---------------------------------------------------------------------------
    def _next(self):
        with self._lock:
            while not self._fifo and not self._stopping:
                self._wake.wait()
            if self._stopping:
                return None
            job = self._fifo.popleft()
            job.state = RUNNING
            job.busy = True
            job.started_at = time.monotonic()
            self._current = job
            return job

    def _work(self):
        while True:
            job = self._next()
            if job is None:
                return
            try:
                self._run(job)
            finally:
                with self._lock:
                    self._current = None
                    job.busy = False
                    job.touched = time.monotonic()
                    gone = job.discard
                    if gone:
                        self._jobs.pop(job.id, None)
                    self._positions_changed()
                if gone:
                    _remove(job.folder)

    def _run(self, job):

        started = time.monotonic()
        waited = started - job.queued_at
        log.info("job %s started", job.id)
        tmp = job.folder / "tmp"
        tmp.mkdir(exist_ok=True)
        try:
            with files.temporary_dir(tmp):  # the engine's temporary files go into the job's folder
                result = self.segmenter().run(job.request, progress=Progress(lambda e: self._event(job, e),
                                                                             cancel=job.token))
            job.token.check()
            names = _pack(job.output_dir, result.files, job.folder / RESULT_ZIP)
        except Cancelled as e:
            self._finish(job, CANCELLED, e.to_dict() if not self._stopping else self._shutdown_error(), started)
            return
        except SegmentationError as e:
            self._finish(job, FAILED, e.to_dict(), started)
            return
        except Exception as e:  # noqa: BLE001 - one bad job must not stop the server
            # the traceback's places, not its message: a message may quote what was in the image
            log.error("job %s: internal error %s\n%s", job.id, type(e).__name__, "".join(traceback.format_tb(e.__traceback__)))
            self._finish(job, FAILED, {"kind": "internal", "type": type(e).__name__,
                                       "cause": f"Internal error in the segmentation engine on the server: {e}",
                                       "fix": "Ask the server's admin to look at its log."}, started)
            return
        finally:
            _remove(tmp)
            _remove(job.input)
        payload = result.to_json()
        payload["files"] = names
        payload["timings"] = {**payload.get("timings", {}), "queued": round(waited, 3)}
        with self._lock:
            stopped = job.terminal  # the server began to shut down as the run ended: its client was told
            job.state = CANCELLED if stopped else DONE
            job.result_path = None if stopped else job.folder / RESULT_ZIP
        if stopped:
            _remove(job.folder / RESULT_ZIP)
            return
        self._event(job, {"event": "result", **payload})
        log.info("job %s done in %.1f s (waited %.1f s)", job.id, time.monotonic() - started, waited)

    def _finish(self, job, state, error, started):
        with self._lock:
            job.state = state
        _remove(job.output_dir)
        _remove(job.folder / RESULT_ZIP)
        if not job.terminal:  # a shutdown told the client already
            self._error(job, error)
        log.info("job %s %s after %.1f s (%s)", job.id, state, time.monotonic() - started, error.get("kind"))


def _pack(out_dir, files, zip_path):
    """The run's output files (in the engine's order) in one zip, stored (NIfTI is compressed already);
    the loose files go."""
    names = []
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as zf:
        for path in map(Path, files):
            name = path.relative_to(out_dir).as_posix()
            zf.write(path, name)
            names.append(name)
    _remove(out_dir)
    return names


def _scrub(event, folder):
    """Server paths out of what the client sees ('writing /srv/jobs/job-x/out/seg.nii.gz' -> 'writing seg.nii.gz')."""
    def clean(value):
        if isinstance(value, str):
            return value.replace(folder + os.sep + "out" + os.sep, "").replace(folder + os.sep, "").replace(folder, "")
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return {k: clean(v) for k, v in event.items()}


def _remove(path):
    if path is None:
        return
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        for _ in range(3):  # a second pass for files the engine was still writing
            shutil.rmtree(path, ignore_errors=True)
            if not path.exists():
                return
            time.sleep(0.1)
        log.error("could not delete a job folder %s", path.name)
        return
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as e:
        log.error("could not delete a job file (%s)", type(e).__name__)


def prepare_root(root):
    """Create the jobs folder (private) and delete what a crashed server left in it (our job-* folders only)."""
    root = Path(root)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    if os.name != "nt":
        st = root.stat()
        if st.st_uid != os.getuid():
            raise SegmentationError(f"The jobs folder {root} belongs to another user.",
                                    "Give a folder of your own with --jobs_dir.")
        os.chmod(root, 0o700)
    left = [p for p in root.iterdir() if _JOB_NAME.match(p.name)]
    for p in left:
        _remove(p)
    if left:
        log.warning("deleted %d job folder(s) left by a server that did not stop cleanly", len(left))
    return root
