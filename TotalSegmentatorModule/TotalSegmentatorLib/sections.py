"""Sections of the module panel, wired like the widget itself (TotalSegmentator.py): the
device list, the structure list (ROI subset), Advanced (weights, licence, packages and
the first-run install) and the liver-vessel review. Qt wiring only: what they run is
the logic's, shown through the widget's one operation display (`widget.showOperation`).
"""
import ctk
import qt

import slicer
from SegmentationLogic.errors import SegmentationError
from SegmentationLogic.vessels.qc import qc_rows, warnings
from slicer.i18n import tr as _

from . import choices, dependencies, installation


class DeviceList:
    """Auto, CPU and the GPUs the engine sees. Detecting them imports torch, so it waits until
    the engine runs anyway (the first Apply): opening the panel starts nothing heavy."""

    def __init__(self, widget):
        self.widget, self.ui = widget, widget.ui
        self.detected = self.probe = None
        self.fill()

    def fill(self):
        combo = self.ui.deviceComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for item in choices.device_items(self.detected):
            combo.addItem(item.text, item.id)
        combo.blockSignals(wasBlocked)
        p = self.widget.parameterNode
        combo.currentIndex = max(combo.findData(p.device) if p is not None else 0, 0)

    def detect(self):
        if self.detected is None and self.probe is None:
            self.probe = self.widget.logic.detectDevicesAsync()
            self.widget.pollTimer.start()

    def poll(self):
        if self.probe is None:
            return
        self.probe.poll()
        if not self.probe.done:
            return
        probe, self.probe = self.probe, None
        if probe.outcome == "succeeded":
            self.detected = probe.result.get("devices") or []
            self.fill()
            self.widget.addLog(_("Devices: {devices}").format(
                devices=", ".join(d.get("name") or d["id"] for d in self.detected)))
        elif probe.outcome == "failed":
            self.widget.addLog(_("Device detection failed: {cause}").format(cause=probe.error.get("cause")))


class StructuresSection:
    """Searchable, checkable structures of the task; the checked ones are the ROI subset."""

    def __init__(self, widget):
        self.widget, self.ui = widget, widget.ui
        self.items, self.task = [], None
        self.ui.structureSearchBox.connect("textChanged(QString)", self.onFilterChanged)
        self.ui.structureListWidget.connect("itemChanged(QListWidgetItem*)", self.onItemChanged)
        self.ui.clearStructuresButton.connect("clicked(bool)", self.onClear)

    def show(self, task, selected):
        listWidget = self.ui.structureListWidget
        wasBlocked = listWidget.blockSignals(True)
        if task != self.task:  # rebuild only for another task (keeps the scroll position)
            self.task, self.items = task, choices.structure_items(task)
            listWidget.clear()
            for item in self.items:
                listItem = qt.QListWidgetItem(item.text)
                listItem.setData(qt.Qt.UserRole, item.name)
                listItem.setToolTip(f"{item.name} (label {item.label})")
                listItem.setFlags(listItem.flags() | qt.Qt.ItemIsUserCheckable)
                listWidget.addItem(listItem)
        for row in range(listWidget.count):
            listItem = listWidget.item(row)
            listItem.setCheckState(qt.Qt.Checked if listItem.data(qt.Qt.UserRole) in selected else qt.Qt.Unchecked)
        listWidget.blockSignals(wasBlocked)
        for widget in (self.ui.structureSearchBox, self.ui.structureListWidget, self.ui.clearStructuresButton):
            widget.setVisible(bool(self.items))
        self.ui.structuresUnavailableLabel.setVisible(not self.items)
        self.onFilterChanged(self.ui.structureSearchBox.text)
        self.ui.structureSelectionLabel.text = choices.selection_text(len(selected), len(self.items))

    def onFilterChanged(self, text):
        visible = {item.name for item in choices.filter_structures(self.items, text)}
        for row in range(self.ui.structureListWidget.count):
            listItem = self.ui.structureListWidget.item(row)
            listItem.setHidden(listItem.data(qt.Qt.UserRole) not in visible)

    def onItemChanged(self, listItem):
        listWidget = self.ui.structureListWidget
        selected = [listWidget.item(row).data(qt.Qt.UserRole) for row in range(listWidget.count)
                    if listWidget.item(row).checkState() == qt.Qt.Checked]
        self.widget.setParameters(roiSubset=selected)  # the list already shows it
        self.ui.structureSelectionLabel.text = choices.selection_text(len(selected), len(self.items))

    def onClear(self):
        if self.widget.parameterNode is not None:
            self.widget.parameterNode.roiSubset = []


class AdvancedSection:
    """Weights folder, download and import of weights, licence key, packages, keep models loaded."""

    def __init__(self, widget, setSetting):
        self.widget, self.ui, self.logic, self.setSetting = widget, widget.ui, widget.logic, setSetting
        self.ui.weightsFolderPathLineEdit.filters = ctk.ctkPathLineEdit.Dirs
        self.ui.weightsFolderPathLineEdit.currentPath = self.logic.weightsFolder or ""
        self.ui.keepModelsLoadedCheckBox.checked = self.logic.keepModelsLoaded
        self.ui.setLicenseButton.connect("clicked(bool)", self.onSetLicense)
        self.ui.weightsFolderPathLineEdit.connect("currentPathChanged(QString)", self.onWeightsFolderChanged)
        self.ui.keepModelsLoadedCheckBox.connect("toggled(bool)", self.onKeepModelsLoadedToggled)
        self.ui.downloadWeightsButton.connect("clicked(bool)", self.onDownloadWeights)
        self.ui.importWeightsZipButton.connect("clicked(bool)", lambda: self.onImportWeights(folder=False))
        self.ui.importWeightsFolderButton.connect("clicked(bool)", lambda: self.onImportWeights(folder=True))
        self.ui.reinstallDependenciesButton.connect("clicked(bool)", lambda: self.ensureDependencies(reinstall=True))
        self.ui.advancedCollapsibleButton.connect("contentsCollapsed(bool)",
                                                  lambda collapsed: collapsed or self.updatePackageVersions())
        self.updateLicenseLabel()

    def onWeightsFolderChanged(self, path):
        self.setSetting("WeightsFolder", path)
        self.logic.weightsFolder = path or None

    def onKeepModelsLoadedToggled(self, on):
        self.setSetting("KeepModelsLoaded", on)
        self.logic.keepModelsLoaded = on

    def onDownloadWeights(self):
        p = self.widget.parameterNode
        operation = self.logic.downloadWeightsAsync(p.task, choices.best_quality(p.task, p.quality), list(p.roiSubset))
        self.widget.showOperation(operation, self.onWeightsDone, _("Downloading weights for '{task}'").format(
            task=p.task))

    def onImportWeights(self, folder):
        parent = self.widget.parent
        path = (qt.QFileDialog.getExistingDirectory(parent, _("Import model weights from folder")) if folder
                else qt.QFileDialog.getOpenFileName(parent, _("Import model weights"), "", _("Weights archive (*.zip)")))
        if path:
            self.widget.showOperation(self.logic.importWeightsAsync(path), self.onWeightsDone,
                                      _("Importing weights from {path}").format(path=path))

    def onWeightsDone(self, operation):
        if operation.outcome == "succeeded":
            installed = operation.result.get("installed") or []
            self.ui.statusLabel.text = _("Weights ready ({n} models).").format(n=len(installed))
            for path in installed:
                self.widget.addLog(str(path))
        elif operation.outcome == "cancelled":
            self.ui.statusLabel.text = _("Cancelled; no partial weights were kept.")
        else:
            self.widget.showError(_("Weights could not be installed."), operation.error)

    def onSetLicense(self):
        key = qt.QInputDialog.getText(self.widget.parent, _("Licence key"),
                                      _("TotalSegmentator licence key (free for non-commercial use):"),
                                      qt.QLineEdit.Password, "")
        if key:
            try:
                self.logic.setLicense(key)
            except SegmentationError as e:
                self.widget.showError(_("The licence key was not stored."), {"cause": e.cause, "fix": e.fix})
            self.updateLicenseLabel()

    def updateLicenseLabel(self):
        self.ui.licenseKeyLabel.text = self.logic.licenseDisplay() or _("(none: only needed for licensed tasks)")

    def ensureDependencies(self, then=None, reinstall=False):
        """True if the engine's packages are there; else offer to install them (installation.py, in
        the background) and call `then` once they are."""
        plan = self.logic.dependencyPlan(reinstall=reinstall)
        for warning in plan.warnings():  # kept as another extension installed it: say so, every time
            self.widget.addLog(_("Note: {warning}").format(warning=warning))
        if plan.nothing_to_do:
            return True
        try:
            installation.check(plan)
        except SegmentationError as e:
            self.widget.showError(_("The Python packages cannot be installed."), {"cause": e.cause, "fix": e.fix})
            return False
        if not slicer.util.confirmOkCancelDisplay(plan.summary(), windowTitle=_("Install Python packages"),
                                                  detailedText=dependencies.constraints_text(plan)):
            self.widget.addLog(_("Installation cancelled: the segmentation needs these packages."))
            return False
        self.widget.showOperation(self.logic.installDependenciesAsync(plan), lambda op: self.onInstalled(op, then),
                                  _("Installing Python packages (first run)"))
        return False

    def onInstalled(self, operation, then):
        if operation.outcome != "succeeded":
            self.widget.showError(_("Installing Python packages failed."), operation.error)
            return
        self.widget.addLog(_("Python packages installed."))
        self.updatePackageVersions()
        restart = operation.result["restart"]
        if restart:
            if slicer.util.confirmOkCancelDisplay(_("Slicer must be restarted to use the updated packages ({names}). "
                                                    "Restart now?").format(names=", ".join(restart)),
                                                  windowTitle=_("Restart required")):
                slicer.util.restart()
        elif then is not None:
            then()

    def updatePackageVersions(self):
        self.ui.packageVersionsLabel.text = "\n".join(f"{name}: {version or _('not installed')}"
                                                      for name, version in dependencies.versions_report())


class VesselReviewSection:
    """The portal/hepatic split after a liver_vessels run: QC, reassign a branch, split again, save.
    The edits run in the engine worker, shown as operations (progress, Cancel)."""

    def __init__(self, widget):
        self.widget, self.ui, self.logic = widget, widget.ui, widget.logic
        self.node = None
        self.ui.reassignButton.connect("clicked(bool)", self.onReassignBranch)
        self.ui.rerunSplitButton.connect("clicked(bool)", self.onRerunSplit)
        self.ui.saveReviewButton.connect("clicked(bool)", self.onSaveReview)
        self.hide()

    def hide(self):
        self.node = None
        self.ui.vesselReviewCollapsibleButton.setVisible(False)

    def show(self, node, qc):
        self.node = node
        self.ui.vesselReviewCollapsibleButton.setVisible(True)
        self.ui.vesselReviewCollapsibleButton.collapsed = False
        for widget, name, color in ((self.ui.reassignPointPlaceWidget, "Reassign point", (1.0, 1.0, 0.0)),
                                    (self.ui.portalSeedsPlaceWidget, "Portal seeds", (0.0, 0.4, 1.0)),
                                    (self.ui.hepaticSeedsPlaceWidget, "Hepatic seeds", (0.6, 0.0, 1.0))):
            widget.setCurrentNode(self.logic.reviewPointsNode(name, color, single=name == "Reassign point",
                                                              scene=node.GetScene()))
        single = getattr(slicer.qSlicerMarkupsPlaceWidget, "ForcePlaceSingleMarkup", None)
        if single is not None:
            self.ui.reassignPointPlaceWidget.placeMultipleMarkups = single
        self.showQC(qc)

    def showQC(self, qc):
        rows = qc_rows(qc or {})
        table = self.ui.vesselQCTableWidget
        table.setColumnCount(2)
        table.setHorizontalHeaderLabels([_("Measure"), _("Value")])
        table.setRowCount(len(rows))
        for row, (label, value) in enumerate(rows):
            table.setItem(row, 0, qt.QTableWidgetItem(str(label)))
            table.setItem(row, 1, qt.QTableWidgetItem(str(value)))
        table.resizeColumnsToContents()
        self.ui.vesselWarningsLabel.text = "\n".join(f"\u26a0 {w}" for w in warnings(qc or {})) or _("No warnings.")

    def onReassignBranch(self):
        points = self.logic.reviewPoints("Reassign point")
        if not points:
            self.widget.showError(_("No point placed."), {"cause": _("Place a point on the branch to reassign.")})
            return
        scope = "subtree" if self.ui.subtreeScopeRadioButton.checked else "branch"
        self.startEdit(lambda: self.logic.reassignBranchAsync(self.node, points[-1], scope),
                       _("Reassigning the {scope} at the point").format(scope=scope))

    def onRerunSplit(self):
        self.startEdit(lambda: self.logic.rerunSplitAsync(self.node, self.logic.reviewPoints("Portal seeds"),
                                                          self.logic.reviewPoints("Hepatic seeds")),
                       _("Splitting the vessels again"))

    def startEdit(self, start, title):
        try:
            operation = start()
        except SegmentationError as e:
            self.widget.showError(title, {"cause": e.cause, "fix": e.fix})
            return
        self.widget.showOperation(operation, self.onEditDone, title)

    def onEditDone(self, operation):
        if operation.outcome == "succeeded":
            self.showQC(operation.result["qc"])
            self.ui.statusLabel.text = _("Done.")
        elif operation.outcome == "failed":
            self.widget.showError(_("The vessel edit failed."), operation.error)
        else:
            self.ui.statusLabel.text = _("Cancelled; the vessels are as they were.")

    def onSaveReview(self):
        folder = qt.QFileDialog.getExistingDirectory(self.widget.parent, _("Save liver vessel review"))
        if folder:
            with slicer.util.tryWithErrorDisplay(_("Saving failed."), waitCursor=True):
                paths = self.logic.saveReview(self.node, folder)
                self.widget.addLog(_("Saved: {paths}").format(paths=", ".join(str(p) for p in paths)))
