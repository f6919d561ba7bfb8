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
remove blobs or compute statistics: those options belong to the main task.
"""
import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..catalogue import ModeSpec, TaskSpec, load_catalogue

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
    fast_statistics: bool = False  # statistics at model resolution (the official --fast statistics)
    stage: str = "predict"  # progress stage this plan reports

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


def _sub_plan(cat, task, quality):
    spec = cat.task(task)
    return RunPlan(spec, spec.mode(quality), tuple(spec.mode(quality).models), stage="crop")


def plan_run(task, quality="normal", roi_subset=None, body_seg=False, robust_crop=False, force_split=False,
             remove_small_blobs=False, statistics=False, catalogue=None):
    """The RunPlan for these options; unknown tasks, qualities and structures are refused here."""
    cat = catalogue or load_catalogue()
    spec = cat.task(task)
    mode = spec.mode(quality)
    roi_subset = spec.check_roi_subset(roi_subset)
    mr = spec.name.endswith("_mr")
    crop = None
    if mode.crop or roi_subset:
        crop_task, crop_quality = mode.crop_model if mode.crop else ("total_mr" if mr else "total", "fastest")
        default_crop = crop_task in ("total", "total_mr")
        if default_crop and (mr or robust_crop or mode.robust_crop):
            crop_quality = "fast"  # the 3 mm model: robust crop, and always for MR
        # official: 20 mm around the crop classes, except a task's own crop task (teeth)
        addon = ORGAN_CROP_ADDON_MM if crop_task in ("total", "total_mr", "body") else mode.crop_addon_mm
        crop = CropStep(_sub_plan(cat, crop_task, crop_quality), tuple(mode.crop or roi_subset), addon,
                        mode.remove_outside if mode.crop else None)
    elif body_seg:
        if mr:
            log.info("body_seg is not used for MR tasks (as the official tool)")
        else:
            crop = CropStep(_sub_plan(cat, "body", "fast"), None, BODY_SEG_ADDON_MM)
    refine = _sub_plan(cat, REFINE_TASK[spec.postprocessing], "normal") if spec.postprocessing in REFINE_TASK \
        else None
    models = tuple(mode.models)
    if roi_subset and mode.multi_part:
        wanted = set(roi_subset)
        models = tuple(m for m in models if wanted & set(m.classes.values()))
    return RunPlan(spec, mode, models, tuple(roi_subset) if roi_subset else None, crop, refine, force_split,
                   remove_small_blobs, fast_statistics=bool(statistics) and quality == "fast")


def required_models(task, quality="normal", roi_subset=None, body_seg=False, catalogue=None):
    """Every model a run of `task` needs, crop models first (what download-weights fetches)."""
    return plan_run(task, quality, roi_subset, body_seg, catalogue=catalogue).all_models()
