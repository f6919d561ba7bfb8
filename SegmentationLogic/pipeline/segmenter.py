"""The engine's entry point: `Segmenter.run(SegmentRequest) -> SegmentResult`.

One run:  request -> RunPlan (plan.py: tasks, models, crops; refused here if it cannot
run) -> weights there (downloaded if allowed) -> device -> input read and checked
(imaging/) -> stages (stages.py: crop, predict, postprocess, back to the input
geometry) -> labelmap, class map, statistics -> files written all or nothing
(outputs/writer.py) -> SegmentResult.

Every front door (CLI, worker, Slicer job, batch, server, cohort) builds a
SegmentRequest and calls `run`; `Segmenter.segment(input, output, **options)` and the
module-level `segment(...)` are the Python API's keyword form of the same call. A
Segmenter keeps the loaded models between runs.
"""
import time

import nibabel as nib
import numpy as np

from ..catalogue import load_catalogue
from ..errors import OutOfMemoryError, SegmentationError
from ..imaging.checks import check_header, check_values
from ..imaging.modality import check_modality
from ..imaging.nifti import image_name, voxel_read_errors
from ..imaging.read import check_input, load_image
from ..outputs.dicom_outputs import plan_outputs
from ..outputs.labelmap import lowres_image, multilabel_image
from ..outputs.layout import check_request_outputs, class_files
from ..outputs.radiomics import require_radiomics
from ..outputs.report import run_report
from ..outputs.statistics import segment_statistics
from ..outputs.writer import check_output_space, write_extras, write_result
from ..progress import as_progress
from ..request import SegmentRequest, SegmentResult
from ..system.devices import deterministic_algorithms, parse_device, resolve_device, thread_settings
from ..weights import ensure_models
from . import geometry
from .inference import ModelCache, WarmUp
from .plan import PlanError, plan_request
from .postprocessing import body_derived_masks
from .stages import OOM_FIX, InputImage, RunContext, is_out_of_memory, run_task


class Segmenter:
    """Runs segmentations and keeps the loaded models between runs.

    `device`, `weights_dir` and `download` are this Segmenter's defaults: a request's
    device "auto" and weights_dir None defer to them, and a Segmenter made with
    download=False never downloads.
    """

    def __init__(self, device="auto", weights_dir=None, download=True):
        self.device = device
        self.weights_dir = weights_dir
        self.download = download
        self.models = ModelCache()

    def run(self, request, progress=None, cancel=None):
        """Run one `SegmentRequest`; returns its `SegmentResult`.

        Writes nothing when `request.output` is None (except files named by the request:
        statistics_file, report, save_probabilities); otherwise a multilabel NIfTI (`ml`)
        or a folder with one mask per class, DICOM SEG / RTSTRUCT (`output_types`), the
        label names, statistics.json and a preview when asked. `progress`: a Progress or
        a callable receiving event dicts; `cancel`: a CancelToken."""
        t_start = time.time()
        progress = as_progress(progress, cancel)
        plan = plan_request(request)
        _check_combinations(request, plan)
        # DICOM outputs: refused for a non-DICOM input, and the source series read, before any model runs
        dicom = plan_outputs(request.input, request.output, request.output_types, plan.spec.name, progress)
        ml = request.ml or dicom is not None  # official: a DICOM output implies the multilabel result
        if dicom is not None and request.save_lowres:
            raise PlanError("--save_lowres writes NIfTI only: a DICOM SEG or RTSTRUCT lies on the source images.",
                            "Leave --save_lowres out, or choose --output_type nifti.")
        if request.output is None and not ml:
            raise SegmentationError("One file per class needs an output folder.", "Give an output folder, or use --ml.")
        if request.statistics_extra and plan.fast_statistics:
            progress.log("--statistics_extra is ignored with --fast (as in the official tool: fast statistics are "
                         "computed at the 3 mm model resolution). Run without --fast for the extra metrics.", "warning")
        device = self.device if request.device in (None, "auto") else request.device
        weights_dir = request.weights_dir if request.weights_dir is not None else self.weights_dir
        parse_device(device)
        # Before any work (download, model load, inference): the input can be read and the
        # outputs can be written without replacing anything that must survive.
        if not isinstance(request.input, nib.spatialimages.SpatialImage):
            check_input(request.input)
        n_files = 0
        if request.output is not None and dicom is None and not request.skip_saving:
            n_files = len(check_request_outputs(request, *class_files(plan.spec, plan.roi_subset, ml)))
        # before torch starts: a missing model is a quick, clear error
        ensure_models(plan.all_models(), weights_dir, download=request.download and self.download, progress=progress)
        ctx = RunContext(self.models, None, weights_dir, progress)
        ctx.save_probabilities = request.save_probabilities is not None
        imports = WarmUp()  # torch and the network classes load while the image is read
        img, image = self._read(request, plan, ctx)
        if n_files:  # the input's size is known: enough disk for the results?
            check_output_space(request, int(np.prod(img.shape[:3])), n_files)
        t = time.time()
        imports.wait()
        ctx.device = resolve_device(device)
        ctx.timed("imports", time.time() - t)
        with thread_settings(ctx.device), deterministic_algorithms(ctx.device, request.deterministic):
            try:
                labels, fast_stats = run_task(ctx, plan, image)
            except SegmentationError:
                raise
            except Exception as e:  # noqa: BLE001
                if is_out_of_memory(e):
                    raise OutOfMemoryError(f"Ran out of memory during the segmentation ({e}).", OOM_FIX) from e
                raise
            result = self._result(plan, ctx, img, image, labels, fast_stats, request)
            t = time.time()
            extra = body_derived_masks(labels, image.values, plan.spec.classes) \
                if not ml and plan.spec.postprocessing == "body" and not request.no_derived_masks else None
            del labels
            result.files = write_result(request, result, img, progress, extra, dicom, ctx.probabilities)
            ctx.timed("save", time.time() - t)
            progress("save", 1.0, "done")
        ctx.timings["total"] = round(time.time() - t_start, 3)
        result.files += write_extras(request, result, progress,
                                     run_report(request, plan, result, ctx.device, ml, time.time() - t_start))
        return result

    def segment(self, input, output=None, progress=None, cancel=None, **options):
        """Segment `input` (path or nibabel image); `options` are SegmentRequest's fields
        (task, quality, roi_subset, device, ml, statistics, preview, ...). Returns a SegmentResult."""
        return self.run(SegmentRequest(input=input, output=output, **options), progress, cancel)

    @staticmethod
    def _read(request, plan, ctx):
        """The input as the official tool sees it (a Nifti1Image) and as the stages use it, checked."""
        t = time.time()
        ctx.progress("load", 0.0, "reading the image")
        img = load_image(request.input, progress=ctx.progress)
        warnings = check_header(img, target_spacing=plan.resample, n_classes=plan.n_classes)
        with voxel_read_errors(image_name(img)):
            values = geometry.exact_values(img)  # the file's voxels are read (decompressed) here, once
        check_values(values)
        for w in warnings:
            ctx.progress.log(w, "warning")
        if request.check_modality:  # on the voxels already read, not a second read of the file
            warning = check_modality(values, plan.spec.name, plan.spec.modality)  # raises: CT task, MR volume
            if warning:
                ctx.progress.log(warning, "warning")
        ctx.timed("read", time.time() - t)
        return img, InputImage(values, img.affine, img.header.get_zooms())

    @staticmethod
    def _result(plan, ctx, img, image, labels, fast_stats, request):
        spec, roi_subset = plan.spec, plan.roi_subset
        t = time.time()
        ctx.progress("postprocess", 0.9, "building the labelmap")
        class_map = {k: v for k, v in spec.classes.items() if roi_subset is None or v in roi_subset}
        stats = None
        if request.statistics:  # the official --fast statistics are taken at model resolution
            stats = fast_stats if plan.fast_statistics else segment_statistics(
                labels, image.values, image.zooms, spec.classes, roi_subset, request.stats_aggregation,
                request.statistics_extra, request.stats_include_incomplete)
        out_labels, out_map = labels, class_map
        if request.v1_order and spec.name == "total" and request.ml:
            out_labels, out_map = v1_labels(labels, spec.classes, roi_subset)
        if plan.save_lowres:
            labelmap = lowres_image(out_labels, ctx.lowres_affine, out_map)
        else:
            labelmap = multilabel_image(out_labels, img, out_map)
        ctx.timed("postprocess", time.time() - t)
        return SegmentResult(labelmap=labelmap, class_map=out_map, statistics=stats,
                             model_note="; ".join(sorted(ctx.notes)) or None, timings=ctx.timings)


def _check_combinations(request, plan):
    """Options that need each other (cause + fix before anything runs)."""
    if request.save_lowres and request.statistics and not plan.fast_statistics:
        raise PlanError("--statistics with --save_lowres needs --fast: the image statistics are taken on the "
                        "input grid, which a low-resolution labelmap does not have.",
                        "Use --fast (statistics at the model resolution), or leave --save_lowres out.")
    if request.save_lowres and not request.ml and plan.spec.postprocessing == "body" and not request.no_derived_masks:
        raise PlanError("--save_lowres cannot derive the body and skin masks (they use the full-resolution image).",
                        "Add --no_derived_masks, or use --ml, or leave --save_lowres out.")
    if request.v1_order and plan.spec.name != "total":
        raise PlanError(f"--v1_order orders the labels of task 'total' as TotalSegmentator v1 did; task "
                        f"'{plan.spec.name}' has no v1 order.", "Leave --v1_order out, or use -ta total.")
    if request.radiomics:
        if request.ml or request.output is None:
            raise PlanError("--radiomics computes features per class file: it needs one file per class.",
                            "Run without --ml and give an output folder.")
        if not _is_nifti_path(request.input):
            raise PlanError("--radiomics needs a NIfTI input (as in the official tool).",
                            "Convert the image to .nii.gz first (e.g. segment it once and save the volume from "
                            "Slicer), or leave --radiomics out.")
        require_radiomics()


def _is_nifti_path(source):
    return isinstance(source, nib.spatialimages.SpatialImage) or str(source).lower().endswith((".nii", ".nii.gz"))


def v1_labels(labels, classes, roi_subset=None):
    """The labels of task total in TotalSegmentator v1's values (classes new in v2 dropped, as the official
    --v1_order), and the v1 class map (limited to roi_subset)."""
    v1 = load_catalogue().total_v1_classes
    by_name = {name: value for value, name in classes.items()}
    lut = np.zeros(max(int(labels.max()) + 1, max(classes) + 1), np.uint8)
    for value, name in v1.items():
        if name in by_name:
            lut[by_name[name]] = value
    class_map = {k: v for k, v in v1.items() if roi_subset is None or v in roi_subset}
    return lut[labels], class_map


_DEFAULT = None


def default_segmenter():
    """The process's shared Segmenter (models stay loaded between `segment` calls)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Segmenter()
    return _DEFAULT


def segment(input, output=None, progress=None, cancel=None, **options):
    """Segment an image; the models stay loaded for the next call in this process.

    input: a path (NIfTI, NRRD, MetaImage, DICOM folder or zip) or a nibabel image.
    output: None (nothing written), a .nii.gz path (ml=True) or a folder (ml=False).
    options: SegmentRequest's fields, e.g. task="total", quality="fast" (3 mm) or
    "fastest" (6 mm), roi_subset=[...], device="cuda", statistics=True, check_modality=False.
    progress: a Progress, or a callable receiving event dicts. cancel: a CancelToken.
    """
    return default_segmenter().segment(input, output, progress, cancel, **options)
