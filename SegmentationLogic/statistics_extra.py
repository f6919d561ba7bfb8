"""The official statistics options on top of statistics.basic_statistics.

- `--stats_aggregation median`: the class's median intensity instead of the mean;
- `--statistics_extra`: n_voxels, intensity_std/min/max, centroid_vox and bbox_vox
  (voxel indices of the labelmap; bbox maxima inclusive), as the official tool;
- `--stats_include_incomplete`: numbers also for classes that touch the image border.

Numbers are those of the official `get_basic_statistics` for the same labelmap and image
(intensities truncated to int16; std, centroid and rounding as it computes them).

One addition, so the border rule is not a silent 0.0: a class left without numbers
because it touches the border gets `"excluded": BORDER_NOTE` in its entry (the official
file has only the zeros). Readers that look only at volume and intensity are unaffected.
"""
import numpy as np

from .statistics import BORDER, _int16, basic_statistics, border_labels

AGGREGATIONS = ("mean", "median")
EXCLUDED_KEY = "excluded"
BORDER_NOTE = (f"touches the image border (a voxel within {BORDER} slices of an edge): the structure is cut off, "
               "so no volume or intensity; --stats_include_incomplete computes them anyway")


def check_aggregation(aggregation):
    from .errors import SegmentationError

    if aggregation not in AGGREGATIONS:
        raise SegmentationError(f"Unknown statistics aggregation {aggregation!r}.",
                                f"Use one of: {', '.join(AGGREGATIONS)}.")
    return aggregation


def fast_statistics_options(statistics, quality, aggregation="mean", extra=False, include_incomplete=False,
                            progress=None):
    """Options for the statistics the official tool computes at model resolution (--fast), or None.

    The official fast path takes the aggregation and the border rule but not the extra
    metrics (its voxel coordinates would be those of the 3 mm grid): we do the same, and say so."""
    check_aggregation(aggregation)
    if not statistics or quality != "fast":
        return None
    if extra and progress is not None:
        progress.log("--statistics_extra is ignored with --fast (as in the official tool: fast statistics are "
                     "computed at the 3 mm model resolution). Run without --fast for the extra metrics.", "warning")
    return {"aggregation": aggregation, "include_incomplete": include_incomplete}


def segment_statistics(seg, values, zooms, class_map, roi_subset=None, aggregation="mean", extra=False,
                       include_incomplete=False):
    """{class: {"volume", "intensity"[, extras][, "excluded"]}} in class-map order (see module docstring)."""
    check_aggregation(aggregation)
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
    from scipy import ndimage

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
    """The statistics as the official tool writes them (our "excluded" notes removed)."""
    return {name: {k: v for k, v in entry.items() if k != EXCLUDED_KEY} for name, entry in stats.items()}
