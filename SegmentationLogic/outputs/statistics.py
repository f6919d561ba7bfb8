"""Per-class volume (mm3) and mean intensity, exactly as the official statistics.json.

Official semantics reproduced:
- intensities are the image values truncated to int16 (`get_fdata().astype(int16)`);
- voxel volume is the float32 product of the header zooms; volume = count * that;
- a class touching the border (any voxel in the first or last 3 slices of any axis) gets
  volume 0.0 and intensity 0.0 (its mask is incomplete), unless disabled;
- intensity = np.average(ct, weights=mask).round(5) (0.0 for an empty class).

All classes are done in one pass (bincount) instead of one full-volume mask per class:
the sums are sums of integers in float64 and therefore exact in any order, so the
numbers, and the JSON text, are identical.
"""
import numpy as np

BORDER = 3


def _int16(values):
    if values.dtype == np.int16:
        return values
    if values.dtype.kind in "iub" and values.size:
        lo, hi = values.min(), values.max()
        if lo >= np.iinfo(np.int16).min and hi <= np.iinfo(np.int16).max:
            return values.astype(np.int16)
    return np.asarray(values, dtype=np.float64).astype(np.int16)


def border_labels(seg, width=BORDER):
    """Labels with at least one voxel in the outer `width` slices of any axis."""
    found = set()
    for axis in range(seg.ndim):
        for sl in (slice(None, width), slice(-width, None)):
            index = [slice(None)] * seg.ndim
            index[axis] = sl
            found.update(np.unique(seg[tuple(index)]).tolist())
    return found


def basic_statistics(seg, values, zooms, class_map, roi_subset=None, exclude_masks_at_border=True):
    """{class name: {"volume": mm3, "intensity": mean}} in class-map order.

    seg: labelmap (same shape as values); values: the image; zooms: the image header's
    zooms (float32, as nibabel gives them)."""
    ct = _int16(np.asarray(values))
    seg = np.asarray(seg)
    labels = seg.astype(np.intp, copy=False).ravel()
    n = max(max(class_map) + 1, int(labels.max()) + 1 if labels.size else 1)
    counts = np.bincount(labels, minlength=n)
    sums = np.bincount(labels, weights=ct.ravel(), minlength=n)
    vox_vol = zooms[0] * zooms[1] * zooms[2]
    at_border = border_labels(seg) if exclude_masks_at_border else set()
    stats = {}
    for label, name in class_map.items():
        if roi_subset is not None and name not in roi_subset:
            continue
        if label in at_border:
            stats[name] = {"volume": 0.0, "intensity": 0.0}
            continue
        count = counts[label]
        entry = {"volume": count * vox_vol}
        entry["intensity"] = (np.float64(sums[label]) / np.float64(count)).round(5) if count > 0 else 0.0
        stats[name] = entry
    return stats
