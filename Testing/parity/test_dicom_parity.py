"""Parity of the DICOM outputs with the official TotalSegmentator on the same test models.

One run each, on the example DICOM series, `total --fast` with `--output_type nifti
dicom_seg dicom_rtstruct` (the official multi-output naming). Compared:
- the NIfTI labelmaps: identical;
- DICOM SEG: the same segments (labels, order, category and type codes; ours adds the
  left/right modifier the official file leaves out), the same number of frames, and
  frame by frame the same pixels (both placed on the NIfTI grid by their own geometry);
- RTSTRUCT: the same ROIs (names, order, colours), contours on exactly the same slices,
  and after rasterising both (independent reader) a Dice close to 1 per ROI (the two
  tracers, OpenCV's and marching squares, differ by a fraction of a pixel);
- dciodvfy: ours has no error. The official files do have errors on this series: its
  study, series and frame-of-reference UIDs are empty (the example is anonymised that
  way), the official tool copies them empty, ours fills them (and warns).
"""
import json

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("highdicom")

from dicom_checks import dice, rtstruct_masks, seg_frames_by_source, seg_on_nifti_grid, validate  # noqa: E402
from reference import OfficialBatch  # noqa: E402

pytestmark = [pytest.mark.parity, pytest.mark.slow]

OPTIONS = dict(quality="fast", output_types=["nifti", "dicom_seg", "dicom_rtstruct"])
BASE = "case.nii.gz"  # multi-output: <dir>/case{.nii.gz,_seg.dcm,_rtstruct.dcm}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, test_weights, example):
    pytest.importorskip("rt_utils", reason="the official RTSTRUCT writer (rt-utils) is not installed")
    root = tmp_path_factory.mktemp("dicom_parity")
    source = example("example_ct_dicom")
    batch = OfficialBatch([("dicom", source, root / "official" / BASE, OPTIONS)], test_weights, root / "work")
    try:
        from SegmentationLogic.pipeline import Segmenter

        ours = Segmenter(device="cpu", weights_dir=test_weights, download=False)
        events = []
        result = ours.segment(source, root / "ours" / BASE, progress=events.append, **OPTIONS)
        r = batch.wait("dicom")
    finally:
        batch.close()
    assert r["ok"], f"the official tool failed:\n{r['error']}"
    return root, result, events


def _files(root, who):
    d = root / who
    return d / "case.nii.gz", d / "case_seg.dcm", d / "case_rtstruct.dcm"


def _sources(example):
    """The source slices sorted by position along the slice normal (both writers' frame order may differ)."""
    import pydicom

    files = sorted(p for p in example("example_ct_dicom").iterdir() if p.is_file())
    ds = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    for d in ds:  # the official files reference the meta header's instance UID too (the element is empty)
        d.SOPInstanceUID = d.SOPInstanceUID or d.file_meta.MediaStorageSOPInstanceUID
    return ds


def test_nifti_of_a_dicom_output_run_is_identical(runs):
    root, result, _ = runs
    ours, theirs = nib.load(_files(root, "ours")[0]), nib.load(_files(root, "official")[0])
    assert np.array_equal(np.asanyarray(ours.dataobj), np.asanyarray(theirs.dataobj))
    assert np.asanyarray(ours.dataobj).any()
    assert sorted(p.name for p in (root / "ours").iterdir() if p.suffix in (".dcm", ".gz")) == \
        sorted(p.name for p in (root / "official").iterdir() if p.suffix in (".dcm", ".gz"))


def test_dicom_seg_has_the_official_segments_frames_and_pixels(runs):
    import pydicom

    root, result, _ = runs
    nifti, ours_path, theirs_path = _files(root, "ours")[0], _files(root, "ours")[1], _files(root, "official")[1]
    ours, theirs = pydicom.dcmread(ours_path), pydicom.dcmread(theirs_path)
    assert [s.SegmentLabel for s in ours.SegmentSequence] == [s.SegmentLabel for s in theirs.SegmentSequence]
    for a, b in zip(ours.SegmentSequence, theirs.SegmentSequence):
        assert a.SegmentedPropertyCategoryCodeSequence[0].CodeValue == \
            b.SegmentedPropertyCategoryCodeSequence[0].CodeValue, a.SegmentLabel
        if b.SegmentedPropertyTypeCodeSequence[0].CodeMeaning != "Tissue":  # official fallback for unmapped classes
            assert a.SegmentedPropertyTypeCodeSequence[0].CodeValue == \
                b.SegmentedPropertyTypeCodeSequence[0].CodeValue, a.SegmentLabel
    assert int(ours.NumberOfFrames) == int(theirs.NumberOfFrames)
    img = nib.load(nifti)
    mine, official = seg_on_nifti_grid(ours_path, img), seg_on_nifti_grid(theirs_path, img)
    labels = np.asanyarray(img.dataobj)
    names = {v: k for k, v in result.class_map.items()}
    for name in official:
        assert np.array_equal(mine[name], official[name]), name
        assert np.array_equal(mine[name], labels == names[name]), name
    errors, unexpected, _ = validate(ours_path)
    assert not errors and not unexpected, errors + unexpected
    assert validate(theirs_path)[0], "the official SEG of this anonymised series was expected to be invalid"


def test_rtstruct_has_the_official_rois_on_the_same_slices(runs, example):
    root, result, events = runs
    sources = _sources(example)
    ours, ours_ds = rtstruct_masks(_files(root, "ours")[2], sources)
    theirs, theirs_ds = rtstruct_masks(_files(root, "official")[2], sources)
    assert [r.ROIName for r in ours_ds.StructureSetROISequence] == \
        [r.ROIName for r in theirs_ds.StructureSetROISequence]
    colours = {r.ReferencedROINumber: list(r.ROIDisplayColor) for r in theirs_ds.ROIContourSequence}
    for r in ours_ds.ROIContourSequence:
        assert list(r.ROIDisplayColor) == colours[r.ReferencedROINumber]
    for name in theirs:
        slices = lambda m: {k for k in range(m.shape[0]) if m[k].any()}  # noqa: E731
        assert slices(ours[name]) == slices(theirs[name]), name
        assert dice(ours[name], theirs[name]) > 0.95, (name, dice(ours[name], theirs[name]))
    errors, unexpected, _ = validate(_files(root, "ours")[2])
    assert not errors and not unexpected, errors + unexpected
    assert any("StudyInstanceUID" in str(e.get("message", "")) for e in events if e.get("event") == "log")


def test_rtstruct_contours_give_back_the_labelmap(runs, example):
    """Our contours rasterised (independent reader) against the labelmap on the source slices."""
    root, result, _ = runs
    sources = _sources(example)
    masks, _ = rtstruct_masks(_files(root, "ours")[2], sources)
    frames = seg_frames_by_source(_files(root, "ours")[1], sources)
    for name, mask in masks.items():
        assert {k for k in range(mask.shape[0]) if mask[k].any()} == \
            {k for k in range(mask.shape[0]) if frames[name][k].any()}, name
        assert dice(mask, frames[name]) > 0.98, (name, dice(mask, frames[name]))
    summary = {n: round(dice(m, frames[n]), 4) for n, m in masks.items()}
    print("RTSTRUCT Dice per ROI:", json.dumps(summary))
