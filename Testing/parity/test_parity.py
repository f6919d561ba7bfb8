"""Parity: this engine and the official TotalSegmentator give IDENTICAL labelmaps.

Both run on the same test models (real nnU-Net checkpoints in the official layout) and
the same real example images. The official tool runs offline in two background
subprocesses (Testing/support/reference.py) that work through every selected case once per
session while this process runs the engine; each test waits only for its own case.
A single differing voxel fails the test: there is no tolerance.

Cases (kept cheap: every option is exercised once, on the lightest model it works with):
- total (5 parts at 1.5 mm, with full-resolution statistics, default options), total --fast
  (with the model-resolution statistics: median, incomplete classes included and the extra
  metrics, which the official fast path ignores), total --fastest, total_mr (2 parts, LPS MR input);
- roi_subset liver+brain (6 mm crop model, then only the parts holding those classes);
- body_seg (6 mm body model crop + body postprocessing) on the 3 mm model;
- force_split on the 5-part 1.5 mm run (the only configuration where the official split
  works on these images: it needs >= 58 slices at model resolution);
- liver_vessels (organ-cropped subtask, nnU-Net's own resampling inside);
- remove_small_blobs on the 3 mm model;
- task body, one file per class (the body model's cleanup, per-class files and the
  derived body/skin masks);
- DICOM input (total --fast on the DICOM series), written also as DICOM SEG and RTSTRUCT
  (`--output_type nifti dicom_seg dicom_rtstruct`, the official multi-output names). SEG: the
  same segments (labels, order, category and type codes; ours adds the left/right modifier
  the official file leaves out), the same frames, frame by frame the same pixels (both placed
  on the NIfTI grid by their own geometry). RTSTRUCT: the same ROIs (names, order, colours),
  contours on the same slices, Dice near 1 per ROI after rasterising both (OpenCV's and
  marching squares' tracers differ by a fraction of a pixel), and ours giving back our SEG.
  dciodvfy: ours clean; the official files are not (the example is anonymised with empty
  study/series UIDs, which it copies empty and ours fills, with a warning);
- vertebrae_pp_refined (the vertebral-body model's relabelling and 3 mm growth at model
  resolution, then the vertebrae_body model's mask at input resolution);
- pleural_pericard_effusion (lung crop, nnU-Net's own resampling, and the ensemble of
  every fold present: the test model has two).
"""
import importlib.util
import json
import sys

import nibabel as nib
import numpy as np
import pytest

from reference import OfficialBatch
from SegmentationLogic.catalogue import load_catalogue
from SegmentationLogic.outputs.labelmap import read_label_table
from SegmentationLogic.outputs.writer import TEST_MODEL_DESCRIPTION
from SegmentationLogic.outputs.statistics import EXCLUDED_KEY, without_notes

pytestmark = [pytest.mark.parity, pytest.mark.slow]

CT, MR, DICOM = "example_ct_sm.nii.gz", "example_mr_sm.nii.gz", "example_ct_dicom"

# SEG and RTSTRUCT beside the DICOM case's NIfTI where both writers are installed (the official RTSTRUCT needs rt-utils)
DICOM_WRITERS = all(importlib.util.find_spec(m) for m in ("highdicom", "rt_utils"))
DICOM_OUTPUTS = {"output_types": ["nifti", "dicom_seg", "dicom_rtstruct"]} if DICOM_WRITERS else {}
DICOM_TESTS = ("test_dicom_seg_has_the_official_segments_frames_and_pixels",
               "test_rtstruct_has_the_official_rois_on_the_same_slices")

# name -> (input, options); the order is the order the tests (and the official runners) take
# them. OFFICIAL_SECONDS: rough cost of each official run, to share them between two runners.
CASES = {
    "fastest": (CT, dict(quality="fastest")),
    "fast": (CT, dict(quality="fast", statistics=True, stats_aggregation="median", stats_include_incomplete=True,
                      statistics_extra=True)),
    "fast_remove_small_blobs": (CT, dict(quality="fast", remove_small_blobs=True)),
    "body_seg": (CT, dict(quality="fast", body_seg=True)),
    "body_per_class": (CT, dict(task="body", quality="fast", ml=False)),
    "liver_vessels": (CT, dict(task="liver_vessels")),
    "roi_subset": (CT, dict(roi_subset=["liver", "brain"])),
    "total_mr": (MR, dict(task="total_mr")),
    "dicom_fast": (DICOM, dict(quality="fast", **DICOM_OUTPUTS)),
    # the resampling flags where they matter (0.98 x 0.98 x 2 mm to 3 mm); -ho with -v1o (v1 label values at the end)
    "dicom_fast_ho_v1o": (DICOM, dict(quality="fast", higher_order_resampling=True, v1_order=True)),
    "dicom_fast_ro3_legacy": (DICOM, dict(quality="fast", resampling_order=3, higher_order_resampling_legacy=True)),
    "fastest_lowres": (CT, dict(quality="fastest", save_lowres=True)),
    "total": (CT, dict(statistics=True)),
    "force_split": (CT, dict(force_split=True)),
    "vertebrae_pp_refined": (CT, dict(task="vertebrae_pp_refined")),
    "pleural_pericard_effusion": (CT, dict(task="pleural_pericard_effusion")),
}
STATISTICS_CASES = ("total", "fast")
# case -> the case without its options: where both run, their labelmaps must differ (else the case proves nothing)
PLAIN_CASE = {"fast_remove_small_blobs": "fast", "dicom_fast_ho_v1o": "dicom_fast", "dicom_fast_ro3_legacy": "dicom_fast",
              "fastest_lowres": "fastest"}
OFFICIAL_SECONDS = {"dicom_fast": 20, "dicom_fast_ho_v1o": 20, "dicom_fast_ro3_legacy": 20, "vertebrae_pp_refined": 20, "pleural_pericard_effusion": 20, "total": 60, "force_split": 90, "roi_subset": 25, "total_mr": 25}
OFFICIAL_RUNNERS = 2


def _selected_cases(session):
    """Cases of the parity tests pytest will run (so `-k` runs only what it needs)."""
    this = sys.modules[__name__]
    names = []
    for item in session.items:
        callspec = getattr(item, "callspec", None)
        if getattr(item, "module", None) is not this:
            continue
        if callspec and callspec.params.get("name") in CASES:
            names.append(callspec.params["name"])
        if getattr(item, "originalname", None) in DICOM_TESTS:
            names.append("dicom_fast")
    return [n for n in CASES if n in names]


@pytest.fixture(scope="session")
def parity_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("parity")


@pytest.fixture(scope="session")
def official(request, test_weights, parity_dir, example):
    """The official runs of every selected case, started once, in the background."""
    names = _selected_cases(request.session)
    cases = [(n, example(CASES[n][0]), _output(parity_dir / "official", n), CASES[n][1]) for n in names]
    batch = OfficialBatch(cases, test_weights, parity_dir / "official_work", workers=OFFICIAL_RUNNERS,
                          costs=OFFICIAL_SECONDS)
    yield batch
    batch.close()


@pytest.fixture(scope="session")
def engine(test_weights):
    from SegmentationLogic.pipeline import Segmenter

    return Segmenter(device="cpu", weights_dir=test_weights, download=False)


@pytest.fixture(scope="session")
def engine_run(engine, parity_dir, example):
    """run(name) -> (result, progress events) of our run of that case, run once per session."""
    done = {}

    def run(name):
        if name not in done:
            input_name, options = CASES[name]
            events = []
            result = engine.segment(example(input_name), _output(parity_dir / "engine", name), progress=events.append,
                                    **options)
            done[name] = (result, events)
        return done[name]

    return run


def _output(root, name):
    """Multilabel file, or (ml=False) a folder of masks."""
    return root / name / ("seg.nii.gz" if CASES[name][1].get("ml", True) else "masks")


def _official_output(official, parity_dir, name):
    r = official.wait(name)
    assert r["ok"], f"the official tool failed on {name}:\n{r['error']}"
    return _output(parity_dir / "official", name)


def _assert_identical_files(ours_path, theirs_path, label_table=True):
    ours, theirs = nib.load(ours_path), nib.load(theirs_path)
    a, b = np.asanyarray(ours.dataobj), np.asanyarray(theirs.dataobj)
    assert a.shape == b.shape
    assert a.dtype == b.dtype == np.uint8
    differing = int(np.count_nonzero(a != b))
    assert differing == 0, f"{differing} of {a.size} voxels differ from the official labelmap"
    assert np.array_equal(ours.affine, theirs.affine)
    for key in ("sform_code", "qform_code", "pixdim", "srow_x", "srow_y", "srow_z", "quatern_b"):
        assert np.array_equal(ours.header[key], theirs.header[key]), key
    # the one deliberate difference: made with test models, our files say so where the official
    # tool keeps the input's description (with real weights ours keeps it too)
    assert ours.header["descrip"].tobytes().rstrip(b"\0").decode() == TEST_MODEL_DESCRIPTION
    if label_table:
        assert read_label_table(ours) == read_label_table(theirs)
    return a


def _assert_identical_folders(ours, theirs):
    names = sorted(p.name for p in theirs.glob("*.nii.gz"))
    assert names == sorted(p.name for p in ours.glob("*.nii.gz"))
    return {n: _assert_identical_files(ours / n, theirs / n, label_table=False) for n in names}


@pytest.mark.parametrize("name", list(CASES))
def test_identical_to_official(name, official, engine_run, parity_dir):
    options = CASES[name][1]
    ours_path = _output(parity_dir / "engine", name)
    result, _ = engine_run(name)
    theirs_path = _official_output(official, parity_dir, name)
    if not options.get("ml", True):
        masks = _assert_identical_folders(ours_path, theirs_path)
        assert {f"{v}.nii.gz" for v in result.class_map.values()} <= set(masks)
        assert all(np.array_equal(masks[f"{v}.nii.gz"], np.asanyarray(result.labelmap.dataobj) == k)
                   for k, v in result.class_map.items())
        assert masks["body_trunc.nii.gz"].any() and masks["skin.nii.gz"].any()
        return
    labels = _assert_identical_files(ours_path, theirs_path)

    assert labels.any(), "a parity case whose labelmap is empty would prove nothing"
    assert np.array_equal(np.asanyarray(result.labelmap.dataobj), labels)  # the returned image is the file
    assert result.model_note and "TEST MODEL" in result.model_note
    if options.get("roi_subset"):
        assert set(np.unique(labels)) - {0} <= {k for k, v in result.class_map.items() if v in options["roi_subset"]}
    if name in STATISTICS_CASES:
        ours_stats = json.loads((ours_path.parent / "statistics.json").read_text())
        theirs_stats = (parity_dir / "official" / name / "statistics.json").read_text()
        assert "TEST MODEL" in ours_stats.pop("note")  # test models ran: the file says so first
        assert without_notes(ours_stats) == json.loads(theirs_stats)
        assert json.dumps(without_notes(ours_stats), indent=4) == theirs_stats  # byte-identical but for our notes
        assert result.statistics == ours_stats
        # every class without numbers because it touches the border says so
        excluded = {k for k, v in ours_stats.items() if EXCLUDED_KEY in v}
        if options.get("stats_include_incomplete"):
            assert not excluded
        else:
            assert excluded and all(ours_stats[k]["volume"] == 0.0 for k in excluded)
    if options.get("v1_order"):  # both tools wrote the v1 label values (the label tables are equal above)
        assert result.class_map != load_catalogue().task("total").classes
        assert set(np.unique(labels)) - {0} <= set(result.class_map)
    if name in PLAIN_CASE and PLAIN_CASE[name] in official.names:  # the options must have had an effect
        plain = np.asanyarray(nib.load(_official_output(official, parity_dir, PLAIN_CASE[name])).dataobj)
        assert plain.shape != labels.shape or np.count_nonzero(plain != labels) > 0


@pytest.fixture(scope="session")
def dicom_outputs(official, engine_run, parity_dir, example):
    """Both tools' files of the DICOM case, our run's events and the source slices."""
    if not DICOM_WRITERS:
        pytest.skip("highdicom or rt-utils (the official RTSTRUCT writer) is not installed")
    import pydicom

    result, events = engine_run("dicom_fast")
    _official_output(official, parity_dir, "dicom_fast")
    files = {who: {kind: parity_dir / who / "dicom_fast" / f"seg{suffix}"
                   for kind, suffix in (("nifti", ".nii.gz"), ("seg", "_seg.dcm"), ("rtstruct", "_rtstruct.dcm"))}
             for who in ("engine", "official")}
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(example(DICOM).iterdir()) if p.is_file()]
    for d in sources:  # the official files reference the meta header's instance UID too (the element is empty)
        d.SOPInstanceUID = d.SOPInstanceUID or d.file_meta.MediaStorageSOPInstanceUID
    return result, events, files, sources


def test_dicom_seg_has_the_official_segments_frames_and_pixels(dicom_outputs):
    import pydicom
    from dicom_checks import seg_on_nifti_grid, validate

    result, _, files, _ = dicom_outputs
    ours_path, theirs_path = files["engine"]["seg"], files["official"]["seg"]
    outputs = lambda who: sorted(p.name for p in files[who]["seg"].parent.iterdir() if p.suffix in (".dcm", ".gz"))  # noqa: E731
    assert outputs("engine") == outputs("official")
    ours, theirs = pydicom.dcmread(ours_path), pydicom.dcmread(theirs_path)
    assert [s.SegmentLabel for s in ours.SegmentSequence] == [s.SegmentLabel for s in theirs.SegmentSequence]
    for a, b in zip(ours.SegmentSequence, theirs.SegmentSequence):
        assert a.SegmentedPropertyCategoryCodeSequence[0].CodeValue == \
            b.SegmentedPropertyCategoryCodeSequence[0].CodeValue, a.SegmentLabel
        if b.SegmentedPropertyTypeCodeSequence[0].CodeMeaning != "Tissue":  # official fallback for unmapped classes
            assert a.SegmentedPropertyTypeCodeSequence[0].CodeValue == \
                b.SegmentedPropertyTypeCodeSequence[0].CodeValue, a.SegmentLabel
    assert int(ours.NumberOfFrames) == int(theirs.NumberOfFrames)
    img = nib.load(files["engine"]["nifti"])
    mine, official = seg_on_nifti_grid(ours_path, img), seg_on_nifti_grid(theirs_path, img)
    labels = np.asanyarray(img.dataobj)
    values = {v: k for k, v in result.class_map.items()}
    assert official and set(mine) == set(official)
    for name in official:
        assert np.array_equal(mine[name], official[name]), name
        assert np.array_equal(mine[name], labels == values[name]), name
    errors, unexpected, _ = validate(ours_path)
    assert not errors and not unexpected, errors + unexpected
    assert validate(theirs_path)[0], "the official SEG of this anonymised series was expected to be invalid"


def test_rtstruct_has_the_official_rois_on_the_same_slices(dicom_outputs):
    from dicom_checks import dice, rtstruct_masks, seg_frames_by_source, validate

    _, events, files, sources = dicom_outputs
    ours, ours_ds = rtstruct_masks(files["engine"]["rtstruct"], sources)
    theirs, theirs_ds = rtstruct_masks(files["official"]["rtstruct"], sources)
    assert [r.ROIName for r in ours_ds.StructureSetROISequence] == \
        [r.ROIName for r in theirs_ds.StructureSetROISequence]
    colours = {r.ReferencedROINumber: list(r.ROIDisplayColor) for r in theirs_ds.ROIContourSequence}
    assert [list(r.ROIDisplayColor) for r in ours_ds.ROIContourSequence] == \
        [colours[r.ReferencedROINumber] for r in ours_ds.ROIContourSequence]
    frames = seg_frames_by_source(files["engine"]["seg"], sources)  # our contours give back our SEG
    slices = lambda m: {k for k in range(m.shape[0]) if m[k].any()}  # noqa: E731
    assert theirs and set(ours) == set(theirs)
    for name in theirs:
        assert slices(ours[name]) == slices(theirs[name]) == slices(frames[name]), name
        assert dice(ours[name], theirs[name]) > 0.95, (name, dice(ours[name], theirs[name]))
        assert dice(ours[name], frames[name]) > 0.98, (name, dice(ours[name], frames[name]))
    errors, unexpected, _ = validate(files["engine"]["rtstruct"])
    assert not errors and not unexpected, errors + unexpected
    assert any("StudyInstanceUID" in str(e.get("message", "")) for e in events if e.get("event") == "log")
