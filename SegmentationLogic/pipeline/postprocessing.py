"""Postprocessing of multilabel maps with the official tool's exact semantics.

All operations work in place on a uint8 labelmap at model resolution (before it goes
back to the input geometry), as the official tool runs them:

- auxiliary labels (organs some models predict only to help, e.g. kidney_cysts' kidneys)
  are set to background;
- `keep_largest_blob`: per class, only the largest 6-connected component stays (ties:
  the first component in scan order, as the official arg-max);
- `remove_small_blobs`: per class, 6-connected components with at most `min_voxels`
  voxels go (the official interval test `count <= lo or count > 1e10`);
- `vertebrae_pp`: the vertebral-body model's labels are renumbered by position when
  neighbouring labels touch, then grown back by the 3 mm its training labels were eroded;
- `refine_vertebrae`: those labels grown 2 mm more and clipped to the vertebral bodies of
  the vertebrae_body model (task vertebrae_pp_refined, at input resolution).

Each class is labelled inside its own bounding box (`ndimage.find_objects`), which finds
the same components as labelling the whole volume, in the same scan order, so the
result is identical while 117 classes cost one pass instead of 117 full-volume passes.
"""
import numpy as np
from scipy import ndimage

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


def body_derived_masks(labels, values, class_map):
    """The official extra masks of task 'body' (per-class output): {"body": mask, "skin": mask}.

    Skin: one voxel outside the body minus three inside, at soft-tissue intensities
    (-200..250 HU), specks of 5 voxels or less removed."""
    inv = {v: k for k, v in class_map.items()}
    body = np.isin(labels, [inv["body_trunc"], inv["body_extremities"]]).astype(np.uint8)
    outer = ndimage.binary_dilation(body, iterations=1).astype(np.uint8)
    inner = ndimage.binary_erosion(outer, iterations=3).astype(np.uint8)
    skin = outer - inner
    ct = np.asarray(values, dtype=np.float64)
    skin[~((ct > -200) & (ct < 250))] = 0
    skin = skin.astype(np.uint8)
    remove_small_blobs(skin, [1], 5)
    return {"body": body, "skin": skin}


def remove_outside_of_mask(seg, mask, dilation_voxels):
    """Zero every label outside `mask` dilated by `dilation_voxels` (6-connected steps;
    0 dilates until nothing changes, as scipy's binary_dilation). In place."""
    grown = ndimage.binary_dilation(mask, iterations=dilation_voxels)
    seg[~grown] = 0
    return seg


# -- vertebrae_pp ------------------------------------------------------------------------------

VERTEBRAE_MIN_MM3 = 100  # smaller connected bodies are dropped when labels are renumbered
VERTEBRAE_GROW_MM = 3  # the model's training labels were eroded by 3 mm
REFINE_GROW_MM = 2


def ellipsoid(spacing, radius_mm):
    """The official structuring element for growing vertebrae by `radius_mm`.

    Offsets on a grid from -r to r+1 (r = radius / spacing per axis, in the zooms' float32)
    whose scaled squared length is <= 1. Where r is fractional the grid is not centred on
    0 (e.g. -3.75 .. 4.25): kept as it is, because the official result depends on it."""
    if radius_mm <= 0:
        return np.ones((1, 1, 1), dtype=bool)
    radii = [radius_mm / s for s in spacing]
    axes = np.ogrid[tuple(slice(-r, r + 1) for r in radii)]
    return sum(a * a / (r * r) for a, r in zip(axes, radii)) <= 1


def grow_labels(seg, labels, spacing, radius_mm):
    """Each label in turn (ascending) grows by the ellipsoid into background only, so a
    lower label claims a contested voxel first. Returns a new array.

    Each label is grown inside its bounding box widened by the element's reach, which
    gives the same voxels as growing it over the whole volume."""
    if radius_mm <= 0:
        return seg
    element = ellipsoid(spacing, radius_mm)
    reach = [n // 2 + 1 for n in element.shape]
    out = seg.copy()
    boxes = ndimage.find_objects(seg)
    for label in sorted(labels):
        box = boxes[label - 1] if 0 < label <= len(boxes) else None
        if box is None:
            continue
        box = tuple(slice(max(b.start - r, 0), min(b.stop + r, n)) for b, r, n in zip(box, reach, seg.shape))
        grown = ndimage.binary_dilation(seg[box] == label, structure=element)
        view = out[box]
        view[grown & (view == 0)] = label
    return out


def labels_touch(seg):
    """Whether two different labels are face neighbours anywhere."""
    for axis in range(seg.ndim):
        a = seg[(slice(None),) * axis + (slice(1, None),)]
        b = seg[(slice(None),) * axis + (slice(None, -1),)]
        if np.any((a > 0) & (b > 0) & (a != b)):
            return True
    return False


def vertebrae_pp(seg, class_map, zooms, min_mm3=VERTEBRAE_MIN_MM3, grow_mm=VERTEBRAE_GROW_MM):
    """The official vertebrae_pp postprocessing at model resolution; returns a new array.

    The model segments vertebral bodies only, so different labels should never touch.
    Where they do, the labels are not trusted: every connected body of at least `min_mm3`
    is renumbered in z order, from the lowest label present upwards, or, for a head scan
    (C1 present, L5 not), from C1 downwards; bodies beyond the last label are dropped.
    Then every label grows by `grow_mm` (see grow_labels). `zooms` are the float32 zooms
    of the model-resolution image (canonical x, y, z: z is the body axis)."""
    seg = np.asarray(seg, dtype=np.uint8)
    labels = sorted(class_map)
    if not labels_touch(seg):
        return grow_labels(seg, labels, zooms, grow_mm)
    components, _ = ndimage.label(seg > 0)
    sizes = np.bincount(components.ravel())
    voxel_volume = np.prod(zooms)  # float32, as the official
    keep = np.flatnonzero(sizes * voxel_volume >= min_mm3)
    keep = keep[keep != 0]
    kept = np.zeros(len(sizes), dtype=bool)
    kept[keep] = True
    kept_mask = kept[components]
    present = sorted(set(int(v) for v in np.unique(seg[kept_mask])) & set(labels))
    if not present:
        return np.zeros_like(seg)
    inv = {v: k for k, v in class_map.items()}
    c1, l5 = inv["vertebrae_C1"], inv["vertebrae_L5"]
    from_top = l5 not in present and c1 in present
    centres = ndimage.center_of_mass(kept_mask, components, keep)
    # (the official tool fails with an IndexError when exactly one body is kept here;
    # this labels it as the rule says)
    order = sorted(zip(keep, (c[2] for c in centres)), key=lambda kz: kz[1], reverse=from_top)
    new_labels = range(c1, max(labels) + 1) if from_top else range(max(present), min(labels) - 1, -1)
    lut = np.zeros(len(sizes), dtype=np.uint8)
    for (component, _), label in zip(order, new_labels):
        lut[component] = label
    return grow_labels(lut[components], labels, zooms, grow_mm)


def refine_vertebrae(seg, body, class_map, zooms, grow_mm=REFINE_GROW_MM):
    """vertebrae_pp_refined: the vertebra labels grown by `grow_mm` and kept only on
    vertebral-body voxels (label 1) of the vertebrae_body model; returns a new array.
    Runs at input resolution with the input's zooms (in its own voxel order)."""
    if seg.shape != body.shape:
        raise ValueError(f"vertebrae and vertebrae_body labelmaps differ in shape: {seg.shape} vs {body.shape}")
    refined = grow_labels(seg, sorted(class_map), zooms, grow_mm)
    refined[body != 1] = 0
    return refined.astype(np.uint8, copy=False)
