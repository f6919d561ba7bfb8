"""Dice per class of a segmentation against a reference.

Dice = 2|P ∩ R| / (|P| + |R|) for each label; a class empty in both counts as 1.0.
By default only classes present in the prediction or the reference are scored (a class
only in the prediction scores 0, so false positives lower the mean). Two means are
reported: over the scored classes, and over the classes present in the reference, which
is the official TotalSegmentator tests' `dice_score_multilabel`.

Inputs: label arrays or nibabel images (`dice_per_class`), or files (`dice_per_class_files`):
a multilabel NIfTI/NRRD, or a folder of one mask file per class (`<class>.nii.gz`, as the
official tool and `segment` without `--ml` write). Class names come from the task, or
from the label table the official tool stores in the NIfTI header.
"""
from pathlib import Path

import numpy as np

from ..catalogue import load_catalogue
from ..errors import InputImageError
from ..imaging.nifti import read_voxels
from ..imaging.read import load_image
from .labelmap import read_label_table

_MASK_SUFFIXES = (".nii.gz", ".nii", ".nrrd")


class DiceScores(dict):
    """{class name or label value: Dice}, with `.mean` (over the scored classes) and
    `.mean_reference` (over classes present in the reference, the official definition)."""

    mean = float("nan")
    mean_reference = float("nan")


def dice(pred_mask, ref_mask):
    """Dice of two boolean masks; 1.0 when both are empty."""
    p, r = np.count_nonzero(pred_mask), np.count_nonzero(ref_mask)
    if p + r == 0:
        return 1.0
    return 2.0 * np.count_nonzero(np.logical_and(pred_mask, ref_mask)) / (p + r)


def _labels(x):
    """Integer label array of an array or image (rounded: masks saved as float are fine)."""
    if hasattr(x, "dataobj"):
        x = read_voxels(x)
    x = np.asanyarray(x)
    if x.ndim > 3 and all(n == 1 for n in x.shape[3:]):
        x = x.reshape(x.shape[:3])
    if x.dtype.kind == "f":
        x = np.rint(x)
    if x.dtype.kind not in "iub" or x.dtype.itemsize > 4:
        x = x.astype(np.int64)
    return x


def _check_same_grid(pred, ref):
    if pred.shape != ref.shape:
        raise InputImageError(
            f"Prediction ({'x'.join(map(str, pred.shape))}) and reference ({'x'.join(map(str, ref.shape))}) "
            "have different sizes.",
            "Compare a result with the reference of the same image (or resample the prediction onto the "
            "reference grid with nearest-neighbour interpolation first).")
    if hasattr(pred, "affine") and hasattr(ref, "affine"):
        if not np.allclose(pred.affine, ref.affine, atol=1e-3):
            raise InputImageError(
                "Prediction and reference have the same size but different positions/orientations (affines).",
                "Compare a result with the reference of the same image; resample one onto the other first if "
                "they come from different scans.")


def _counts(pred, ref):
    """(values, |P|, |R|, |P ∩ R|) per label value > 0 present in either."""
    top = int(max(pred.max(initial=0), ref.max(initial=0)))
    if top < 0:
        top = 0
    if top <= 1024 and pred.min(initial=0) >= 0 and ref.min(initial=0) >= 0:
        n = top + 1
        joint = np.bincount((pred.astype(np.int64) * n + ref).ravel(), minlength=n * n).reshape(n, n)
        p, r, both = joint.sum(1), joint.sum(0), np.diag(joint)
        values = np.nonzero((p + r)[1:])[0] + 1
        return values, p[values], r[values], both[values]
    values = np.union1d(np.unique(pred), np.unique(ref))
    values = values[values > 0]
    p = np.array([np.count_nonzero(pred == v) for v in values])
    r = np.array([np.count_nonzero(ref == v) for v in values])
    both = np.array([np.count_nonzero((pred == v) & (ref == v)) for v in values])
    return values, p, r, both


def dice_per_class(pred, ref, class_map=None, all_classes=False):
    """Dice per class of two label arrays or images on the same grid.

    `class_map` {value: name} names the classes in the result (values not in it keep
    their number). With `all_classes`, every class of `class_map` is scored, so classes
    empty in both appear with 1.0.
    """
    _check_same_grid(pred, ref)
    pred_l, ref_l = _labels(pred), _labels(ref)
    values, p, r, both = _counts(pred_l, ref_l)
    stats = {int(v): (int(a), int(b), int(c)) for v, a, b, c in zip(values, p, r, both)}
    if all_classes and class_map:
        for v in class_map:
            stats.setdefault(int(v), (0, 0, 0))
    scores = DiceScores()
    in_reference = []
    for v in sorted(stats):
        a, b, c = stats[v]
        d = 1.0 if a + b == 0 else 2.0 * c / (a + b)
        key = class_map.get(v, v) if class_map else v
        scores[key] = d
        if b > 0:
            in_reference.append(d)
    scores.counts = {(class_map.get(v, v) if class_map else v): stats[v] for v in sorted(stats)}
    scores.mean = float(np.mean(list(scores.values()))) if scores else 1.0
    scores.mean_reference = float(np.mean(in_reference)) if in_reference else 1.0
    return scores


# -- files -------------------------------------------------------------------------

def _read(path):
    path = Path(path)
    if path.is_dir():
        masks = {}
        for f in sorted(path.iterdir()):
            for suffix in _MASK_SUFFIXES:
                if f.name.endswith(suffix):
                    masks[f.name[: -len(suffix)]] = f
        if not masks:
            raise InputImageError(f"No mask files (.nii.gz, .nii, .nrrd) in {path}.",
                                  "Give a multilabel file, or a folder of one <class>.nii.gz per class.")
        return None, masks
    return load_image(path), None


def _mask_loader(img, masks, names):
    """Function name -> boolean mask, for a labelmap (with value->name) or a folder."""
    shape = {}

    def get(name):
        if masks is not None:
            if name not in masks:
                return None
            m = load_image(masks[name])
            shape[name] = m.shape
            return _labels(m) > 0
        value = names.get(name)
        return None if value is None else _labels(img) == value

    return get


def dice_per_class_files(pred_path, ref_path, task=None):
    """Report of Dice per class between two segmentation files or folders.

    Returns {"prediction", "reference", "mean_dice", "mean_dice_reference_classes",
    "classes": {name: {"dice", "voxels_prediction", "voxels_reference"}},
    "only_in_prediction", "missing_in_prediction"}.
    """
    class_map = None
    if task:
        class_map = dict(load_catalogue().task(task).classes)
    pred_img, pred_masks = _read(pred_path)
    ref_img, ref_masks = _read(ref_path)
    if pred_img is not None and ref_img is not None:
        names = class_map or read_label_table(ref_img) or read_label_table(pred_img) or None
        scores = dice_per_class(pred_img, ref_img, names)
        counts = scores.counts
    else:
        scores, counts = _dice_by_name(pred_img, pred_masks, ref_img, ref_masks, class_map)
    return {
        "prediction": str(pred_path),
        "reference": str(ref_path),
        "mean_dice": round(scores.mean, 6),
        "mean_dice_reference_classes": round(scores.mean_reference, 6),
        "classes": {str(k): {"dice": round(v, 6), "voxels_prediction": counts[k][0],
                             "voxels_reference": counts[k][1]} for k, v in scores.items()},
        "only_in_prediction": [str(k) for k, (a, b, _) in counts.items() if a and not b],
        "missing_in_prediction": [str(k) for k, (a, b, _) in counts.items() if b and not a],
    }


def _dice_by_name(pred_img, pred_masks, ref_img, ref_masks, class_map):
    """Per-class comparison when at least one side is a folder of masks."""
    value_of = {}
    for img in (ref_img, pred_img):
        if img is not None:
            table = class_map or read_label_table(img)
            if not table:
                raise InputImageError(
                    "Cannot match class files to the label values of the multilabel file: it has no label "
                    "names.",
                    "Give the task (evaluate --task TASK) so that label values can be named.")
            value_of = {name: value for value, name in table.items()}
    names = set()
    for img, masks in ((pred_img, pred_masks), (ref_img, ref_masks)):
        if masks is not None:
            names |= set(masks)
        else:
            present = set(np.unique(_labels(img)).tolist())
            names |= {n for n, v in value_of.items() if v in present}
    get_pred = _mask_loader(pred_img, pred_masks, value_of)
    get_ref = _mask_loader(ref_img, ref_masks, value_of)
    scores, counts, in_reference = DiceScores(), {}, []
    for name in sorted(names, key=lambda n: (value_of.get(n, 10**6), n)):
        p, r = get_pred(name), get_ref(name)
        if p is None and r is None:
            continue
        if p is not None and r is not None and p.shape != r.shape:
            raise InputImageError(f"Masks of '{name}' have different sizes: {p.shape} and {r.shape}.",
                                  "Compare results of the same image.")
        a = int(np.count_nonzero(p)) if p is not None else 0
        b = int(np.count_nonzero(r)) if r is not None else 0
        if a + b == 0:
            continue  # an empty class file: not present in either
        d = dice(p if p is not None else np.zeros_like(r), r if r is not None else np.zeros_like(p))
        scores[name] = d
        counts[name] = (a, b, None)
        if b:
            in_reference.append(d)
    scores.mean = float(np.mean(list(scores.values()))) if scores else 1.0
    scores.mean_reference = float(np.mean(in_reference)) if in_reference else 1.0
    return scores, counts
