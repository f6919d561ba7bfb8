"""The cohort driver: cases in, one warm engine per actor on Ray, a manifest line per case out.

Why Ray Core actors and not a Ray Data pipeline: a case is a path in and a few files out,
minutes of work each, so there is no tabular data to stream; what matters is per case.
With actors the driver keeps exactly one case in flight per actor (backpressure: memory
is bounded by the number of actors, whatever the cohort's size), records each case the
moment it ends (so an interrupted run loses nothing finished), retries exactly the case
whose worker died (Ray Data retries a whole block of rows), and can drain or cancel the
running cases on Ctrl+C. The CPU stages (read, resample, write) run in the actor's own
process next to the network, on the CPUs Ray reserved for it; with `--gpus_per_actor
0.5` two actors share a GPU, so one reads and writes while the other predicts.

Fault handling: actors are created with `max_restarts=-1` (Ray restarts a crashed actor
process, on the same or another node, and it loads its engine again) and
`max_task_retries=0` (Ray does not rerun a case by itself): the driver reruns the case
that was running, up to `retries` more times, then records it as failed with the cause.
A case that fails with an error (bad input, wrong modality, ...) is recorded at once and
never stops the others.

Stopping: the first SIGINT or SIGTERM stops starting cases and lets the running ones
finish and be recorded; a second one cancels them (nothing half-written) and they are
recorded as cancelled. A rerun continues where the manifest says.
"""
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..catalogue import load_catalogue
from ..errors import SegmentationError
from ..progress import Progress
from ..weights import ensure_models
from .actor import CaseRunner
from .cases import load_cases
from .errors import CohortError
from .manifest import Manifest, OutputLock, is_done, sweep_partials
from .versions import required_models

RAY_VERSION = "2.60.0"  # the version pinned in constraints.txt and tested
RAY_MISSING_FIX = ('Install the cohort extra: pip install "totalsegmentator-slicer[cohort]" (in a source checkout: '
                   f'pip install -c constraints.txt ray=={RAY_VERSION}). Slicer itself never needs Ray.')
DEFAULT_CPUS_PER_CPU_ACTOR = 4  # nnU-Net on the CPU gains little from more threads per case
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20  # only small records travel through it, never images
POLL_S = 0.5  # how often the driver looks at running cases
STATUS_RPCS_PER_S = 100  # progress questions to actors, at most (every 0.5 s with up to 50 actors)
ABORT_GRACE_S = 30.0  # after a second stop request: how long cancelled cases may take to stop
SLOW_START_S = 120.0  # warn when no actor has started by then (resources the cluster lacks)
RESULT_FIELDS = ("task", "quality", "roi_subset", "body_seg", "force_split", "remove_small_blobs", "robust_crop",
                 "check_modality", "statistics", "preview")  # request fields that shape a case's outputs


def import_ray():
    """Ray, with usage statistics off (clinical software never phones home)."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    try:
        import ray  # optional dependency (the cohort extra): only cohort runs need it
    except ImportError as e:
        raise CohortError("Ray is not installed; cohort runs need it.", RAY_MISSING_FIX) from e
    return ray


class StopRequest:
    """How far a run should stop: `stop()` lets the running cases finish and starts no
    more; `cancel()` also cancels the running cases. `request` is the signal handler:
    the first signal stops, a second one cancels."""

    def __init__(self):
        self.level = 0
        self._last = 0.0

    def stop(self):
        self.level = max(self.level, 1)

    def cancel(self):
        self.level = 2

    def request(self, *_):
        now = time.monotonic()
        # The same signal delivered twice at once (a wrapper such as `timeout` or srun
        # forwarding it to the process group as well) is one request, not two.
        if self.level == 0:
            self.stop()
        elif now - self._last > 1.0:
            self.cancel()
        self._last = now

    @property
    def stopping(self):
        return self.level >= 1

    @property
    def aborting(self):
        return self.level >= 2


@dataclass
class _Job:
    case: object  # cases.Case
    request: dict  # SegmentRequest JSON
    fingerprint: dict
    output: Path
    own_folder: bool  # OUT/<case>/ holds the case's files (statistics, preview)
    attempts: int = 0
    sweep: list = None


@dataclass(eq=False)  # compared and hashed by identity: one per actor
class _Slot:
    index: int
    handle: object
    state: str = "starting"  # starting | idle | busy | broken
    job: _Job = None
    info: dict = field(default_factory=dict)
    started: float = 0.0


def output_path(out_dir, case_id, per_case_folder):
    """OUT/<case>.nii.gz, or OUT/<case>/<case>.nii.gz when a case writes more files (statistics, preview)."""
    return out_dir / case_id / f"{case_id}.nii.gz" if per_case_folder else out_dir / f"{case_id}.nii.gz"


def _utc_now():
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class _Events:
    """Protocol events (progress.py) for the caller's callback, with the case each is about."""

    def __init__(self, callback):
        self.callback = callback
        self.total = 0
        self.finished = 0

    def emit(self, event):
        if self.callback is not None:
            self.callback(event)

    def log(self, message, level="info", **fields):
        self.emit({"event": "log", "level": level, "message": message, **fields})

    def overall(self):
        return round(self.finished / self.total, 4) if self.total else 1.0

    def progress(self, stage, fraction, message, **fields):
        self.emit({"event": "progress", "stage": stage, "fraction": fraction, "overall": self.overall(),
                   "message": message, "time": round(time.time(), 3), **fields})


class CohortRun:
    """One run of a cohort: prepare (cases, manifest, weights), then drive the actors."""

    def __init__(self, source, out_dir, options=None, *, address=None, actors=None, cpus_per_actor=None,
                 gpus_per_actor=None, memory_per_actor_gb=None, retries=2, device="auto", weights_dir=None,
                 download=True, verify=False, progress=None, stop=None, handle_signals=False, debug=False):
        self.source = Path(source).expanduser()
        self.out_dir = Path(out_dir).expanduser().absolute()
        self.options = {"task": "total", "quality": "normal", "roi_subset": None, "body_seg": False,
                        "force_split": False, "remove_small_blobs": False, "robust_crop": False,
                        "check_modality": True, "statistics": False, "preview": False, **(options or {})}
        self.address, self.actors, self.retries = address, actors, max(int(retries), 0)
        self.cpus_per_actor, self.gpus_per_actor, self.memory_gb = cpus_per_actor, gpus_per_actor, memory_per_actor_gb
        self.device = device
        self.weights_dir = str(Path(weights_dir).expanduser().absolute()) if weights_dir else None
        self.download, self.verify, self.debug = download, verify, debug
        self.events = _Events(progress)
        self.stop = stop or StopRequest()
        self.handle_signals = handle_signals
        self.manifest = Manifest(self.out_dir)
        self._session_dir = None  # the local Ray's folder, when this run started one
        self.counts = {"done": 0, "failed": 0, "cancelled": 0, "skipped_done": 0, "not_started": 0}

    # -- preparation --------------------------------------------------------------------
    def _check_folders(self):
        source = self.source.resolve() if self.source.exists() else self.source
        out = self.out_dir.resolve() if self.out_dir.exists() else self.out_dir
        if self.source.is_dir() and out == source:
            raise CohortError(f"The output folder is the input folder ({source}).",
                              "Choose another output folder: outputs there would be taken for cases by the next run.")
        if out.exists() and not out.is_dir():
            raise CohortError(f"The output {out} is a file.", "Give a folder for the outputs.")

    def _request_fields(self, overrides):
        fields = {**self.options, **overrides}
        return {k: fields[k] for k in RESULT_FIELDS}

    def _check_options(self, fingerprint, memo):
        """None, or the problem a case with these request fields would fail on (checked once per combination)."""
        key = repr(sorted(fingerprint.items()))
        if key not in memo:
            try:
                spec = load_catalogue().task(fingerprint["task"])
                spec.mode(fingerprint["quality"])
                spec.check_roi_subset(fingerprint["roi_subset"])
                ensure_models(required_models(fingerprint), self.weights_dir, download=self.download,
                              progress=Progress(self._download_progress))
                memo[key] = None
            except SegmentationError as e:
                memo[key] = e
        return memo[key]

    def _download_progress(self, event):
        if event.get("event") == "progress":
            self.events.progress(event.get("stage", "download"), event.get("fraction"), event.get("message", ""))
        elif event.get("event") == "log":
            self.events.log(event.get("message", ""), event.get("level", "info"))

    def _jobs(self, cases):
        """The cases to run now; records the ones that fail before running or were done earlier."""
        per_case_folder = bool(self.options["statistics"] or self.options["preview"])
        memo, jobs = {}, []
        defaults = self._request_fields({})
        if any(self._request_fields(c.options) == defaults for c in cases if c.problem is None):
            problem = self._check_options(defaults, memo)
            if problem is not None:  # the command line itself cannot run: say so before any work
                raise problem
        for case in cases:
            fingerprint = self._request_fields(case.options)
            output = output_path(self.out_dir, case.case, per_case_folder)
            previous = self.manifest.get(case.case)
            if case.problem is None and is_done(previous, case.input, fingerprint, self.out_dir, self.verify):
                self.counts["skipped_done"] += 1
                continue
            problem = case.problem
            if problem is None and output.resolve() == Path(case.input).resolve():
                problem = {"kind": "input", "type": "OutputIsInput", "cause": f"The output {output} is the input.",
                           "fix": "Choose an output folder other than the one holding the inputs."}
            if problem is None:
                error = self._check_options(fingerprint, memo)
                problem = error.to_dict() if error is not None else None
            if problem is not None:
                self._record(case, fingerprint, {"status": "failed", "error": problem, "seconds": 0.0}, attempts=0)
                continue
            request = {"input": str(case.input), "output": str(output), "ml": True, "device": "auto",
                       "weights_dir": self.weights_dir, "download": self.download, **fingerprint}
            # a case's own folder is swept before each attempt; OUT itself once at the start of a run
            jobs.append(_Job(case, request, fingerprint, output, per_case_folder,
                             sweep=_sweep_spec(output, True) if per_case_folder else None))
        return jobs

    # -- records ----------------------------------------------------------------------------
    def _record(self, case, fingerprint, outcome, attempts):
        previous = self.manifest.get(case.case) or {}
        status = outcome["status"]
        record = {"case": case.case, "status": status, "seconds": outcome.get("seconds"), "attempts": attempts,
                  "runs": int(previous.get("runs") or 0) + attempts, "error": outcome.get("error"),
                  "outputs": outcome.get("outputs") or [], "input": str(case.input), "request": fingerprint}
        for key in ("engine", "models", "note", "warnings", "device", "host", "pid", "timings"):
            if key in outcome:
                record[key] = outcome[key]
        record["finished"] = _utc_now()
        self.manifest.append(record)
        self.counts[status] = self.counts.get(status, 0) + 1
        self.events.finished += 1
        error = record["error"] or {}
        if status == "done":
            line = f"{case.case}: done in {record['seconds']:.1f} s" + (f" ({attempts} attempts)" if attempts > 1 else "")
        else:
            line = f"{case.case}: {status.upper()}: {error.get('cause', '')}" + (
                f"\n  Fix: {error['fix']}" if error.get("fix") else "")
        self.events.log(f"[{self.events.finished}/{self.events.total}] {line}",
                        "info" if status == "done" else "warning", case=case.case, status=status, attempts=attempts,
                        **({"cause": error.get("cause"), "fix": error.get("fix")} if error else {}))

    # -- the run ------------------------------------------------------------------------------
    def run(self):
        self._check_folders()
        cases, skipped = load_cases(self.source, exclude=[self.out_dir])
        for path in skipped:
            self.events.log(f"skipping {path.name}: not an image (cases are NIfTI/NRRD/MHA files, DICOM folders "
                            "and zips)", "info")
        if not cases:
            raise CohortError(f"No cases in {self.source}.",
                              "Give a folder with images, DICOM folders or zips, or a CSV manifest with rows.")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with OutputLock(self.out_dir):
            for w in self.manifest.load():
                self.events.log(w, "warning")
            sweep_partials(self.out_dir)  # temporary files of a run that was killed mid-write
            try:
                self.events.total = len(cases)
                jobs = self._jobs(cases)
                self.events.total = len(jobs) + self.events.finished
                self.events.log(f"cohort: {len(cases)} cases: {len(jobs)} to run, {self.counts['skipped_done']} done "
                                f"earlier (skipped), {self.counts['failed']} failed before running; "
                                f"{len(skipped)} other files skipped")
                if jobs:
                    self._drive(jobs)
            finally:
                self.manifest.rewrite(c.case for c in cases)  # one line per case; earlier cases' lines kept
        return self.summary(len(cases), len(skipped))

    def summary(self, n_cases, n_skipped_files):
        return {"cases": n_cases, **self.counts, "not_images": n_skipped_files, "interrupted": self.stop.stopping,
                "manifest": str(self.manifest.path), "summary": str(self.out_dir / "cohort_summary.csv")}

    # -- Ray ----------------------------------------------------------------------------------
    def _connect(self, ray):
        if ray.is_initialized():  # the caller's session (e.g. a notebook or a test): use it, keep it
            return
        kwargs = {"log_to_driver": self.debug, "logging_level": logging.INFO if self.debug else logging.ERROR}
        address = self.address or os.environ.get("RAY_ADDRESS")  # set inside a Ray job (ray job submit, KubeRay)
        if address:
            try:
                ray.init(address=address, **kwargs)
            except (ConnectionError, RuntimeError, ray.exceptions.RayError) as e:
                raise CohortError(f"Cannot connect to the Ray cluster at {address}: {_last_line(e)}",
                                  "Check the address (`ray status` on the head node prints it). If the cluster uses "
                                  "token authentication, set RAY_AUTH_MODE=token here too, with the cluster's token "
                                  "in ~/.ray/auth_token or RAY_AUTH_TOKEN.") from e
        else:  # a private local cluster: no dashboard, small object store, its own session folder
            # (logs name the cases: the folder goes with the cluster unless --debug keeps it)
            self._session_dir = tempfile.mkdtemp(prefix="tsray", dir=os.environ.get("RAY_TMPDIR") or _short_tmp())
            ray.init(include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                     _temp_dir=self._session_dir, **kwargs)

    def _actor_plan(self, ray):
        """(number of actors, CPUs, GPUs per actor, device inside the actor)."""
        resources = ray.cluster_resources()
        cpus, gpus = float(resources.get("CPU", 1)), float(resources.get("GPU", 0))
        device = (self.device or "auto").lower()
        if device.startswith(("cuda:", "gpu:")):
            raise CohortError(f"--device {self.device}: Ray gives each actor its own GPU.",
                              "Use --device cuda (or auto) and --gpus_per_actor; CUDA_VISIBLE_DEVICES limits the GPUs.")
        use_gpu = device in ("cuda", "gpu") or (device == "auto" and (gpus > 0 or (self.gpus_per_actor or 0) > 0))
        if use_gpu:
            per_gpu = self.gpus_per_actor or 1
            n = self.actors or max(1, int(gpus / per_gpu))
            c = self.cpus_per_actor or max(1, min(8, int(cpus // n)))
            return n, c, per_gpu, "cuda"
        if self.gpus_per_actor:
            raise CohortError(f"--gpus_per_actor with --device {self.device}.", "Use --device cuda, or no GPUs.")
        c = self.cpus_per_actor or max(1, min(DEFAULT_CPUS_PER_CPU_ACTOR, int(cpus)))
        n = self.actors or max(1, int(cpus // c))
        return n, c, 0, "mps" if device == "mps" else "cpu"

    def _drive(self, jobs):
        ray = import_ray()
        saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        ours, slots = not ray.is_initialized(), []
        try:
            self._connect(ray)  # ray.init installs its own SIGTERM handler: ours go in after it
            if self.handle_signals and threading.current_thread() is threading.main_thread():
                for s in saved:
                    signal.signal(s, self.stop.request)
            n, cpus, gpus, device = self._actor_plan(ray)
            total = ray.cluster_resources()
            if n * cpus > total.get("CPU", 0) or n * gpus > total.get("GPU", 0):
                self.events.log(f"{n} actors need {n * cpus} CPUs" + (f" and {n * gpus:g} GPUs" if gpus else "") +
                                f"; the cluster has {total.get('CPU', 0):g} CPUs and {total.get('GPU', 0):g} GPUs: "
                                "the others start when nodes join", "warning")
            options = {"num_cpus": cpus, "num_gpus": gpus, "max_restarts": -1, "max_task_retries": 0,
                       "max_concurrency": 3}  # run_case, plus status and cancel while it runs
            if self.memory_gb:
                options["memory"] = int(self.memory_gb * 2**30)
            remote = ray.remote(CaseRunner).options(**options)
            threads = cpus if device != "cuda" else None

            def make():
                return remote.remote(device=device, weights_dir=self.weights_dir, download=self.download,
                                     threads=threads)

            address = self.address or os.environ.get("RAY_ADDRESS")
            where = f"the Ray cluster at {address}" if address else "a local Ray"
            self.events.log(f"{n} actor(s) x {cpus} CPU" + (f" + {gpus} GPU" if gpus else "") + f" on {where}")
            slots = [_Slot(i, make()) for i in range(n)]
            for job in jobs:
                job.request["device"] = device
            self._loop(ray, slots, deque(jobs), make)
        finally:
            for slot in slots:
                try:
                    ray.kill(slot.handle, no_restart=True)
                except Exception:  # noqa: BLE001 - already gone
                    pass
            if ours and ray.is_initialized():
                ray.shutdown()
            if self._session_dir:
                if self.debug:
                    self.events.log(f"Ray's logs of this run: {self._session_dir}")
                else:
                    shutil.rmtree(self._session_dir, ignore_errors=True)
            if self.handle_signals and threading.current_thread() is threading.main_thread():
                for s, handler in saved.items():
                    signal.signal(s, handler)

    def _loop(self, ray, slots, queue, make):
        hellos = {slot.handle.hello.remote(): slot for slot in slots}
        running, statuses = {}, {}
        replacements, began = 0, time.monotonic()
        warned_slow = stop_announced = False
        abort_at = None
        last_status = 0.0
        while True:
            if self.stop.stopping and not stop_announced:
                stop_announced = True
                busy = sum(s.state == "busy" for s in slots)
                self.events.log(f"stopping: no new cases; waiting for the {busy} running case(s) to finish "
                                "(stop again to cancel them)", "warning")
            if self.stop.aborting and abort_at is None:
                abort_at = time.monotonic() + ABORT_GRACE_S
                self.events.log("cancelling the running cases", "warning")
                for slot in slots:
                    if slot.state == "busy":
                        slot.handle.cancel.remote()
            if not self.stop.stopping:
                for slot in slots:
                    if slot.state == "idle" and queue:
                        self._submit(slot, queue.popleft(), running)
            busy = [s for s in slots if s.state == "busy"]
            if not busy and (self.stop.stopping or not queue):
                break
            if all(s.state == "broken" for s in slots):
                raise CohortError("The engine could not start on any Ray worker: " + slots[0].info.get("error", ""),
                                  "Install the same totalsegmentator-slicer[cohort] version on every node (or use one "
                                  "container image) and check that the weights folder is readable there.")
            if abort_at is not None and time.monotonic() > abort_at:
                for slot in busy:  # did not stop in time: end the process
                    ray.kill(slot.handle, no_restart=True)
                    self._record(slot.job.case, slot.job.fingerprint, {"status": "cancelled", "error": {
                        "kind": "cancelled", "type": "Stopped", "cause": "Stopped by the user.", "fix": ""}},
                        slot.job.attempts)
                    slot.state = "broken"
                break
            if not warned_slow and not any(s.state in ("idle", "busy") for s in slots) and \
                    time.monotonic() - began > SLOW_START_S:
                warned_slow = True
                self.events.log(f"no actor has started after {SLOW_START_S:.0f} s: the cluster may lack the resources "
                                f"asked for (available: {ray.available_resources()})", "warning")
            waiting = list(running) + list(hellos) + list(statuses)
            if not waiting:  # every actor broken but one being judged: nothing to wait on yet
                time.sleep(POLL_S)
                continue
            ready, _ = ray.wait(waiting, num_returns=1, timeout=POLL_S)
            if ready:
                ready, _ = ray.wait(waiting, num_returns=len(waiting), timeout=0)
            for ref in ready:
                if ref in hellos:
                    slot = hellos.pop(ref)
                    replacements += self._hello(ray, slot, ref, hellos, make, replacements, len(slots))
                elif ref in running:
                    self._finished(ray, running.pop(ref), ref, queue, hellos)
                elif ref in statuses:
                    self._status(ray, statuses.pop(ref), ref)
            if time.monotonic() - last_status > max(POLL_S, len(slots) / STATUS_RPCS_PER_S):
                last_status = time.monotonic()
                polled = set(statuses.values())
                for slot in slots:
                    if slot.state == "busy" and slot not in polled:
                        statuses[slot.handle.status.remote()] = slot
        self.counts["not_started"] = len(queue)

    def _submit(self, slot, job, running):
        job.attempts += 1
        payload = {"case": job.case.case, "request": job.request, "out_dir": str(self.out_dir), "sweep": job.sweep}
        running[slot.handle.run_case.remote(payload)] = slot
        slot.state, slot.job, slot.started = "busy", job, time.monotonic()
        self.events.progress("start", 0.0, f"{job.case.case}: started" + (f" (attempt {job.attempts})" if
                             job.attempts > 1 else ""), case=job.case.case, actor=slot.index,
                             pid=slot.info.get("pid"), host=slot.info.get("host"))

    def _hello(self, ray, slot, ref, hellos, make, replacements, n_slots):
        """An actor answered (or failed to start). Returns 1 when it was replaced."""
        try:
            slot.info = ray.get(ref)
            slot.state = "idle"
            return 0
        except ray.exceptions.RayActorError as e:
            slot.info = {"error": _first_line(e)}
            if replacements < 2 * n_slots and not _creation_failed(e):  # lost (node gone): start another
                try:
                    ray.kill(slot.handle, no_restart=True)
                except Exception:  # noqa: BLE001 - already gone
                    pass
                slot.handle, slot.state = make(), "starting"
                hellos[slot.handle.hello.remote()] = slot
                return 1
            slot.state = "broken"
            self.events.log(f"actor {slot.index} could not start: {slot.info['error']}", "warning")
            return 0

    def _status(self, ray, slot, ref):
        try:
            status = ray.get(ref)
        except ray.exceptions.RayError:
            return  # the actor died: its case's own result says so
        if slot.state != "busy" or status.get("case") != slot.job.case.case or status.get("stage") is None:
            return
        self.events.progress(status["stage"], status.get("fraction"), f"{slot.job.case.case}: {status.get('message', '')}",
                             case=slot.job.case.case, actor=slot.index, pid=status.get("pid"),
                             host=slot.info.get("host"))

    def _finished(self, ray, slot, ref, queue, hellos):
        job = slot.job
        slot.state, slot.job = "idle", None
        try:
            outcome = ray.get(ref)
        except ray.exceptions.RayActorError as e:  # the worker process died (killed, out of memory, a crash)
            slot.state = "starting"  # Ray restarts it; its hello answers once the engine is back
            hellos[slot.handle.hello.remote()] = slot
            if self.stop.aborting:
                self._record(job.case, job.fingerprint, {"status": "cancelled", "error": {
                    "kind": "cancelled", "type": "Stopped", "cause": "Stopped by the user.", "fix": ""}}, job.attempts)
            elif job.attempts <= self.retries:
                self.events.log(f"{job.case.case}: the worker died (attempt {job.attempts} of {self.retries + 1}); "
                                f"running it again: {_first_line(e)}", "warning", case=job.case.case, status="retry")
                job.sweep = _sweep_spec(job.output, job.own_folder)
                queue.appendleft(job)
            else:
                self._record(job.case, job.fingerprint, {"status": "failed", "error": _crash_error(ray, e, job.attempts),
                                                         "seconds": round(time.monotonic() - slot.started, 3)},
                             job.attempts)
            return
        except ray.exceptions.RayError as e:  # anything else Ray reports: this case fails, the others go on
            outcome = {"status": "failed", "error": {"kind": "internal", "type": type(e).__name__,
                                                     "cause": f"Ray could not run the case: {_first_line(e)}",
                                                     "fix": "Run it again; if it keeps failing, run it alone with "
                                                            "python -m SegmentationLogic segment."}}
        self._record(job.case, job.fingerprint, outcome, job.attempts)


def _short_tmp():
    """A temporary folder with a short path: Ray's socket paths must stay under 108 characters."""
    return "/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir()


def _sweep_spec(output, own_folder):
    """What to clean before a case runs again: its own folder, or its own files in OUT (the
    multilabel file and its `.labels.json` sidecar, as the engine names them)."""
    if own_folder:  # OUT/<case>/<case>.nii.gz
        return [str(output.parent), None]
    return [str(output.parent), [output.name, output.name[: -len(".nii.gz")] + ".labels.json"]]


def _first_line(exc):
    text = str(exc).strip()
    return next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)[:400]


def _last_line(exc):
    """The reason a connection failed (Ray's own message says only that it failed)."""
    text = ""
    while exc is not None:
        text, last, exc = text + str(exc), exc, exc.__cause__
    if "authtoken" in text.lower().replace("_", "") or "authentication" in text.lower():
        return "the cluster asks for an authentication token and this process sent none or another one."
    return _first_line(last)


def _creation_failed(exc):
    """The actor's constructor raised (a missing package, an unreadable folder): a new one would too."""
    return "__init__" in str(exc) or "creation task" in str(exc).lower()


def _crash_error(ray, exc, attempts):
    oom = isinstance(exc, getattr(ray.exceptions, "OutOfMemoryError", ())) or "memory" in str(exc).lower()
    times = "once" if attempts == 1 else f"{attempts} times"
    cause = (f"The worker process died while segmenting this case ({times})" + (", out of memory" if oom else "")
             + f": {_first_line(exc)}")
    fix = ("Give each actor more memory (--memory_per_actor, or fewer actors per node) or use --quality fast. "
           if oom else "Look for the kernel's OOM killer (dmesg) and for a crash in the worker log (Ray session "
           "folder, logs/worker-*.err). ") + "A rerun tries the case again."
    return {"kind": "worker", "type": "WorkerDied", "cause": cause, "fix": fix}


def run_cohort(source, out_dir, options=None, **kwargs):
    """Segment every case of `source` (a folder or a CSV manifest) into `out_dir` on Ray.

    `options`: SegmentRequest fields for every case (task, quality, roi_subset, body_seg,
    force_split, remove_small_blobs, robust_crop, check_modality, statistics, preview);
    a manifest's columns override them per case. Keyword arguments: address (None: a
    private local Ray; "auto" or host:port: a running cluster), actors, cpus_per_actor,
    gpus_per_actor, memory_per_actor_gb, retries (after a worker died), device, weights_dir,
    download, verify (hash every output before skipping a case), progress (callback for
    protocol events), stop (a StopRequest), handle_signals (SIGINT/SIGTERM stop the run).
    Uses the caller's Ray session when one is initialised. Returns the summary (counts and
    the manifest's path); the manifest has a line per case.
    """
    return CohortRun(source, out_dir, options, **kwargs).run()
