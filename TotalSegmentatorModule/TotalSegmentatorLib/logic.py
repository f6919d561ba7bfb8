"""The module's logic: everything the panel and the Python console do, without Qt.

In Slicer's Python console:

    logic = slicer.util.getModuleLogic("TotalSegmentator")   # the panel's logic: its worker, its settings
    seg = logic.process(volumeNode, task="total", quality="fast")                     # blocks
    seg = logic.process(volumeNode, seg, roiSubset=["liver", "spleen"], device="cuda:0")
    op = logic.processAsync(volumeNode, task="total_mr")     # an Operation: poll() it, cancel() it

    logic.serverUrl = "https://gpu.hospital.org:8470"        # a segmentation server runs the models:
    logic.serverCaCert = "hospital-ca.pem"                   # (optional: your organisation's CA)
    logic.setServerToken("the token from the admin")         # kept in a private file, never logged
    seg = logic.process(volumeNode, task="total", device="remote")   # nothing installed here

Every background operation (segmentation, install, weights, devices, a vessel-review
edit) is an `Operation` (operation.py): one interface for the panel. The logic imports
no Qt, so it runs and is tested with slicer-core in plain Python.
"""
import logging
import os
import shutil
import tempfile
from pathlib import Path

import slicer
from SegmentationLogic import weights
from SegmentationLogic.errors import SegmentationError
from SegmentationLogic.imaging.modality import guess_modality
from SegmentationLogic.mrml import scene as mrml_scene
from SegmentationLogic.server import tokens
from SegmentationLogic.server.client import ServerConnectionError, ServerTLSError, check_url

from . import dependencies, installation
from .choices import REMOTE
from .job import SegmentationJob
from .review_edit import ReviewEdit
from .runner import ProcessRun, WorkerEngine, engine_command, engine_environment

MODULE_NAME = "TotalSegmentator"


def log_event(event):
    """Engine events to Slicer's log (console and batch use)."""
    if event.get("event") == "log":
        logging.info(event.get("message", ""))
    elif event.get("event") == "progress" and event.get("message"):
        logging.info(f"[{event.get('stage')}] {event['message']}")


def _raise_unless_succeeded(operation, what):
    if operation.outcome != "succeeded":
        error = operation.error or {}
        raise SegmentationError(error.get("cause", f"{what} failed."), error.get("fix", ""))
    return operation


class TotalSegmentatorLogic:
    """Segment volumes with TotalSegmentator models; usable without the GUI.

    keepModelsLoaded: one engine worker stays between runs with its models loaded (else each
    run starts and ends its own). weightsFolder: where the model weights are (None: the
    official default, TOTALSEG_HOME_DIR / TOTALSEG_WEIGHTS_PATH). Errors are
    `SegmentationError`s with `.cause` and `.fix`.

    Device "remote" runs on a segmentation server (`python -m SegmentationLogic serve`):
    serverUrl (https://HOST:PORT), serverCaCert (optional PEM of the authority that signed
    the server's certificate), the access token from serverTokenFile, else
    $TOTALSEG_SERVER_TOKEN, else ~/.totalsegmentator/server_token (`setServerToken` writes
    it). Such a run needs nothing beyond what Slicer ships (no PyTorch, nnU-Net or nibabel).
    """

    def __init__(self, keepModelsLoaded=True, weightsFolder=None, serverUrl=None, serverCaCert=None,
                 serverTokenFile=None):
        self._keepModelsLoaded = bool(keepModelsLoaded)
        self.weightsFolder = weightsFolder or None
        self.serverUrl = serverUrl or None
        self.serverCaCert = serverCaCert or None
        self.serverTokenFile = serverTokenFile or None
        self.worker = None  # the persistent engine worker (keepModelsLoaded)
        self._operations = []  # started and maybe still running (cancelAll)
        self._reviewPointNodes = {}
        # Liver-vessel outputs kept while their split is reviewed (re-runs need the support masks);
        # removed by cleanup() (Slicer quits).
        self.reviewRoot = os.path.join(tempfile.gettempdir(), f"TotalSegmentator-review-{os.getpid()}")

    @property
    def keepModelsLoaded(self):
        return self._keepModelsLoaded

    @keepModelsLoaded.setter
    def keepModelsLoaded(self, on):
        self._keepModelsLoaded = bool(on)
        if not on:
            self.shutdownWorker()

    def getParameterNode(self, scene=None):
        """The module's parameter node (vtkMRMLScriptedModuleNode) in `scene` (default: Slicer's scene)."""
        scene = scene if scene is not None else slicer.mrmlScene
        return mrml_scene.singleton_parameter_node(scene, MODULE_NAME)

    # -- engine worker ----------------------------------------------------------------------
    def _engine(self):
        """The persistent worker, or a new one-shot worker when models are not kept loaded."""
        if not self.keepModelsLoaded:
            return WorkerEngine(keep_alive=False)
        if self.worker is None:
            self.worker = WorkerEngine()
        return self.worker

    def _track(self, operation):
        self._operations = [op for op in self._operations if not op.done] + [operation]
        return operation

    def shutdownWorker(self):
        """Free the loaded models (the next run starts a new engine process)."""
        if self.worker is not None:
            self.worker.shutdown()
            self.worker = None

    def cancelAll(self):
        """Cancel every operation still running (the module is closed or reloaded, Slicer quits)."""
        for operation in self._operations:
            operation.cancel()
        self._operations = []

    def cleanup(self):
        """End the worker and remove the review folders (Slicer is quitting)."""
        self.cancelAll()
        self.shutdownWorker()
        shutil.rmtree(self.reviewRoot, ignore_errors=True)

    def detectDevicesAsync(self):
        """An operation whose result is {"devices": [{"id", "name", "memory_gb"}]} (starts the engine)."""
        return self._track(self._engine().submit("devices", description="devices"))

    # -- segmentation server (device "remote") -------------------------------------------------
    def setServerToken(self, token):
        """Keep the server's access token for later runs, in a file only this user can read
        (serverTokenFile, default ~/.totalsegmentator/server_token); returns its path. The token
        is never logged or shown."""
        return tokens.store_token(token, self.serverTokenFile)

    def hasServerToken(self):
        """Whether a run would send an access token (the token file, $TOTALSEG_SERVER_TOKEN or the default file)."""
        try:
            return tokens.token_from(token_file=self.serverTokenFile, use_default_file=True) is not None
        except SegmentationError:  # an unusable file: a run says why
            return True

    def remoteSettings(self):
        """What the engine worker needs for a run on the server ({"url", "token_file", "ca_cert"}), checked."""
        if not self.serverUrl:
            raise ServerConnectionError("No segmentation server is set.",
                                        "Enter the server's URL under Device > Remote server (Python: "
                                        "logic.serverUrl = 'https://host:port'), as the server's admin gave it.")
        url = check_url(self.serverUrl)
        ca_cert = Path(self.serverCaCert).expanduser() if self.serverCaCert else None
        if ca_cert is not None and not ca_cert.is_file():
            raise ServerTLSError(f"The CA certificate file {ca_cert} does not exist.",
                                 "Choose the certificate (PEM) your server's admin gave you, or clear the field if "
                                 "the server's certificate comes from an authority this computer trusts.")
        return {"url": url, "token_file": self.serverTokenFile, "ca_cert": str(ca_cert) if ca_cert else None}

    def checkServerAsync(self):
        """Ask the server who it is (URL, certificate and token checked; no image sent); the operation's
        result: {"url", "version", "device", "jobs", ...}."""
        return self._track(self._engine().submit("server.info", remote=self.remoteSettings(), description="server"))

    def checkServer(self, timeout=60):
        """As checkServerAsync, blocking; returns the server's information."""
        return _raise_unless_succeeded(self.checkServerAsync().wait(timeout=timeout), "Connecting to the server").result

    # -- segmentation ----------------------------------------------------------------------
    def process(self, volumeNode, segmentationNode=None, task="total", quality="fast", roiSubset=None,
                device="auto", useStandardNames=True, createSurfaces=True, splitLiverVessels=False,
                installDependencies=True, timeout=None, checkModality=True):
        """Segment `volumeNode` and return the segmentation node (blocks until done).

        :param volumeNode: scalar volume to segment (CT or MR, matching the task).
        :param segmentationNode: segmentation whose segments are replaced; None creates "<volume> segmentation".
        :param task: a TotalSegmentator task, e.g. "total", "total_mr", "liver_vessels", "lung_vessels".
        :param quality: "normal" (1.5 mm), "fast" (3 mm) or "fastest" (6 mm), where the task has them.
        :param roiSubset: class names to segment, e.g. ["liver", "spleen"] (total / total_mr only); None: all.
        :param device: "auto", "cpu", "cuda", "cuda:N", "mps", or "remote": the segmentation server at
            `logic.serverUrl` (see the class; needs no Python packages beyond Slicer's).
        :param useStandardNames: segment names from standard terminology (False: TotalSegmentator class names).
        :param createSurfaces: create closed surfaces so the result shows in 3D at once.
        :param splitLiverVessels: task "liver_vessels" only: split portal and hepatic veins (for review).
        :param installDependencies: install missing Python packages first (False: raise instead).
        :param timeout: seconds after which the run is cancelled (None: no limit).
        :param checkModality: refuse a CT task on a volume that does not look like CT (False: run anyway).
        :raises SegmentationError: with `.cause` and `.fix`; the scene is unchanged on failure or cancel.
        """
        plan = self.dependencyPlan(remote=device == REMOTE)
        if not plan.nothing_to_do:
            if not installDependencies:
                raise SegmentationError("Python packages the engine needs are missing:\n" + plan.summary(),
                                        "Call logic.installDependencies() or pass installDependencies=True.")
            self.installDependencies(plan)
        job = self.processAsync(volumeNode, segmentationNode, task=task, quality=quality, roiSubset=roiSubset,
                                device=device, useStandardNames=useStandardNames, createSurfaces=createSurfaces,
                                splitLiverVessels=splitLiverVessels, checkModality=checkModality)
        _raise_unless_succeeded(job.wait(timeout=timeout, on_event=log_event), "The segmentation")
        logging.info(f"TotalSegmentator {task}: {job.segmentation_node.GetSegmentation().GetNumberOfSegments()} "
                     f"segments in {job.timings.get('total', 0):.1f} s")
        return job.segmentation_node

    def processAsync(self, volumeNode, segmentationNode=None, task="total", quality="fast", roiSubset=None,
                     device="auto", useStandardNames=True, createSurfaces=True, splitLiverVessels=False,
                     checkModality=True):
        """Start a segmentation in the background; returns its SegmentationJob (an Operation)."""
        remote = self.remoteSettings() if device == REMOTE else None
        job = SegmentationJob(volumeNode, segmentationNode, task=task, quality=quality, roi_subset=roiSubset,
                              device=device, use_standard_names=useStandardNames, create_surfaces=createSurfaces,
                              weights_dir=self.weightsFolder, split_liver_vessels=splitLiverVessels,
                              review_root=self.reviewRoot,
                              worker=self._engine() if self.keepModelsLoaded else None,
                              check_modality=checkModality, remote=remote)
        return self._track(job.start())

    @staticmethod
    def volumeModality(volumeNode):
        """("CT" | "MR", confidence, reason) guessed from the intensities, or None (for the panel's warning)."""
        if volumeNode is None or volumeNode.GetImageData() is None:
            return None
        try:  # numpy only: the panel warns before the engine's other packages are installed
            return guess_modality(slicer.util.arrayFromVolume(volumeNode))
        except Exception:  # a warning helper must never break the panel
            return None

    # -- dependencies ----------------------------------------------------------------------
    def dependencyPlan(self, reinstall=False, remote=False):
        """What is missing; packages kept because another extension installed them are logged every time.
        remote: for a run on a segmentation server (only what Slicer ships; PyTorch and the engine's
        packages are not needed)."""
        plan = dependencies.plan_install(reinstall=reinstall, remote=remote)
        for warning in plan.warnings():
            logging.warning(warning)
        return plan

    def installDependenciesAsync(self, plan):
        """Install what `plan` lists in the background; its result["restart"] names packages Slicer must
        restart for (empty: use them at once)."""
        installation.check(plan)
        if plan.reinstall_packages:
            self.shutdownWorker()  # it holds the packages open
        return self._track(installation.InstallOperation(plan))

    def installDependencies(self, plan=None):
        """Install what `plan` (default: dependencyPlan()) lists, blocking; raises if Slicer must restart."""
        operation = self.installDependenciesAsync(plan or self.dependencyPlan())
        _raise_unless_succeeded(operation.wait(on_event=log_event), "Installing Python packages")
        if operation.result["restart"]:
            raise SegmentationError("Python packages were updated that this Slicer session had already loaded ("
                                    + ", ".join(operation.result["restart"]) + ").", "Restart Slicer, then run again.")

    # -- weights and licence ---------------------------------------------------------------
    def _engineRun(self, *args, description=""):
        extra = ["--weights_dir", self.weightsFolder] if self.weightsFolder else []
        return self._track(ProcessRun(engine_command(*args, *extra, "--progress", "json"), env=engine_environment(),
                                      description=description))

    def downloadWeightsAsync(self, task, quality="normal", roiSubset=None):
        args = ["download-weights", "--task", task]
        if quality in ("fast", "fastest"):
            args.append(f"--{quality}")
        if roiSubset:
            args += ["--roi_subset", *roiSubset]
        return self._engineRun(*args, description=f"download {task}")

    def importWeightsAsync(self, path):
        return self._engineRun("import-weights", path, description="import weights")

    def setLicense(self, key):
        return weights.set_license(key)

    def licenseDisplay(self):
        """The stored licence key, masked (never the key itself), or None."""
        try:
            return weights.get_license()
        except Exception:
            return None

    # -- liver vessel review ---------------------------------------------------------------
    def reviewPointsNode(self, name, color, single=False, scene=None):
        """The markups node the user places `name` points in (created on first use in `scene`,
        default Slicer's scene)."""
        node = self._reviewPointNodes.get(name)
        if node is None or node.GetScene() is None:
            scene = scene if scene is not None else slicer.mrmlScene
            node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", f"TotalSegmentator {name}")
            node.CreateDefaultDisplayNodes()
            node.GetDisplayNode().SetSelectedColor(*color)
            if single:
                node.SetMaximumNumberOfControlPoints(1)
            self._reviewPointNodes[name] = node
        return node

    def reviewPoints(self, name):
        """The RAS positions of the `name` points (world coordinates)."""
        node = self._reviewPointNodes.get(name)
        if node is None or node.GetScene() is None:
            return []
        points = []
        for i in range(node.GetNumberOfControlPoints()):
            point = [0.0, 0.0, 0.0]
            node.GetNthControlPointPositionWorld(i, point)
            points.append(point)
        return points

    def reassignBranchAsync(self, segmentationNode, pointRas, scope="branch", to=None):
        """Flip the branch (or subtree) at a point to the other class, in the engine worker."""
        return self._track(ReviewEdit(self._engine(), segmentationNode, "vessels.reassign", point_ras=list(pointRas),
                                      scope=scope, to=to).start())

    def rerunSplitAsync(self, segmentationNode, portalPointsRas=(), hepaticPointsRas=()):
        """Split the vessels again with the user's seed points, in the engine worker."""
        return self._track(ReviewEdit(self._engine(), segmentationNode, "vessels.resplit",
                                      portal_points_ras=[list(p) for p in portalPointsRas],
                                      hepatic_points_ras=[list(p) for p in hepaticPointsRas]).start())

    def reassignBranch(self, segmentationNode, pointRas, scope="branch", to=None, timeout=None):
        """As reassignBranchAsync, blocking; returns the updated QC."""
        operation = self.reassignBranchAsync(segmentationNode, pointRas, scope, to)
        return _raise_unless_succeeded(operation.wait(timeout=timeout), "Reassigning the branch").result["qc"]

    def rerunSplit(self, segmentationNode, portalPointsRas=(), hepaticPointsRas=(), timeout=None):
        """As rerunSplitAsync, blocking; returns the new QC."""
        operation = self.rerunSplitAsync(segmentationNode, portalPointsRas, hepaticPointsRas)
        return _raise_unless_succeeded(operation.wait(timeout=timeout), "Splitting again").result["qc"]

    def saveReview(self, segmentationNode, folder):
        """Write the reviewed split (NIfTI files, metadata with QC, .seg.nrrd); returns the paths."""
        from SegmentationLogic.mrml import vessel_review  # reads NIfTI: nibabel is installed on first use
        return vessel_review.save_review(segmentationNode, folder)
