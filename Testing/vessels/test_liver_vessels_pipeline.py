"""liver-vessels end to end (engine + enhancement + split) on a phantom CT whose right answer is
known by construction: the known-output test models segment the liver, portal trunk, IVC and
vessels of a phantom (vessel_phantoms.phantom_ct) exactly, so every output can be checked
against the phantom's ground truth, on any machine."""
import importlib.util
import json

import nibabel as nib
import numpy as np
import pytest

from SegmentationLogic.cli import main
from SegmentationLogic.vessels.io import OUTPUT_FILES, SUPPORT_FILES, VesselInputError
from SegmentationLogic.vessels.workflow import run_liver_vessels
from vessel_phantoms import CT_HU, make_phantom, phantom_ct, save_ct, score_split

if importlib.util.find_spec("SegmentationLogic.pipeline") is None:
    pytest.skip("the engine (SegmentationLogic.pipeline) is not merged yet", allow_module_level=True)

QC_KEYS = {"portal_voxels", "hepatic_voxels", "total_vessel_voxels", "portal_fraction", "hepatic_fraction",
           "portal_seed_voxels", "hepatic_seed_voxels", "use_skeleton", "confidence", "ambiguous_voxels", "warnings"}
SPECK = 3  # a bright speck of 3^3 voxels inside the liver: below --min_component_size (40), so it must go


@pytest.fixture(scope="module")
def phantom():
    return make_phantom("clean", seed=0)


@pytest.fixture(scope="module")
def speck(phantom):
    """Corner of a SPECK^3 cube of liver, 4 voxels clear of any vessel, trunk or IVC."""
    from scipy.ndimage import binary_dilation, binary_erosion

    other = binary_dilation((phantom.vessels | phantom.portal_trunk | phantom.ivc) > 0, iterations=4)
    room = binary_erosion(phantom.liver > 0, iterations=SPECK) & ~other
    return tuple(int(v) for v in np.argwhere(room)[len(np.argwhere(room)) // 2])


@pytest.fixture(scope="module")
def ct(phantom, speck, tmp_path_factory):
    data = phantom_ct(phantom)
    data[tuple(slice(c, c + SPECK) for c in speck)] = CT_HU["vessels"]
    return save_ct(phantom, tmp_path_factory.mktemp("phantom") / "ct.nii.gz", data)


@pytest.fixture(scope="module")
def run(ct, test_weights, tmp_path_factory):
    """One full run: liver, portal trunk and IVC (one ROI-subset run), liver_vessels, enhancement, split."""
    out = tmp_path_factory.mktemp("liver_vessels")
    rc = main(["liver-vessels", "-q", "-i", str(ct), "-o", str(out), "--split_portal_hepatic", "--device", "cpu",
               "--weights_dir", str(test_weights)])
    return rc, out


def _img(path):
    return nib.load(str(path))


def _mask(path):
    return np.asanyarray(_img(path).dataobj) > 0


def test_pipeline_writes_enhanced_mask_support_and_split(run, ct, phantom, speck):
    rc, out = run
    assert rc == 0
    ref = _img(ct)
    for name in (OUTPUT_FILES["enhanced"], OUTPUT_FILES["portal"], OUTPUT_FILES["hepatic"], OUTPUT_FILES["labeled"],
                 OUTPUT_FILES["confidence"], *SUPPORT_FILES.values()):
        img = _img(out / name)
        assert img.shape == ref.shape and np.allclose(img.affine, ref.affine), name
    # the support masks are what the models found: the phantom's liver (vessels included), trunk and IVC
    vessels = phantom.vessels > 0
    speck_mask = np.zeros_like(vessels)
    speck_mask[tuple(slice(c, c + SPECK) for c in speck)] = True
    liver = _mask(out / SUPPORT_FILES["liver"])
    assert np.array_equal(liver, ((phantom.liver > 0) | vessels) & ~((phantom.portal_trunk > 0) & ~vessels))
    assert np.array_equal(_mask(out / SUPPORT_FILES["portal_trunk"]), (phantom.portal_trunk > 0) & ~vessels)
    assert np.array_equal(_mask(out / SUPPORT_FILES["ivc"]), phantom.ivc > 0)
    # the vessel model also marks the trunk, the IVC and the speck: the enhanced mask keeps what lies
    # in the liver and is not a small piece, which is exactly the phantom's vessel tree
    enhanced = _mask(out / OUTPUT_FILES["enhanced"])
    assert np.array_equal(enhanced, vessels)
    assert speck_mask.any() and not (enhanced & speck_mask).any()
    # the split labels every vessel voxel, and labels them right
    labeled = np.asanyarray(_img(out / OUTPUT_FILES["labeled"]).dataobj)
    assert set(np.unique(labeled)) == {0, 1, 2}
    assert np.array_equal(labeled > 0, enhanced)
    assert np.array_equal(_mask(out / OUTPUT_FILES["portal"]), labeled == 1)
    assert np.array_equal(_mask(out / OUTPUT_FILES["hepatic"]), labeled == 2)
    score = score_split(labeled, phantom)
    assert score["accuracy"] >= 0.98 and score["dice_portal"] >= 0.95 and score["dice_hepatic"] >= 0.95, score
    confidence = np.asanyarray(_img(out / OUTPUT_FILES["confidence"]).dataobj)   # the review's "where to look"
    assert confidence[labeled > 0].min() >= 0.5 and confidence.max() <= 1.0 and (confidence[~enhanced] == 0).all()


def test_metadata_records_volume_fallbacks_inputs_and_qc(run, ct, phantom):
    _, out = run
    meta = json.loads((out / OUTPUT_FILES["metadata"]).read_text())
    assert meta["voxels"] == int(phantom.vessels.sum())
    assert meta["volume_mm3"] == pytest.approx(meta["voxels"] * meta["voxel_volume_mm3"])
    assert meta["voxel_volume_mm3"] == pytest.approx(np.prod(phantom.spacing))
    assert meta["liver_mask_source"] == "generated" and meta["fallbacks"] == []
    assert meta["inputs"]["ct"] == str(ct) and len(meta["inputs"]["generated"]) == 3
    assert meta["min_component_size"] == 40 and "test model" in (meta["model_note"] or "").lower()
    qc = meta["portal_hepatic_split_qc"]
    assert QC_KEYS <= set(qc)
    assert qc["portal_voxels"] + qc["hepatic_voxels"] + qc["unlabelled_voxels"] == qc["total_vessel_voxels"]
    assert qc["total_vessel_voxels"] == meta["voxels"] and qc["unlabelled_voxels"] == 0
    assert qc["seed_sources"] == {"portal": "portal_trunk", "hepatic": "inferior_vena_cava"}
    assert qc["portal_voxels"] == int((phantom.truth == 1).sum()) and qc["warnings"] == []


def test_labeled_only_with_given_masks_and_removed_binary(run, ct, test_weights, tmp_path):
    _, first = run
    res = run_liver_vessels(ct, tmp_path, liver_mask=first / SUPPORT_FILES["liver"], split_support_dir=first,
                            skip_main_body_veins=True, labeled_only=True, remove_enhanced_binary=True,
                            device="cpu", weights_dir=test_weights)
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {OUTPUT_FILES["labeled"], OUTPUT_FILES["metadata"], OUTPUT_FILES["skeleton"],
                     OUTPUT_FILES["confidence"]}
    meta = json.loads((tmp_path / OUTPUT_FILES["metadata"]).read_text())
    assert meta["labeled_only"] is True and meta["liver_mask_source"] == "provided"
    assert meta["portal_hepatic_split_qc"] == res["qc"]
    # the same masks give the same split
    assert np.array_equal(np.asanyarray(_img(tmp_path / OUTPUT_FILES["labeled"]).dataobj),
                          np.asanyarray(_img(first / OUTPUT_FILES["labeled"]).dataobj))


def test_disabled_fallback_without_liver_fails_before_the_vessel_run(ct, test_weights, tmp_path):
    empty = tmp_path / "empty_liver.nii.gz"
    ref = _img(ct)
    nib.save(nib.Nifti1Image(np.zeros(ref.shape, np.uint8), ref.affine), str(empty))
    with pytest.raises(VesselInputError, match="full-volume fallback is disabled"):
        run_liver_vessels(ct, tmp_path / "out", liver_mask=empty, skip_main_body_veins=True,
                          no_fallback_full_liver=True, device="cpu", weights_dir=test_weights)
    assert not (tmp_path / "out" / OUTPUT_FILES["enhanced"]).exists()
