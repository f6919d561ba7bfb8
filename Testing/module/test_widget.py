"""The module panel, driven like a user would, outside Slicer (PySide6 + slicer-core; see pythonqt.py).

Real: the .ui, the widget code, the logic, the engine in a background process, the MRML
scene. Stand-ins: Slicer's own widgets (node selectors, collapsible buttons...) and dialogs.
"""
import importlib
import os
import time
from pathlib import Path

import pytest

from SegmentationLogic.mrml import scene as mrml_scene  # noqa: E402

from PySide6 import QtWidgets  # noqa: E402

import pythonqt  # noqa: E402


@pytest.fixture(scope="module")
def qt_app():
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    return QtWidgets.QApplication.instance() or QtWidgets.QApplication([])


@pytest.fixture
def panel(qt_app, monkeypatch, tmp_path, example, weights_env):
    scene = mrml_scene.new_scene()
    ct = mrml_scene.load_volume(scene, example("example_ct_sm.nii.gz"), name="CT")
    host = pythonqt.install(monkeypatch, scene, tmp_path)
    module = importlib.import_module("TotalSegmentator")
    widget = module.TotalSegmentatorWidget()
    widget.setup()
    yield widget, host, scene, ct
    widget.cleanup()
    module._shutdownSharedLogic()
    module._sharedLogic = None
    mrml_scene.release_scene(scene)


def pump(until, timeout=300):
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "timed out"
        QtWidgets.QApplication.processEvents()
        time.sleep(0.02)


def visible(wrapped):
    return not wrapped._obj.isHidden()


def list_items(ui):
    lw = ui.structureListWidget._obj
    return [lw.item(i) for i in range(lw.count())]


def segmentation_nodes(scene):
    return scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")


def test_panel_offers_what_the_task_allows(panel):
    widget, host, scene, ct = panel
    ui, p = widget.ui, widget._parameterNode
    assert p.inputVolume is ct, "the first volume is selected"
    combo = ui.taskComboBox._obj
    assert combo.count() == 51 and combo.itemText(0) == "total (CT, 117 structures)"
    assert "117 anatomical structures" in combo.itemData(0, pythonqt.QtCore.Qt.ToolTipRole)
    assert any("[licence required]" in combo.itemText(i) for i in range(combo.count()))
    assert ui.applyButton.enabled and ui.applyButton.text == "Apply"

    assert all(visible(getattr(ui, n)) for n in ("normalQualityRadioButton", "fastQualityRadioButton",
                                                 "fastestQualityRadioButton"))
    assert len(list_items(ui)) == 117 and not visible(ui.structuresUnavailableLabel)
    assert "all 117 structures" in ui.structureSelectionLabel.text

    ui.structureSearchBox.text = "kidney left"
    shown = [i.text() for i in list_items(ui) if not i.isHidden()]
    assert shown == ["kidney left", "kidney cyst left"]
    list_items(ui)[[i.text() for i in list_items(ui)].index("kidney left")].setCheckState(
        pythonqt.QtCore.Qt.Checked)
    assert p.roiSubset == ["kidney_left"] and "1 of 117 selected" in ui.structureSelectionLabel.text
    ui.clearStructuresButton.click()
    assert p.roiSubset == [] and not any(i.checkState() == pythonqt.QtCore.Qt.Checked for i in list_items(ui))

    ui.taskComboBox.currentIndex = combo.findData("body")
    assert p.task == "body" and visible(ui.qualityWidget)
    assert visible(ui.fastQualityRadioButton) and not visible(ui.fastestQualityRadioButton)
    ui.taskComboBox.currentIndex = combo.findData("liver_vessels")
    assert not visible(ui.qualityWidget) and not visible(ui.qualityLabel)
    assert visible(ui.splitLiverVesselsCheckBox)
    assert visible(ui.structuresUnavailableLabel) and not visible(ui.structureListWidget)
    ui.taskComboBox.currentIndex = combo.findData("total_mr")
    assert len(list_items(ui)) == 50 and not visible(ui.splitLiverVesselsCheckBox)
    assert visible(ui.modalityWarningLabel) and "looks like CT" in ui.modalityWarningLabel.text

    # opening the panel starts nothing heavy: GPUs are listed once the engine runs (first Apply)
    assert widget.logic.worker is None and widget.devices.probe is None
    assert ui.deviceComboBox._obj.itemText(0).startswith("Auto")
    assert ui.deviceComboBox._obj.findData("cpu") == 1
    ui.deviceComboBox.currentIndex = 1
    assert p.device == "cpu"


def test_apply_runs_in_the_background_cancel_and_errors(panel, tmp_path):
    widget, host, scene, ct = panel
    ui, p = widget.ui, widget._parameterNode
    p.device, p.quality = "cpu", "fast"
    names = [i.data(pythonqt.QtCore.Qt.UserRole) for i in list_items(ui)]
    list_items(ui)[names.index("liver")].setCheckState(pythonqt.QtCore.Qt.Checked)

    started = time.perf_counter()
    ui.applyButton.click()
    assert time.perf_counter() - started < 2.0, "Apply must return at once"
    assert ui.applyButton.text == "Cancel" and visible(ui.progressBar)
    assert not ui.inputsCollapsibleButton.enabled, "inputs are locked while running"
    pump(lambda: widget._operation is None)
    assert ui.applyButton.text == "Apply" and not visible(ui.progressBar)
    assert segmentation_nodes(scene) == 1, host.dialogs
    node = scene.GetFirstNodeByClass("vtkMRMLSegmentationNode")
    assert node.GetName() == "CT segmentation" and node.GetSegmentation().GetNthSegment(0).GetName() == "Liver"
    assert ui.segmentationShow3DButton._obj.segmentationNode() is node
    assert ui.statusLabel.text.startswith("Done: 1 segments")
    log = ui.logTextEdit._obj.toPlainText()
    assert "[predict]" in log and "[import]" in log
    assert p.outputSegmentation is None, "Create new stays selected: the next run does not overwrite this one"
    pump(lambda: widget.devices.probe is None)
    assert ui.deviceComboBox._obj.itemText(0).startswith("Auto: "), "the engine listed the devices"

    ui.clearStructuresButton.click()
    p.quality = "normal"
    ui.applyButton.click()
    pump(lambda: ui.statusLabel.text.startswith("Predict"))
    ui.applyButton.click()  # now "Cancel": the worker stops the run and keeps its models
    pump(lambda: widget._operation is None, timeout=60)
    assert ui.statusLabel.text.startswith("Cancelled") and segmentation_nodes(scene) == 1
    assert widget.logic.worker.alive

    ui.keepModelsLoadedCheckBox.checked = False  # one process per run; Cancel kills it at once
    assert widget.logic.worker is None
    ui.applyButton.click()
    pump(lambda: ui.statusLabel.text.startswith("Predict"))
    ui.applyButton.click()
    assert widget._operation is None and ui.applyButton.text == "Apply"
    assert ui.statusLabel.text.startswith("Cancelled") and segmentation_nodes(scene) == 1

    empty = tmp_path / "no-weights"
    empty.mkdir()
    ui.weightsFolderPathLineEdit.currentPath = str(empty)
    p.quality = "fastest"
    ui.applyButton.click()
    pump(lambda: widget._operation is None)
    kind, text = host.dialogs[-1]
    assert kind == "error" and "Segmentation failed." in text and "What to do" in text
    assert "not installed" in text or "download" in text.lower()
    assert ui.statusLabel.text.startswith("Failed:") and segmentation_nodes(scene) == 1


def test_remote_server_device(panel, remote_server, test_ca, tmp_path):
    """Device "Remote server" on a laptop without the engine's packages: URL, masked token, CA certificate,
    a connection check, then Apply, progress and the result as for a local run (the session's real server)."""
    from serve_process import laptop_environment
    from TotalSegmentatorLib.runner import WorkerEngine

    widget, host, scene, ct = panel
    ui, p = widget.ui, widget._parameterNode
    widget.logic.worker = WorkerEngine(env=laptop_environment(tmp_path / "laptop"))
    assert not visible(ui.remoteServerWidget)
    ui.deviceComboBox.currentIndex = ui.deviceComboBox._obj.findData("remote")
    assert p.device == "remote" and visible(ui.remoteServerWidget)
    assert ui.serverTokenLineEdit._obj.echoMode() == QtWidgets.QLineEdit.Password  # masked
    ui.testServerButton.click()  # no URL yet: says where to enter it
    kind, text = host.dialogs[-1]
    assert kind == "error" and "No segmentation server is set" in text and "Remote server" in text

    ui.serverUrlLineEdit.text = remote_server.url
    ui.serverCaCertPathLineEdit.currentPath = str(test_ca.cert_path)
    ui.serverTokenLineEdit.text = remote_server.token  # pasted into the masked field
    ui.testServerButton.click()
    pump(lambda: widget._operation is None)
    assert ui.serverStatusLabel.text.startswith("Connected: server"), host.dialogs
    assert ui.serverTokenLineEdit.text == "" and "stored" in ui.serverTokenLineEdit.placeholderText

    p.quality = "fastest"
    ui.applyButton.click()
    assert ui.applyButton.text == "Cancel" and remote_server.url in ui.statusLabel.text
    pump(lambda: widget._operation is None)
    assert ui.statusLabel.text.startswith("Done:") and segmentation_nodes(scene) == 1, host.dialogs
    log = ui.logTextEdit._obj.toPlainText()
    assert "[upload]" in log and "[fetch]" in log and "[import]" in log
    assert remote_server.token not in log and "Device detection failed" not in log
    settings = (tmp_path / "settings.ini").read_text()  # the next session connects the same way, token aside
    assert remote_server.url in settings and remote_server.token not in settings


def test_wrong_modality_warns_and_apply_asks_before_running(panel, example):
    widget, host, scene, ct = panel
    ui, p = widget.ui, widget._parameterNode
    mr = mrml_scene.load_volume(scene, example("example_mr_sm.nii.gz"), name="MR")
    p.device, p.quality, p.roiSubset = "cpu", "fastest", ["liver"]
    assert not visible(ui.modalityWarningLabel)
    p.inputVolume = mr
    assert visible(ui.modalityWarningLabel) and "looks like MR" in ui.modalityWarningLabel.text
    p.task = "total_mr"
    assert not visible(ui.modalityWarningLabel)
    p.task = "total"

    host.answers["confirm"] = False
    ui.applyButton.click()
    kind, text = host.dialogs[-1]
    assert kind == "confirm" and "looks like MR" in text and "anyway" in text
    assert widget._operation is None and segmentation_nodes(scene) == 0

    host.answers["confirm"] = True  # the user knows better: the engine is told to run anyway
    ui.applyButton.click()
    pump(lambda: widget._operation is None)
    assert segmentation_nodes(scene) == 1, host.dialogs
    assert ui.statusLabel.text.startswith("Done: 1 segments")


def test_advanced_weights_import_and_licence(panel, tmp_path, fitted_weights):
    from model_zips import installed_datasets, zip_dataset

    widget, host, scene, ct = panel
    ui = widget.ui
    weights = tmp_path / "weights"
    weights.mkdir()
    ui.weightsFolderPathLineEdit.currentPath = str(weights)
    archive = zip_dataset(fitted_weights / "Dataset297_TotalSegmentator_total_3mm_1559subj",
                          tmp_path / "Dataset297.zip")
    host.answers["file"] = str(archive)
    ui.importWeightsZipButton.click()
    assert ui.applyButton.text == "Cancel", "an import runs in the background like a segmentation"
    pump(lambda: widget._operation is None)
    assert ui.statusLabel.text == "Weights ready (1 models).", host.dialogs
    assert installed_datasets(weights) == ["Dataset297_TotalSegmentator_total_3mm_1559subj"]

    host.answers["text"] = "aca_A1B2C3D4E5F6G7"
    ui.setLicenseButton.click()
    shown = ui.licenseKeyLabel.text
    assert shown.startswith("aca_") and "A1B2C3D4E5F6G7" not in shown, "the key is shown masked"
    host.answers["text"] = "not a key"
    ui.setLicenseButton.click()
    kind, text = host.dialogs[-1]
    assert kind == "error" and "does not look like a TotalSegmentator licence key" in text
    assert ui.licenseKeyLabel.text == shown

    ui.advancedCollapsibleButton.collapsed = False
    assert "nnunetv2: 2.8.1" in ui.packageVersionsLabel.text and "torch: 2.13.0" in ui.packageVersionsLabel.text


def test_download_weights_for_the_task_with_cancel(panel, tmp_path, fitted_weights, monkeypatch):
    """(The fitted models' checkpoints: a zip of realistic size, so the slow download is still
    running when Cancel comes; the known-output models' zeros compress to almost nothing.)"""
    from http_server import WeightsServer
    from model_zips import assert_nothing_half_installed, installed_datasets, zip_dataset

    widget, host, scene, ct = panel
    ui, p = widget.ui, widget._parameterNode
    folder = "Dataset298_TotalSegmentator_total_6mm_1559subj"
    archive = zip_dataset(fitted_weights / folder, tmp_path / f"{folder}.zip").read_bytes()
    weights = tmp_path / "weights"
    ui.weightsFolderPathLineEdit.currentPath = str(weights)
    p.quality = "fastest"
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    with WeightsServer({f"/{folder}.zip": archive}) as server:
        monkeypatch.setenv("TOTALSEG_WEIGHTS_MIRROR", server.url())
        server.fault = "slow"
        ui.downloadWeightsButton.click()
        pump(lambda: ui.progressBar.value > 0 and ui.statusLabel.text.startswith("Download"), timeout=120)
        ui.applyButton.click()  # Cancel
        pump(lambda: widget._operation is None, timeout=60)
        assert ui.statusLabel.text == "Cancelled; no partial weights were kept."
        assert_nothing_half_installed(weights)

        server.fault = None
        ui.downloadWeightsButton.click()
        pump(lambda: widget._operation is None, timeout=300)
        assert ui.statusLabel.text == "Weights ready (1 models).", host.dialogs
        assert installed_datasets(weights) == [folder]


def test_first_run_install_asks_then_installs_in_the_background_then_segments(panel, tmp_path, monkeypatch):
    from wheels import make_wheel
    from TotalSegmentatorLib import dependencies

    widget, host, scene, ct = panel
    ui, p = widget.ui, widget._parameterNode
    p.device, p.quality, p.roiSubset = "cpu", "fast", ["liver"]
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "tspanelprobe", "1.0")
    missing = dependencies.plan_install(requirements=("tspanelprobe==1.0",), torch_requirement="torch>=0",
                                        imported_modules={})
    plans = [missing, missing]
    monkeypatch.setattr(widget.logic, "dependencyPlan",
                        lambda reinstall=False, remote=False: plans.pop(0) if plans else dependencies.plan_install())
    real_install = dependencies.install
    # pip runs for real, but only pretends to install (--dry-run): the test must not change its own venv.
    monkeypatch.setattr(dependencies, "install", lambda plan, workdir, **kw: real_install(
        plan, workdir, pip_args=["--dry-run", "--no-index", "--find-links", str(wheels)]))

    host.answers["confirm"] = False
    ui.applyButton.click()
    kind, text = host.dialogs[-1]
    assert kind == "confirm" and "install tspanelprobe==1.0" in text
    assert widget._operation is None and segmentation_nodes(scene) == 0
    assert "Installation cancelled" in ui.logTextEdit._obj.toPlainText()

    host.answers["confirm"] = True
    ui.applyButton.click()
    assert ui.applyButton.text == "Cancel" and "Installing Python packages" in ui.statusLabel.text
    pump(lambda: segmentation_nodes(scene) == 1 and widget._operation is None)
    log = ui.logTextEdit._obj.toPlainText()
    assert "Would install tspanelprobe-1.0" in log and "Python packages installed." in log
    assert ui.statusLabel.text.startswith("Done: 1 segments")


def test_liver_vessel_split_review(panel, tmp_path):
    """The split on a phantom CT whose answer is known (the known-output test models find its
    liver, trunk, IVC and vessels exactly), then a review step with a known effect: the
    subtree of a portal branch picked in the view becomes hepatic, and nothing else changes."""
    from SegmentationLogic.mrml import vessel_review as review
    import nibabel as nib
    import numpy as np
    from vessel_phantoms import PORTAL, make_phantom, save_ct, score_split, subtree_ids

    widget, host, scene, ct = panel
    ui, p = widget.ui, widget._parameterNode
    phantom = make_phantom("clean", seed=0)
    volume = mrml_scene.load_volume(scene, save_ct(phantom, tmp_path / "phantom_ct.nii.gz"), name="Phantom CT")
    p.inputVolume = volume
    assert not visible(ui.vesselReviewCollapsibleButton)
    ui.taskComboBox.currentIndex = ui.taskComboBox._obj.findData("liver_vessels")
    ui.splitLiverVesselsCheckBox.checked = True
    p.device = "cpu"
    assert p.splitLiverVessels
    ui.applyButton.click()
    pump(lambda: widget._operation is None, timeout=600)
    assert ui.statusLabel.text.startswith("Done: 2 segments"), host.dialogs
    node = widget._reviewNode
    seg = node.GetSegmentation()
    assert sorted(seg.GetNthSegment(i).GetName() for i in range(2)) == ["Hepatic veins", "Portal vein branches"]
    assert visible(ui.vesselReviewCollapsibleButton) and not ui.vesselReviewCollapsibleButton.collapsed
    table = ui.vesselQCTableWidget._obj
    rows = {table.item(r, 0).text(): table.item(r, 1).text() for r in range(table.rowCount())}
    assert len(rows) == len(review.qc_rows(review.get_qc(node))) > 3
    assert ui.vesselWarningsLabel.text == ("\n".join(f"\u26a0 {w}" for w in review.warnings(review.get_qc(node)))
                                           or "No warnings.")
    # where the split is unsure: the pieces to jump to, the overlay switch, the share in the summary
    pieces = review.unsure_pieces(node)
    assert ui.unsurePiecesTableWidget._obj.rowCount() == len(pieces) and visible(ui.showConfidenceCheckBox)
    assert f"{len(pieces)} unsure place" in ui.unsureSummaryLabel.text or "sure everywhere" in ui.unsureSummaryLabel.text
    assert review.unsure_node(node).GetSegmentation().GetNthSegment(0).GetName() == "Unsure (< 0.75)"

    before, affine = review.current_labels(node)
    assert np.allclose(affine, phantom.affine)
    assert score_split(before, phantom)["accuracy"] >= 0.98, "the split found the phantom's two trees"

    # pick the middle of a portal branch that has a subtree of its own (an inner branch)
    inner = [s for s in phantom.segments if s.cls == PORTAL and s.generation >= 2 and len(subtree_ids(phantom, s.id)) >= 3]
    branch = max(inner, key=lambda s: int((phantom.branch_ids == s.id + 1).sum()))
    point = (branch.p0 + branch.p1) / 2  # RAS mm: the phantom's affine is a diagonal scaling
    reassign = widget.logic.reviewPointsNode("Reassign point", (1, 1, 0), single=True)
    assert ui.reassignPointPlaceWidget._obj.currentNode() is reassign
    reassign.AddControlPoint(*point)
    ui.subtreeScopeRadioButton.checked = True
    ui.reassignButton.click()
    pump(lambda: widget._operation is None)  # the edit runs in the engine worker
    after, _ = review.current_labels(node)
    changed = before != after
    assert (before[changed] == 1).all() and (after[changed] == 2).all(), "only portal voxels became hepatic"
    branch_voxels = phantom.branch_ids == branch.id + 1
    assert (after[branch_voxels] == 2).mean() >= 0.9, "the picked portal branch became hepatic"
    in_subtree = np.isin(phantom.branch_ids, [i + 1 for i in subtree_ids(phantom, branch.id)])
    assert (in_subtree[changed]).mean() >= 0.95 and changed.sum() > branch_voxels.sum(), "with its subtree only"
    assert review.get_qc(node)["manual_edits"] == 1

    hepatic_seed = widget.logic.reviewPointsNode("Hepatic seeds", (0.6, 0, 1))
    hepatic_seed.AddControlPoint(*point)
    ui.rerunSplitButton.click()
    pump(lambda: widget._operation is None)
    assert review.get_qc(node)["user_seed_points"] == {"portal": 0, "hepatic": 1}
    rerun, _ = review.current_labels(node)
    assert (rerun[branch_voxels] == 2).mean() >= 0.9, "a hepatic seed on the branch keeps it hepatic"
    assert ui.unsurePiecesTableWidget._obj.rowCount() == len(review.unsure_pieces(node))  # the new split's

    host.answers["folder"] = str(tmp_path / "saved")
    ui.saveReviewButton.click()
    assert (tmp_path / "saved" / "liver_vessels_labeled.nii.gz").is_file()
    saved = nib.load(str(tmp_path / "saved" / "liver_vessels_split_confidence.nii.gz")).get_fdata()
    assert np.allclose(saved, review.confidence_array(node)), "the map as reviewed, beside the labels"
    assert "Saved:" in ui.logTextEdit._obj.toPlainText()
    review_root = widget.logic.reviewRoot
    assert any(Path(review_root).iterdir()), "the run's support masks are kept for re-runs"
    widget.logic.cleanup()
    assert not Path(review_root).exists(), "and removed when Slicer quits"
