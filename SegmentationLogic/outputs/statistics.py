"""Per-class statistics, exactly as the official statistics.json.

Official semantics reproduced:
- intensities are the image values truncated to int16 (`get_fdata().astype(int16)`);
- voxel volume is the float32 product of the header zooms; volume = count * that;
- a class touching the border (any voxel in the first or last 3 slices of any axis) gets
  volume 0.0 and intensity 0.0 (its mask is incomplete), unless disabled;
- intensity = np.average(ct, weights=mask).round(5) (0.0 for an empty class).

All classes are done in one pass (bincount) instead of one full-volume mask per class:
the sums are sums of integers in float64 and therefore exact in any order, so the
numbers, and the JSON text, are identical.

The official options on top (`segment_statistics`):
- `--stats_aggregation median`: the class's median intensity instead of the mean;
- `--statistics_extra`: n_voxels, intensity_std/min/max, centroid_vox and bbox_vox
  (voxel indices of the labelmap; bbox maxima inclusive), as the official tool;
- `--stats_include_incomplete`: numbers also for classes that touch the image border.

One addition, so the border rule is not a silent 0.0: a class left without numbers
because it touches the border gets `"excluded": BORDER_NOTE` in its entry (the official
file has only the zeros). Readers that look only at volume and intensity are unaffected.
"""
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

BORDER = 3
EXCLUDED_KEY = "excluded"
BORDER_NOTE = (f"touches the image border (a voxel within {BORDER} slices of an edge): the structure is cut off, "
               "so no volume or intensity; --stats_include_incomplete computes them anyway")


@dataclass(frozen=True)
class StatisticsOptions:
    """The official statistics options (`--stats_aggregation`, `--statistics_extra`, `--stats_include_incomplete`)."""

    aggregation: str = "mean"  # mean | median
    extra: bool = False
    include_incomplete: bool = False


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


def segment_statistics(seg, values, zooms, class_map, roi_subset=None, aggregation="mean", extra=False,
                       include_incomplete=False):
    """{class: {"volume", "intensity"[, extras][, "excluded"]}} in class-map order (see module docstring)."""
    seg = np.asarray(seg)
    stats = basic_statistics(seg, values, zooms, class_map, roi_subset, exclude_masks_at_border=not include_incomplete)
    at_border = set() if include_incomplete else border_labels(seg)
    if aggregation == "median" or extra:
        ct = _int16(np.asarray(values))
        boxes = _boxes(seg, class_map)
        for label, name in class_map.items():
            if name not in stats or label in at_border:
                continue
            box = boxes.get(label)
            mask = seg[box] == label if box is not None else None
            vals = ct[box][mask] if box is not None else None
            if aggregation == "median":
                stats[name]["intensity"] = np.median(vals).round(5) if vals is not None and vals.size else 0.0
            if extra:
                stats[name].update(_extra_metrics(mask, vals, box))
    for label, name in class_map.items():
        if name in stats and label in at_border:
            if extra:
                stats[name].update(_extra_metrics(None, None, None))
            stats[name][EXCLUDED_KEY] = BORDER_NOTE
    return stats


def _boxes(seg, class_map):
    top = int(seg.max()) if seg.size else 0
    found = ndimage.find_objects(seg.astype(np.intp, copy=False), max_label=max(top, 1))
    return {label: found[label - 1] for label in class_map if 0 < label <= top and found[label - 1] is not None}


def _extra_metrics(mask, vals, box):
    """The official extra metrics of one class (mask and values inside its bounding box)."""
    if mask is None or not mask.any():
        return {"n_voxels": 0, "intensity_std": 0.0, "intensity_min": 0.0, "intensity_max": 0.0,
                "centroid_vox": None, "bbox_vox": None}
    local = np.nonzero(mask)
    n = int(local[0].size)
    offsets = [s.start for s in box]
    # integer sums are exact, so this is numpy's mean of the global indices to the last bit
    centroid = [(float(np.sum(ix, dtype=np.int64)) + n * off) / n for ix, off in zip(local, offsets)]
    return {"n_voxels": n, "intensity_std": float(np.std(vals).round(5)), "intensity_min": float(vals.min()),
            "intensity_max": float(vals.max()), "centroid_vox": [round(c, 2) for c in centroid],
            "bbox_vox": [[int(ix.min()) + off, int(ix.max()) + off] for ix, off in zip(local, offsets)]}


def without_notes(stats):
    """The statistics as the official tool writes them: our "excluded" notes and the file's
    test-model "note" (outputs/writer.statistics_document) removed."""
    return {name: {k: v for k, v in entry.items() if k != EXCLUDED_KEY} for name, entry in stats.items()
            if isinstance(entry, dict)}
