"""The stages of one run, with the official TotalSegmentator semantics.

`run_task` is a whole task in input geometry (the official python_api level):

   [crop task]   a RunPlan of its own (crop.plan) segments the input; its region's
                 bounding box plus a margin is what the main task sees
   [refine task] vertebrae_pp_refined: the vertebrae_body task on the whole input
   predict_image crop (original voxel order) -> RAS+ -> resample to the model spacing
                 -> nnU-Net per model part (in memory), parts merged (later wins),
                 optional three-way split along z -> auxiliary labels removed, body /
                 vertebrae / small-blob cleanup at model resolution -> back to the input
                 spacing (order 0), orientation and box
   then          vertebral-body trim, roi_subset filter, remove-outside (heartchambers)

Every numeric detail follows the official code (see geometry.py, inference.py): the
labelmaps are identical to what `totalsegmentator` writes for the same weights.
"""
import time
from dataclasses import dataclass

import numpy as np

from ..errors import InputImageError, OutOfMemoryError
from ..imaging.orientation import from_canonical, from_canonical_affine, to_canonical
from ..outputs.statistics import segment_statistics
from ..system.memory import available_memory, format_bytes, limit_note
from ..weights import folds_of, model_dir
from . import geometry
from .inference import predict
from .sliding_window import Clock
from .postprocessing import (blob_threshold, body_postprocessing, refine_vertebrae, remove_labels,
                             remove_outside_of_mask, remove_small_blobs, vertebrae_pp)

TEST_MODEL_MARK = "TEST MODEL"
VERTEBRAE_PP = ("vertebrae_pp", "vertebrae_pp_refined")  # both run the vertebrae_pp step at model resolution
AUTO_SPLIT_VOXELS = 512 * 512 * 900  # official: split multi-part runs of larger images ...
AUTO_SPLIT_MIN_Z = 200  # ... that have more than 200 slices
OOM_FIX = ("Use --fast (3 mm) or --fastest (6 mm), crop the image to the region you need or use --roi_subset, "
           "close other programs, or run on a machine (or GPU) with more memory.")


@dataclass(frozen=True)
class InputImage:
    """The input as every stage uses it."""

    values: np.ndarray  # exact voxel values (geometry.exact_values)
    affine: np.ndarray
    zooms: tuple  # the input header's zooms: the official steps that use them read the header

    @property
    def shape(self):
        return self.values.shape


class RunContext:
    """What the stages of one run share: models and device, progress, timings, notes."""

    def __init__(self, models, device, weights_dir, progress):
        self.models = models  # the Segmenter's ModelCache
        self.device = device
        self.weights_dir = weights_dir
        self.progress = progress
        self.timings = {}
        self.notes = set()  # e.g. "TEST MODEL ..." descriptions of the weights used
        self.lowres_affine = None  # save_lowres: the affine of the labelmap at the model resolution
        self.save_probabilities = False  # keep nnU-Net's probabilities of the main task (--save_probabilities)
        self.probabilities = None  # then: (probabilities, properties) of its last prediction

    def timed(self, name, seconds):
        self.timings[name] = round(self.timings.get(name, 0.0) + seconds, 3)

    def model(self, spec):
        t = time.time()
        known = len(self.models)
        loaded = self.models.get(model_dir(spec, self.weights_dir), self.device, folds_of(spec, self.weights_dir),
                                 name=spec.folder)
        if len(self.models) != known:
            self.progress("load", None, f"loaded model {spec.folder}")
        self.timed("load", time.time() - t)
        if loaded.description and TEST_MODEL_MARK in loaded.description:
            self.notes.add(loaded.description)
        return loaded


def is_out_of_memory(exc):
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def run_task(ctx, plan, image):
    """A whole task in input geometry. Returns (labels, statistics at model resolution or None)."""
    region = keep = None
    if plan.crop is not None:
        organ, _ = run_task(ctx, plan.crop.plan, image)
        region = plan.crop.region(organ)
        keep = plan.crop.outside_mask(organ)
        del organ
    vertebral_bodies = None
    if plan.refine is not None:
        vertebral_bodies, _ = run_task(ctx, plan.refine, image)
    labels, stats = predict_image(ctx, plan, image, region)
    if vertebral_bodies is not None:  # official: input resolution, the input header's zooms
        labels = refine_vertebrae(labels, vertebral_bodies, plan.spec.classes, image.zooms[:3])
        del vertebral_bodies
    if plan.roi_subset is not None:
        keys = [k for k, v in plan.spec.classes.items() if v in plan.roi_subset]
        labels *= np.isin(labels, keys)
    if keep is not None:  # official: dilation in voxels from the input header's mean zoom
        dilation = int(plan.crop.remove_outside["dilation_mm"] / np.mean(image.zooms))
        remove_outside_of_mask(labels, keep, dilation)
    return labels, stats


@dataclass
class _ModelInput:
    """The image as the models see it: cropped, canonical, at the model spacing."""

    data: np.ndarray
    affine: np.ndarray  # of `data`
    zooms: tuple  # float32 zooms nibabel gives `affine`
    canonical_shape: tuple  # before resampling (where labels go back to)
    resampled: bool
    bbox: list  # crop box in the input's voxels, or None


def predict_image(ctx, plan, image, region=None):
    """The plan's models in input geometry (official nnUNet_predict_image); `region`: crop mask or None."""
    spec, progress = plan.spec, ctx.progress
    t = time.time()
    progress(plan.stage, 0.0, f"{spec.name}: preparing the image")
    if region is not None and not region.any():
        progress.log(f"{spec.name}: the crop region is empty; the result is empty.", "warning")
        return np.zeros(image.shape, np.uint8), None
    load = ctx.timings.get("load", 0.0)
    loaded, model_input = _prepare(ctx, plan, image, region)
    ctx.timed("preprocess", time.time() - t - (ctx.timings.get("load", 0.0) - load))
    t = time.time()
    clock = Clock()
    pred, split = _predict(ctx, plan, loaded, model_input, clock)
    ctx.timed("preprocess", clock.preprocess)
    ctx.timed("forward", clock.forward)
    ctx.timed("sliding_window", clock.window)
    ctx.timed("merge", time.time() - t - clock.preprocess - clock.forward - clock.window)
    t = time.time()
    pred, stats = _postprocess(plan, pred, model_input, merged=plan.mode.multi_part or split)
    if plan.save_lowres:  # official --save_lowres: no upsampling; the model grid in the input's axis order
        ctx.lowres_affine = lowres_affine(model_input, pred.shape, image.affine)
    elif model_input.resampled and plan.smooth_upsampling:
        if plan.roi_subset is not None:  # official: the subset is applied before the smooth upsampling
            pred *= np.isin(pred, [k for k, v in plan.spec.classes.items() if v in plan.roi_subset])
        pred = geometry.resample_labels_smooth(pred, model_input.canonical_shape)
    elif model_input.resampled:
        pred = geometry.resample_labels_to_shape(pred, model_input.canonical_shape)
    pred = from_canonical(pred, image.affine)
    if model_input.bbox is not None:
        pred = geometry.uncrop(pred, image.shape, model_input.bbox)
    ctx.timed("postprocess", time.time() - t)
    progress(plan.stage, 1.0, f"{spec.name}: done")
    return np.ascontiguousarray(pred, dtype=np.uint8), stats


def _prepare(ctx, plan, image, region):
    """Crop, canonical order, memory check (before any allocation of the run), resampling."""
    bbox = None
    if region is not None:
        bbox = geometry.bbox_from_mask(region, geometry.addon_voxels(plan.crop.addon_mm, image.affine))
        data, crop_affine = geometry.crop(image.values, image.affine, bbox)
    else:
        data, crop_affine = image.values, np.asarray(image.affine, dtype=np.float64)
    data, can_affine = to_canonical(data, crop_affine)
    canonical_shape = data.shape
    loaded = [ctx.model(m) for m in plan.models]
    resample = plan.resample
    can_zooms = geometry.header_zooms(can_affine)
    if resample is not None:
        model_spacing = tuple(resample)
        model_shape = geometry.zoom_shape(canonical_shape, np.array(can_zooms) / np.array(model_spacing))
    else:
        model_spacing, model_shape = tuple(float(z) for z in can_zooms), canonical_shape
    check_memory(loaded, model_shape, model_spacing, plan.spec, canonical_shape)
    if resample is not None:
        data, rsp_affine, resampled = geometry.resample_to_spacing(data, can_affine, resample,
                                                                   order=plan.resampling_order)
    else:
        rsp_affine, resampled = can_affine, False
    return loaded, _ModelInput(data, rsp_affine, geometry.header_zooms(rsp_affine), canonical_shape, resampled,
                               bbox)


def _split(plan, data):
    """[(source, keep, target) slices] of the parts predicted separately along z."""
    nz = data.shape[2]
    if plan.force_split or (plan.mode.multi_part and np.prod(data.shape) > AUTO_SPLIT_VOXELS
                            and nz > AUTO_SPLIT_MIN_Z):
        try:
            return geometry.split_slices(nz)
        except ValueError as e:
            raise InputImageError(f"force_split: {e} at the model resolution.",
                                  "Use force_split only for tall images, or run without it.") from e
    return [(slice(None), slice(None), slice(None))]


def _predict(ctx, plan, loaded, model_input, clock):
    """Every model on every part; model parts merged into the task's label values (later wins).

    Returns (labels, whether the image was split along z)."""
    spec, progress, data = plan.spec, ctx.progress, model_input.data
    multi = plan.mode.multi_part  # official: a list of model ids, even when roi_subset leaves one
    parts = _split(plan, data)
    part_data = [data[:, :, src] for src, _, _ in parts]
    combined = [np.zeros(p.shape, np.uint8) for p in part_data] if multi else [None] * len(parts)
    preprocessed = [{} for _ in parts]
    class_inv = {v: k for k, v in spec.classes.items()}
    n_jobs = len(loaded) * len(parts)
    want_probabilities = ctx.save_probabilities and plan.stage == "predict"
    for mi, (model, lm) in enumerate(zip(plan.models, loaded)):
        for pi, pdata in enumerate(part_data):
            job = mi * len(parts) + pi
            label = f"{spec.name}: model {mi + 1}/{len(loaded)}" if multi else spec.name
            if len(parts) > 1:
                label += f", part {pi + 1}/{len(parts)}"

            def tiles(done, total, job=job, label=label):
                progress(plan.stage, (job + done / max(total, 1)) / n_jobs, f"{label}: tile {done}/{total}")

            if want_probabilities:  # official --save_probabilities: kept from the last model's first part
                keep = mi == len(loaded) - 1 and pi == 0
                seg, probabilities = predict(lm, pdata, model_input.zooms, model_input.affine, plan.mode.step_size,
                                             tiles, preprocessed[pi], via_files=True if keep else None,
                                             probabilities=True, clock=clock)
                if keep:
                    ctx.probabilities = probabilities
            else:
                seg = predict(lm, pdata, model_input.zooms, model_input.affine, plan.mode.step_size, tiles,
                              preprocessed[pi], clock=clock, cropped=plan.cropped_export)
            if multi:
                lut = np.zeros(max(model.classes) + 1, np.uint8)
                for local, name in model.classes.items():
                    lut[local] = class_inv[name]
                seg = seg.astype(np.uint8, copy=False)
                if seg.size and seg.max() >= len(lut):
                    lut = np.pad(lut, (0, int(seg.max()) + 1 - len(lut)))
                mapped = lut[seg]
                np.copyto(combined[pi], mapped, where=mapped != 0)
            else:
                combined[pi] = seg.astype(np.uint8, copy=False)
    del preprocessed
    if len(parts) == 1:
        return combined[0], False
    pred = np.zeros(data.shape, np.uint8)
    for (src, keep, dst), seg in zip(parts, combined):
        pred[:, :, dst] = seg[:, :, keep]
    return pred, True


def _postprocess(plan, pred, model_input, merged):
    """Cleanup at model resolution, as the official tool; returns (labels, fast statistics or None).

    `merged`: the prediction was merged from model parts or z parts."""
    spec = plan.spec
    # Zooms of the official in-between image at each step: nnU-Net's output file has a
    # float32 sform (a merged or split prediction is written with the float64 affine),
    # and every re-wrap of the array takes the zooms of that float32 affine.
    stored_zooms = geometry.header_zooms(geometry.stored_affine(model_input.affine))
    pred_zooms = model_input.zooms if merged else stored_zooms
    pred = np.array(pred, dtype=np.uint8, copy=True, order="C")
    if spec.auxiliary_labels:
        remove_labels(pred, spec.auxiliary_labels)
        pred_zooms = stored_zooms
    if spec.postprocessing == "body":
        body_postprocessing(pred, spec.classes, stored_zooms)
        pred_zooms = stored_zooms
    if spec.postprocessing in VERTEBRAE_PP:
        pred = vertebrae_pp(pred, spec.classes, pred_zooms)
        pred_zooms = stored_zooms
    if plan.remove_small_blobs:
        remove_small_blobs(pred, sorted(spec.classes), blob_threshold(plan.small_blob_mm3, pred_zooms))
    stats = None
    if plan.fast_statistics:  # official: aggregation and border rule, never the extra metrics, at this grid
        options = plan.fast_statistics
        stats = segment_statistics(pred, model_input.data, model_input.zooms, spec.classes, plan.roi_subset,
                                   options.aggregation, False, options.include_incomplete)
    return pred, stats


def lowres_affine(model_input, shape, input_affine):
    """The affine of a labelmap left at the model grid, in the input's voxel axis order (official
    --save_lowres: nnU-Net's output file, float32 affine, reoriented like the input)."""
    return from_canonical_affine(geometry.stored_affine(model_input.affine), shape, input_affine)


def check_memory(loaded, model_shape, model_spacing, spec, canonical_shape):
    """Refuse to start a prediction that cannot fit in memory (say so before, not after)."""
    available = available_memory()
    if available is None or not loaded:
        return
    need = max(lm.estimate_bytes(model_shape, model_spacing) for lm in loaded)
    need += int(np.prod(canonical_shape)) * 8 + int(np.prod(model_shape)) * 12  # resampling buffers
    if need > available:
        classes = max(lm.num_heads for lm in loaded)
        spacing = "x".join(f"{s:g}" for s in model_spacing)
        where = f"{'x'.join(map(str, model_shape))} voxels at {spacing} mm"
        raise OutOfMemoryError(
            f"Task '{spec.name}' needs about {format_bytes(need)} of memory for this image ({where}, "
            f"{classes} classes), but only {format_bytes(available)} are available{limit_note(available)}.",
            OOM_FIX)
