"""The export of `--higher_order_resampling` (official 2.18: "cropped logits resampling").

With -ho the official tool lets nnU-Net resample, but replaces nnU-Net's export (every
class's logits resampled to the image's shape, then argmax) by a lighter one: the
background channel is resampled with the plans' function, then every class present in
the model-resolution argmax is resampled (linear, edge values repeated) only inside its
low-resolution bounding box (3 voxels margin) and wins a voxel where its score beats the
best so far. The running best score keeps the logits' dtype (float16), as the official
one does, so ties and rounding fall the same way. Models with regions are not used by
TotalSegmentator and are not handled here.
"""
import numpy as np
from scipy.ndimage import map_coordinates

from .nnunet_preprocessing import resampling_function

MARGIN = 3  # voxels around a class's low-resolution bounding box


def _bbox(mask):
    where = np.nonzero(mask)
    if len(where[0]) == 0:
        return None
    shape = np.array(mask.shape)
    start = np.maximum(np.array([w.min() for w in where]) - MARGIN, 0)
    end = np.minimum(np.array([w.max() + 1 for w in where]) + MARGIN, shape)
    return start, end


def _resample_box(channel, new_shape, start, end):
    """(target slices, linearly resampled values) of channel[start:end] on the new grid."""
    old_shape = np.array(channel.shape)
    scale = new_shape / old_shape
    t_start = np.maximum(np.floor(start * scale).astype(int), 0)
    t_end = np.minimum(np.ceil(end * scale).astype(int), new_shape)
    if np.any(t_end <= t_start):
        return None, None
    values = channel[tuple(slice(a, b) for a, b in zip(start, end))].astype(float, copy=False)
    # voxel centres of the new grid in the crop's voxel coordinates; the float32 steps as the official export's
    axes = [(np.arange(a, b, dtype=np.float32) + 0.5) * n_old / n_new - 0.5 - offset
            for a, b, n_old, n_new, offset in zip(t_start, t_end, old_shape, new_shape, start)]
    grid = np.array(np.meshgrid(*axes, indexing="ij"), dtype=np.float32)
    return (tuple(slice(a, b) for a, b in zip(t_start, t_end)),
            map_coordinates(values, grid, order=1, mode="nearest"))


def cropped_labels(logits, plans, target_shape, spacing, seg_dtype):
    """Labels (target_shape) from (C, ...) logits at the model resolution; `spacing`: the
    image's spacing in the plans' axis order."""
    logits = np.asarray(logits)
    new_shape = np.array(target_shape).astype(int)
    if np.array_equal(np.array(logits.shape[1:]), new_shape):
        return logits.argmax(0).astype(seg_dtype)
    background = resampling_function(plans, "probabilities")(logits[:1], tuple(int(s) for s in new_shape),
                                                             plans.spacing, spacing)
    best = np.asarray(background[0])
    out = np.zeros(tuple(new_shape), dtype=seg_dtype)
    low = np.argmax(logits, axis=0)
    for cls in np.unique(low):
        cls = int(cls)
        if cls == 0 or cls >= logits.shape[0]:
            continue
        box = _bbox(low == cls)
        if box is None:
            continue
        target, values = _resample_box(logits[cls], new_shape, *box)
        if target is None:
            continue
        wins = values > best[target]
        out[target][wins] = cls
        best[target][wins] = values[wins]
    return out
