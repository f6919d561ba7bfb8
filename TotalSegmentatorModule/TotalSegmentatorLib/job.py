"""One segmentation from a volume node to a segmentation node, without Qt.

    job = SegmentationJob(volumeNode, task="total", quality="fast").start()
    while not job.done:          # the GUI calls job.poll() from a QTimer instead
        job.poll(); time.sleep(0.1)
    job.segmentation_node        # or job.error: {"kind", "cause", "fix"}

Steps: check the request (task, quality, structures) -> write the volume to a temp
NIfTI -> run the engine in the background (a one-shot process, or the persistent
worker that keeps models loaded) -> import the labelmap with
`SegmentationLogic.slicer_import.import_labelmap` (one multilabel import, names,
colours, terminology, surfaces). Nothing reaches the scene unless the engine succeeded
and the import completed; the temp folder is removed in every case (success, failure,
cancel), and the engine's own temp files go there too (TMPDIR).
"""
import json
import shutil
import tempfile
import time
from pathlib import Path

from SegmentationLogic.catalogue import QUALITIES, load_catalogue
from SegmentationLogic.errors import InputImageError, SegmentationError

from .choices import best_quality, validate_roi_subset
from .runner import ProcessRun, engine_command, engine_environment

ENGINE_SHARE = 0.92  # share of the overall bar for the engine; the rest is import into the scene


def export_volume(volume_node, path):
    """Write a volume node to NIfTI/NRRD with its geometry (IJK to RAS), ignoring display and transforms."""
    import slicer

    if volume_node is None or volume_node.GetImageData() is None:
        raise InputImageError("The input volume has no image data.", "Select a loaded volume as input.")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(0)  # a temp file: speed over size
    if not storage.WriteData(volume_node):
        raise InputImageError(f"Could not write the input volume to {path}.",
                              "Check that the temporary folder is writable and has free space.")
    return Path(path)


def volume_modality(volume_node):
    """("CT" | "MR", confidence, reason) guessed by the engine from the intensities, or None (for the warning)."""
    try:
        import nibabel as nib
        import numpy as np
        import slicer.util
        import vtk

        from SegmentationLogic.image_io import guess_modality
    except ImportError:
        return None
    if volume_node is None or volume_node.GetImageData() is None:
        return None
    array = slicer.util.arrayFromVolume(volume_node)  # k, j, i
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)  # NIfTI's affine is also voxel -> RAS
    affine = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    try:
        return guess_modality(nib.Nifti1Image(array.transpose(2, 1, 0), affine))
    except Exception:  # a warning helper must never break the panel
        return None


class SegmentationJob:
    def __init__(self, volume_node, segmentation_node=None, task="total", quality="fast", roi_subset=None,
                 device="auto", use_standard_names=True, create_surfaces=True, weights_dir=None,
                 split_liver_vessels=False, review_root=None, download=True, worker=None, python=None, env=None,
                 on_event=None, check_modality=True):
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
        self.worker = worker
        self.python = python
        self.env = env
        self.on_event = on_event
        self.state = "new"  # new | running | importing | succeeded | failed | cancelled
        self.run = None
        self.tmpdir = None
        self.segmentation_node = None
        self.error = None
        self.result = None
        self.vessel_qc = None
        self.timings = {}
        self.stage, self.overall, self.message = None, 0.0, ""
        self._t0 = None
        self._notes = []

    # -- public ------------------------------------------------------------------------
    @property
    def done(self):
        return self.state in ("succeeded", "failed", "cancelled")

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
        self.state = "running"
        return self

    def poll(self):
        """Handle what the engine sent since the last call; import when it is done. Never blocks on the engine."""
        if self.state != "running":
            return []
        events = self.run.poll()
        for event in events:
            if event.get("event") == "progress":
                event = {**event, "overall": round(ENGINE_SHARE * float(event.get("overall") or 0.0), 4)}
            self._emit(event)
        if self.run.done:
            self.timings["engine"] = self.run.seconds
            if self.run.outcome == "succeeded":
                self._import(self.run.result)
            else:
                self._fail(self.run.error, "cancelled" if self.run.outcome == "cancelled" else "failed")
        return events

    def cancel(self):
        """Stop the engine (its process tree dies, or the worker drops the request). Nothing is imported."""
        if self.state == "running":
            self.run.cancel()
            self.poll()
            if self.state == "running" and self.run.done:
                self._fail(self.run.error, "cancelled")

    def wait(self, timeout=None, interval=0.05):
        """Block until done (scripts, the Python console); returns self."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done:
            self.poll()
            if self.done:
                break
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                while not self.done:
                    self.poll()
                    time.sleep(interval)
                raise TimeoutError(f"Segmentation did not finish within {timeout} s and was cancelled.")
            time.sleep(interval)
        return self

    # -- engine ------------------------------------------------------------------------
    def segment_argv(self, source, output):
        argv = ["-i", source, "-o", output, "--task", self.task, "--ml", "--device", self.device]
        if self.quality in ("fast", "fastest"):
            argv.append(f"--{self.quality}")
        if self.roi_subset:
            argv += ["--roi_subset", *self.roi_subset]
        if self.weights_dir:
            argv += ["--weights_dir", self.weights_dir]
        if not self.download:
            argv.append("--no_download")
        if not self.check_modality:
            argv.append("--ignore_modality")
        return [str(a) for a in argv]

    def vessels_argv(self, source, output_dir):
        argv = ["liver-vessels", "-i", source, "-o", output_dir, "--split_portal_hepatic", "--device", self.device,
                "--progress", "json"]
        if self.weights_dir:
            argv += ["--weights_dir", self.weights_dir]
        if not self.check_modality:
            argv.append("--ignore_modality")
        return [str(a) for a in argv]

    def _start_engine(self, source):
        env = engine_environment(self.tmpdir / "tmp", self.env)
        if self.split_liver_vessels:
            if self.review_root:
                Path(self.review_root).mkdir(parents=True, exist_ok=True)
                self.review_dir = Path(tempfile.mkdtemp(prefix="liver-vessels-", dir=self.review_root))
            self.output = self.review_dir or self.tmpdir / "vessels"
            return ProcessRun(engine_command(*self.vessels_argv(source, self.output), python=self.python), env=env,
                              description="liver vessels")
        self.output = self.tmpdir / "segmentation.nii.gz"
        argv = self.segment_argv(source, self.output)
        if self.worker is not None:
            return self.worker.submit("segment", argv=argv, tmpdir=str(self.tmpdir / "tmp"), description=self.task)
        return ProcessRun(engine_command("segment", *argv, "--progress", "json", python=self.python), env=env,
                          description=self.task)

    # -- import ------------------------------------------------------------------------
    def class_map(self, result=None):
        """Label value -> class name of what the engine wrote (the task's map, limited to the ROI subset)."""
        if result and result.get("class_map"):
            return {int(k): v for k, v in result["class_map"].items()}
        classes = load_catalogue().task(self.task).classes
        if self.roi_subset:
            wanted = set(self.roi_subset)
            return {k: v for k, v in classes.items() if v in wanted}
        return dict(classes)

    def _import(self, result):
        self.state = "importing"
        self.result = result
        if result.get("note"):
            self._emit({"event": "log", "level": "warning", "message": result["note"]})
        self._emit({"event": "progress", "stage": "import", "fraction": 0.0, "overall": ENGINE_SHARE,
                    "message": "Creating segments and 3D surfaces"})
        t = time.perf_counter()
        scene = self.volume_node.GetScene()
        try:
            if self.split_liver_vessels:
                node = self._import_vessels(scene, result)
            else:
                from SegmentationLogic.slicer_import import import_labelmap

                # Names a new node "<volume> segmentation", replaces the segments of an existing
                # one, follows the volume's transform and study; all or nothing.
                node = import_labelmap(scene, str(self.output), self.class_map(result),
                                       reference_volume_node=self.volume_node, segmentation_node=self.target_node,
                                       use_standard_names=self.use_standard_names,
                                       create_surfaces=self.create_surfaces, task=self.task,
                                       progress=self._import_progress)
        except SegmentationError as e:
            self._fail({"event": "error", **e.to_dict()}, "failed")
            return
        except Exception as e:  # import bugs must still leave a clear message and a clean scene
            self._fail({"event": "error", "kind": "import", "type": type(e).__name__,
                        "cause": f"Importing the result into the scene failed: {e}",
                        "fix": "See the log; the scene was left unchanged."}, "failed")
            return
        self.segmentation_node = node
        self.timings["import"] = time.perf_counter() - t
        self.timings["total"] = time.perf_counter() - self._t0
        self._cleanup()
        self.state = "succeeded"
        self._emit({"event": "progress", "stage": "import", "fraction": 1.0, "overall": 1.0,
                    "message": f"Done in {self.timings['total']:.1f} s"})

    def _import_progress(self, stage, fraction=None, message=""):
        overall = ENGINE_SHARE + (1.0 - ENGINE_SHARE) * min(max(float(fraction or 0.0), 0.0), 0.99)
        self._emit({"event": "progress", "stage": "import", "fraction": fraction, "overall": round(overall, 4),
                    "message": message})

    def _import_vessels(self, scene, result):
        from SegmentationLogic.vessels import review

        # The whole metadata: its QC for the panel, its inputs (support masks) for re-runs.
        path = self.output / "enhanced_liver_vessels_metadata.json"
        metadata = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        if result.get("qc") and not metadata.get("portal_hepatic_split_qc"):
            metadata["portal_hepatic_split_qc"] = result["qc"]
        node = review.load_split(scene, str(self.output / "liver_vessels_labeled.nii.gz"), self.volume_node,
                                 segmentation_node=self.target_node, qc=metadata)
        self.vessel_qc = review.get_qc(node)
        return node

    # -- end ---------------------------------------------------------------------------
    def _fail(self, error, state):
        self.error = error or {"kind": "error", "cause": "The segmentation failed.", "fix": ""}
        if self.review_dir is not None:
            shutil.rmtree(self.review_dir, ignore_errors=True)
            self.review_dir = None
        self.timings["total"] = time.perf_counter() - self._t0 if self._t0 else 0.0
        self._cleanup()
        self.state = state
        self._emit(self.error if self.error.get("event") else {"event": "error", **self.error})

    def _cleanup(self):
        if self.tmpdir is not None:
            for _ in range(20):  # Windows keeps files of a just-killed process locked for a moment
                shutil.rmtree(self.tmpdir, ignore_errors=True)
                if not self.tmpdir.exists():
                    break
                time.sleep(0.1)
            self.tmpdir = None

    def _emit(self, event):
        if event.get("event") == "progress":
            self.stage = event.get("stage", self.stage)
            self.overall = event.get("overall", self.overall)
            self.message = event.get("message", "")
        if self.on_event is not None:
            self.on_event(event)
