"""Postprocessing of multilabel maps with the official tool's exact semantics.

All operations work in place on a uint8 labelmap at model resolution (before it goes
back to the input geometry), as the official tool runs them:

- auxiliary labels (organs some models predict only to help, e.g. kidney_cysts' kidneys)
  are set to background;
- `keep_largest_blob`: per class, only the largest 6-connected component stays (ties:
  the first component in scan order, as the official arg-max);
- `remove_small_blobs`: per class, 6-connected components with at most `min_voxels`
  voxels go (the official interval test `count <= lo or count > 1e10`).

Each class is labelled inside its own bounding box (`ndimage.find_objects`), which finds
the same components as labelling the whole volume, in the same scan order, so the
result is identical while 117 classes cost one pass instead of 117 full-volume passes.
"""
import numpy as np
from scipy import ndimage

from .errors import SegmentationError

MAX_BLOB_VOXELS = 1e10  # the official upper bound of the "keep" interval


def remove_labels(seg, labels):
    """Set the given label values to 0 (in place); returns seg."""
    if len(labels):
        seg[np.isin(seg, list(labels))] = 0
    return seg


def _components_per_label(seg, labels):
    """For each label present: (view of its bounding box, its mask there, components, count)."""
    boxes = ndimage.find_objects(seg)
    for label in labels:
        box = boxes[label - 1] if 0 < label <= len(boxes) else None
        if box is None:
            continue
        view = seg[box]
        roi = view == label
        components, n = ndimage.label(roi)
        yield view, roi, components, n


def keep_largest_blob(seg, labels):
    """Per label, keep only its largest connected component (in place)."""
    for view, roi, components, n in _components_per_label(seg, labels):
        if n > 1:
            largest = int(np.argmax(np.bincount(components.ravel())[1:])) + 1
            view[roi & (components != largest)] = 0
    return seg


def remove_small_blobs(seg, labels, min_voxels, max_voxels=MAX_BLOB_VOXELS):
    """Per label, remove connected components with <= min_voxels (or > max) voxels (in place).

    min_voxels is the official `size_mm3 / voxel_volume` (a float: compare, do not round)."""
    for view, roi, components, n in _components_per_label(seg, labels):
        if n == 0:
            continue
        counts = np.bincount(components.ravel())
        remove = (counts <= min_voxels) | (counts > max_voxels)
        remove[0] = False
        if remove.any():
            view[remove[components] & roi] = 0
    return seg


def blob_threshold(size_mm3, zooms):
    """Voxel count of `size_mm3` at these (float32) zooms, computed as the official tool
    does (float32 product), so components exactly at the limit are treated the same."""
    vox_vol = np.prod(zooms)
    return size_mm3 / vox_vol


def body_postprocessing(seg, class_map, zooms):
    """The official low-resolution cleanup of the body model (task 'body')."""
    inv = {v: k for k, v in class_map.items()}
    keep_largest_blob(seg, [inv["body_trunc"]])
    remove_small_blobs(seg, [inv["body_extremities"]], blob_threshold(50000, zooms))
    return seg


def remove_outside_of_mask(seg, mask, dilation_voxels):
    """Zero every label outside `mask` dilated by `dilation_voxels` (6-connected steps;
    0 dilates until nothing changes, as scipy's binary_dilation). In place."""
    grown = ndimage.binary_dilation(mask, iterations=dilation_voxels)
    seg[~grown] = 0
    return seg


def check_supported(postprocessing, task):
    if postprocessing in ("vertebrae_pp", "vertebrae_pp_refined"):
        raise SegmentationError(
            f"Task '{task}' needs the official vertebra-body postprocessing, which this engine does not "
            "support yet.", "Use task 'total' (vertebrae classes) or 'vertebrae_body' instead, or run the "
                            "official TotalSegmentator for this task.")
