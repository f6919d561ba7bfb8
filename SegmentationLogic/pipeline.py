"""The segmentation pipeline, with the official TotalSegmentator semantics.

One run (`Segmenter.segment`):

  input image
   -> [crop stage]  a rough model (6 mm total, 3 mm when robust or MR, the body model
                    for body classes, or a whole other task for teeth) segments the
                    input; the bounding box of the crop classes plus a margin is cut out
   -> [body_seg]    or: the 6 mm body model gives a body mask to crop to (3 mm margin)
   -> main stage    crop (original voxel order) -> RAS+ -> resample to the model spacing
                    -> nnU-Net per model part (in memory), parts merged (later wins),
                    optional three-way split along z -> auxiliary labels removed,
                    body / vertebrae / small-blob cleanup at model resolution -> back
                    to the input spacing (order 0), orientation and box
   -> vertebrae_pp_refined: the vertebrae_body model's mask trims the vertebrae
   -> roi_subset filter, remove-outside (heartchambers), outputs and statistics.

Every numeric detail follows the official code (see geometry.py, inference.py): the
labelmaps are identical to what `totalsegmentator` writes for the same weights.
"""
import logging
import os
import time
from pathlib import Path

import numpy as np
import nibabel as nib

from . import geometry, outputs
from .catalogue import load_catalogue
from .errors import Cancelled, InputImageError, OutOfMemoryError, SegmentationError, UnknownTaskError
from .postprocessing import (blob_threshold, body_postprocessing, refine_vertebrae, remove_labels,
                             remove_outside_of_mask, remove_small_blobs as remove_blobs, vertebrae_pp)
from .progress import CancelToken, Progress
from .request import SegmentRequest, SegmentResult
from .statistics_extra import fast_statistics_options, segment_statistics
from .dicom_output import plan_outputs

log = logging.getLogger(__name__)

TEST_MODEL_MARK = "TEST MODEL"
BODY_SEG_ADDON_MM = (3, 3, 3)  # the official default crop_addon, used by body_seg
REFINE_TASK = {"vertebrae_pp_refined": "vertebrae_body"}  # postprocessing -> task giving its mask
VERTEBRAE_PP = ("vertebrae_pp", "vertebrae_pp_refined")  # both run the vertebrae_pp step at model resolution
SMALL_BLOB_MM3 = 200  # official --remove_small_blobs default
AUTO_SPLIT_VOXELS = 512 * 512 * 900  # official: split multi-part runs of larger images ...
AUTO_SPLIT_MIN_Z = 200  # ... that have more than 200 slices


SegmentationResult = SegmentResult  # the name of the first release's API


# -- memory ------------------------------------------------------------------------------

def available_memory():
    """Bytes this process may still allocate: MemAvailable, a cgroup limit, or the
    TOTALSEG_MEMORY_LIMIT_GB override, whichever is smallest (None if unknown)."""
    limits = []
    env = os.environ.get("TOTALSEG_MEMORY_LIMIT_GB")
    if env:
        try:
            limits.append(float(env) * 2**30)
        except ValueError:
            pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            limits.append(int(limit) - used)
    except (OSError, ValueError):
        pass
    return min(limits) if limits else None


def _is_oom(exc):
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


OOM_FIX = ("Use --fast (3 mm) or --fastest (6 mm), crop the image to the region you need or use --roi_subset, "
           "close other programs, or run on a machine (or GPU) with more memory.")


# -- input -----------------------------------------------------------------------------------

def _image_io():
    try:
        from . import image_io
    except ImportError:  # a minimal installation: NIfTI only
        return None
    return image_io


def load_input(input, progress=None, target_spacing=None, n_classes=None):
    """The input as the official tool sees it (a Nifti1Image), checked.

    Paths go through image_io (NIfTI, NRRD, DICOM folder or zip, read as the official
    tool reads them); a nibabel image is used as it is (trailing 1-length axes dropped).
    The checks refuse what cannot be segmented (2D/4D, sheared axes, NaN, far too large)
    with a cause and a fix; their warnings go to the progress log."""
    io = _image_io()
    if io is not None:
        img = io.load_image(input, progress=progress)
        warnings = io.check_image(img, target_spacing=target_spacing, n_classes=n_classes)
        for w in warnings or ():
            if progress is not None:
                progress.log(w, "warning")
        return img
    if isinstance(input, nib.spatialimages.SpatialImage):
        img = input if isinstance(input, nib.Nifti1Image) else nib.Nifti1Image.from_image(input)
    else:
        path = Path(input)
        if not (path.name.endswith(".nii") or path.name.endswith(".nii.gz")):
            raise InputImageError(f"Cannot read {path.name}: this installation reads NIfTI (.nii, .nii.gz) only.",
                                  "Convert the image to NIfTI, or install the full package with image_io.")
        try:
            img = nib.load(str(path))
        except Exception as e:  # noqa: BLE001 - nibabel raises many types for broken files
            raise InputImageError(f"Cannot read {path}: {e}", "Check that the file is a valid NIfTI image.") from e
    if len(img.shape) != 3:
        raise InputImageError(f"The image has {len(img.shape)} dimensions ({img.shape}); a 3D volume is needed.",
                              "Give a single 3D volume (for 4D series pick one time point).")
    return img


def _check_modality(img, spec, progress):
    io = _image_io()
    if io is None:
        return
    warning = io.check_modality(img, spec.name, spec.modality)  # raises for a CT task on an MR-like volume
    if warning:
        progress.log(warning, "warning")


# -- request checks ----------------------------------------------------------------------------

def _check_request(spec, mode, quality, roi_subset, output, ml):
    roi_subset = spec.check_roi_subset(roi_subset)
    if output is None and not ml:
        raise SegmentationError("One file per class needs an output folder.", "Give an output folder, or use --ml.")
    return roi_subset


# -- the run --------------------------------------------------------------------------------------

class _Run:
    """State of one segmentation: progress, cancel, timings, notes."""

    def __init__(self, segmenter, device, weights_dir, progress):
        self.segmenter = segmenter
        self.device = device
        self.weights_dir = weights_dir
        self.progress = progress
        self.timings = {}
        self.notes = set()

    def timed(self, name, seconds):
        self.timings[name] = round(self.timings.get(name, 0.0) + seconds, 3)

    def model(self, spec):
        from .weights import folds_of, model_dir

        t = time.time()
        folds = folds_of(spec, self.weights_dir)
        key_known = len(self.segmenter.models)
        loaded = self.segmenter.models.get(model_dir(spec, self.weights_dir), self.device, folds, name=spec.folder)
        if len(self.segmenter.models) != key_known:
            self.progress("load", None, f"loaded model {spec.folder}")
        self.timed("load", time.time() - t)
        if loaded.description and TEST_MODEL_MARK in loaded.description:
            self.notes.add(loaded.description)
        return loaded


class Segmenter:
    """Runs segmentations and keeps the loaded models (and device) between runs."""

    def __init__(self, device="auto", weights_dir=None, download=True):
        from .inference import ModelCache

        self.device = device
        self.weights_dir = weights_dir
        self.download = download
        self.models = ModelCache()

    # -- public ---------------------------------------------------------------------------
    def run(self, request, progress=None, cancel=None):
        """Run one typed `SegmentRequest`; returns a `SegmentResult` (the front doors' entry point)."""
        options = {k: v for k, v in vars(request).items() if k not in ("input", "output")}
        return self.segment(request.input, request.output, progress=progress, cancel=cancel, **options)

    def segment(self, input, output=None, task="total", quality="normal", roi_subset=None, device=None, ml=True,
                statistics=False, preview=False, body_seg=False, force_split=False, remove_small_blobs=False,
                robust_crop=False, weights_dir=None, download=None, progress=None, cancel=None,
                check_modality=True, output_types=None, statistics_extra=False, stats_aggregation="mean",
                stats_include_incomplete=False):
        """Segment `input` (path or nibabel image); see README for the options.

        Writes nothing when `output` is None; otherwise a multilabel NIfTI (`ml`) or a
        folder with one mask per class, the label names, statistics.json and a preview
        when asked. Returns a SegmentationResult."""
        t_start = time.time()
        progress = _as_progress(progress, cancel)
        cat = load_catalogue()
        spec = cat.task(task)
        mode = spec.mode(quality)
        dicom = plan_outputs(input, output, output_types, spec.name, progress)  # DICOM outputs: checked now
        ml = ml or dicom is not None
        roi_subset = _check_request(spec, mode, quality, roi_subset, output, ml)
        weights_dir = weights_dir if weights_dir is not None else self.weights_dir
        download = self.download if download is None else download
        from .devices import configure_threads, parse_device, resolve_device

        device = device if device is not None else self.device
        parse_device(device)
        if not isinstance(input, nib.spatialimages.SpatialImage) and not Path(input).exists():
            raise InputImageError(f"Input not found: {input}", "Check the path.")
        plan = self._plan(cat, spec, mode, roi_subset, body_seg, robust_crop)
        self._ensure_weights(plan, weights_dir, download, progress)  # before torch: quick errors

        import torch

        dev = resolve_device(device)
        threads = torch.get_num_threads()
        configure_threads(dev)
        run = _Run(self, dev, weights_dir, progress)
        try:
            t = time.time()
            progress("load", 0.0, "reading the image")
            img = load_input(input, progress=progress, target_spacing=mode.resample,
                             n_classes=max(len(m.classes or spec.classes) for m in plan["models"]) + 1)
            values = geometry.exact_values(img)
            if check_modality:  # on the voxels already read, not a second read of the file
                _check_modality(nib.Nifti1Image(values, img.affine), spec, progress)
            run.timed("read", time.time() - t)
            want_fast_stats = fast_statistics_options(statistics, quality, stats_aggregation, statistics_extra,
                                                      stats_include_incomplete, progress)
            try:
                labels, fast_stats = self._run_task(run, plan, img, values, force_split, remove_small_blobs,
                                                    want_fast_stats)
            except SegmentationError:
                raise
            except Exception as e:  # noqa: BLE001
                if _is_oom(e):
                    raise OutOfMemoryError(f"Ran out of memory during the segmentation ({e}).", OOM_FIX) from e
                raise
            class_map = {k: v for k, v in spec.classes.items() if roi_subset is None or v in roi_subset}
            t = time.time()
            progress("postprocess", 0.9, "building the labelmap")
            labelmap = outputs.multilabel_image(labels, img, class_map)
            stats = None
            if statistics:
                if want_fast_stats:
                    stats = fast_stats
                else:
                    stats = segment_statistics(labels, values, img.header.get_zooms(), spec.classes, roi_subset,
                                               stats_aggregation, statistics_extra, stats_include_incomplete)
            run.timed("postprocess", time.time() - t)
            note = "; ".join(sorted(run.notes)) or None
            files = []
            if output is not None:
                t = time.time()
                files = self._write(output, ml, spec, quality, labels, img, values, labelmap, class_map, stats,
                                    preview, note, progress, dicom)
                run.timed("save", time.time() - t)
            progress("save", 1.0, "done")
        finally:
            torch.set_num_threads(threads)
        run.timings["total"] = round(time.time() - t_start, 3)
        return SegmentResult(labelmap=labelmap, class_map=class_map, statistics=stats, files=files,
                                  model_note=note, timings=run.timings)

    # -- planning -------------------------------------------------------------------------
    def _plan(self, cat, spec, mode, roi_subset, body_seg, robust_crop):
        """What to run, as the official python_api decides it (crop model, body crop)."""
        plan = {"spec": spec, "mode": mode, "roi_subset": roi_subset, "crop": None, "body": None}
        mr = spec.name.endswith("_mr")
        if mode.crop or roi_subset:
            crop_task, crop_quality = mode.crop_model if mode.crop else ("total_mr" if mr else "total", "fastest")
            default_crop = crop_task in ("total", "total_mr")
            if default_crop and (mr or robust_crop or mode.robust_crop):
                crop_quality = "fast"  # the 3 mm model: robust crop, and always for MR
            classes = list(mode.crop) if mode.crop else list(roi_subset)
            # official: 20 mm around the crop classes, except a task's own crop task (teeth)
            addon = (20, 20, 20) if crop_task in ("total", "total_mr", "body") else mode.crop_addon_mm
            crop_spec = cat.task(crop_task)
            plan["crop"] = {"plan": self._plan(cat, crop_spec, crop_spec.mode(crop_quality), None, False, False),
                            "classes": classes, "addon": addon}
            if mode.remove_outside:
                plan["remove_outside"] = mode.remove_outside
        elif body_seg:
            if mr:
                log.info("body_seg is not used for MR tasks (as the official tool)")
            else:
                body = cat.task("body")
                plan["body"] = {"plan": self._plan(cat, body, body.mode("fast"), None, False, False),
                                "addon": BODY_SEG_ADDON_MM}
        if spec.postprocessing in REFINE_TASK:  # official: on the whole input, whatever the crop
            helper = cat.task(REFINE_TASK[spec.postprocessing])
            plan["refine"] = {"plan": self._plan(cat, helper, helper.mode("normal"), None, False, False)}
        models = list(mode.models)
        if roi_subset and mode.multi_part:
            wanted = set(roi_subset)
            models = [m for m in models if wanted & set(m.classes.values())]
        plan["models"] = models
        return plan

    @staticmethod
    def _all_models(plan):
        out = []
        for sub in ("crop", "body", "refine"):
            if plan.get(sub):
                out += Segmenter._all_models(plan[sub]["plan"])
        out += plan["models"]
        return out

    def _ensure_weights(self, plan, weights_dir, download, progress):
        from .weights import ensure_models

        models = []
        for m in self._all_models(plan):
            if m not in models:
                models.append(m)
        ensure_models(models, weights_dir, download=download, progress=progress)

    # -- stages -----------------------------------------------------------------------------
    def _run_task(self, run, plan, img, values, force_split=False, small_blobs=False, fast_stats=False,
                  stage="predict"):
        """A whole task in input geometry (official python_api level). Returns (labels, stats)."""
        spec, mode, roi_subset = plan["spec"], plan["mode"], plan["roi_subset"]
        affine, shape = img.affine, img.shape
        crop_mask = remove_mask = None
        addon = None
        if plan.get("crop"):
            c = plan["crop"]
            organ, _ = self._run_task(run, c["plan"], img, values, stage="crop")
            inv = {v: k for k, v in c["plan"]["spec"].classes.items()}
            crop_mask = np.isin(organ, [inv[name] for name in c["classes"]])
            addon = c["addon"]
            if plan.get("remove_outside"):
                remove_mask = np.isin(organ, [inv[name] for name in plan["remove_outside"]["classes"]])
            del organ
        elif plan.get("body"):
            b = plan["body"]
            body, _ = self._run_task(run, b["plan"], img, values, stage="crop")
            crop_mask = body > 0
            addon = b["addon"]
            del body
        vertebral_bodies = None
        if plan.get("refine"):
            vertebral_bodies, _ = self._run_task(run, plan["refine"]["plan"], img, values, stage="crop")
        labels, stats = self._predict_image(run, spec, mode, plan["models"], values, affine, shape, crop_mask, addon,
                                            force_split, small_blobs, fast_stats, roi_subset, stage)
        if vertebral_bodies is not None:  # official: input resolution, the input header's zooms
            labels = refine_vertebrae(labels, vertebral_bodies, spec.classes, img.header.get_zooms()[:3])
            del vertebral_bodies
        if roi_subset is not None:
            keys = [k for k, v in spec.classes.items() if v in roi_subset]
            labels *= np.isin(labels, keys)
        if remove_mask is not None:  # official: dilation in voxels from the input header's mean zoom
            dilation = int(plan["remove_outside"]["dilation_mm"] / np.mean(img.header.get_zooms()))
            remove_outside_of_mask(labels, remove_mask, dilation)
        return labels, stats

    def _predict_image(self, run, spec, mode, models, values, affine, shape, crop_mask, addon, force_split,
                       small_blobs, fast_stats, roi_subset, stage):
        """One model (or model parts) in input geometry: official nnUNet_predict_image."""
        progress = run.progress
        t = time.time()
        progress(stage, 0.0, f"{spec.name}: preparing the image")
        bbox = None
        if crop_mask is not None:
            if not crop_mask.any():
                progress.log(f"{spec.name}: the crop region is empty; the result is empty.", "warning")
                return np.zeros(shape, np.uint8), None
            bbox = geometry.bbox_from_mask(crop_mask, geometry.addon_voxels(addon, affine))
            data, crop_affine = geometry.crop(values, affine, bbox)
        else:
            data, crop_affine = values, np.asarray(affine, dtype=np.float64)
        data, can_affine = geometry.to_canonical(data, crop_affine)
        canonical_shape = data.shape
        loaded = [run.model(m) for m in models]
        can_zooms = geometry.header_zooms(can_affine)
        if mode.resample is not None:
            model_spacing = tuple(mode.resample)
            model_shape = geometry.zoom_shape(canonical_shape, np.array(can_zooms) / np.array(model_spacing))
        else:
            model_spacing, model_shape = tuple(float(z) for z in can_zooms), canonical_shape
        self._check_memory(loaded, model_shape, model_spacing, spec, canonical_shape)
        if mode.resample is not None:
            data, rsp_affine, resampled = geometry.resample_to_spacing(data, can_affine, mode.resample)
        else:
            rsp_affine, resampled = can_affine, False
        zooms = geometry.header_zooms(rsp_affine)
        run.timed("preprocess", time.time() - t)

        multi = mode.multi_part  # official: a list of model ids, even when roi_subset leaves one
        nz = data.shape[2]
        split = force_split or (multi and np.prod(data.shape) > AUTO_SPLIT_VOXELS and nz > AUTO_SPLIT_MIN_Z)
        if split:
            try:
                parts = geometry.split_slices(nz)
            except ValueError as e:
                raise InputImageError(f"force_split: {e} at the model resolution.",
                                      "Use force_split only for tall images, or run without it.") from e
        else:
            parts = [(slice(None), slice(None), slice(None))]
        part_data = [data[:, :, src] for src, _, _ in parts]
        combined = [np.zeros(p.shape, np.uint8) for p in part_data] if multi else [None] * len(parts)
        preprocessed = [{} for _ in parts]
        class_inv = {v: k for k, v in spec.classes.items()}
        n_jobs = len(loaded) * len(parts)
        t = time.time()
        for mi, (model, lm) in enumerate(zip(models, loaded)):
            for pi, pdata in enumerate(part_data):
                job = mi * len(parts) + pi
                label = f"{spec.name}: model {mi + 1}/{len(loaded)}" if multi else spec.name
                if len(parts) > 1:
                    label += f", part {pi + 1}/{len(parts)}"

                def tiles(done, total, job=job, label=label):
                    progress(stage, (job + done / max(total, 1)) / n_jobs, f"{label}: tile {done}/{total}")

                from .inference import predict

                seg = predict(lm, pdata, zooms, rsp_affine, mode.step_size, tiles, preprocessed[pi])
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
        run.timed("predict" if stage == "predict" else stage, time.time() - t)

        t = time.time()
        if split:
            pred = np.zeros(data.shape, np.uint8)
            for (src, keep, dst), seg in zip(parts, combined):
                pred[:, :, dst] = seg[:, :, keep]
        else:
            pred = combined[0]
        del combined, part_data
        # Zooms of the official in-between image at each step: nnU-Net's output file has a
        # float32 sform (a merged or split prediction is written with the float64 affine),
        # and every re-wrap of the array takes the zooms of that float32 affine.
        stored_zooms = geometry.header_zooms(geometry.stored_affine(rsp_affine))
        pred_zooms = stored_zooms if not (multi or split) else zooms
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
        if small_blobs:
            remove_blobs(pred, sorted(spec.classes), blob_threshold(SMALL_BLOB_MM3, pred_zooms))
        stats = None
        if fast_stats:
            stats = segment_statistics(pred, data, zooms, spec.classes, roi_subset, **fast_stats)
        if resampled:
            pred = geometry.resample_labels_to_shape(pred, canonical_shape)
        pred = geometry.from_canonical(pred, affine)
        if bbox is not None:
            pred = geometry.uncrop(pred, shape, bbox)
        run.timed("postprocess", time.time() - t)
        progress(stage, 1.0, f"{spec.name}: done")
        return np.ascontiguousarray(pred, dtype=np.uint8), stats

    def _check_memory(self, loaded, model_shape, model_spacing, spec, canonical_shape):
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
                f"Task '{spec.name}' needs about {need / 2**30:.1f} GB of memory for this image ({where}, "
                f"{classes} classes), but only {available / 2**30:.1f} GB are available.", OOM_FIX)

    # -- outputs ----------------------------------------------------------------------------------
    def _write(self, output, ml, spec, quality, labels, img, values, labelmap, class_map, stats, preview, note,
               progress, dicom=None):
        output = Path(output) if dicom is None else dicom.main_path
        out_dir = output.parent if ml else output
        writer = outputs.AtomicWriter()
        progress("save", 0.0, f"writing {output}")
        try:
            if dicom is None or dicom.nifti:
                if ml:
                    outputs.write_multilabel(writer, labelmap, output)
                else:
                    outputs.write_per_class(writer, labels, img, class_map, output)
                    if spec.postprocessing == "body":
                        outputs.write_body_derived(writer, labels, img, values, spec.classes, output)
                writer.json(outputs.sidecar(spec.name, class_map, note), outputs.sidecar_path(output, ml))
            if dicom is not None:
                dicom.write(writer, labelmap, class_map, spec.name, note, progress)
            if stats is not None:
                writer.json(stats, out_dir / "statistics.json")
            if preview:
                title = f"TotalSegmentator {spec.name}" + (f" --{quality}" if quality != "normal" else "")
                self._preview(writer, labelmap, class_map, out_dir / f"preview_{spec.name}.png", note, title,
                              progress)
            return writer.commit()
        except BaseException:
            writer.abort()
            raise

    @staticmethod
    def _preview(writer, labelmap, class_map, png, note, title, progress):
        try:
            from .preview import render_preview
        except ImportError:
            progress.log("Preview skipped: the preview renderer (SegmentationLogic.preview) is not installed.",
                         "warning")
            return
        tmp = png.with_name(f".{png.name}.part{os.getpid()}.png")
        png.parent.mkdir(parents=True, exist_ok=True)
        try:
            render_preview(labelmap, class_map, tmp, note=note, title=title)
        except Exception as e:  # noqa: BLE001 - a picture must not cost the user the segmentation
            tmp.unlink(missing_ok=True)
            log.warning("preview failed", exc_info=True)
            progress.log(f"Preview not written ({type(e).__name__}: {e}); the segmentation itself is complete.",
                         "warning")
            return
        writer.adopt(tmp, png)


def _as_progress(progress, cancel):
    if isinstance(progress, Progress):
        if cancel is not None and progress.cancel is None:
            progress.cancel = cancel
        return progress
    if cancel is not None and not isinstance(cancel, CancelToken) and not hasattr(cancel, "check"):
        raise TypeError("cancel must be a CancelToken")
    return Progress(progress, cancel)


_DEFAULT = None


def default_segmenter():
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Segmenter()
    return _DEFAULT


def segment(input, output=None, task="total", quality="normal", roi_subset=None, device="auto", ml=True,
            statistics=False, preview=False, body_seg=False, force_split=False, remove_small_blobs=False,
            robust_crop=False, weights_dir=None, download=True, progress=None, cancel=None, check_modality=True,
            output_types=None, statistics_extra=False, stats_aggregation="mean", stats_include_incomplete=False):
    """Segment an image; the models stay loaded for the next call in this process.

    input: NIfTI path (NRRD/DICOM folder/zip with image_io) or a nibabel image.
    output: None (nothing written), a .nii.gz path (ml=True) or a folder (ml=False).
    quality: normal | fast (3 mm) | fastest (6 mm). device: auto | cpu | cuda[:N] | gpu[:N] | mps.
    progress: a Progress, or a callable receiving event dicts. cancel: a CancelToken.
    check_modality: refuse a CT task on a volume that does not look like CT (False: run anyway).
    """
    return default_segmenter().segment(
        input, output, task=task, quality=quality, roi_subset=roi_subset, device=device, ml=ml,
        statistics=statistics, preview=preview, body_seg=body_seg, force_split=force_split,
        remove_small_blobs=remove_small_blobs, robust_crop=robust_crop, weights_dir=weights_dir, download=download,
        progress=progress, cancel=cancel, check_modality=check_modality, output_types=output_types,
        statistics_extra=statistics_extra, stats_aggregation=stats_aggregation,
        stats_include_incomplete=stats_include_incomplete)


__all__ = ["segment", "Segmenter", "SegmentRequest", "SegmentResult", "SegmentationResult", "available_memory", "load_input", "Cancelled"]
