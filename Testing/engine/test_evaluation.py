"""Dice per class: hand-computed cases, the official example references, the CLI."""
import json

import nibabel as nib
import numpy as np
import pytest

from SegmentationLogic.cli import main
from SegmentationLogic.errors import InputImageError
from SegmentationLogic.outputs.evaluation import dice, dice_per_class, dice_per_class_files
from SegmentationLogic.outputs.labelmap import read_label_table


def test_hand_computed():
    pred = np.array([[[1, 1, 0, 2, 2, 3]]])
    ref = np.array([[[1, 0, 0, 2, 2, 0]]])
    s = dice_per_class(pred, ref)
    # class 1: |P|=2 |R|=1 overlap 1 -> 2/3; class 2: identical; class 3 only predicted -> 0
    assert s == {1: pytest.approx(2 / 3), 2: 1.0, 3: 0.0}
    assert s.mean == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert s.mean_reference == pytest.approx((2 / 3 + 1) / 2)  # official: classes in the reference
    assert s.counts[1] == (2, 1, 1)


def test_names_empty_classes_and_float_masks():
    pred = np.zeros((4, 4, 4), np.float32)
    ref = np.zeros((4, 4, 4), np.uint8)
    pred[:2] = 5.0  # 32 voxels
    ref[1:3] = 5  # 32 voxels, 16 shared
    names = {5: "liver", 7: "spleen"}
    assert dice_per_class(pred, ref, names) == {"liver": 0.5}
    s = dice_per_class(pred, ref, names, all_classes=True)
    assert s == {"liver": 0.5, "spleen": 1.0}  # empty in both: 1.0
    assert dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0
    assert dice_per_class(np.zeros((2, 2, 2)), np.zeros((2, 2, 2))).mean == 1.0


def test_large_label_values_use_the_sparse_path():
    pred = np.zeros((5, 5, 5), np.int32)
    ref = np.zeros((5, 5, 5), np.int32)
    pred[0, 0, :2] = 70000
    ref[0, 0, 1:3] = 70000
    ref[4, 4, 4] = 3
    assert dice_per_class(pred, ref) == {3: 0.0, 70000: 0.5}


def test_grid_mismatch_is_refused():
    with pytest.raises(InputImageError) as e:
        dice_per_class(np.zeros((2, 3, 4)), np.zeros((2, 3, 5)))
    assert "Prediction (2x3x4) and reference (2x3x5) have different sizes" in e.value.cause
    a = nib.Nifti1Image(np.ones((2, 2, 2), np.uint8), np.eye(4))
    b = nib.Nifti1Image(np.ones((2, 2, 2), np.uint8), np.diag([2, 2, 2, 1]))
    with pytest.raises(InputImageError, match="different positions/orientations"):
        dice_per_class(a, b)


def _independent_dice(pred, ref, value):
    p, r = pred == value, ref == value
    return 2 * np.sum(p & r) / (np.sum(p) + np.sum(r))


def test_example_references(example):
    """The official fast and normal references of the example CT, against each other."""
    fast, full = example("example_seg_fast.nii.gz"), example("example_seg.nii.gz")
    report = dice_per_class_files(fast, full)
    ref_img = nib.load(str(full))
    assert read_label_table(ref_img)[5] == "liver"  # names from the official header label table
    p, r = np.asanyarray(nib.load(str(fast)).dataobj), np.asanyarray(ref_img.dataobj)
    for value, name in ((5, "liver"), (31, "vertebrae_L1"), (1, "spleen")):
        assert report["classes"][name]["dice"] == pytest.approx(_independent_dice(p, r, value), abs=1e-6)
        assert report["classes"][name]["voxels_reference"] == int(np.sum(r == value))
    present = set(np.unique(p)) | set(np.unique(r))
    assert len(report["classes"]) == len(present - {0})
    assert 0.5 < report["mean_dice_reference_classes"] < 1.0
    assert dice_per_class_files(full, full, task="total")["mean_dice"] == 1.0


def test_folder_of_class_files(example, tmp_path):
    """Per-class output folders (segment without --ml) compare by class name."""
    full = nib.load(str(example("example_seg.nii.gz")))
    labels = np.asanyarray(full.dataobj)
    folder = tmp_path / "seg"
    folder.mkdir()
    for value, name in ((5, "liver"), (1, "spleen"), (2, "kidney_right")):
        mask = (labels == value).astype(np.uint8)
        if name == "spleen":
            mask[...] = 0  # an empty class file: not scored
        nib.save(nib.Nifti1Image(mask, full.affine), folder / f"{name}.nii.gz")
    report = dice_per_class_files(folder, example("example_seg.nii.gz"), task="total")
    assert report["classes"]["liver"]["dice"] == 1.0 and report["classes"]["kidney_right"]["dice"] == 1.0
    assert "spleen" in report["missing_in_prediction"] and report["classes"]["spleen"]["dice"] == 0.0
    assert report["classes"]["liver"]["voxels_prediction"] == int(np.sum(labels == 5))
    unnamed = tmp_path / "unnamed.nii.gz"
    nib.save(nib.Nifti1Image(labels, full.affine), unnamed)
    with pytest.raises(InputImageError) as e:
        dice_per_class_files(folder, unnamed)
    assert "no label names" in e.value.cause and "--task" in e.value.fix


def test_evaluate_cli(example, capsys):
    assert main(["evaluate", str(example("example_seg_roi_subset.nii.gz")), str(example("example_seg.nii.gz")),
                 "--task", "total"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["classes"]["liver"]["dice"] > 0.9
    assert report["only_in_prediction"] == []
    assert "spleen" in report["missing_in_prediction"]  # roi_subset: only liver and brain predicted
