"""Voxel geometry exactly as the official TotalSegmentator pipeline computes it.

Every step here reproduces a numerical detail of the official tool, so that the image
nnU-Net sees, and the labelmap that comes back, are bit-identical:

- spacings are the float32 zooms nibabel puts into a *fresh* header for an affine (the
  official code re-wraps arrays in new `Nifti1Image`s at every step, so the input
  file's pixdim is never used after loading);
- an image written to NIfTI and read back has its affine rounded to float32 (sform);
- crop: the mm -> voxel margin is truncated (`astype(int)`), the box is in the input's
  own voxel order, and the cropped values are truncated to int32;
- resampling: `scipy.ndimage.zoom(order=1, mode="nearest")` on float64 values with
  float64 zoom factors (float32 zooms / target spacing), output shape with Python's
  round-half-to-even, then truncation to int32; no resampling (and no cast) when the
  float32 zooms equal the target exactly; labelmaps go back with order 0 to the exact
  original shape.

Arrays are (x, y, z) in the image's voxel order, as nibabel gives them.
"""
import numpy as np
import nibabel as nib
from scipy import ndimage


# -- header facts --------------------------------------------------------------------

def header_zooms(affine):
    """Zooms (tuple of 3 float32) nibabel stores in a new NIfTI header for `affine`."""
    return nib.Nifti1Image(np.zeros((1, 1, 1), np.uint8), affine).header.get_zooms()[:3]


def stored_affine(affine):
    """The affine of an image after a NIfTI save and load (sform kept in float32)."""
    out = np.asarray(affine, dtype=np.float32).astype(np.float64)
    out[3] = (0, 0, 0, 1)
    return out


def exact_values(img):
    """Voxel values of a nibabel image, equal to `img.get_fdata()` but without the
    float64 copy where it is not needed.

    Integer data up to 32 bits and float32 convert to float64 exactly, so the raw array
    stands in for get_fdata() in every later step (crop and resample cast to int32,
    nnU-Net to float32, statistics to int16: all give the same numbers). Scaled data
    (scl_slope/inter) and 64-bit integers go through get_fdata() as the official tool does.
    """
    dataobj = img.dataobj
    if isinstance(dataobj, np.ndarray):
        arr = dataobj
    else:
        slope, inter = getattr(dataobj, "slope", 1.0), getattr(dataobj, "inter", 0.0)
        if slope != 1 or inter != 0:
            return img.get_fdata()
        arr = np.asanyarray(dataobj)
    kind, size = arr.dtype.kind, arr.dtype.itemsize
    if (kind in "iu" and size <= 4) or kind == "b" or arr.dtype in (np.float32, np.float64):
        return arr
    return img.get_fdata()


# -- crop ------------------------------------------------------------------------------

def addon_voxels(addon_mm, affine):
    """mm margin -> voxels per axis, truncated (official: addon / zooms, astype(int))."""
    return (np.array(addon_mm) / header_zooms(affine)).astype(int)


def bbox_from_mask(mask, addon_vox):
    """Bounding box [[lo, hi] x 3] of mask > 0 widened by addon voxels, clipped.

    An empty mask gives the whole image (as the official get_bbox_from_mask)."""
    bbox = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(np.any(mask > 0, axis=other))
        n = mask.shape[axis]
        if present.size == 0:
            return [[0, s] for s in mask.shape]
        lo = int(present[0]) - int(addon_vox[axis])
        hi = int(present[-1]) + 1 + int(addon_vox[axis])
        bbox.append([max(0, lo), min(n, hi)])
    return bbox


def bbox_slices(bbox):
    return tuple(slice(lo, hi) for lo, hi in bbox)


def crop(values, affine, bbox):
    """Crop to bbox: values truncated to int32, origin moved to the box corner."""
    data = values[bbox_slices(bbox)].astype(np.int32)
    new_affine = np.array(affine, dtype=np.float64, copy=True)
    new_affine[:3, 3] = np.dot(new_affine, np.array([bbox[0][0], bbox[1][0], bbox[2][0], 1]))[:3]
    return data, new_affine


def uncrop(data, shape, bbox):
    out = np.zeros(shape, dtype=data.dtype)
    out[bbox_slices(bbox)] = data
    return out


# -- resampling ------------------------------------------------------------------------

def zoom_shape(shape, zoom):
    """Output shape of scipy.ndimage.zoom (Python round: half to even)."""
    return tuple(int(round(n * z)) for n, z in zip(shape, zoom))


def resample_to_spacing(values, affine, spacing_xyz, order=1):
    """Resample to a target spacing [x, y, z] mm.

    Returns (data, affine, resampled). Without resampling (float32 zooms equal the
    target exactly) the input comes back untouched, not cast; otherwise int32.
    """
    zooms = np.array(header_zooms(affine))
    target = np.array(spacing_xyz, dtype=np.float64)
    if np.array_equal(zooms, target):
        return values, affine, False
    zoom = zooms / target
    new_affine = np.array(affine, dtype=np.float64, copy=True)
    for i in range(3):
        new_affine[:3, i] = new_affine[:3, i] / zoom[i]
    src = values if values.dtype == np.float64 else values.astype(np.float64)
    out = ndimage.zoom(src, zoom, order=order, mode="nearest")
    return out.astype(np.int32), new_affine, True


def resample_labels_to_shape(labels, shape):
    """Nearest-neighbour labelmap back to an exact shape (official order-0 zoom).

    Order-0 zoom only picks voxels, so running it on uint8 gives the same labels as on
    the float64 copy the official code makes, at an eighth of the memory."""
    if tuple(labels.shape) == tuple(shape):
        return labels
    zoom = np.array(shape) / np.array(labels.shape)
    if zoom_shape(labels.shape, zoom) != tuple(shape):  # cannot happen for sane shapes; keep it loud
        raise RuntimeError(f"order-0 resampling would give {zoom_shape(labels.shape, zoom)}, not {tuple(shape)}")
    return ndimage.zoom(labels, zoom, order=0, mode="nearest")


def resample_labels_smooth(labels, shape, order=1):
    """Labelmap to an exact shape, each label resampled as its own one-hot mask (official
    --higher_order_resampling_LEGACY): smoother borders than order 0, no label blending.

    Per label, in increasing order (a later label wins where two reach 0.5): the mask in
    its bounding box plus max(2, order + 1) voxels, as float32, is interpolated (spline
    `order`, edges repeated) at the output voxel centres of that region, in the same
    output coordinate system as a whole-image resize; voxels >= 0.5 take the label."""
    old = np.array(labels.shape)
    new = np.round(old * (np.array(shape) / old)).astype(int)
    scale = new / old
    out = np.zeros(tuple(new), dtype=labels.dtype)
    margin = max(2, order + 1)
    for box, label in _label_boxes(labels):
        lo = np.maximum(np.array([s.start for s in box]) - margin, 0)
        hi = np.minimum(np.array([s.stop for s in box]) + margin, old)
        mask = (labels[tuple(slice(a, b) for a, b in zip(lo, hi))] == label).astype(np.float32)
        t_lo = np.maximum(np.floor(lo * scale).astype(int), 0)
        t_hi = np.minimum(np.ceil(hi * scale).astype(int), new)
        if np.any(t_hi - t_lo <= 0):
            continue
        axes = [(np.arange(a, b) + 0.5) * n_old / n_new - 0.5 - off
                for a, b, n_old, n_new, off in zip(t_lo, t_hi, old, new, lo)]
        values = ndimage.map_coordinates(mask, np.array(np.meshgrid(*axes, indexing="ij")), order=order,
                                         mode="nearest", cval=0)
        out[tuple(slice(a, b) for a, b in zip(t_lo, t_hi))][values >= 0.5] = label
    return out


def _label_boxes(labels):
    """[(bounding box slices, label)] of every non-zero label, in increasing label order."""
    found = ndimage.find_objects(labels.astype(np.intp, copy=False))
    return [(box, label) for label, box in enumerate(found, 1) if box is not None]


# -- triple split along z ----------------------------------------------------------------

SPLIT_MARGIN = 20


def _split_parts(nz):
    third, m = nz // 3, SPLIT_MARGIN
    return [(slice(None, third + m), slice(None, -m), slice(None, third)),
            (slice(third + 1 - m, third * 2 + m), slice(m - 1, -m), slice(third, third * 2)),
            (slice(third * 2 + 1 - m, None), slice(m - 1, None), slice(third * 2, None))]


def _split_fits(nz):
    probe = np.arange(nz)
    return all(probe[src][keep].size == probe[dst].size for src, keep, dst in _split_parts(nz))


MIN_SPLIT_SLICES = next(n for n in range(1, 10 * SPLIT_MARGIN) if all(_split_fits(k) for k in range(n, n + 50)))


def split_slices(nz):
    """The three overlapping z ranges of the official force_split, and where each one's
    prediction goes back: [(source slice, keep slice within the part, target slice)].

    Raises ValueError when the image is too short for the official scheme (the official
    tool then fails with a broadcasting error)."""
    if not _split_fits(nz):
        raise ValueError(f"{nz} slices are too few to split into three parts with {SPLIT_MARGIN}-slice margins "
                         f"(at least {MIN_SPLIT_SLICES} are needed)")
    return _split_parts(nz)
