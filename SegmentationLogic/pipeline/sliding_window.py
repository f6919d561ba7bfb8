"""nnU-Net's sliding-window prediction and logits export, bit for bit, with less work
around the network (nnunetv2 2.6 to 2.8: `nnUNetPredictor.predict_logits_from_preprocessed_data`
and `convert_predicted_logits_to_segmentation_with_correct_shape`).

Every number is computed by the same torch operation on the same dtypes as in nnU-Net,
in the same order: the image padded to the patch size, tiles in nnU-Net's order, the
network output times the Gaussian (float32 x float16), added into float16 logits (the sum
is rounded to float32, then to float16), the Gaussian added into float16 weights, the
logits divided by the weights in float16, the check for infinities, folds summed and
averaged in float16, the argmax over channels (first maximum wins). What changes:

- on the CPU the tile is added channel by channel through a small float32 buffer instead
  of one mixed-dtype in-place add over all channels (a slow, cache-missing path in torch):
  the same two roundings per value, three to four times faster;
- the weight map depends only on the image size, patch, step and Gaussian: it is computed
  once per run and reused by every model part with the same patch;
- division, infinity check and argmax run in one pass over slabs of the image in float32
  (exact for float16 values), instead of three passes and numpy's slow float16 argmax;
  a slab with a NaN falls back to numpy's argmax for exactly numpy's answer;
- the network's forward calls are timed where they happen (CUDA events on a GPU), so a
  run reports how long the network itself took and how long everything around it.
"""
import contextlib
import os
import time

import numpy as np

from .cropped_export import cropped_labels
from .nnunet_preprocessing import resampling_function

INF_MESSAGE = ("Encountered inf in predicted array. Aborting... If this problem persists, reduce "
               "value_scaling_factor in compute_gaussian or increase the dtype of predicted_logits to fp32")
SLAB_VOXELS = 1 << 17  # voxels per slab of the argmax pass: a few MB of buffers, kept in cache
STANDARD_EXPORT_RESAMPLING = "resample_data_or_seg_to_shape"


def _torch():
    import torch  # heavy (seconds): only when a model really predicts

    return torch


def default_num_processes():
    """nnU-Net's cap on torch threads during prediction (nnUNet_def_n_proc, default 8)."""
    try:
        return int(os.environ.get("nnUNet_def_n_proc") or 8)
    except ValueError:
        return 8


class Clock:
    """Seconds spent in the network's forward calls and in the sliding window around them.

    On a GPU the forward calls are timed with CUDA events, read once the logits are on
    the host, so timing never adds a synchronisation."""

    def __init__(self):
        self.preprocess = 0.0  # nnU-Net's preprocessing (crop, normalisation)
        self.forward = 0.0
        self.window = 0.0  # tiles in and out, accumulation, logits -> labels
        self.tiles = 0
        self._events = []

    def forward_call(self, network, x):
        torch = _torch()
        if x.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = network(x)
            end.record()
            self._events.append((start, end))
        else:
            t = time.perf_counter()
            out = network(x)
            self.forward += time.perf_counter() - t
        self.tiles += 1
        return out

    def settle(self):
        """Add the GPU forward times (after the results were synchronised)."""
        if self._events:
            self._events[-1][1].synchronize()
            self.forward += sum(s.elapsed_time(e) for s, e in self._events) / 1000.0
            self._events.clear()


@contextlib.contextmanager
def single_threaded():
    """Element-wise bookkeeping on cache-sized pieces runs on one thread: torch would start
    a parallel region for each small operation, which costs more than the operation on a
    busy machine. Element-wise results do not depend on the thread count; the network
    keeps nnU-Net's."""
    torch = _torch()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# -- tiles -------------------------------------------------------------------------------

def tile_slicers(image_size, patch_size, step_size):
    """nnU-Net's tiles of a padded 3D image, in its order (x outer, z inner)."""
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window  # heavy: torch

    steps = compute_steps_for_sliding_window(image_size, patch_size, step_size)
    return [tuple([slice(None), *[slice(si, si + ti) for si, ti in zip((sx, sy, sz), patch_size)]])
            for sx in steps[0] for sy in steps[1] for sz in steps[2]]


def gaussian_weights(shape, patch_size, step_size, gaussian, slicers, device, cache=None):
    """nnU-Net's per-voxel sum of Gaussian weights (float16) over the tiles, in their order.

    It depends only on the image size, patch, step and device, so the model parts of one
    run share it through `cache` (a dict that lives as long as the run)."""
    torch = _torch()
    key = ("gaussian weights", tuple(shape), tuple(patch_size), float(step_size), str(device))
    weights = cache.get(key) if cache is not None else None
    if weights is None:
        weights = torch.zeros(tuple(shape), dtype=torch.half, device=device)
        for sl in slicers:
            weights[sl[1:]] += gaussian
        if cache is not None:
            cache[key] = weights
    return weights


def _accumulate(network, data, slicers, patch_size, num_heads, device, results_device, clock, tile_callback):
    """Tiles through the network into float16 logits and weights on `results_device` (not divided)."""
    torch = _torch()
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian  # heavy: torch

    data = data.to(results_device)
    gaussian = compute_gaussian(tuple(patch_size), sigma_scale=1. / 8, value_scaling_factor=10,
                                device=results_device)
    shape = (num_heads, *data.shape[1:])
    if results_device.type == "cpu":  # calloc'd: the OS zeroes pages as the tiles first touch them
        logits = torch.from_numpy(np.zeros(shape, dtype=np.float16))
    else:
        logits = torch.zeros(shape, dtype=torch.half, device=results_device)
    by_channel = results_device.type == "cpu"
    buffer = torch.empty(tuple(patch_size), dtype=torch.float32) if by_channel else None
    gaussian32 = gaussian.float() if by_channel else None  # exact: x * float(g) is what x *= g computes
    for i, sl in enumerate(slicers):
        tile = torch.clone(data[sl][None], memory_format=torch.contiguous_format).to(device)
        prediction = clock.forward_call(network, tile)[0].to(results_device)
        if by_channel and prediction.dtype == torch.float32:
            with single_threaded():
                for c in range(num_heads):
                    # = (prediction *= gaussian; logits[sl] += prediction) for channel c
                    channel = prediction[c]
                    channel *= gaussian32
                    target = logits[c][sl[1:]]
                    buffer.copy_(target)
                    buffer += channel
                    target.copy_(buffer)
        else:
            prediction *= gaussian
            logits[sl] += prediction
        del prediction, tile
        if tile_callback is not None:
            tile_callback(i + 1, len(slicers))
    return logits, gaussian


def sliding_window_logits(network, data, patch_size, num_heads, step_size, device, on_device, clock,
                          tile_callback=None, cache=None):
    """nnUNetPredictor.predict_sliding_window_return_logits for one set of weights.

    data: float32 tensor (1, z, y, x). Returns (logits, weights, unpad): float16 logits over
    the padded image, not yet divided by the float16 weights; `unpad` the slices back to
    the image. `cache`: a dict shared by the models of one run (see gaussian_weights)."""
    torch = _torch()
    from acvl_utils.cropping_and_padding.padding import pad_nd_image  # heavy: torch

    network = network.to(device)
    network.eval()
    _empty_cache(device)
    autocast = torch.autocast(device.type, enabled=True) if device.type == "cuda" else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        padded, unpad = pad_nd_image(data, patch_size, "constant", {"value": 0}, True, None)
        slicers = tile_slicers(padded.shape[1:], patch_size, step_size)
        results_device = device if on_device and device.type != "cpu" else torch.device("cpu")
        try:
            logits, gaussian = _run_tiles(network, padded, slicers, patch_size, num_heads, device, results_device,
                                          clock, tile_callback)
        except RuntimeError:
            if results_device.type == "cpu":
                raise
            # as nnU-Net: the GPU ran out of memory for the logits; keep them on the CPU
            _empty_cache(device)
            results_device = torch.device("cpu")
            logits, gaussian = _run_tiles(network, padded, slicers, patch_size, num_heads, device, results_device,
                                          clock, tile_callback)
        weights = gaussian_weights(padded.shape[1:], patch_size, step_size, gaussian, slicers, results_device, cache)
    _empty_cache(device)
    return logits, weights, tuple(unpad[1:])


def _run_tiles(network, padded, slicers, patch_size, num_heads, device, results_device, clock, tile_callback):
    _empty_cache(device)
    return _accumulate(network, padded, slicers, patch_size, num_heads, device, results_device, clock, tile_callback)


def _empty_cache(device):
    torch = _torch()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def divided(logits, weights, unpad):
    """nnU-Net's end of one sliding window: divide in place, refuse infinities, unpad."""
    torch = _torch()
    torch.div(logits, weights, out=logits)
    if torch.any(torch.isinf(logits)):
        raise RuntimeError(INF_MESSAGE)
    return logits[(slice(None), *unpad)]


# -- logits -> labels --------------------------------------------------------------------

def argmax_channels(logits, weights=None, out=None):
    """np.argmax(logits, axis=0) of float16 logits (C, z, y, x), the first maximum winning,
    as nnU-Net's export computes it; with `weights`, of nnU-Net's float16 division
    logits / weights (fused into the same pass), raising RuntimeError on an infinite value
    as nnU-Net does.

    Writes into `out` (an integer numpy array of shape (z, y, x), any strides) or returns
    a new int64 array."""
    torch = _torch()
    shape = tuple(logits.shape[1:])
    if out is None:
        out = np.empty(shape, dtype=np.int64)
    step = max(1, SLAB_VOXELS // max(1, int(np.prod(shape[1:]))))
    half = torch.empty((min(step, shape[0]), *shape[1:]), dtype=torch.half)
    value = torch.empty(half.shape, dtype=torch.float32)
    bigger = torch.empty(half.shape, dtype=torch.bool)
    with single_threaded():
        for z0 in range(0, shape[0], step):
            _argmax_slab(logits, weights, out, z0, min(shape[0], z0 + step), half, value, bigger)
    return out


def _argmax_slab(logits, weights, out, z0, z1, half, value, bigger):
    torch = _torch()
    h, v, m = half[:z1 - z0], value[:z1 - z0], bigger[:z1 - z0]

    def channel(c):
        if weights is None:
            return logits[c, z0:z1]
        torch.div(logits[c, z0:z1], weights[z0:z1], out=h)
        return h

    best = channel(0).float()
    low = best.clone()
    index = torch.zeros(best.shape, dtype=torch.int16 if logits.shape[0] < 2 ** 15 else torch.int64)
    for c in range(1, logits.shape[0]):
        v.copy_(channel(c))
        torch.gt(v, best, out=m)  # strictly greater: the first maximum stays
        torch.maximum(best, v, out=best)  # NaN propagates into best ...
        torch.minimum(low, v, out=low)  # ... -inf into low
        index.masked_fill_(m, c)
    if bool(torch.isfinite(best).all()) and bool(torch.isfinite(low).all()):
        out[z0:z1] = index.numpy()
    else:
        out[z0:z1] = _exact_slab(logits, weights, z0, z1)


def _exact_slab(logits, weights, z0, z1):
    """nnU-Net's own operations on a slab that holds an infinity or a NaN."""
    torch = _torch()
    slab = logits[:, z0:z1]
    if weights is not None:
        slab = torch.div(slab, weights[z0:z1])
        if torch.any(torch.isinf(slab)):
            raise RuntimeError(INF_MESSAGE)
    return slab.numpy().argmax(0)


def _export_is_argmax(plans, props, shape):
    """Whether nnU-Net's export is only the argmax: its standard resampling function
    returns its input when the logits already have the shape before resampling."""
    target = tuple(int(s) for s in props["shape_after_cropping_and_before_resampling"])
    return plans.resampling("probabilities")[0] == STANDARD_EXPORT_RESAMPLING and tuple(shape) == target


def labels_on_device(logits, plans, props):
    """The export's argmax where the (divided, unpadded) logits are, on a GPU: only labels
    travel to the host instead of every channel in float16. torch.argmax returns the first
    maximum, as numpy's; with a NaN anywhere (where the two could disagree on which) or an
    export that resamples, None: the caller exports on the CPU as nnU-Net."""
    torch = _torch()
    if not _export_is_argmax(plans, props, logits.shape[1:]) or bool(torch.isnan(logits).any()):
        return None
    seg_dtype = np.dtype(plans.seg_dtype_name)
    out = np.zeros(tuple(props["shape_before_cropping"]), dtype=seg_dtype)
    box = tuple(slice(lo, hi) for lo, hi in props["bbox_used_for_cropping"])
    out[box] = torch.argmax(logits, 0).to(torch.int32).cpu().numpy()
    return out.transpose(plans.transpose_backward)


def labels_from_logits(logits, plans, props, weights=None, unpad=None, cropped=False):
    """convert_predicted_logits_to_segmentation_with_correct_shape(...) for a model without
    regions: labels in the image's shape before nnU-Net's crop, in the reader's axis order.

    logits: float16 (C, ...) on the CPU. Either final (divided, unpadded), or, with
    `weights` and `unpad` from sliding_window_logits, as they come out of the tiles.
    `cropped`: the official --higher_order_resampling export (cropped_export)."""
    torch = _torch()
    seg_dtype = np.dtype(plans.seg_dtype_name)
    out = np.zeros(tuple(props["shape_before_cropping"]), dtype=seg_dtype)
    box = tuple(slice(lo, hi) for lo, hi in props["bbox_used_for_cropping"])
    target_shape = tuple(int(s) for s in props["shape_after_cropping_and_before_resampling"])
    padded_shape = tuple(logits.shape[1:])
    unpad = unpad or tuple(slice(0, n) for n in padded_shape)
    shape = tuple(len(range(*u.indices(n))) for u, n in zip(unpad, padded_shape))
    if _export_is_argmax(plans, props, shape):
        if shape == padded_shape:
            argmax_channels(logits, weights, out=out[box])
        else:  # the infinity check covers the padding too, as nnU-Net's
            out[box] = argmax_channels(logits, weights)[unpad]
    else:
        if weights is not None:
            logits = divided(logits, weights, unpad)
        spacing = [props["spacing"][i] for i in plans.transpose_forward]
        if cropped:
            out[box] = cropped_labels(logits.numpy(), plans, target_shape, spacing, seg_dtype)
            return out.transpose(plans.transpose_backward)
        resampled = resampling_function(plans, "probabilities")(logits.numpy(), target_shape, plans.spacing, spacing)
        if isinstance(resampled, torch.Tensor):
            resampled = resampled.numpy()
        out[box] = resampled.argmax(0)
    return out.transpose(plans.transpose_backward)
