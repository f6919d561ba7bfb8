"""liver-vessels end to end on the real example CT with the test models (engine + enhancement + split)."""
import importlib.util
import json

import nibabel as nib
import numpy as np
import pytest

from SegmentationLogic.cli import main
from SegmentationLogic.vessels.io import OUTPUT_FILES, SUPPORT_FILES, VesselInputError
from SegmentationLogic.vessels.workflow import run_liver_vessels

if importlib.util.find_spec("SegmentationLogic.pipeline") is None:
    pytest.skip("the engine (SegmentationLogic.pipeline) is not merged yet", allow_module_level=True)

QC_KEYS = {"portal_voxels", "hepatic_voxels", "total_vessel_voxels", "portal_fraction", "hepatic_fraction",
           "portal_seed_voxels", "hepatic_seed_voxels", "use_skeleton", "confidence", "ambiguous_voxels", "warnings"}


@pytest.fixture(scope="module")
def ct(example):
    return example("example_ct_sm.nii.gz")


@pytest.fixture(scope="module")
def run(ct, test_weights, tmp_path_factory):
    """One full run: liver, portal trunk and IVC (one ROI-subset run), liver_vessels, enhancement, split."""
    out = tmp_path_factory.mktemp("liver_vessels")
    rc = main(["liver-vessels", "-q", "-i", str(ct), "-o", str(out), "--split_portal_hepatic", "--device", "cpu",
               "--weights_dir", str(test_weights)])
    return rc, out


def _img(path):
    return nib.load(str(path))


def test_pipeline_writes_enhanced_mask_support_and_split(run, ct):
    rc, out = run
    assert rc == 0
    ref = _img(ct)
    for name in (OUTPUT_FILES["enhanced"], OUTPUT_FILES["portal"], OUTPUT_FILES["hepatic"], OUTPUT_FILES["labeled"],
                 OUTPUT_FILES["confidence"], *SUPPORT_FILES.values()):
        img = _img(out / name)
        assert img.shape == ref.shape and np.allclose(img.affine, ref.affine), name
    enhanced = np.asanyarray(_img(out / OUTPUT_FILES["enhanced"]).dataobj) > 0
    liver = np.asanyarray(_img(out / SUPPORT_FILES["liver"]).dataobj) > 0
    labeled = np.asanyarray(_img(out / OUTPUT_FILES["labeled"]).dataobj)
    assert liver.any() and enhanced.any()
    assert not (enhanced & ~liver).any()                  # restricted to the liver
    assert np.array_equal(labeled > 0, enhanced) or (labeled > 0).sum() >= 0.95 * enhanced.sum()
    assert set(np.unique(labeled)) <= {0, 1, 2}
    confidence = np.asanyarray(_img(out / OUTPUT_FILES["confidence"]).dataobj)   # the review's "where to look"
    assert confidence[labeled > 0].min() >= 0.5 and confidence.max() <= 1.0 and (confidence[~enhanced] == 0).all()


def test_metadata_records_volume_fallbacks_inputs_and_qc(run, ct):
    _, out = run
    meta = json.loads((out / OUTPUT_FILES["metadata"]).read_text())
    enhanced = np.asanyarray(_img(out / OUTPUT_FILES["enhanced"]).dataobj) > 0
    assert meta["voxels"] == int(enhanced.sum())
    assert meta["volume_mm3"] == pytest.approx(meta["voxels"] * meta["voxel_volume_mm3"])
    assert meta["liver_mask_source"] == "generated" and meta["fallbacks"] == []
    assert meta["inputs"]["ct"] == str(ct) and len(meta["inputs"]["generated"]) == 3
    assert meta["min_component_size"] == 40 and "test model" in (meta["model_note"] or "").lower()
    qc = meta["portal_hepatic_split_qc"]
    assert QC_KEYS <= set(qc)
    assert qc["portal_voxels"] + qc["hepatic_voxels"] + qc["unlabelled_voxels"] == qc["total_vessel_voxels"]


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


def test_disabled_fallback_without_liver_fails_before_the_vessel_run(ct, test_weights, tmp_path):
    empty = tmp_path / "empty_liver.nii.gz"
    ref = _img(ct)
    nib.save(nib.Nifti1Image(np.zeros(ref.shape, np.uint8), ref.affine), str(empty))
    with pytest.raises(VesselInputError, match="full-volume fallback is disabled"):
        run_liver_vessels(ct, tmp_path / "out", liver_mask=empty, skip_main_body_veins=True,
                          no_fallback_full_liver=True, device="cpu", weights_dir=test_weights)
    assert not (tmp_path / "out" / OUTPUT_FILES["enhanced"]).exists()
