"""Sections of the module panel, wired like the widget itself (TotalSegmentator.py): the
device list, the remote server, the structure list (ROI subset), Advanced (weights,
licence, packages and the first-run install) and the liver-vessel review. Qt wiring only:
what they run is the logic's, shown through the widget's one operation display
(`widget.showOperation`).
"""
import ctk
import qt

import slicer
from SegmentationLogic.errors import SegmentationError
from SegmentationLogic.vessels.qc import qc_rows, warnings
from slicer.i18n import tr as _

from . import choices, dependencies, installation
from .job import remote_advice


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


class RemoteServerSection:
    """Device "Remote server": the server's URL, the access token (a masked field whose text is
    stored in a file only the user can read, then cleared: never shown again, never logged), an
    optional CA certificate, and a connection check. Nothing needs to be installed for it."""

    def __init__(self, widget, setSetting):
        self.widget, self.ui, self.logic, self.setSetting = widget, widget.ui, widget.logic, setSetting
        self.ui.serverCaCertPathLineEdit.filters = ctk.ctkPathLineEdit.Files
        self.ui.serverCaCertPathLineEdit.nameFilters = [_("Certificates (*.pem *.crt *.cer)"), _("All files (*)")]
        self.ui.serverUrlLineEdit.text = self.logic.serverUrl or ""
        self.ui.serverCaCertPathLineEdit.currentPath = self.logic.serverCaCert or ""
        self.ui.serverUrlLineEdit.connect("editingFinished()", self.onUrlChanged)
        self.ui.serverTokenLineEdit.connect("editingFinished()", self.commitToken)
        self.ui.serverCaCertPathLineEdit.connect("currentPathChanged(QString)", self.onCaCertChanged)
        self.ui.testServerButton.connect("clicked(bool)", self.onTestConnection)
        self.updateTokenState()

    def show(self, visible):
        self.ui.remoteServerWidget.setVisible(visible)

    def onUrlChanged(self):
        url = self.ui.serverUrlLineEdit.text.strip()
        if url != (self.logic.serverUrl or ""):
            self.logic.serverUrl = url or None
            self.setSetting("ServerURL", url)
            self.ui.serverStatusLabel.text = ""

    def onCaCertChanged(self, path):
        self.logic.serverCaCert = path or None
        self.setSetting("ServerCACert", path)
        self.ui.serverStatusLabel.text = ""

    def commitToken(self):
        """Store a token typed or pasted into the field, and clear the field; False if it was refused."""
        text = self.ui.serverTokenLineEdit.text.strip()
        if not text:
            return True
        self.ui.serverTokenLineEdit.text = ""  # the token never stays in the panel
        try:
            self.logic.setServerToken(text)
        except SegmentationError as e:  # its message never holds the token
            self.widget.showError(_("The access token was not stored."), {"cause": e.cause, "fix": e.fix})
            return False
        finally:
            self.updateTokenState()
        self.widget.addLog(_("Access token for the segmentation server stored (readable by you only)."))
        self.ui.serverStatusLabel.text = ""
        return True

    def updateTokenState(self):
        self.ui.serverTokenLineEdit.placeholderText = (
            _("stored; paste a new one to replace it") if self.logic.hasServerToken()
            else _("paste the token from the server's admin"))

    def commit(self):
        """Take what is in the fields now (before Apply or a check); False if the token was refused."""
        self.onUrlChanged()
        return self.commitToken()

    def onTestConnection(self):
        if not self.commit():
            return
        try:
            operation = self.logic.checkServerAsync()
        except SegmentationError as e:
            self.ui.serverStatusLabel.text = _("Not connected.")
            self.widget.showError(_("The server settings cannot be used."), {"cause": e.cause, "fix": e.fix})
            return
        self.widget.showOperation(operation, self.onTestDone,
                                  _("Connecting to {url}").format(url=self.logic.serverUrl))

    def onTestDone(self, operation):
        if operation.outcome == "succeeded":
            info = operation.result
            text = _("Connected: server {version} on {device}, {jobs} job(s) there now.").format(
                version=info.get("version", "?"), device=info.get("device", "?"), jobs=info.get("jobs", 0))
            self.ui.serverStatusLabel.text = text
            self.ui.statusLabel.text = text
            self.widget.addLog(text)
        elif operation.outcome == "failed":
            self.ui.serverStatusLabel.text = _("Not connected.")
            self.ui.statusLabel.text = _("Failed: {cause}").format(cause=operation.error.get("cause", ""))
            self.widget.showError(_("The segmentation server cannot be used."), remote_advice(operation.error))
        else:
            self.ui.serverStatusLabel.text = ""
            self.ui.statusLabel.text = _("Cancelled.")


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

    def ensureDependencies(self, then=None, reinstall=False, remote=False):
        """True if the engine's packages are there (remote: what a run on a segmentation server
        needs, i.e. what Slicer ships); else offer to install them (installation.py, in the
        background) and call `then` once they are."""
        plan = self.logic.dependencyPlan(reinstall=reinstall, remote=remote)
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
    """The portal/hepatic split after a liver_vessels run: QC, where the split is unsure
    (confidence overlay, the unsure pieces to jump to), reassign a branch, split again, save.
    The edits run in the engine worker, shown as operations (progress, Cancel)."""

    PIECE_COLUMNS = (_("Unsure place"), _("Voxels"), _("Volume (mm\u00b3)"), _("Mostly"))

    def __init__(self, widget):
        self.widget, self.ui, self.logic = widget, widget.ui, widget.logic
        self.node = None
        self.pieces = []
        self.ui.reassignButton.connect("clicked(bool)", self.onReassignBranch)
        self.ui.rerunSplitButton.connect("clicked(bool)", self.onRerunSplit)
        self.ui.saveReviewButton.connect("clicked(bool)", self.onSaveReview)
        self.ui.showConfidenceCheckBox.connect("toggled(bool)", self.onShowConfidence)
        self.ui.unsurePiecesTableWidget.connect("cellClicked(int,int)", self.onPieceClicked)
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
        self.showConfidence()

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

    def showConfidence(self):
        """The unsure places of the split, largest first, and the overlay (where the split has a map)."""
        from SegmentationLogic.mrml import vessel_review  # reads NIfTI: nibabel is installed on first use

        has_map = vessel_review.confidence_volume(self.node) is not None
        self.pieces = vessel_review.unsure_pieces(self.node) if has_map else []
        table = self.ui.unsurePiecesTableWidget
        table.setColumnCount(len(self.PIECE_COLUMNS))
        table.setHorizontalHeaderLabels(list(self.PIECE_COLUMNS))
        table.setRowCount(len(self.pieces))
        for row, piece in enumerate(self.pieces):
            mostly = _("portal") if piece["portal_voxels"] >= piece["hepatic_voxels"] else _("hepatic")
            for column, value in enumerate((f"#{row + 1}", piece["voxels"], f"{piece['volume_mm3']:.0f}", mostly)):
                table.setItem(row, column, qt.QTableWidgetItem(str(value)))
        table.resizeColumnsToContents()
        table.setVisible(bool(self.pieces))
        self.ui.showConfidenceCheckBox.setVisible(has_map)
        qc = vessel_review.get_qc(self.node)
        if not has_map:
            text = _("This split has no confidence map (liver_vessels_split_confidence.nii.gz).")
        elif self.pieces:
            text = _("{n} unsure place(s), {share} of the vessel voxels below {below}, outlined in orange. "
                     "Click one to centre the slice views on it.").format(
                n=len(self.pieces), share=f"{qc.get('unsure_fraction', 0):.1%}", below=qc.get("unsure_below", 0.75))
        else:
            text = _("The split is sure everywhere (no vessel voxel below {below}).").format(
                below=qc.get("unsure_below", 0.75))
        self.ui.unsureSummaryLabel.text = text
        if has_map:
            vessel_review.show_confidence_overlay(self.node, self.ui.showConfidenceCheckBox.checked)

    def onShowConfidence(self, on):
        if self.node is not None:
            from SegmentationLogic.mrml import vessel_review  # reads NIfTI: nibabel is installed on first use

            vessel_review.show_confidence_overlay(self.node, on)

    def onPieceClicked(self, row, column=0):
        if self.node is not None and 0 <= row < len(self.pieces):
            from SegmentationLogic.mrml import vessel_review  # reads NIfTI: nibabel is installed on first use

            vessel_review.jump_slices(self.node.GetScene(), self.pieces[row]["centroid_ras"])

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
            self.showConfidence()  # a re-split's new map; after a reassignment the edited voxels are sure
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
