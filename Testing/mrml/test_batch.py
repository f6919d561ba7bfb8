"""The batch script: a folder of cases in, one .seg.nrrd per case and a summary CSV out."""
import csv
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import batch
import slicer_core_build

REPO = Path(__file__).resolve().parents[2]
BATCH = REPO / "TotalSegmentatorModule" / "TotalSegmentatorScripts" / "batch.py"


def test_cases_are_images_and_dicom_folders(tmp_path):
    for name in ("b.nii.gz", "a.nrrd", "a.nii", "notes.txt", ".hidden.nii.gz", "c.zip"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "series1").mkdir()
    cases, skipped = batch.find_cases(tmp_path)
    assert [c for c, _ in cases] == ["a", "a_2", "b", "c", "series1"]  # names stay unique
    assert [p.name for p in skipped] == ["notes.txt"]


def test_usage_errors_exit_2(tmp_path, capsys):
    assert batch.main(["--input-dir", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().out
    assert batch.main(["--", "--input-dir", str(tmp_path), "--output-dir", str(tmp_path / "o")]) == 2
    assert "no images or DICOM folders" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("SegmentationLogic.pipeline") is None,
                    reason="SegmentationLogic.pipeline (engine issue) has not landed yet")
def test_batch_under_plain_python_with_slicer_core(weights_env, example, tmp_path):
    """CT file + DICOM series folder + a broken file + an MR for a CT task: two .seg.nrrd, the
    failures reported, exit 1."""
    pytest.importorskip("slicer")
    cases = tmp_path / "in"
    cases.mkdir()
    shutil.copy(example("example_ct_sm.nii.gz"), cases / "ct.nii.gz")
    shutil.copytree(example("example_ct_dicom"), cases / "series")
    (cases / "broken.nii.gz").write_bytes(b"this is not a NIfTI file")
    shutil.copy(example("example_mr_sm.nii.gz"), cases / "mr.nii.gz")
    out = tmp_path / "out"
    # No project folder on the path (the script finds the engine itself); only the slicer-core build under test.
    env = {**os.environ, "PYTHONPATH": slicer_core_build.subprocess_pythonpath()}
    proc = subprocess.run([sys.executable, str(BATCH), "--input-dir", str(cases), "--output-dir", str(out),
                           "--task", "total", "--quality", "fast", "--device", "cpu"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rows = {r["case"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert [rows[c]["status"] for c in ("broken", "ct", "mr", "series")] == ["failed", "ok", "failed", "ok"]
    assert "does not look like a CT" in rows["mr"]["error"] and "total_mr" in rows["mr"]["error"]
    assert "broken.nii.gz" in rows["broken"]["error"] and "Fix:" in rows["broken"]["error"]
    assert rows["broken"]["output"] == "" and rows["ct"]["note"]  # test models ran: the summary says so
    assert "[4/4] series" in proc.stdout and "[predict" in proc.stdout  # progress lines on stdout
    assert sorted(p.name for p in out.iterdir()) == ["ct.seg.nrrd", "series.seg.nrrd", "summary.csv"]

    from SegmentationLogic.mrml import scene as mrml_scene
    from SegmentationLogic.mrml import segmentation_import as si
    from SegmentationLogic import terminology as T
    from SegmentationLogic.catalogue import load_catalogue

    total = load_catalogue().task("total").classes
    scene = mrml_scene.new_scene()
    for case, source in (("ct", cases / "ct.nii.gz"), ("series", cases / "series")):
        node = mrml_scene.load_segmentation(scene, out / f"{case}.seg.nrrd")
        seg = node.GetSegmentation()
        assert seg.GetNumberOfSegments() == int(rows[case]["segments"]) > 0
        for i in range(seg.GetNumberOfSegments()):
            s = seg.GetNthSegment(i)
            class_name = total[s.GetLabelValue()]
            assert s.GetName() == T.standard_name(class_name) and s.GetTerminology() == T.terminology_string(class_name)
        # the result lies on the input image: every labelled voxel maps into the volume
        volume = mrml_scene.load_volume(scene, source)
        image = seg.GetNthSegment(0).GetRepresentation(si.BINARY)
        import vtk

        to_ras = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(to_ras)
        from_ras = vtk.vtkMatrix4x4()
        volume.GetRASToIJKMatrix(from_ras)
        extent = image.GetExtent()
        dims = volume.GetImageData().GetDimensions()
        for corner in ((extent[0], extent[2], extent[4]), (extent[1], extent[3], extent[5])):
            ras = to_ras.MultiplyPoint((*corner, 1.0))
            ijk = from_ras.MultiplyPoint(ras)
            assert all(-0.5 <= ijk[a] <= dims[a] - 0.5 for a in range(3)), (case, ijk)
    mrml_scene.release_scene(scene)
