"""TotalSegmentator for 3D Slicer: whole-body CT/MR segmentation with nnU-Net models.

Module, Widget (GUI wiring only), Logic (the documented Python entry point) and Test.
Everything that does not need Qt lives in TotalSegmentatorLib/ (runner, dependencies,
choices, job) and in the engine package SegmentationLogic/, both tested outside Slicer.

Python console:

    logic = slicer.util.getModuleLogic("TotalSegmentator")
    seg = logic.process(volumeNode, task="total", quality="fast")               # blocks
    seg = logic.process(volumeNode, seg, roiSubset=["liver", "spleen"], device="cuda:0")
"""
import logging
import os
import shutil
import sys
import tempfile

import ctk
import qt
import vtk

import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

try:
    from slicer.i18n import tr as _
    from slicer.i18n import translate
except ImportError:  # Slicer before 5.4
    def _(text):
        return text

    def translate(context, text):
        return text

from slicer.parameterNodeWrapper import parameterNodeWrapper

from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode

MODULE_DIR = os.path.dirname(os.path.abspath(__file__))


def _ensureEnginePath():
    """Make `SegmentationLogic` importable from a source checkout (installed, it sits next to this file)."""
    for folder in (MODULE_DIR, os.path.dirname(MODULE_DIR)):
        if os.path.isdir(os.path.join(folder, "SegmentationLogic")) and folder not in sys.path:
            sys.path.insert(0, folder)
            break


_ensureEnginePath()

from SegmentationLogic.errors import SegmentationError  # noqa: E402
from TotalSegmentatorLib import choices, dependencies  # noqa: E402
from TotalSegmentatorLib.job import SegmentationJob, volume_modality  # noqa: E402
from TotalSegmentatorLib.runner import ProcessRun, WorkerEngine, engine_command, engine_environment  # noqa: E402


def resourcePath(*parts):
    """A file in Resources/: next to the module when installed, one level up in a source checkout."""
    for base in (MODULE_DIR, os.path.dirname(MODULE_DIR)):
        candidate = os.path.join(base, "Resources", *parts)
        if os.path.exists(candidate):
            return candidate
    return os.path.join(MODULE_DIR, "Resources", *parts)


SETTINGS_KEY = "TotalSegmentator"


def _setting(name, default=None):
    return qt.QSettings().value(f"{SETTINGS_KEY}/{name}", default)


def _setSetting(name, value):
    qt.QSettings().setValue(f"{SETTINGS_KEY}/{name}", value)


#
# Module
#


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
""")
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
        iconPath = resourcePath("Icons", "TotalSegmentator.png")
        if os.path.isfile(iconPath):
            self.parent.icon = qt.QIcon(iconPath)
        slicer.app.connect("aboutToQuit()", _shutdownSharedLogic)


#
# Parameter node
#


@parameterNodeWrapper
class TotalSegmentatorParameterNode:
    """What the user chose; saved with the scene.

    inputVolume - volume to segment.
    outputSegmentation - segmentation to replace (None: create a new one on Apply).
    task, quality, device - engine options (quality: normal | fast | fastest; device: auto | cpu | cuda:N | mps).
    roiSubset - class names to segment (empty: all); only for tasks that support it.
    useStandardNames - segment names from standard terminology (else the TotalSegmentator class names).
    createSurfaces - create 3D surfaces right after the import.
    splitLiverVessels - for task liver_vessels: also split portal and hepatic veins for review.
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


#
# Widget
#


class TotalSegmentatorWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Wires the panel to the parameter node and the logic; holds no segmentation logic."""

    # Every widget this class touches, with its class in Resources/UI/TotalSegmentator.ui.
    # Testing/module/test_module_ui.py checks both against the .ui; setup() checks them in Slicer.
    UI_WIDGETS = {
        "inputsCollapsibleButton": "ctkCollapsibleButton",
        "inputVolumeSelector": "qMRMLNodeComboBox",
        "taskComboBox": "QComboBox",
        "modalityWarningLabel": "QLabel",
        "qualityLabel": "QLabel",
        "qualityWidget": "QWidget",
        "normalQualityRadioButton": "QRadioButton",
        "fastQualityRadioButton": "QRadioButton",
        "fastestQualityRadioButton": "QRadioButton",
        "deviceComboBox": "QComboBox",
        "splitLiverVesselsCheckBox": "QCheckBox",
        "structuresCollapsibleButton": "ctkCollapsibleButton",
        "structureSearchBox": "ctkSearchBox",
        "structureListWidget": "QListWidget",
        "structureSelectionLabel": "QLabel",
        "clearStructuresButton": "QPushButton",
        "structuresUnavailableLabel": "QLabel",
        "outputSegmentationSelector": "qMRMLNodeComboBox",
        "segmentationShow3DButton": "qMRMLSegmentationShow3DButton",
        "applyButton": "QPushButton",
        "progressBar": "QProgressBar",
        "statusLabel": "QLabel",
        "logTextEdit": "QPlainTextEdit",
        "advancedCollapsibleButton": "ctkCollapsibleButton",
        "keepModelsLoadedCheckBox": "QCheckBox",
        "licenseKeyLabel": "QLabel",
        "setLicenseButton": "QPushButton",
        "weightsFolderPathLineEdit": "ctkPathLineEdit",
        "downloadWeightsButton": "QPushButton",
        "importWeightsZipButton": "QPushButton",
        "importWeightsFolderButton": "QPushButton",
        "packageVersionsLabel": "QLabel",
        "reinstallDependenciesButton": "QPushButton",
        "vesselReviewCollapsibleButton": "ctkCollapsibleButton",
        "vesselQCTableWidget": "QTableWidget",
        "vesselWarningsLabel": "QLabel",
        "reassignPointPlaceWidget": "qSlicerMarkupsPlaceWidget",
        "subtreeScopeRadioButton": "QRadioButton",
        "reassignButton": "QPushButton",
        "portalSeedsPlaceWidget": "qSlicerMarkupsPlaceWidget",
        "hepaticSeedsPlaceWidget": "qSlicerMarkupsPlaceWidget",
        "rerunSplitButton": "QPushButton",
        "saveReviewButton": "QPushButton",
    }
    POLL_INTERVAL_MS = 100
    QUALITY_BUTTONS = {"normal": "normalQualityRadioButton", "fast": "fastQualityRadioButton",
                       "fastest": "fastestQualityRadioButton"}

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._updatingGUI = False
        self._operation = None  # the background run being shown: a SegmentationJob or a Run
        self._onOperationDone = None
        self._structureItems = []
        self._structureTask = None
        self._taskItems = []
        self._detectedDevices = None
        self._deviceProbe = None
        self._pollTimer = None
        self._reviewNode = None
        self._modalityGuesses = {}

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(resourcePath("UI", "TotalSegmentator.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        self._checkUiWidgets()
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = sharedLogic()

        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(self.POLL_INTERVAL_MS)
        self._pollTimer.connect("timeout()", self.onPollTimer)

        # Lists built from the engine's catalogue
        self._taskItems = choices.task_items()
        for index, item in enumerate(self._taskItems):
            self.ui.taskComboBox.addItem(item.text, item.name)
            self.ui.taskComboBox.setItemData(index, item.tooltip, qt.Qt.ToolTipRole)
        self._fillDeviceCombo()
        self.ui.weightsFolderPathLineEdit.filters = ctk.ctkPathLineEdit.Dirs
        self.ui.weightsFolderPathLineEdit.currentPath = _setting("WeightsFolder", "") or ""
        self.ui.keepModelsLoadedCheckBox.checked = slicer.util.toBool(_setting("KeepModelsLoaded", True))
        self.ui.progressBar.setVisible(False)
        self.ui.vesselReviewCollapsibleButton.setVisible(False)
        self.ui.modalityWarningLabel.setVisible(False)

        # Scene
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        # Inputs -> parameter node (node selectors and check boxes are connected by connectGui)
        self.ui.taskComboBox.connect("currentIndexChanged(int)", self.onTaskChanged)
        for quality, name in self.QUALITY_BUTTONS.items():
            getattr(self.ui, name).connect("toggled(bool)", lambda on, q=quality: on and self.onQualityChanged(q))
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onInputVolumeChanged)
        self.ui.outputSegmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onOutputChanged)
        self.ui.structureSearchBox.connect("textChanged(QString)", self.onStructureFilterChanged)
        self.ui.structureListWidget.connect("itemChanged(QListWidgetItem*)", self.onStructureItemChanged)
        self.ui.clearStructuresButton.connect("clicked(bool)", self.onClearStructures)

        # Actions
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.setLicenseButton.connect("clicked(bool)", self.onSetLicense)
        self.ui.weightsFolderPathLineEdit.connect("currentPathChanged(QString)", self.onWeightsFolderChanged)
        self.ui.keepModelsLoadedCheckBox.connect("toggled(bool)", self.onKeepModelsLoadedToggled)
        self.ui.downloadWeightsButton.connect("clicked(bool)", self.onDownloadWeights)
        self.ui.importWeightsZipButton.connect("clicked(bool)", self.onImportWeightsZip)
        self.ui.importWeightsFolderButton.connect("clicked(bool)", self.onImportWeightsFolder)
        self.ui.reinstallDependenciesButton.connect("clicked(bool)", self.onReinstallDependencies)
        self.ui.advancedCollapsibleButton.connect("contentsCollapsed(bool)", self.onAdvancedCollapsed)

        # Liver vessel review
        self.ui.reassignButton.connect("clicked(bool)", self.onReassignBranch)
        self.ui.rerunSplitButton.connect("clicked(bool)", self.onRerunSplit)
        self.ui.saveReviewButton.connect("clicked(bool)", self.onSaveReview)

        self.initializeParameterNode()
        self._updateLicenseLabel()
        self._startDeviceDetection()

    def _checkUiWidgets(self):
        """Fail loudly (not with an AttributeError later) if the .ui and this class disagree."""
        problems = []
        for name, className in self.UI_WIDGETS.items():
            widget = getattr(self.ui, name, None)
            if widget is None:
                problems.append(f"{name} missing")
            elif not widget.inherits(className):
                problems.append(f"{name} is a {widget.className()}, expected {className}")
        if problems:
            raise RuntimeError("TotalSegmentator.ui does not match the module: " + "; ".join(problems))

    def cleanup(self):
        self._pollTimer.stop()
        if self._operation is not None and not self._operation.done:
            self._operation.cancel()
        if self._deviceProbe is not None and not self._deviceProbe.done:
            self._deviceProbe.cancel()
        self.setParameterNode(None)
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)

    def onSceneStartClose(self, caller, event):
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    # -- parameter node -----------------------------------------------------------------
    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolume:
                self._parameterNode.inputVolume = firstVolume

    def setParameterNode(self, parameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
            self.updateGUIFromParameterNode()

    def updateGUIFromParameterNode(self, caller=None, event=None):
        """Show the task-dependent controls for the current parameters."""
        p = self._parameterNode
        if p is None or self._updatingGUI:
            return
        self._updatingGUI = True
        try:
            taskIndex = self.ui.taskComboBox.findData(p.task)
            if taskIndex < 0:
                taskIndex = self.ui.taskComboBox.findData("total")
            self.ui.taskComboBox.currentIndex = taskIndex
            task = self.ui.taskComboBox.itemData(taskIndex)

            qualities = choices.qualities_for(task)
            for quality, name in self.QUALITY_BUTTONS.items():
                getattr(self.ui, name).setVisible(quality in qualities)
            self.ui.qualityLabel.setVisible(len(qualities) > 1)
            self.ui.qualityWidget.setVisible(len(qualities) > 1)
            getattr(self.ui, self.QUALITY_BUTTONS[choices.best_quality(task, p.quality)]).checked = True

            deviceIndex = self.ui.deviceComboBox.findData(p.device)
            self.ui.deviceComboBox.currentIndex = deviceIndex if deviceIndex >= 0 else 0

            self.ui.splitLiverVesselsCheckBox.setVisible(task == "liver_vessels")
            self._fillStructureList(task, list(p.roiSubset))
            self._updateModalityWarning()
            self._updateApplyButton()
        finally:
            self._updatingGUI = False

    # -- inputs ----------------------------------------------------------------------------
    def onTaskChanged(self, index):
        if self._parameterNode and not self._updatingGUI:
            task = self.ui.taskComboBox.itemData(index)
            with slicer.util.NodeModify(self._parameterNode):
                self._parameterNode.task = task
                self._parameterNode.roiSubset = []  # other task, other structures
                if task != "liver_vessels":
                    self._parameterNode.splitLiverVessels = False

    def onQualityChanged(self, quality):
        if self._parameterNode and not self._updatingGUI:
            self._parameterNode.quality = quality

    def onDeviceChanged(self, index):
        if self._parameterNode and not self._updatingGUI and index >= 0:
            self._parameterNode.device = self.ui.deviceComboBox.itemData(index)

    def onInputVolumeChanged(self, node):
        self._updateModalityWarning()
        self._updateApplyButton()

    def onOutputChanged(self, node):
        self.ui.segmentationShow3DButton.setSegmentationNode(node)

    def _updateModalityWarning(self):
        p = self._parameterNode
        text = None
        if p is not None and p.inputVolume is not None:
            volume = p.inputVolume
            image = volume.GetImageData()
            key = (volume.GetID(), image.GetMTime() if image is not None else 0)
            if key not in self._modalityGuesses:  # the guess reads voxels: once per volume content
                self._modalityGuesses[key] = volume_modality(volume)
            text = choices.modality_warning(p.task, self._modalityGuesses[key])
        self.ui.modalityWarningLabel.text = text or ""
        self.ui.modalityWarningLabel.setVisible(bool(text))

    def _updateApplyButton(self):
        running = self._operation is not None and not self._operation.done
        if running:
            self.ui.applyButton.text = _("Cancel")
            self.ui.applyButton.toolTip = _("Stop the running operation. Nothing is added to the scene.")
            self.ui.applyButton.enabled = True
        else:
            self.ui.applyButton.text = _("Apply")
            ready = self._parameterNode is not None and self._parameterNode.inputVolume is not None
            self.ui.applyButton.enabled = ready
            self.ui.applyButton.toolTip = _("Segment the input volume.") if ready else _("Select an input volume.")
        for widget in (self.ui.inputsCollapsibleButton, self.ui.structuresCollapsibleButton,
                       self.ui.outputSegmentationSelector, self.ui.downloadWeightsButton,
                       self.ui.importWeightsZipButton, self.ui.importWeightsFolderButton,
                       self.ui.reinstallDependenciesButton, self.ui.setLicenseButton,
                       self.ui.weightsFolderPathLineEdit, self.ui.reassignButton, self.ui.rerunSplitButton):
            widget.enabled = not running

    # -- structures (ROI subset) ----------------------------------------------------------
    def _fillStructureList(self, task, selected):
        listWidget = self.ui.structureListWidget
        wasBlocked = listWidget.blockSignals(True)
        selectedSet = set(selected)
        if task != self._structureTask:  # rebuild only for another task (keeps the scroll position)
            self._structureTask = task
            self._structureItems = choices.structure_items(task)
            listWidget.clear()
            for item in self._structureItems:
                listItem = qt.QListWidgetItem(item.text)
                listItem.setData(qt.Qt.UserRole, item.name)
                listItem.setToolTip(f"{item.name} (label {item.label})")
                listItem.setFlags(listItem.flags() | qt.Qt.ItemIsUserCheckable)
                listWidget.addItem(listItem)
        for row in range(listWidget.count):
            listItem = listWidget.item(row)
            listItem.setCheckState(qt.Qt.Checked if listItem.data(qt.Qt.UserRole) in selectedSet else qt.Qt.Unchecked)
        listWidget.blockSignals(wasBlocked)
        supported = bool(self._structureItems)
        for widget in (self.ui.structureSearchBox, self.ui.structureListWidget, self.ui.clearStructuresButton):
            widget.setVisible(supported)
        self.ui.structuresUnavailableLabel.setVisible(not supported)
        self.onStructureFilterChanged(self.ui.structureSearchBox.text)
        self._updateStructureLabel(selected)

    def _updateStructureLabel(self, selected):
        if not self._structureItems:
            self.ui.structureSelectionLabel.text = ""
        elif selected:
            self.ui.structureSelectionLabel.text = _("{n} of {total} selected: only these are segmented").format(
                n=len(selected), total=len(self._structureItems))
        else:
            self.ui.structureSelectionLabel.text = _("None selected: all {total} structures are segmented").format(
                total=len(self._structureItems))

    def onStructureFilterChanged(self, text):
        visible = {item.name for item in choices.filter_structures(self._structureItems, text)}
        listWidget = self.ui.structureListWidget
        for row in range(listWidget.count):
            listItem = listWidget.item(row)
            listItem.setHidden(listItem.data(qt.Qt.UserRole) not in visible)

    def onStructureItemChanged(self, listItem):
        if self._parameterNode is None or self._updatingGUI:
            return
        listWidget = self.ui.structureListWidget
        selected = [listWidget.item(row).data(qt.Qt.UserRole) for row in range(listWidget.count)
                    if listWidget.item(row).checkState() == qt.Qt.Checked]
        self._updatingGUI = True  # the list already shows it
        try:
            self._parameterNode.roiSubset = selected
        finally:
            self._updatingGUI = False
        self._updateStructureLabel(selected)

    def onClearStructures(self):
        if self._parameterNode:
            self._parameterNode.roiSubset = []

    # -- devices ---------------------------------------------------------------------------
    def _fillDeviceCombo(self):
        combo = self.ui.deviceComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for item in choices.device_items(self._detectedDevices):
            combo.addItem(item.text, item.id)
        combo.blockSignals(wasBlocked)
        if self._parameterNode:
            index = combo.findData(self._parameterNode.device)
            combo.currentIndex = index if index >= 0 else 0

    def _startDeviceDetection(self):
        """Ask the engine (in the background) which devices it sees; warms up the worker too."""
        if not self.logic.dependencyPlan().nothing_to_do:
            self.ui.deviceComboBox.setItemText(0, _("Auto (devices are detected after the first-run install)"))
            return
        self._deviceProbe = self.logic.detectDevicesAsync(self.ui.keepModelsLoadedCheckBox.checked)
        self._pollTimer.start()

    def _pollDeviceProbe(self):
        probe = self._deviceProbe
        if probe is None:
            return
        probe.poll()
        if probe.done:
            self._deviceProbe = None
            if probe.outcome == "succeeded":
                self._detectedDevices = probe.result.get("devices") or []
                self._fillDeviceCombo()
                self.addLog(_("Devices: {devices}").format(
                    devices=", ".join(d.get("name") or d["id"] for d in self._detectedDevices)))
            else:
                self.ui.deviceComboBox.setItemText(0, _("Auto (device detection failed: see log)"))
                self.addLog(_("Device detection failed: {cause}").format(cause=probe.error.get("cause")))

    # -- apply / cancel --------------------------------------------------------------------
    def onApplyButton(self):
        if self._operation is not None and not self._operation.done:
            self.addLog(_("Cancelling..."))
            self._operation.cancel()
            self.onPollTimer()
            return
        if not self._ensureDependencies(then=self.onApplyButton):
            return
        p = self._parameterNode
        # The engine refuses a CT task on a volume that is clearly not CT; the user who sees
        # the warning and knows better (e.g. unusual intensity scaling) confirms and runs anyway.
        checkModality = True
        warning = self.ui.modalityWarningLabel.text
        if warning:
            if not slicer.util.confirmOkCancelDisplay(warning + "\n\n" + _("Segment this volume anyway?"),
                                                      windowTitle=_("Volume and task do not match")):
                return
            checkModality = False
        self.addLog("-" * 40)  # keep earlier output (e.g. the first-run install) above
        try:
            job = self.logic.processAsync(
                p.inputVolume, p.outputSegmentation, task=p.task, quality=choices.best_quality(p.task, p.quality),
                roiSubset=list(p.roiSubset), device=p.device, useStandardNames=p.useStandardNames,
                createSurfaces=p.createSurfaces, splitLiverVessels=p.splitLiverVessels and p.task == "liver_vessels",
                onEvent=self.onEngineEvent, checkModality=checkModality)
        except SegmentationError as e:
            self.showError(_("Cannot start the segmentation."), {"cause": e.cause, "fix": e.fix})
            return
        self._showOperation(job, self.onSegmentationDone, _("Segmenting '{name}' ({task})").format(
            name=p.inputVolume.GetName(), task=p.task))

    def _showOperation(self, operation, onDone, title):
        self._operation = operation
        self._onOperationDone = onDone
        self.ui.progressBar.setVisible(True)
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = title
        self.addLog(title)
        self._updateApplyButton()
        self._pollTimer.start()

    def onPollTimer(self):
        """Drain the background runs' events (QTimer, GUI thread; never waits on a process)."""
        self._pollDeviceProbe()
        operation = self._operation
        if operation is not None:
            if not operation.done:
                events = operation.poll()
                if not isinstance(operation, SegmentationJob):  # jobs report through onEngineEvent
                    for event in events:
                        self.onEngineEvent(event)
            if operation.done:  # also when Cancel ended it at once
                self._operation = None
                self.ui.progressBar.setVisible(False)
                self._updateApplyButton()
                onDone, self._onOperationDone = self._onOperationDone, None
                if onDone is not None:
                    onDone(operation)
        if self._operation is None and self._deviceProbe is None:
            self._pollTimer.stop()

    def onEngineEvent(self, event):
        kind = event.get("event")
        if kind == "progress":
            overall = event.get("overall")
            if overall is not None:
                self.ui.progressBar.value = int(round(100 * float(overall)))
            stage = event.get("stage") or ""
            message = event.get("message") or ""
            self.ui.progressBar.format = f"{stage.capitalize()} %p%"
            self.ui.statusLabel.text = f"{stage.capitalize()}: {message}" if message else stage.capitalize()
            if message:
                self.addLog(f"[{stage}] {message}")
        elif kind == "log":
            self.addLog(event.get("message", ""))

    def onSegmentationDone(self, job):
        if job.state == "succeeded":
            node = job.segmentation_node
            # The output choice stays as the user left it: "Create new" keeps creating new
            # nodes, so a second task never overwrites the first one's result by surprise.
            self.ui.segmentationShow3DButton.setSegmentationNode(node)
            self.ui.statusLabel.text = _("Done: {n} segments in {seconds:.1f} s").format(
                n=node.GetSegmentation().GetNumberOfSegments(), seconds=job.timings.get("total", 0.0))
            self.addLog(self.ui.statusLabel.text)
            if job.split_liver_vessels:
                self._showVesselReview(node, job.vessel_qc)
        elif job.state == "cancelled":
            self.ui.statusLabel.text = _("Cancelled. Nothing was added to the scene.")
            self.addLog(self.ui.statusLabel.text)
        else:
            self.ui.statusLabel.text = _("Failed: {cause}").format(cause=job.error.get("cause", ""))
            self.showError(_("Segmentation failed."), job.error)

    # -- first-run install -----------------------------------------------------------------
    def _ensureDependencies(self, then=None, reinstall=False):
        """True if the engine's packages are there; else offer to install them (in the background)."""
        plan = self.logic.dependencyPlan(reinstall=reinstall)
        for warning in plan.warnings():  # kept as another extension installed it: say so, every time
            self.addLog(_("Note: {warning}").format(warning=warning))
        if plan.nothing_to_do:
            return True
        if plan.conflicts and not (plan.pip_packages or plan.needs_torch):
            self.showError(_("The Python packages in Slicer do not fit the segmentation engine."),
                           {"cause": plan.summary(), "fix": _("Use a Slicer version supported by this extension.")})
            return False
        if not slicer.util.confirmOkCancelDisplay(plan.summary(), windowTitle=_("Install Python packages"),
                                                  detailedText=dependencies.constraints_text(plan)):
            self.addLog(_("Installation cancelled: the segmentation needs these packages."))
            return False
        if plan.needs_torch:
            self.addLog(_("Installing PyTorch through the PyTorch extension (this can take several minutes)..."))
            try:
                with slicer.util.WaitCursor():
                    version = dependencies.install_torch(plan.torch_requirement)
                self.addLog(_("PyTorch {version} installed.").format(version=version))
            except Exception as e:
                self.showError(_("PyTorch could not be installed."), {"cause": str(e), "fix": ""})
                return False
        run = self.logic.installDependenciesAsync(plan)
        self._showOperation(run, lambda r: self._onDependenciesInstalled(r, plan, then),
                            _("Installing Python packages (first run)"))
        return False

    def _onDependenciesInstalled(self, run, plan, then):
        if run.outcome != "succeeded":
            self.showError(_("Installing Python packages failed."), run.error)
            return
        self.addLog(_("Python packages installed."))
        self._updatePackageVersions()
        if plan.restart_required or plan.needs_torch and "torch" in sys.modules:
            if slicer.util.confirmOkCancelDisplay(
                    _("Slicer must be restarted to use the updated packages ({names}). Restart now?").format(
                        names=", ".join(plan.restart_packages or ["torch"])), windowTitle=_("Restart required")):
                slicer.util.restart()
            return
        self._startDeviceDetection()
        if then is not None:
            then()

    def onReinstallDependencies(self):
        self.logic.shutdownWorker()  # it holds the packages open
        self._ensureDependencies(reinstall=True)

    # -- weights and licence ---------------------------------------------------------------
    def onWeightsFolderChanged(self, path):
        _setSetting("WeightsFolder", path)
        self.logic.weightsFolder = path or None

    def onKeepModelsLoadedToggled(self, on):
        _setSetting("KeepModelsLoaded", on)
        self.logic.keepModelsLoaded = on
        if not on:
            self.logic.shutdownWorker()

    def onDownloadWeights(self):
        p = self._parameterNode
        run = self.logic.downloadWeightsAsync(p.task, choices.best_quality(p.task, p.quality), list(p.roiSubset))
        self._showOperation(run, self._onWeightsDone, _("Downloading weights for '{task}'").format(task=p.task))

    def onImportWeightsZip(self):
        path = qt.QFileDialog.getOpenFileName(self.parent, _("Import model weights"), "",
                                              _("Weights archive (*.zip)"))
        if path:
            self._showOperation(self.logic.importWeightsAsync(path), self._onWeightsDone,
                                _("Importing weights from {path}").format(path=path))

    def onImportWeightsFolder(self):
        path = qt.QFileDialog.getExistingDirectory(self.parent, _("Import model weights from folder"))
        if path:
            self._showOperation(self.logic.importWeightsAsync(path), self._onWeightsDone,
                                _("Importing weights from {path}").format(path=path))

    def _onWeightsDone(self, run):
        if run.outcome == "succeeded":
            installed = run.result.get("installed") or []
            self.ui.statusLabel.text = _("Weights ready ({n} models).").format(n=len(installed))
            for path in installed:
                self.addLog(str(path))
        elif run.outcome == "cancelled":
            self.ui.statusLabel.text = _("Cancelled; no partial weights were kept.")
        else:
            self.showError(_("Weights could not be installed."), run.error)

    def onSetLicense(self):
        key = qt.QInputDialog.getText(self.parent, _("Licence key"),
                                      _("TotalSegmentator licence key (free for non-commercial use):"),
                                      qt.QLineEdit.Password, "")
        if not key:
            return
        try:
            self.logic.setLicense(key)
        except SegmentationError as e:
            self.showError(_("The licence key was not stored."), {"cause": e.cause, "fix": e.fix})
        self._updateLicenseLabel()

    def _updateLicenseLabel(self):
        self.ui.licenseKeyLabel.text = self.logic.licenseDisplay() or _("(none: only needed for licensed tasks)")

    def onAdvancedCollapsed(self, collapsed):
        if not collapsed:
            self._updatePackageVersions()

    def _updatePackageVersions(self):
        self.ui.packageVersionsLabel.text = "\n".join(f"{name}: {version or _('not installed')}"
                                                      for name, version in dependencies.versions_report())

    # -- liver vessel review ---------------------------------------------------------------
    def _showVesselReview(self, node, qc):
        from SegmentationLogic.vessels import review

        self._reviewNode = node
        self.ui.vesselReviewCollapsibleButton.setVisible(True)
        self.ui.vesselReviewCollapsibleButton.collapsed = False
        for widget, name, color in ((self.ui.reassignPointPlaceWidget, "Reassign point", (1.0, 1.0, 0.0)),
                                    (self.ui.portalSeedsPlaceWidget, "Portal seeds", (0.0, 0.4, 1.0)),
                                    (self.ui.hepaticSeedsPlaceWidget, "Hepatic seeds", (0.6, 0.0, 1.0))):
            widget.setCurrentNode(self.logic.reviewPointsNode(name, color, single=widget is
                                                               self.ui.reassignPointPlaceWidget))
        single = getattr(slicer.qSlicerMarkupsPlaceWidget, "ForcePlaceSingleMarkup", None)
        if single is not None:
            self.ui.reassignPointPlaceWidget.placeMultipleMarkups = single
        self._updateVesselQC(qc, review)

    def _updateVesselQC(self, qc, review=None):
        if review is None:
            from SegmentationLogic.vessels import review
        rows = review.qc_rows(qc or {})
        table = self.ui.vesselQCTableWidget
        table.setColumnCount(2)
        table.setHorizontalHeaderLabels([_("Measure"), _("Value")])
        table.setRowCount(len(rows))
        for row, (label, value) in enumerate(rows):
            table.setItem(row, 0, qt.QTableWidgetItem(str(label)))
            table.setItem(row, 1, qt.QTableWidgetItem(str(value)))
        table.resizeColumnsToContents()
        warnings = review.warnings(qc or {})
        self.ui.vesselWarningsLabel.text = "\n".join(f"\u26a0 {w}" for w in warnings) or _("No warnings.")

    def onReassignBranch(self):
        points = self.logic.reviewPoints("Reassign point")
        if not points:
            self.showError(_("No point placed."), {"cause": _("Place a point on the branch to reassign."), "fix": ""})
            return
        scope = "subtree" if self.ui.subtreeScopeRadioButton.checked else "branch"
        with slicer.util.tryWithErrorDisplay(_("Reassigning the branch failed."), waitCursor=True):
            qc = self.logic.reassignBranch(self._reviewNode, points[-1], scope)
            self._updateVesselQC(qc)

    def onRerunSplit(self):
        with slicer.util.tryWithErrorDisplay(_("Re-running the split failed."), waitCursor=True):
            qc = self.logic.rerunSplit(self._reviewNode, self.logic.reviewPoints("Portal seeds"),
                                       self.logic.reviewPoints("Hepatic seeds"))
            self._updateVesselQC(qc)

    def onSaveReview(self):
        folder = qt.QFileDialog.getExistingDirectory(self.parent, _("Save liver vessel review"))
        if folder:
            with slicer.util.tryWithErrorDisplay(_("Saving failed."), waitCursor=True):
                paths = self.logic.saveReview(self._reviewNode, folder)
                self.addLog(_("Saved: {paths}").format(paths=", ".join(str(p) for p in paths)))

    # -- messages --------------------------------------------------------------------------
    def addLog(self, text):
        self.ui.logTextEdit.appendPlainText(text)
        logging.info(text)

    def showError(self, title, error):
        """An error as the user needs it: what happened, and what to do about it."""
        error = error or {}
        cause, fix = error.get("cause", ""), error.get("fix", "")
        text = f"{title}\n\n{cause}" + (f"\n\n{_('What to do')}: {fix}" if fix else "")
        self.addLog(text)
        for line in error.get("details") or []:
            self.addLog(f"  {line}")
        details = "\n".join(error.get("details") or [])
        kwargs = {"detailedText": details} if details else {}
        slicer.util.errorDisplay(text, windowTitle=_("TotalSegmentator"), **kwargs)


#
# Logic
#


_sharedLogic = None


def sharedLogic():
    """One logic per Slicer session, so the widget and the console share the worker and its loaded models."""
    global _sharedLogic
    if _sharedLogic is None:
        _sharedLogic = TotalSegmentatorLogic()
    return _sharedLogic


def _logEvent(event):
    """Engine events to Slicer's log (console and batch use)."""
    if event.get("event") == "log":
        logging.info(event.get("message", ""))
    elif event.get("event") == "progress" and event.get("message"):
        logging.info(f"[{event.get('stage')}] {event['message']}")


def _shutdownSharedLogic():
    if _sharedLogic is not None:
        _sharedLogic.cleanup()


class TotalSegmentatorLogic(ScriptedLoadableModuleLogic):
    """Segment volumes with TotalSegmentator models; usable without the GUI.

    Blocking (console, scripts, batch):

        logic = TotalSegmentatorLogic()
        segmentationNode = logic.process(volumeNode)                                  # total, fast, auto device
        logic.process(volumeNode, segmentationNode, task="total", quality="normal",   # replace its segments
                      roiSubset=["liver", "spleen", "kidney_left"], device="cuda:0")
        logic.process(mrVolumeNode, task="total_mr", quality="fast")

    Asynchronous (the GUI): `job = logic.processAsync(...)`, then call `job.poll()` from a
    QTimer until `job.done`; `job.cancel()` stops it. Errors are `SegmentationError`s
    with `.cause` and `.fix`.
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.keepModelsLoaded = slicer.util.toBool(_setting("KeepModelsLoaded", True))
        self.weightsFolder = _setting("WeightsFolder", "") or None
        self.worker = None
        self._reviewPointNodes = {}
        # Liver-vessel outputs kept while their split is reviewed (re-runs need the support masks);
        # removed when Slicer quits.
        self.reviewRoot = os.path.join(tempfile.gettempdir(), f"TotalSegmentator-review-{os.getpid()}")

    def getParameterNode(self):
        return TotalSegmentatorParameterNode(super().getParameterNode())

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
        :param device: "auto", "cpu", "cuda", "cuda:N" or "mps".
        :param useStandardNames: segment names from standard terminology (False: TotalSegmentator class names).
        :param createSurfaces: create closed surfaces so the result shows in 3D at once.
        :param splitLiverVessels: task "liver_vessels" only: split portal and hepatic veins (for review).
        :param installDependencies: install missing Python packages first (False: raise instead).
        :param timeout: seconds after which the run is cancelled (None: no limit).
        :param checkModality: refuse a CT task on a volume that does not look like CT (False: run anyway).
        :raises SegmentationError: with `.cause` and `.fix`; the scene is unchanged on failure or cancel.
        """
        plan = self.dependencyPlan()
        for warning in plan.warnings():
            logging.warning(warning)
        if not plan.nothing_to_do:
            if not installDependencies:
                raise SegmentationError("Python packages the engine needs are missing:\n" + plan.summary(),
                                        "Call logic.installDependencies() or pass installDependencies=True.")
            self.installDependencies(plan)
        job = self.processAsync(volumeNode, segmentationNode, task=task, quality=quality, roiSubset=roiSubset,
                                device=device, useStandardNames=useStandardNames, createSurfaces=createSurfaces,
                                splitLiverVessels=splitLiverVessels, onEvent=_logEvent, checkModality=checkModality)
        job.wait(timeout=timeout)
        if job.state != "succeeded":
            error = job.error or {}
            raise SegmentationError(error.get("cause", "The segmentation failed."), error.get("fix", ""))
        logging.info(f"TotalSegmentator {task}: {job.segmentation_node.GetSegmentation().GetNumberOfSegments()} "
                     f"segments in {job.timings.get('total', 0):.1f} s")
        return job.segmentation_node

    def processAsync(self, volumeNode, segmentationNode=None, task="total", quality="fast", roiSubset=None,
                     device="auto", useStandardNames=True, createSurfaces=True, splitLiverVessels=False,
                     onEvent=None, checkModality=True):
        """Start a segmentation in the background and return its `SegmentationJob` (poll it until `done`)."""
        return SegmentationJob(volumeNode, segmentationNode, task=task, quality=quality, roi_subset=roiSubset,
                               device=device, use_standard_names=useStandardNames, create_surfaces=createSurfaces,
                               weights_dir=self.weightsFolder, split_liver_vessels=splitLiverVessels,
                               review_root=self.reviewRoot, worker=self._worker(), on_event=onEvent,
                               check_modality=checkModality).start()

    def _worker(self):
        if not self.keepModelsLoaded:
            return None
        if self.worker is None:
            self.worker = WorkerEngine()
        return self.worker

    def shutdownWorker(self):
        """Free the loaded models (the next run starts a new engine process)."""
        if self.worker is not None:
            self.worker.shutdown()
            self.worker = None

    def cleanup(self):
        """End the worker and remove the review folders (Slicer is quitting)."""
        self.shutdownWorker()
        shutil.rmtree(self.reviewRoot, ignore_errors=True)

    def detectDevicesAsync(self, useWorker=True):
        """A run whose result is {"devices": [{"id", "name", "memory_gb"}]}; the worker warms up meanwhile."""
        if useWorker and self.keepModelsLoaded:
            return self._worker().submit("devices")
        code = ("import json; from SegmentationLogic.devices import available_devices; "
                "print(json.dumps({'event': 'result', 'devices': available_devices()}))")
        from TotalSegmentatorLib.runner import python_executable

        return ProcessRun([python_executable(), "-c", code], env=engine_environment(), description="devices")

    # -- dependencies ----------------------------------------------------------------------
    def dependencyPlan(self, reinstall=False):
        return dependencies.plan_install(reinstall=reinstall)

    def installDependenciesAsync(self, plan):
        workdir = tempfile.mkdtemp(prefix="TotalSegmentator-install-")
        return _CleanupRun(dependencies.install(plan, workdir), workdir)

    def installDependencies(self, plan=None):
        """Install what `plan` (default: dependencyPlan()) lists, blocking; raises if Slicer must restart."""
        plan = plan or self.dependencyPlan()
        if plan.conflicts and not (plan.pip_packages or plan.needs_torch):
            raise SegmentationError(plan.summary(), "Use a Slicer version supported by this extension.")
        if plan.needs_torch:
            dependencies.install_torch(plan.torch_requirement)
        run = self.installDependenciesAsync(plan)
        run.wait(on_event=_logEvent)
        if run.outcome != "succeeded":
            raise SegmentationError(run.error.get("cause", "Installing Python packages failed."),
                                    run.error.get("fix", ""))
        if plan.restart_required:
            raise SegmentationError("Python packages were updated that this Slicer session had already loaded ("
                                    + ", ".join(plan.restart_packages) + ").", "Restart Slicer, then run again.")

    # -- weights and licence ---------------------------------------------------------------
    def _engineRun(self, *args, description=""):
        extra = ["--weights_dir", self.weightsFolder] if self.weightsFolder else []
        return ProcessRun(engine_command(*args, *extra, "--progress", "json"), env=engine_environment(),
                          description=description)

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
        from SegmentationLogic import weights

        return weights.set_license(key)

    def licenseDisplay(self):
        """The stored licence key, masked (never the key itself), or None."""
        try:
            from SegmentationLogic import weights

            return weights.get_license()
        except Exception:
            return None

    # -- liver vessel review ---------------------------------------------------------------
    def reviewPointsNode(self, name, color, single=False):
        node = self._reviewPointNodes.get(name)
        if node is None or node.GetScene() is None:
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", f"TotalSegmentator {name}")
            node.CreateDefaultDisplayNodes()
            node.GetDisplayNode().SetSelectedColor(*color)
            if single:
                node.SetMaximumNumberOfControlPoints(1)
            self._reviewPointNodes[name] = node
        return node

    def reviewPoints(self, name):
        node = self._reviewPointNodes.get(name)
        if node is None:
            return []
        points = []
        for i in range(node.GetNumberOfControlPoints()):
            point = [0.0, 0.0, 0.0]
            node.GetNthControlPointPositionWorld(i, point)
            points.append(point)
        return points

    def reassignBranch(self, segmentationNode, pointRas, scope="branch"):
        from SegmentationLogic.vessels import review

        return review.reassign_branch(segmentationNode, pointRas, scope=scope)

    def rerunSplit(self, segmentationNode, portalPointsRas, hepaticPointsRas):
        from SegmentationLogic.vessels import review

        return review.rerun_split(segmentationNode, portal_points_ras=portalPointsRas,
                                  hepatic_points_ras=hepaticPointsRas)

    def saveReview(self, segmentationNode, folder):
        from SegmentationLogic.vessels import review

        return review.save_review(segmentationNode, folder)


class _CleanupRun:
    """A Run that removes its work folder when it ends."""

    def __init__(self, run, folder):
        self._run, self._folder = run, folder

    def __getattr__(self, name):
        return getattr(self._run, name)

    def _cleanup(self):
        if self._run.done and self._folder:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def poll(self):
        events = self._run.poll()
        self._cleanup()
        return events

    def cancel(self):
        self._run.cancel()
        self._cleanup()

    def wait(self, *args, **kwargs):
        try:
            return self._run.wait(*args, **kwargs)
        finally:
            self._cleanup()


#
# Test
#


def _segmentTerminology(segment):
    if hasattr(segment, "GetTerminology"):  # Slicer 5.9+
        return segment.GetTerminology()
    value = vtk.mutable("")
    segment.GetTag(segment.GetTerminologyEntryTagName(), value)
    return str(value)


class TotalSegmentatorTest(ScriptedLoadableModuleTest):
    """Self-test for Slicer's test runner: real sample data, real engine, fast mode.

    Needs the Python packages (installed on first use) and the model weights (downloaded
    on first use, or imported under Advanced). On CPU the fast total task takes a few
    minutes on CTChest.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_TotalSegmentatorFast()
        self.setUp()
        self.test_TotalSegmentatorSubsetAndReplace()
        self.setUp()
        self.test_TotalSegmentatorCancel()
        self.setUp()
        self.test_TotalSegmentatorBadInput()

    def _loadSample(self):
        import SampleData

        volume = SampleData.downloadSample("CTChest")
        self.assertIsNotNone(volume)
        self.delayDisplay("Loaded CTChest")
        return volume

    def test_TotalSegmentatorFast(self):
        volume = self._loadSample()
        logic = TotalSegmentatorLogic()
        nodesBefore = slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
        segmentationNode = logic.process(volume, task="total", quality="fast")
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"), nodesBefore + 1)
        self.assertEqual(segmentationNode.GetName(), f"{volume.GetName()} segmentation")
        segmentation = segmentationNode.GetSegmentation()
        self.assertGreater(segmentation.GetNumberOfSegments(), 10)
        names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
        self.assertTrue(all(names), "every segment has a name")
        self.assertTrue(any("lung" in n.lower() for n in names), f"a chest CT shows lungs: {names}")
        colors = {tuple(round(c, 3) for c in segmentation.GetNthSegment(i).GetColor())
                  for i in range(segmentation.GetNumberOfSegments())}
        self.assertGreater(len(colors), segmentation.GetNumberOfSegments() // 2, "segments are colour-coded")
        for i in range(segmentation.GetNumberOfSegments()):
            self.assertTrue(_segmentTerminology(segmentation.GetNthSegment(i)), f"terminology of {names[i]}")
        self.assertTrue(segmentation.ContainsRepresentation("Closed surface"), "surfaces exist for 3D")
        self.delayDisplay("Fast total segmentation passed")

    def test_TotalSegmentatorSubsetAndReplace(self):
        volume = self._loadSample()
        logic = TotalSegmentatorLogic()
        segmentationNode = logic.process(volume, task="total", quality="fast", roiSubset=["lung_upper_lobe_left",
                                                                                        "heart"])
        first = segmentationNode.GetSegmentation().GetNumberOfSegments()
        self.assertTrue(1 <= first <= 2)
        again = logic.process(volume, segmentationNode, task="total", quality="fast", roiSubset=["heart"])
        self.assertIs(again, segmentationNode)
        self.assertEqual(segmentationNode.GetSegmentation().GetNumberOfSegments(), 1, "re-run replaces segments")
        self.delayDisplay("ROI subset and replace passed")

    def test_TotalSegmentatorCancel(self):
        import time

        volume = self._loadSample()
        logic = TotalSegmentatorLogic()
        before = slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
        job = logic.processAsync(volume, task="total", quality="fast")
        deadline = time.time() + 120
        while job.stage in (None, "export") and time.time() < deadline and not job.done:
            job.poll()
            slicer.app.processEvents()
            time.sleep(0.05)
        tmpdir = job.tmpdir
        job.cancel()
        job.wait(timeout=60)
        self.assertEqual(job.state, "cancelled")
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"), before)
        self.assertFalse(tmpdir is not None and os.path.exists(tmpdir), "temp files removed")
        self.delayDisplay("Cancel passed")

    def test_TotalSegmentatorBadInput(self):
        volume = self._loadSample()
        logic = TotalSegmentatorLogic()
        with self.assertRaises(SegmentationError) as raised:
            logic.process(volume, task="total", roiSubset=["livre"])
        self.assertIn("liver", raised.exception.fix)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"), 0)
        self.delayDisplay("Bad input passed")
