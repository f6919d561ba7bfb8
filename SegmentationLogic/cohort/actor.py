"""A warm engine that segments one case at a time: the cohort's worker.

A plain class: runner.py makes it a Ray actor (`ray.remote(CaseRunner)`), so this module
needs no Ray. The actor keeps one `Segmenter` for its whole life, so models are loaded
once per actor, not once per case. Reading, resampling and writing run in the actor's
process too: each actor holds at most one case in memory, so memory is bounded by the
number of actors, however large the cohort. The driver gives an actor one case at a
time; `status` and `cancel` answer from other threads while a case runs.
"""
import os
import socket
import time
import traceback

from ..errors import Cancelled, SegmentationError
from ..pipeline import Segmenter
from ..progress import CancelToken, Progress
from ..request import SegmentRequest
from ..system.devices import THREADS_ENV
from .manifest import describe_output, sweep_partials
from .versions import ModelHashes, engine_versions


class CaseRunner:
    """Segments cases with one Segmenter kept warm between them."""

    def __init__(self, device="cpu", weights_dir=None, download=True, threads=None):
        if threads:  # torch's CPU threads: this actor's share of the node, not every core
            os.environ[THREADS_ENV] = str(int(threads))
        self.device = device
        self.segmenter = Segmenter(device=device, weights_dir=weights_dir, download=download)
        self.hashes = ModelHashes()
        self._status = {"case": None}
        self._cancel = None

    def hello(self):
        """Who and where this actor is; imports torch now so the first case does not pay for it."""
        import torch  # heavy: the actor's start-up, not the first case, pays for it

        name = self.device
        if self.device.startswith("cuda") and torch.cuda.is_available():
            name = f"{self.device} ({torch.cuda.get_device_name(0)})"
        return {"pid": os.getpid(), "host": socket.gethostname(), "device": name}

    def status(self):
        """The running case's latest progress (from another thread while it runs)."""
        return dict(self._status, pid=os.getpid())

    def cancel(self):
        """Ask the running case to stop at its next progress report (nothing is written)."""
        token = self._cancel
        if token is not None:
            token.cancel()
        return self._status.get("case")

    def _on_event(self, event):
        if event.get("event") == "progress":
            self._status.update(stage=event.get("stage"), fraction=event.get("fraction"),
                                message=event.get("message", ""))
        elif event.get("event") == "log" and event.get("level") == "warning":
            self._status.setdefault("warnings", []).append(event.get("message", ""))

    def run_case(self, job):
        """job: {"case", "request" (SegmentRequest JSON), "out_dir", "sweep": [folder, file names or None] or None}
        -> the case's manifest fields (status, seconds, error, outputs, versions, ...)."""
        case, started = job["case"], time.time()
        token = self._cancel = CancelToken()
        self._status = {"case": case, "stage": "start", "fraction": 0.0, "message": "", "warnings": []}
        record = {"case": case, "host": socket.gethostname(), "pid": os.getpid(), "engine": engine_versions()}
        try:
            if job.get("sweep"):  # a write that a killed attempt left behind
                sweep_partials(*job["sweep"])
            request = SegmentRequest.from_json(job["request"])
            record["device"] = request.device
            result = self.segmenter.run(request, progress=Progress(self._on_event, token), cancel=token)
            record.update(status="done", error=None, outputs=[describe_output(f, job["out_dir"]) for f in result.files],
                          note=result.model_note, timings=result.timings,
                          models=self.hashes.models(job["request"], request.weights_dir))
        except Cancelled as e:
            record.update(status="cancelled", error=e.to_dict())
        except SegmentationError as e:
            record.update(status="failed", error=e.to_dict())
        except Exception as e:  # noqa: BLE001 - a bug or a library's error: this case fails, the others go on
            traceback.print_exc()  # into the actor's log (Ray session folder, logs/worker-*.err)
            record.update(status="failed", error={
                "kind": "internal", "type": type(e).__name__, "cause": f"Internal error: {e}",
                "fix": "Run the case alone (python -m SegmentationLogic segment -i INPUT -o OUT.nii.gz --ml --debug) "
                       "and report the traceback."})
        finally:
            self._cancel = None
            record["warnings"] = self._status.get("warnings") or []
            self._status = {"case": None}
        record["seconds"] = round(time.time() - started, 3)
        return record
