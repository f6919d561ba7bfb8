"""The run plan: which models run, in which order, on which part of the image.

A `RunPlan` is decided before anything is read or loaded, as the official python_api
decides it, so a run knows every model it needs up front (download-weights fetches
exactly these, and a missing one is named before torch starts):

- a task whose mode crops to other classes (e.g. liver_vessels to the liver), and any
  ROI subset, first runs a rough crop task (total at 6 mm; 3 mm for MR and robust crop;
  the task's own crop model for teeth and similar) and cuts out the bounding box of
  those classes plus a margin;
- body_seg: the body model's mask instead (not for MR tasks, as the official tool);
- vertebrae_pp_refined also runs the vertebrae_body task on the whole input;
- a multi-part task with an ROI subset runs only the parts that hold those classes.

Sub-plans (crop, refine) report their progress as stage "crop" and never split,
remove blobs or compute statistics: those options belong to the main task. They share
the input resampling order (`--resampling_order`), as the official tool passes it to
every model it runs; nnU-Net's own resampling (`--higher_order_resampling`), the smooth
upsampling and `--save_lowres` concern the main task only.
"""
import dataclasses
import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..catalogue import ModeSpec, TaskSpec, load_catalogue
from ..errors import SegmentationError
from ..outputs.statistics import StatisticsOptions

log = logging.getLogger(__name__)

BODY_SEG_ADDON_MM = (3, 3, 3)  # the official default crop_addon, used by body_seg
ORGAN_CROP_ADDON_MM = (20, 20, 20)  # official: around classes of total, total_mr or body
REFINE_TASK = {"vertebrae_pp_refined": "vertebrae_body"}  # postprocessing -> task giving its mask


@dataclass(frozen=True)
class CropStep:
    """Crop the main task's input to what another task finds."""

    plan: "RunPlan"  # the task whose labels define the region
    classes: Optional[tuple]  # its class names that make the region; None: every label (body_seg)
    addon_mm: tuple  # margin around the region
    remove_outside: Optional[dict] = None  # {"classes", "dilation_mm"}: zero the result outside these classes

    def region(self, labels):
        """Boolean mask of the region in the crop task's labelmap."""
        if self.classes is None:
            return labels > 0
        return np.isin(labels, [self.plan.spec.label_of(name) for name in self.classes])

    def outside_mask(self, labels):
        """Where the result may stay (remove_outside), or None."""
        if not self.remove_outside:
            return None
        return np.isin(labels, [self.plan.spec.label_of(name) for name in self.remove_outside["classes"]])


@dataclass(frozen=True)
class RunPlan:
    """One task at one quality, with everything that runs before and around it."""

    spec: TaskSpec
    mode: ModeSpec
    models: tuple  # ModelSpecs of this task's own prediction (model parts in merge order)
    roi_subset: Optional[tuple] = None  # class names kept (None: all)
    crop: Optional[CropStep] = None
    refine: Optional["RunPlan"] = None  # vertebrae_pp_refined: the vertebral-body task, whole input
    force_split: bool = False  # predict in three overlapping parts along z
    remove_small_blobs: bool = False
    fast_statistics: Optional[StatisticsOptions] = None  # statistics at model resolution (official --fast)
    stage: str = "predict"  # progress stage this plan reports
    small_blob_mm3: float = 200.0  # remove_small_blobs: smaller connected components go
    resampling_order: int = 1  # spline order of the input resampling
    nnunet_resampling: bool = False  # --higher_order_resampling: nnU-Net resamples, not the pipeline
    smooth_upsampling: bool = False  # --higher_order_resampling_LEGACY: one-hot order-1 upsampling of the labels
    save_lowres: bool = False  # the labelmap stays at the model resolution
    cropped_export: bool = False  # -ho: the official cropped logits resampling export (pipeline/cropped_export)

    @property
    def resample(self):
        """The spacing the pipeline resamples the input to (None: nnU-Net's preprocessing does it)."""
        return None if self.nnunet_resampling else self.mode.resample

    @property
    def n_classes(self):
        """Output channels of the largest model (background included), for the memory estimate."""
        return max(len(m.classes or self.spec.classes) for m in self.models) + 1

    def all_models(self):
        """Every model this plan runs, each once, in run order (crop and refine first)."""
        out = []
        for sub in (self.crop.plan if self.crop else None, self.refine):
            if sub is not None:
                out += [m for m in sub.all_models() if m not in out]
        return out + [m for m in self.models if m not in out]


class PlanError(SegmentationError):
    """Options that cannot be combined for this task."""

    kind = "request"


SMALL_MODEL_PLANS = "nnUNetResEncUNetLPlans_8"  # official --model_size small (task total_v3 only)


def _sub_plan(cat, task, quality, resampling_order=1):
    spec = cat.task(task)
    return RunPlan(spec, spec.mode(quality), tuple(spec.mode(quality).models), stage="crop",
                   resampling_order=resampling_order)


def plan_run(task, quality="normal", roi_subset=None, body_seg=False, robust_crop=False, force_split=False,
             remove_small_blobs=False, statistics=False, catalogue=None, small_blob_mm3=200.0, resampling_order=1,
             nnunet_resampling=False, smooth_upsampling=False, save_lowres=False, model_size="big"):
    """The RunPlan for these options; unknown tasks, qualities, structures and combinations are refused here.

    `statistics`: False, True (default options) or StatisticsOptions; only a `fast` run keeps
    them in the plan (the official tool computes --fast statistics at model resolution)."""
    cat = catalogue or load_catalogue()
    spec = cat.task(task)
    mode = spec.mode(quality)
    roi_subset = spec.check_roi_subset(roi_subset)
    if model_size == "small":
        if spec.name != "total_v3":
            raise PlanError(f"--model_size small exists only for task 'total_v3', not '{spec.name}'.",
                            "Use -ta total_v3 with --model_size small, or leave --model_size out.")
        mode = dataclasses.replace(mode, models=tuple(dataclasses.replace(m, plans=SMALL_MODEL_PLANS)
                                                      for m in mode.models))
    if nnunet_resampling:
        save_lowres = False  # official: -ho switches -sl off
    if save_lowres:
        if quality == "normal" or mode.resample is None:
            raise PlanError("--save_lowres keeps the labelmap at the model resolution of --fast or --fastest.",
                            "Add --fast or --fastest, or leave --save_lowres out.")
        if mode.crop or roi_subset or body_seg:
            raise PlanError("--save_lowres cannot be combined with cropping (roi_subset, body_seg, or a task that "
                            "crops to an organ): the cropped result has no place in the low-resolution image.",
                            "Leave --save_lowres out, or run without roi_subset / body_seg.")
    mr = spec.name.endswith("_mr")
    crop = None
    if mode.crop or roi_subset:
        crop_task, crop_quality = mode.crop_model if mode.crop else ("total_mr" if mr else "total", "fastest")
        default_crop = crop_task in ("total", "total_mr")
        if default_crop and (mr or robust_crop or mode.robust_crop):
            crop_quality = "fast"  # the 3 mm model: robust crop, and always for MR
        # official: 20 mm around the crop classes, except a task's own crop task (teeth)
        addon = ORGAN_CROP_ADDON_MM if crop_task in ("total", "total_mr", "body") else mode.crop_addon_mm
        crop = CropStep(_sub_plan(cat, crop_task, crop_quality, resampling_order), tuple(mode.crop or roi_subset),
                        addon, mode.remove_outside if mode.crop else None)
    elif body_seg:
        if mr:
            log.info("body_seg is not used for MR tasks (as the official tool)")
        else:
            crop = CropStep(_sub_plan(cat, "body", "fast", resampling_order), None, BODY_SEG_ADDON_MM)
    refine = _sub_plan(cat, REFINE_TASK[spec.postprocessing], "normal", resampling_order) \
        if spec.postprocessing in REFINE_TASK else None
    if refine is not None and nnunet_resampling:  # official: the refining model keeps its resampling, not the export
        refine = dataclasses.replace(refine, cropped_export=True)
    models = tuple(mode.models)
    if roi_subset and mode.multi_part:
        wanted = set(roi_subset)
        models = tuple(m for m in models if wanted & set(m.classes.values()))
    fast_statistics = None
    if statistics and quality == "fast":
        fast_statistics = statistics if isinstance(statistics, StatisticsOptions) else StatisticsOptions()
    return RunPlan(spec, mode, models, tuple(roi_subset) if roi_subset else None, crop, refine, force_split,
                   remove_small_blobs, fast_statistics=fast_statistics, small_blob_mm3=small_blob_mm3,
                   resampling_order=resampling_order, nnunet_resampling=nnunet_resampling,
                   smooth_upsampling=smooth_upsampling, save_lowres=save_lowres, cropped_export=nnunet_resampling)


def plan_request(request, catalogue=None):
    """The RunPlan of a SegmentRequest (every option that changes what runs)."""
    stats = StatisticsOptions(request.stats_aggregation, request.statistics_extra, request.stats_include_incomplete) \
        if request.statistics else False
    return plan_run(request.task, request.quality, request.roi_subset, body_seg=request.body_seg,
                    robust_crop=request.robust_crop, force_split=request.force_split,
                    remove_small_blobs=request.remove_small_blobs, statistics=stats, catalogue=catalogue,
                    small_blob_mm3=request.remove_small_blobs_mm3, resampling_order=request.resampling_order,
                    nnunet_resampling=request.higher_order_resampling,
                    smooth_upsampling=request.higher_order_resampling_legacy, save_lowres=request.save_lowres,
                    model_size=request.model_size)


def required_models(task, quality="normal", roi_subset=None, body_seg=False, catalogue=None):
    """Every model a run of `task` needs, crop models first (what download-weights fetches)."""
    return plan_run(task, quality, roi_subset, body_seg, catalogue=catalogue).all_models()
