"""Parity: this engine and the official TotalSegmentator give IDENTICAL labelmaps.

Both run on the same test models (real nnU-Net checkpoints in the official layout) and
the same real example images. The official tool runs offline in two background
subprocesses (Testing/support/reference.py) that work through every selected case once per
session while this process runs the engine; each test waits only for its own case.
A single differing voxel fails the test: there is no tolerance.

Cases (kept cheap: every option is exercised once, on the lightest model it works with):
- total (5 parts at 1.5 mm, with full-resolution statistics), total --fast (with the
  model-resolution statistics; once more with median, incomplete classes included and the
  extra metrics, which the official fast path ignores), total --fastest, total_mr (2 parts, LPS MR input);
- roi_subset liver+brain (6 mm crop model, then only the parts holding those classes);
- body_seg (6 mm body model crop + body postprocessing) on the 3 mm model;
- force_split on the 5-part 1.5 mm run (the only configuration where the official split
  works on these images: it needs >= 58 slices at model resolution);
- liver_vessels (organ-cropped subtask, nnU-Net's own resampling inside);
- remove_small_blobs on the 3 mm model;
- task body, one file per class (the body model's cleanup, per-class files and the
  derived body/skin masks);
- DICOM input (total --fast on the DICOM series);
- vertebrae_pp_refined (the vertebral-body model's relabelling and 3 mm growth at model
  resolution, then the vertebrae_body model's mask at input resolution);
- pleural_pericard_effusion (lung crop, nnU-Net's own resampling, and the ensemble of
  every fold present: the test model has two).
"""
import json
import sys

import nibabel as nib
import numpy as np
import pytest

from reference import OfficialBatch
from SegmentationLogic.outputs.labelmap import read_label_table
from SegmentationLogic.outputs.statistics import EXCLUDED_KEY, without_notes

pytestmark = [pytest.mark.parity, pytest.mark.slow]

CT, MR, DICOM = "example_ct_sm.nii.gz", "example_mr_sm.nii.gz", "example_ct_dicom"

# name -> (input, options); the order is the order the tests (and the official runners) take
# them. OFFICIAL_SECONDS: rough cost of each official run, to share them between two runners.
CASES = {
    "fastest": (CT, dict(quality="fastest")),
    "fast": (CT, dict(quality="fast", statistics=True)),
    "fast_stats_median_incomplete": (CT, dict(quality="fast", statistics=True, stats_aggregation="median",
                                              stats_include_incomplete=True, statistics_extra=True)),
    "fast_remove_small_blobs": (CT, dict(quality="fast", remove_small_blobs=True)),
    "body_seg": (CT, dict(quality="fast", body_seg=True)),
    "body_per_class": (CT, dict(task="body", quality="fast", ml=False)),
    "liver_vessels": (CT, dict(task="liver_vessels")),
    "roi_subset": (CT, dict(roi_subset=["liver", "brain"])),
    "total_mr": (MR, dict(task="total_mr")),
    "dicom_fast": (DICOM, dict(quality="fast")),
    "total": (CT, dict(statistics=True)),
    "force_split": (CT, dict(force_split=True)),
    "vertebrae_pp_refined": (CT, dict(task="vertebrae_pp_refined")),
    "pleural_pericard_effusion": (CT, dict(task="pleural_pericard_effusion")),
}
STATISTICS_CASES = ("total", "fast", "fast_stats_median_incomplete")
OFFICIAL_SECONDS = {"vertebrae_pp_refined": 20, "pleural_pericard_effusion": 20, "total": 60, "force_split": 90, "roi_subset": 25, "total_mr": 25}
OFFICIAL_RUNNERS = 2


def _selected_cases(session):
    """Cases of the parity tests pytest will run (so `-k` runs only what it needs)."""
    this = sys.modules[__name__]
    names = []
    for item in session.items:
        callspec = getattr(item, "callspec", None)
        if getattr(item, "module", None) is this and callspec and callspec.params.get("name") in CASES:
            names.append(callspec.params["name"])
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
    for key in ("sform_code", "qform_code", "pixdim", "srow_x", "srow_y", "srow_z", "quatern_b", "descrip"):
        assert np.array_equal(ours.header[key], theirs.header[key]), key
    if label_table:
        assert read_label_table(ours) == read_label_table(theirs)
    return a


def _assert_identical_folders(ours, theirs):
    names = sorted(p.name for p in theirs.glob("*.nii.gz"))
    assert names == sorted(p.name for p in ours.glob("*.nii.gz"))
    return {n: _assert_identical_files(ours / n, theirs / n, label_table=False) for n in names}


@pytest.mark.parametrize("name", list(CASES))
def test_identical_to_official(name, official, engine, parity_dir, example, request):
    input_name, options = CASES[name]
    ours_path = _output(parity_dir / "engine", name)
    result = engine.segment(example(input_name), ours_path, **options)
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
        assert without_notes(ours_stats) == json.loads(theirs_stats)
        assert json.dumps(without_notes(ours_stats), indent=4) == theirs_stats  # byte-identical but for our notes
        assert result.statistics == ours_stats
        # every class without numbers because it touches the border says so
        excluded = {k for k, v in ours_stats.items() if EXCLUDED_KEY in v}
        if options.get("stats_include_incomplete"):
            assert not excluded
        else:
            assert excluded and all(ours_stats[k]["volume"] == 0.0 for k in excluded)
    if name == "fast_remove_small_blobs":  # the option must have had something to remove
        plain = nib.load(_official_output(official, parity_dir, "fast")) if "fast" in official.names else None
        if plain is not None:
            assert np.count_nonzero(np.asanyarray(plain.dataobj) != labels) > 0
