"""TotalSegmentator for 3D Slicer: whole-body CT/MR segmentation with nnU-Net models.

This file: the module's metadata and start-up (terminology contexts, the Slicer version,
another module of the same name), the panel's wiring, and the self-test. The logic is
TotalSegmentatorLib/logic.py (no Qt; the documented Python entry point), the engine is
SegmentationLogic/.

Python console:

    logic = slicer.util.getModuleLogic("TotalSegmentator")
    seg = logic.process(volumeNode, task="total", quality="fast")               # blocks
    seg = logic.process(volumeNode, seg, roiSubset=["liver", "spleen"], device="cuda:0")
    logic.serverUrl = "https://gpu.hospital.org:8470"                            # a segmentation server
    seg = logic.process(volumeNode, task="total", device="remote")               # (token: logic.setServerToken)
"""
import logging
import os
import shutil
import sys
import tempfile
from types import SimpleNamespace

import qt
import vtk

import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

MODULE_DIR = os.path.dirname(os.path.abspath(__file__))
for _folder in (MODULE_DIR, os.path.dirname(MODULE_DIR)):  # installed: beside this file; source tree: one up
    if os.path.isdir(os.path.join(_folder, "SegmentationLogic")):
        if _folder not in sys.path:
            sys.path.insert(0, _folder)
        break

from SegmentationLogic.mrml import compat  # noqa: E402
from TotalSegmentatorLib import startup  # noqa: E402

# On an unsupported Slicer the module still loads, to say which version it needs.
VERSION_PROBLEM = compat.version_problem(compat.slicer_version())
if VERSION_PROBLEM is None:
    from SegmentationLogic import terminology  # noqa: E402
    from SegmentationLogic.catalogue import load_catalogue  # noqa: E402
    from SegmentationLogic.errors import SegmentationError  # noqa: E402
    from SegmentationLogic.mrml.segmentation_import import import_labelmap  # noqa: E402
    from SegmentationLogic.mrml.terminology import register_with_slicer  # noqa: E402
    from TotalSegmentatorLib import choices, sections, selftest  # noqa: E402
    from TotalSegmentatorLib.logic import TotalSegmentatorLogic  # noqa: E402
    from TotalSegmentatorLib.operation import CANCELLED  # noqa: E402


def resourcePath(*parts):
    """A file in Resources/: next to the module when installed, one level up in a source checkout."""
    for base in (MODULE_DIR, os.path.dirname(MODULE_DIR)):
        if os.path.exists(os.path.join(base, "Resources", *parts)):
            return os.path.join(base, "Resources", *parts)
    return os.path.join(MODULE_DIR, "Resources", *parts)


def _setting(name, default=None):
    return qt.QSettings().value(f"TotalSegmentator/{name}", default)


def _setSetting(name, value):
    qt.QSettings().setValue(f"TotalSegmentator/{name}", value)


def registerTerminology():
    """Our terminology contexts in Slicer's Terminologies logic (idempotent), so its selector resolves our segments."""
    try:
        register_with_slicer(slicer.modules.terminologies.logic())
    except Exception as e:  # the segments keep their names and colours; only the selector cannot resolve them
        logging.error(f"TotalSegmentator: terminology contexts not loaded: {e}")


def nameClash():
    """The message for another module named TotalSegmentator on Slicer's module paths, else None."""
    return startup.name_clash(slicer.app.moduleManager().factoryManager().searchPaths, __file__)


_sharedLogic = None


def sharedLogic():
    """One logic per Slicer session: the panel and the console share its worker (loaded models) and settings."""
    global _sharedLogic
    if _sharedLogic is None:
        _sharedLogic = TotalSegmentatorLogic(keepModelsLoaded=slicer.util.toBool(_setting("KeepModelsLoaded", True)),
                                             weightsFolder=_setting("WeightsFolder", "") or None,
                                             serverUrl=_setting("ServerURL", "") or None,
                                             serverCaCert=_setting("ServerCACert", "") or None)
        if getattr(slicer, "app", None) is not None:
            slicer.app.connect("aboutToQuit()", _shutdownSharedLogic)
    return _sharedLogic


def _shutdownSharedLogic():
    global _sharedLogic
    if _sharedLogic is not None:
        _sharedLogic.cleanup()
        _sharedLogic = None


class TotalSegmentator(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("TotalSegmentator")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["TotalSegmentator Slicer extension developers"]
        self.parent.helpText = _("""
Fully automatic segmentation of CT and MR images into up to 117 anatomical structures with the
TotalSegmentator nnU-Net models, and a portal / hepatic vein split of the liver vessels.
<p>Select the volume, the task (CT or MR), the quality, optionally a subset of structures, and click
<b>Apply</b>. Slicer stays responsive: the segmentation runs in a background process that shows its progress
and can be cancelled. The first run installs the Python packages it needs and downloads the model weights.</p>
<p>Python console: <code>slicer.util.getModuleLogic("TotalSegmentator").process(volumeNode, task="total",
quality="fast")</code>. See the <a href="https://github.com/wasserth/TotalSegmentator">TotalSegmentator</a>
project for the models and the list of structures.</p>
<p>Supported: {supported}.</p>
""").format(supported=compat.SUPPORTED)
        self.parent.acknowledgementText = _("""
If you use this module in your work, please cite:
<ul>
<li>Wasserthal J., Breit H.-C., Meyer M.T., Pradella M., Hinck D., Sauter A.W., Heye T., Boll D., Cyriac J.,
Yang S., Bach M., Segeroth M. TotalSegmentator: Robust Segmentation of 104 Anatomic Structures in CT Images.
Radiology: Artificial Intelligence 2023; 5(5):e230024.
<a href="https://doi.org/10.1148/ryai.230024">https://doi.org/10.1148/ryai.230024</a></li>
<li>Isensee F., Jaeger P.F., Kohl S.A.A., Petersen J., Maier-Hein K.H. nnU-Net: a self-configuring method for
deep learning-based biomedical image segmentation. Nature Methods 2021; 18(2):203-211.
<a href="https://doi.org/10.1038/s41592-020-01008-z">https://doi.org/10.1038/s41592-020-01008-z</a></li>
</ul>
The TotalSegmentator models are developed by Jakob Wasserthal and colleagues (University Hospital Basel);
nnU-Net by the Division of Medical Image Computing, German Cancer Research Center (DKFZ). This extension
builds on 3D Slicer and its Segmentations, Terminologies and PyTorch infrastructure.
""")
        if os.path.isfile(resourcePath("Icons", "TotalSegmentator.png")):
            self.parent.icon = qt.QIcon(resourcePath("Icons", "TotalSegmentator.png"))
        if VERSION_PROBLEM:
            self.parent.helpText = f"<p><b>{VERSION_PROBLEM}</b></p>" + self.parent.helpText
            logging.error(VERSION_PROBLEM)
            return
        slicer.app.connect("startupCompleted()", self.onStartupCompleted)

    def onStartupCompleted(self):
        registerTerminology()
        clash = nameClash()
        if clash:
            logging.warning(clash)


@parameterNodeWrapper
class TotalSegmentatorParameterNode:
    """What the user chose; saved with the scene.

    inputVolume - volume to segment. outputSegmentation - segmentation to replace (None: a new one).
    task, quality (normal | fast | fastest), device (auto | cpu | cuda:N | mps | remote) - engine options
    (remote: the segmentation server set under Device; its URL and certificate are settings, not scene data).
    roiSubset - class names to segment (empty: all). useStandardNames - terminology names (else class names).
    createSurfaces - 3D surfaces right after the import. splitLiverVessels - liver_vessels: portal/hepatic split.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    task: str = "total"
    quality: str = "fast"
    device: str = "auto"
    roiSubset: list[str]
    useStandardNames: bool = True
    createSurfaces: bool = True
    splitLiverVessels: bool = False


class TotalSegmentatorWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Wires the panel to the parameter node and the logic; the structure list, Advanced and the
    vessel review are sections (TotalSegmentatorLib/sections.py) wired the same way."""

    # Every widget the panel touches, with its class in Resources/UI/TotalSegmentator.ui.
    # Testing/module/test_module_ui.py checks both against the .ui; setup() checks them in Slicer.
    UI_WIDGETS = {
        "inputsCollapsibleButton": "ctkCollapsibleButton", "inputVolumeSelector": "qMRMLNodeComboBox",
        "taskComboBox": "QComboBox", "modalityWarningLabel": "QLabel", "qualityLabel": "QLabel",
        "qualityWidget": "QWidget", "normalQualityRadioButton": "QRadioButton",
        "fastQualityRadioButton": "QRadioButton", "fastestQualityRadioButton": "QRadioButton",
        "deviceComboBox": "QComboBox", "splitLiverVesselsCheckBox": "QCheckBox",
        "remoteServerWidget": "QWidget", "serverUrlLineEdit": "QLineEdit", "serverTokenLineEdit": "QLineEdit",
        "serverCaCertPathLineEdit": "ctkPathLineEdit", "testServerButton": "QPushButton",
        "serverStatusLabel": "QLabel",
        "structuresCollapsibleButton": "ctkCollapsibleButton", "structureSearchBox": "ctkSearchBox",
        "structureListWidget": "QListWidget", "structureSelectionLabel": "QLabel",
        "clearStructuresButton": "QPushButton", "structuresUnavailableLabel": "QLabel",
        "outputSegmentationSelector": "qMRMLNodeComboBox", "segmentationShow3DButton": "qMRMLSegmentationShow3DButton",
        "applyButton": "QPushButton", "progressBar": "QProgressBar", "statusLabel": "QLabel",
        "logTextEdit": "QPlainTextEdit", "advancedCollapsibleButton": "ctkCollapsibleButton",
        "keepModelsLoadedCheckBox": "QCheckBox", "licenseKeyLabel": "QLabel", "setLicenseButton": "QPushButton",
        "weightsFolderPathLineEdit": "ctkPathLineEdit", "downloadWeightsButton": "QPushButton",
        "importWeightsZipButton": "QPushButton", "importWeightsFolderButton": "QPushButton",
        "packageVersionsLabel": "QLabel", "reinstallDependenciesButton": "QPushButton",
        "vesselReviewCollapsibleButton": "ctkCollapsibleButton", "vesselQCTableWidget": "QTableWidget",
        "vesselWarningsLabel": "QLabel", "showConfidenceCheckBox": "QCheckBox", "unsureSummaryLabel": "QLabel",
        "unsurePiecesTableWidget": "QTableWidget", "reassignPointPlaceWidget": "qSlicerMarkupsPlaceWidget",
        "subtreeScopeRadioButton": "QRadioButton", "reassignButton": "QPushButton",
        "portalSeedsPlaceWidget": "qSlicerMarkupsPlaceWidget", "hepaticSeedsPlaceWidget": "qSlicerMarkupsPlaceWidget",
        "rerunSplitButton": "QPushButton", "saveReviewButton": "QPushButton",
    }
    QUALITY_BUTTONS = {"normal": "normalQualityRadioButton", "fast": "fastQualityRadioButton",
                       "fastest": "fastestQualityRadioButton"}

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = self._parameterNode = self._parameterNodeGuiTag = None
        self._updatingGUI = False
        self._operation = self._onOperationDone = None  # the background operation the panel shows
        self._modalityGuesses = {}

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        if VERSION_PROBLEM:
            label = qt.QLabel(VERSION_PROBLEM)
            label.setWordWrap(True)
            self.layout.addWidget(label)
            return
        uiWidget = slicer.util.loadUI(resourcePath("UI", "TotalSegmentator.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        problems = [f"{name}: missing or not a {className}" for name, className in self.UI_WIDGETS.items()
                    if getattr(self.ui, name, None) is None or not getattr(self.ui, name).inherits(className)]
        if problems:  # fail loudly now, not with an AttributeError later
            raise RuntimeError("TotalSegmentator.ui does not match the module: " + "; ".join(problems))
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = sharedLogic()
        registerTerminology()  # also when the module is loaded after start-up (idempotent)
        self.pollTimer = qt.QTimer()
        self.pollTimer.setInterval(100)
        self.pollTimer.connect("timeout()", self.onPollTimer)
        self.devices = sections.DeviceList(self)
        self.remoteServer = sections.RemoteServerSection(self, _setSetting)
        self.structures = sections.StructuresSection(self)
        self.advanced = sections.AdvancedSection(self, _setSetting)
        self.vesselReview = sections.VesselReviewSection(self)

        for index, item in enumerate(choices.task_items()):
            self.ui.taskComboBox.addItem(item.text, item.name)
            self.ui.taskComboBox.setItemData(index, item.tooltip, qt.Qt.ToolTipRole)
        self.ui.progressBar.setVisible(False)
        self.ui.modalityWarningLabel.setVisible(False)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.taskComboBox.connect("currentIndexChanged(int)", self.onTaskChanged)
        for quality, name in self.QUALITY_BUTTONS.items():
            getattr(self.ui, name).connect("toggled(bool)", lambda on, q=quality: on and self.setParameters(quality=q))
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onInputVolumeChanged)
        self.ui.outputSegmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onOutputChanged)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.initializeParameterNode()
        clash = nameClash() if getattr(slicer, "app", None) is not None else None
        if clash:
            self.showError(_("Two TotalSegmentator modules are installed."), {"cause": clash}, dialog=False)

    def cleanup(self):
        if VERSION_PROBLEM:
            return
        self.pollTimer.stop()
        for operation in (self._operation, self.devices.probe):
            if operation is not None:
                operation.cancel()
        self.setParameterNode(None)
        self.removeObservers()

    def onReload(self):
        """Reload the library and the engine with this file (Slicer itself reloads only this file)."""
        _shutdownSharedLogic()  # its worker runs the old code
        for name in [n for n in sys.modules if n.split(".")[0] in ("TotalSegmentatorLib", "SegmentationLogic")]:
            del sys.modules[name]
        super().onReload()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event):
        # A running segmentation or vessel edit stops itself (it watches its scene and nodes).
        self.setParameterNode(None)
        self.vesselReview.hide()

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    @property
    def _reviewNode(self):
        return self.vesselReview.node

    # -- parameter node -----------------------------------------------------------------
    @property
    def parameterNode(self):
        return self._parameterNode

    def initializeParameterNode(self):
        self.setParameterNode(TotalSegmentatorParameterNode(self.logic.getParameterNode(slicer.mrmlScene)))
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def setParameterNode(self, parameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
            self.updateGUIFromParameterNode()

    def setParameters(self, **values):
        """Store what a control changed (the control already shows it)."""
        if self._parameterNode is None or self._updatingGUI:
            return
        self._updatingGUI = True
        try:
            with slicer.util.NodeModify(self._parameterNode):
                for name, value in values.items():
                    setattr(self._parameterNode, name, value)
        finally:
            self._updatingGUI = False

    def updateGUIFromParameterNode(self, caller=None, event=None):
        """Show the task-dependent controls for the current parameters."""
        p = self._parameterNode
        if p is None or self._updatingGUI:
            return
        self._updatingGUI = True
        try:
            taskIndex = self.ui.taskComboBox.findData(p.task)
            self.ui.taskComboBox.currentIndex = taskIndex if taskIndex >= 0 else self.ui.taskComboBox.findData("total")
            task = self.ui.taskComboBox.itemData(self.ui.taskComboBox.currentIndex)
            qualities = choices.qualities_for(task)
            for quality, name in self.QUALITY_BUTTONS.items():
                getattr(self.ui, name).setVisible(quality in qualities)
            self.ui.qualityLabel.setVisible(len(qualities) > 1)
            self.ui.qualityWidget.setVisible(len(qualities) > 1)
            getattr(self.ui, self.QUALITY_BUTTONS[choices.best_quality(task, p.quality)]).checked = True
            self.ui.deviceComboBox.currentIndex = max(self.ui.deviceComboBox.findData(p.device), 0)
            self.remoteServer.show(p.device == choices.REMOTE)
            self.ui.splitLiverVesselsCheckBox.setVisible(task == "liver_vessels")
            self.structures.show(task, list(p.roiSubset))
            self._updateModalityWarning()
            self._updateApplyButton()
        finally:
            self._updatingGUI = False

    def onTaskChanged(self, index):
        task = self.ui.taskComboBox.itemData(index)
        if self._parameterNode and not self._updatingGUI:  # other task, other structures
            with slicer.util.NodeModify(self._parameterNode):
                self._parameterNode.task, self._parameterNode.roiSubset = task, []
                self._parameterNode.splitLiverVessels &= task == "liver_vessels"

    def onDeviceChanged(self, index):
        if index >= 0:
            device = self.ui.deviceComboBox.itemData(index)
            self.setParameters(device=device)
            self.remoteServer.show(device == choices.REMOTE)  # setParameters does not redraw the panel

    def onInputVolumeChanged(self, node):
        self._updateModalityWarning()
        self._updateApplyButton()

    def onOutputChanged(self, node):
        self.ui.segmentationShow3DButton.setSegmentationNode(node)

    def _updateModalityWarning(self):
        p, text = self._parameterNode, None
        if p is not None and p.inputVolume is not None:
            image = p.inputVolume.GetImageData()
            key = (p.inputVolume.GetID(), image.GetMTime() if image is not None else 0)
            if key not in self._modalityGuesses:  # the guess reads voxels: once per volume content
                self._modalityGuesses[key] = self.logic.volumeModality(p.inputVolume)
            text = choices.modality_warning(p.task, self._modalityGuesses[key])
        self.ui.modalityWarningLabel.text = text or ""
        self.ui.modalityWarningLabel.setVisible(bool(text))

    def _updateApplyButton(self):
        running = self._operation is not None
        ready = self._parameterNode is not None and self._parameterNode.inputVolume is not None
        self.ui.applyButton.text = _("Cancel") if running else _("Apply")
        self.ui.applyButton.enabled = running or ready
        self.ui.applyButton.toolTip = (_("Stop the running operation. Nothing is added to the scene.") if running
                                       else _("Segment the input volume.") if ready else _("Select an input volume."))
        for widget in (self.ui.inputsCollapsibleButton, self.ui.structuresCollapsibleButton,
                       self.ui.outputSegmentationSelector, self.ui.downloadWeightsButton,
                       self.ui.importWeightsZipButton, self.ui.importWeightsFolderButton,
                       self.ui.reinstallDependenciesButton, self.ui.setLicenseButton,
                       self.ui.weightsFolderPathLineEdit, self.ui.reassignButton, self.ui.rerunSplitButton,
                       self.ui.testServerButton):
            widget.enabled = not running

    # -- operations: one display for every background operation --------------------------
    def onApplyButton(self):
        if self._operation is not None:
            self.addLog(_("Cancelling..."))
            self._operation.cancel()
            self.onPollTimer()
            return
        p = self._parameterNode
        remote = p.device == choices.REMOTE  # a server runs it: nothing to install, no devices to detect here
        if remote and not self.remoteServer.commit():
            return
        if not self.advanced.ensureDependencies(then=self.onApplyButton, remote=remote):
            return
        # The engine refuses a CT task on a volume that is clearly not CT; the user who sees
        # the warning and knows better (e.g. unusual intensity scaling) confirms and runs anyway.
        warning = self.ui.modalityWarningLabel.text
        if warning and not slicer.util.confirmOkCancelDisplay(warning + "\n\n" + _("Segment this volume anyway?"),
                                                              windowTitle=_("Volume and task do not match")):
            return
        self.addLog("-" * 40)  # keep earlier output (e.g. the first-run install) above
        if self.logic.keepModelsLoaded and not remote:
            self.devices.detect()  # queued first: the worker answers as soon as it has started
        try:
            job = self.logic.processAsync(
                p.inputVolume, p.outputSegmentation, task=p.task, quality=choices.best_quality(p.task, p.quality),
                roiSubset=list(p.roiSubset), device=p.device, useStandardNames=p.useStandardNames,
                createSurfaces=p.createSurfaces, splitLiverVessels=p.splitLiverVessels and p.task == "liver_vessels",
                checkModality=not warning)
        except SegmentationError as e:
            self.showError(_("Cannot start the segmentation."), {"cause": e.cause, "fix": e.fix})
            return
        title = (_("Segmenting '{name}' ({task}) on {url}") if remote else _("Segmenting '{name}' ({task})"))
        self.showOperation(job, self.onSegmentationDone, title.format(name=p.inputVolume.GetName(), task=p.task,
                                                                      url=self.logic.serverUrl))

    def showOperation(self, operation, onDone, title):
        """Follow a background operation: progress, log, Apply turns into Cancel; onDone(operation) at the end."""
        self._operation, self._onOperationDone = operation, onDone
        self.ui.progressBar.setVisible(True)
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = title
        self.addLog(title)
        self._updateApplyButton()
        self.pollTimer.start()

    def onPollTimer(self):
        """Show what the background operations did (QTimer, GUI thread; never waits on a process)."""
        self.devices.poll()
        operation = self._operation
        if operation is not None:
            for event in operation.poll():
                self.onEngineEvent(event)
            if operation.done:  # also when Cancel ended it at once
                self._operation = None
                self.ui.progressBar.setVisible(False)
                self._updateApplyButton()
                onDone, self._onOperationDone = self._onOperationDone, None
                onDone(operation)
        if self._operation is None and self.devices.probe is None:
            self.pollTimer.stop()

    def onEngineEvent(self, event):
        kind, stage, message = event.get("event"), (event.get("stage") or "").capitalize(), event.get("message") or ""
        if kind == "progress":
            if event.get("overall") is not None:
                self.ui.progressBar.value = int(round(100 * float(event["overall"])))
            self.ui.progressBar.format = f"{stage} %p%"
            self.ui.statusLabel.text = f"{stage}: {message}" if message else stage
            if message:
                self.addLog(f"[{event.get('stage')}] {message}")
        elif kind == "log":
            self.addLog(message)

    def onSegmentationDone(self, job):
        if job.outcome == "succeeded":
            # The output choice stays as the user left it: "Create new" keeps creating new
            # nodes, so a second task never overwrites the first one's result by surprise.
            self.ui.segmentationShow3DButton.setSegmentationNode(job.segmentation_node)
            self.ui.statusLabel.text = _("Done: {n} segments in {seconds:.1f} s").format(
                n=job.segmentation_node.GetSegmentation().GetNumberOfSegments(), seconds=job.timings.get("total", 0))
            self.addLog(self.ui.statusLabel.text)
            if job.split_liver_vessels:
                self.vesselReview.show(job.segmentation_node, job.vessel_qc)
        elif job.outcome == "cancelled":
            cause = job.error.get("cause", "")
            self.ui.statusLabel.text = _("Cancelled. Nothing was added to the scene.") + (
                "" if cause == CANCELLED["cause"] else f" {cause}")
            self.addLog(self.ui.statusLabel.text)
        else:
            self.ui.statusLabel.text = _("Failed: {cause}").format(cause=job.error.get("cause", ""))
            self.showError(_("Segmentation failed."), job.error)
        if not self.logic.keepModelsLoaded and job.remote is None:
            self.devices.detect()  # in its own engine process, now that the segmentation's has ended

    # -- messages --------------------------------------------------------------------------
    def addLog(self, text):
        self.ui.logTextEdit.appendPlainText(text)
        logging.info(text)

    def showError(self, title, error, dialog=True):
        """An error as the user needs it: what happened, and what to do about it."""
        error = error or {}
        cause, fix, details = error.get("cause", ""), error.get("fix", ""), error.get("details") or []
        text = f"{title}\n\n{cause}" + (f"\n\n{_('What to do')}: {fix}" if fix else "")
        self.addLog(text + "".join(f"\n  {line}" for line in details))
        if dialog:
            slicer.util.errorDisplay(text, windowTitle=_("TotalSegmentator"),
                                     **({"detailedText": "\n".join(details)} if details else {}))


class TotalSegmentatorTest(ScriptedLoadableModuleTest):
    """Slicer's self-test (ctest on the extension build machines, Developer Tools > Self Tests):
    no network, a CPU, well under two minutes.

    It makes its own phantom CT and a test model fitted to it in seconds
    (TotalSegmentatorLib/selftest.py), then runs the real engine through the logic. Where
    the engine's Python packages are not installed (the build machines) the engine test
    says so and is skipped. TOTALSEGMENTATOR_REAL_WEIGHTS_TEST=1 adds the real weights on
    Slicer's CTChest sample (downloads the sample and the weights: minutes).
    """

    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        tests = [self.test_StartUp, self.test_ImportPhantomLabels, self.test_SegmentPhantom]
        if os.environ.get("TOTALSEGMENTATOR_REAL_WEIGHTS_TEST"):
            tests.append(self.test_RealWeights)
        for test in tests:
            self.setUp()
            test()

    def _phantomVolume(self):
        hu, labels, affine = selftest.phantom()
        return slicer.util.addVolumeFromArray(hu.transpose(2, 1, 0), affine, name="Phantom CT"), labels, affine

    def _checkSegments(self, node, classes):
        """Every segment: a class of `classes`, its standard name, colour and terminology; surfaces for 3D."""
        segmentation = node.GetSegmentation()
        self.assertGreater(segmentation.GetNumberOfSegments(), 0)
        for i in range(segmentation.GetNumberOfSegments()):
            segment = segmentation.GetNthSegment(i)
            className = classes.get(segment.GetLabelValue())
            self.assertIsNotNone(className, f"segment {segment.GetName()} is not a class of the task")
            self.assertEqual(segment.GetName(), terminology.standard_name(className))
            self.assertEqual(compat.segment_terminology(segment), terminology.terminology_string(className))
            for got, wanted in zip(segment.GetColor(), terminology.recommended_color(className)):
                self.assertAlmostEqual(got, wanted, places=5)
        self.assertTrue(segmentation.ContainsRepresentation("Closed surface"), "surfaces for the 3D view")

    def test_StartUp(self):
        self.assertIsNone(VERSION_PROBLEM)
        registerTerminology()
        self.assertTrue(compat.is_terminology_context_loaded(slicer.modules.terminologies.logic(),
                                                             terminology.CONTEXT_NAME))
        if getattr(slicer, "app", None) is not None:
            self.delayDisplay(nameClash() or "No other module named TotalSegmentator")

    def test_ImportPhantomLabels(self):
        """The import path of every run, without the engine (works where its packages are missing)."""
        volume, labels, affine = self._phantomVolume()
        classes = load_catalogue().task(selftest.TASK).classes
        labelmap = SimpleNamespace(dataobj=labels, affine=affine)  # what nibabel gives, without nibabel
        node = import_labelmap(slicer.mrmlScene, labelmap, classes, reference_volume_node=volume)
        self._checkSegments(node, classes)
        self.assertEqual(node.GetSegmentation().GetNumberOfSegments(), len(selftest.ORGANS))
        self.assertEqual(node.GetNodeReferenceID(node.GetReferenceImageGeometryReferenceRole()), volume.GetID())
        self.delayDisplay("Import of a labelmap passed")

    def test_SegmentPhantom(self):
        """The real engine on the phantom with the self-test model: segment, re-run, cancel, errors, scene close."""
        plan = TotalSegmentatorLogic().dependencyPlan()
        if not plan.nothing_to_do:
            self.delayDisplay("Engine test skipped: the engine's Python packages are not installed:\n" + plan.summary())
            return
        weights = tempfile.mkdtemp(prefix="TotalSegmentator-selftest-")
        logic = TotalSegmentatorLogic(keepModelsLoaded=True, weightsFolder=weights)
        try:
            selftest.build_model(weights)
            volume, _labels, _affine = self._phantomVolume()
            options = {"task": selftest.TASK, "quality": selftest.QUALITY, "device": "cpu"}
            node = logic.process(volume, timeout=300, **options)
            self._checkSegments(node, load_catalogue().task(selftest.TASK).classes)
            self.assertIs(logic.process(volume, node, roiSubset=["liver"], timeout=300, **options), node)
            self.assertLessEqual(node.GetSegmentation().GetNumberOfSegments(), 1, "a re-run replaces the segments")
            with self.assertRaises(SegmentationError) as raised:
                logic.process(volume, roiSubset=["livre"], **options)
            self.assertIn("liver", raised.exception.fix)
            count = slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
            job = logic.processAsync(volume, **options)
            job.cancel()
            job.wait(timeout=60)
            self.assertEqual(job.outcome, "cancelled")
            self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"), count)
            job = logic.processAsync(volume, **options)
            slicer.mrmlScene.Clear(0)  # closing the scene stops the run
            job.wait(timeout=60)
            self.assertEqual(job.outcome, "cancelled")
            self.assertIsNone(job.tmpdir, "its temp folder is gone")
        finally:
            logic.cleanup()
            shutil.rmtree(weights, ignore_errors=True)
        self.delayDisplay("Segmentation with the self-test model passed")

    def test_RealWeights(self):
        """Optional: the real TotalSegmentator weights on Slicer's CTChest sample (network, minutes)."""
        import SampleData  # Slicer's sample data module: only this optional test downloads

        volume = SampleData.downloadSample("CTChest")
        node = sharedLogic().process(volume, task="total", quality="fast")
        names = [node.GetSegmentation().GetNthSegment(i).GetName()
                 for i in range(node.GetSegmentation().GetNumberOfSegments())]
        self.assertGreater(len(names), 10)
        self.assertTrue(any("lung" in name.lower() for name in names), names)
        self.delayDisplay("Real weights passed")
