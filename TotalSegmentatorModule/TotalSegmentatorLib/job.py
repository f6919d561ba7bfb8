"""One segmentation from a volume node to a segmentation node, as an Operation (no Qt).

    job = SegmentationJob(volumeNode, task="total", quality="fast").start()
    while not job.done:          # the GUI calls job.poll() from a QTimer instead
        job.poll(); time.sleep(0.1)
    job.segmentation_node        # or job.error: {"kind", "cause", "fix"}

Steps: check the request (task, quality, structures) -> write the volume to a temp
NIfTI -> send the typed `SegmentRequest` to the engine worker (the persistent one that
keeps models loaded, or a one-shot one) -> import the result with its class map through
`SegmentationLogic.mrml.segmentation_import.import_result`, the same path as the batch
script. The liver-vessel split runs the engine's `liver-vessels` command instead and is
shown by `mrml.vessel_review`.

With `remote` ({"url", "token_file", "ca_cert"}) the worker only relays the request to a
segmentation server (its client: stdlib and requests) and the labelmap is read with
SimpleITK: the whole path runs with what Slicer ships. Progress adds the client's stages
(upload, queued, fetch); Cancel cancels the job on the server.

Nothing reaches the scene unless the engine succeeded and the import completed. The
temp folder is removed in every case (success, failure, cancel), and the engine's own
temp files go there too. Closing the scene, or removing the input volume or the target
segmentation, cancels the run.
"""
import json
import shutil
import tempfile
import time
from pathlib import Path

from SegmentationLogic.catalogue import QUALITIES, load_catalogue
from SegmentationLogic.errors import InputImageError, SegmentationError, error_event
from SegmentationLogic.mrml.scene import export_volume
from SegmentationLogic.mrml.segmentation_import import import_result
from SegmentationLogic.request import SegmentRequest, SegmentResult

from .choices import best_quality, validate_roi_subset
from .operation import Operation
from .runner import ProcessRun, WorkerEngine, engine_command, engine_environment

ENGINE_SHARE = 0.92  # share of the overall bar for the engine; the rest is import into the scene
SCENE_CLOSED = "The scene was closed, so the segmentation was stopped."
# What to do in the panel when the server refuses (the client's fixes name its command-line options)
REMOTE_FIXES = {
    "auth": "Paste the current access token from the server's admin into Access token (Device: Remote server), "
            "then Apply again.",
    "tls": "Choose the certificate (PEM) of the authority that signed the server's certificate as CA certificate "
           "(Device: Remote server; ask the server's admin), and use the host name the certificate is made out to. "
           "Verification is never switched off: a certificate that does not match may mean someone is listening in.",
}


def remote_advice(error):
    """A server's error with the panel's fix where the client's names a command-line option."""
    if not error or error.get("kind") not in REMOTE_FIXES:
        return error
    return {**error, "fix": REMOTE_FIXES[error["kind"]]}


class SegmentationJob(Operation):
    def __init__(self, volume_node, segmentation_node=None, task="total", quality="fast", roi_subset=None,
                 device="auto", use_standard_names=True, create_surfaces=True, weights_dir=None,
                 split_liver_vessels=False, review_root=None, download=True, worker=None, python=None, env=None,
                 check_modality=True, remote=None):
        super().__init__(task)
        self.volume_node = volume_node
        self.target_node = segmentation_node
        self.task = task
        self.quality = quality
        self.roi_subset = list(roi_subset or [])
        self.device = device or "auto"
        self.use_standard_names = use_standard_names
        self.create_surfaces = create_surfaces
        self.weights_dir = weights_dir
        self.split_liver_vessels = split_liver_vessels
        self.review_root = review_root
        self.review_dir = None  # liver-vessel outputs kept for the review (re-run split needs the support masks)
        self.download = download
        self.check_modality = check_modality  # False: the user confirmed a wrong-looking modality
        self.worker = worker  # None: a one-shot worker of its own
        self.remote = remote  # {"url", "token_file", "ca_cert"}: run on that segmentation server
        self.python = python
        self.env = env
        self.phase = "new"  # new | running | importing, then the outcome
        self.run = None
        self.tmpdir = None
        self.output = None
        self.segmentation_node = None
        self.vessel_qc = None
        self.timings = {}
        self._t0 = None
        self._notes = []
        self._scene = None
        self._observer = None
        self._stopping = None  # the cancel error while a worker is stopping

    @property
    def state(self):
        """new | running | importing | succeeded | failed | cancelled"""
        return self.outcome or self.phase

    # -- start -------------------------------------------------------------------------
    def check(self):
        """Validate the request before anything is written or started (raises SegmentationError)."""
        if self.volume_node is None or self.volume_node.GetScene() is None:
            raise InputImageError("No input volume selected.", "Select the volume to segment.")
        if self.volume_node.GetImageData() is None:
            raise InputImageError(f"Volume '{self.volume_node.GetName()}' has no image data.",
                                  "Load the image again or select another volume.")
        task = load_catalogue().task(self.task)
        if self.quality in QUALITIES and self.quality not in task.qualities:
            # As the panel does: a task with one model runs it whatever quality was asked.
            self._notes.append(f"Task '{self.task}' has no '{self.quality}' quality; running "
                               f"'{best_quality(self.task, self.quality)}'.")
            self.quality = best_quality(self.task, self.quality)
        task.mode(self.quality)  # unknown quality names raise here
        validate_roi_subset(self.task, self.roi_subset)
        if self.split_liver_vessels and self.task != "liver_vessels":
            raise SegmentationError("The portal / hepatic vein split needs task 'liver_vessels'.",
                                    "Choose task 'liver_vessels' or turn the split off.")
        if self.split_liver_vessels and self.remote:
            raise SegmentationError("The portal / hepatic vein split runs on this computer, not on a segmentation "
                                    "server.", "Choose a local device (Auto, CPU or a GPU), or turn the split off.")

    def start(self):
        self.check()
        self._t0 = time.perf_counter()
        self.tmpdir = Path(tempfile.mkdtemp(prefix="TotalSegmentator-"))
        try:
            (self.tmpdir / "tmp").mkdir()
            self._emit({"event": "progress", "stage": "export", "fraction": 0.0, "overall": 0.0,
                        "message": f"Writing '{self.volume_node.GetName()}' for the engine"})
            for note in self._notes:
                self._emit({"event": "log", "level": "warning", "message": note})
            source = export_volume(self.volume_node, self.tmpdir / "input.nii")
            self.timings["export"] = time.perf_counter() - self._t0
            self.run = self._start_engine(source)
        except BaseException:
            self._cleanup()
            raise
        self._scene = self.volume_node.GetScene()
        self._observer = self._scene.AddObserver(self._scene.StartCloseEvent, lambda *_: self.cancel(SCENE_CLOSED))
        self.phase = "running"
        return self

    def request(self, source, output):
        """The typed request the engine runs."""
        return SegmentRequest(input=str(source), output=str(output), task=self.task, quality=self.quality,
                              roi_subset=self.roi_subset or None, ml=True,
                              device="auto" if self.remote else self.device,  # the server uses its own
                              weights_dir=str(self.weights_dir) if self.weights_dir else None,
                              download=self.download, check_modality=self.check_modality)

    def vessels_argv(self, source, output_dir):
        argv = ["liver-vessels", "-i", source, "-o", output_dir, "--split_portal_hepatic", "--device", self.device,
                "--progress", "json"]
        if self.weights_dir:
            argv += ["--weights_dir", self.weights_dir]
        if not self.check_modality:
            argv.append("--ignore_modality")
        return [str(a) for a in argv]

    def _start_engine(self, source):
        if self.split_liver_vessels:
            if self.review_root:
                Path(self.review_root).mkdir(parents=True, exist_ok=True)
                self.review_dir = Path(tempfile.mkdtemp(prefix="liver-vessels-", dir=self.review_root))
            self.output = self.review_dir or self.tmpdir / "vessels"
            return ProcessRun(engine_command(*self.vessels_argv(source, self.output), python=self.python),
                              env=engine_environment(self.tmpdir / "tmp", self.env), description="liver vessels")
        self.output = self.tmpdir / "segmentation.nii.gz"
        worker = self.worker or WorkerEngine(python=self.python, env=self.env, keep_alive=False)
        extra = {"remote": self.remote} if self.remote else {}
        return worker.submit("segment", request=self.request(source, self.output).to_json(),
                             tmpdir=str(self.tmpdir / "tmp"), description=self.task, **extra)

    # -- follow ------------------------------------------------------------------------
    def _step(self):
        removed = self.volume_node.GetScene() is None or (self.target_node is not None
                                                           and self.target_node.GetScene() is None)
        if removed and self._stopping is None:
            self.cancel("The input volume or the output segmentation was removed from the scene, so the "
                        "segmentation was stopped.")
            return
        for event in self.run.poll():
            if event.get("event") == "progress":
                event = {**event, "overall": round(ENGINE_SHARE * float(event.get("overall") or 0.0), 4)}
            self._emit(event)
        if self.run.done:
            self.timings["engine"] = self.run.seconds
            if self._stopping is not None:
                self._fail(self._stopping, "cancelled")
            elif self.run.outcome == "succeeded":
                self._import(self.run.result)
            else:
                self._fail(remote_advice(self.run.error) if self.remote else self.run.error, self.run.outcome)

    def _stop(self, error):
        """Stop the engine (its process tree dies, or the worker drops the request). Nothing is imported."""
        self._stopping = error
        if self.run is not None:
            self.run.cancel()
        if self.run is None or self.run.done:
            self._fail(error, "cancelled")
        # else a cooperative worker stop: the next poll() sees it (at most its cancel grace later)

    # -- import ------------------------------------------------------------------------
    def _import(self, payload):
        self.phase = "importing"
        self.result = payload
        if payload.get("note"):
            self._emit({"event": "log", "level": "warning", "message": payload["note"]})
        self._emit({"event": "progress", "stage": "import", "fraction": 0.0, "overall": ENGINE_SHARE,
                    "message": "Creating segments and 3D surfaces"})
        t = time.perf_counter()
        scene = self.volume_node.GetScene()
        try:
            if self.split_liver_vessels:
                node = self._import_vessels(scene, payload)
            else:
                # Names a new node "<volume> segmentation", replaces the segments of an existing
                # one, follows the volume's transform and study; all or nothing.
                node = import_result(scene, SegmentResult.from_json(payload), labelmap=str(self.output),
                                     reference_volume_node=self.volume_node, segmentation_node=self.target_node,
                                     use_standard_names=self.use_standard_names,
                                     create_surfaces=self.create_surfaces, task=self.task,
                                     progress=self._import_progress)
        except SegmentationError as e:
            self._fail(error_event(e), "failed")
            return
        except Exception as e:  # import bugs must still leave a clear message and a clean scene
            self._fail(error_event(e, kind="import", cause=f"Importing the result into the scene failed: {e}",
                                   fix="See the log; the scene was left unchanged."), "failed")
            return
        self.segmentation_node = node
        self.timings["import"] = time.perf_counter() - t
        self.timings["total"] = time.perf_counter() - self._t0
        self._emit({"event": "progress", "stage": "import", "fraction": 1.0, "overall": 1.0,
                    "message": f"Done in {self.timings['total']:.1f} s"})
        self._end()
        self._finish("succeeded", result=payload)

    def _import_progress(self, stage, fraction=None, message=""):
        overall = ENGINE_SHARE + (1.0 - ENGINE_SHARE) * min(max(float(fraction or 0.0), 0.0), 0.99)
        self._emit({"event": "progress", "stage": "import", "fraction": fraction, "overall": round(overall, 4),
                    "message": message})

    def _import_vessels(self, scene, payload):
        from SegmentationLogic.mrml import vessel_review  # reads NIfTI: nibabel is installed on first use
        # The whole metadata: its QC for the panel, its inputs (support masks) for re-runs.
        path = self.output / "enhanced_liver_vessels_metadata.json"
        metadata = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        if payload.get("qc") and not metadata.get("portal_hepatic_split_qc"):
            metadata["portal_hepatic_split_qc"] = payload["qc"]
        node = vessel_review.load_split(scene, str(self.output / "liver_vessels_labeled.nii.gz"), self.volume_node,
                                        segmentation_node=self.target_node, qc=metadata)
        self.vessel_qc = vessel_review.get_qc(node)
        return node

    # -- end ---------------------------------------------------------------------------
    def _fail(self, error, outcome):
        error = error or {"kind": "error", "cause": "The segmentation failed.", "fix": ""}
        if self.review_dir is not None:
            shutil.rmtree(self.review_dir, ignore_errors=True)
            self.review_dir = None
        self.timings["total"] = time.perf_counter() - self._t0 if self._t0 else 0.0
        self._end()
        self._emit(error_event(error))
        self._finish(outcome or "failed", error=error)

    def _end(self):
        if self._observer is not None:
            self._scene.RemoveObserver(self._observer)
            self._observer = None
        self._cleanup()

    def _cleanup(self):
        if self.tmpdir is not None:
            for _ in range(20):  # Windows keeps files of a just-killed process locked for a moment
                shutil.rmtree(self.tmpdir, ignore_errors=True)
                if not self.tmpdir.exists():
                    break
                time.sleep(0.1)
            self.tmpdir = None
