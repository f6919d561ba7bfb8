"""Task catalogue: every task, its models, class map, resolution and crop rules.

The data lives in `Resources/tasks.json` (regenerated from the official tool's facts by
`Testing/tools/make_task_catalogue.py`); this module gives it types and the few rules
the official tool applies when choosing a model (quality fallbacks, crop models).
"""
import difflib
import functools
import json
from dataclasses import dataclass, field

from .errors import UnknownTaskError
from .request import QUALITIES, check_quality
from .resources import resource_path



@dataclass(frozen=True)
class ModelSpec:
    """One nnU-Net model (a dataset folder with one trainer/plans/configuration)."""

    dataset: int
    folder: str
    release: str  # GitHub release tag, or None for licensed weights
    trainer: str
    plans: str
    configuration: str
    folds: tuple  # None means every fold_* folder found (ensemble)
    classes: dict = None  # model-local label -> class name, for parts of multi-part tasks
    part: str = None

    @property
    def subdir(self):
        return f"{self.trainer}__{self.plans}__{self.configuration}"

    @property
    def licensed(self):
        return self.release is None


@dataclass(frozen=True)
class ModeSpec:
    """A task at one quality: the models to run and the geometry around them."""

    task: str
    quality: str
    models: tuple
    resample: tuple  # target spacing [x, y, z] in mm, or None (nnU-Net resamples itself)
    step_size: float
    crop: tuple = None  # class names of the crop model that define the region
    crop_model: tuple = None  # (task, quality) of the model producing the crop classes
    crop_addon_mm: tuple = None
    robust_crop: bool = False
    remove_outside: dict = None

    @property
    def multi_part(self):
        return len(self.models) > 1


@dataclass(frozen=True)
class TaskSpec:
    name: str
    modality: str
    licensed: bool
    description: str
    classes: dict  # label value -> class name (official values)
    modes: dict  # quality -> ModeSpec
    roi_subset: bool
    allow_fast_flag: bool
    auxiliary_labels: tuple = ()
    postprocessing: str = None
    note: str = None
    extra_datasets: tuple = ()
    qualities: tuple = field(default=())

    def run_quality(self, quality="normal"):
        """The quality whose models run when `quality` is asked for: the one fallback rule,
        the official tool's (every front door and the Slicer panel use it):

        - a quality the task has runs as it is;
        - 'fastest' runs 'fast' where a task has no 6 mm model (body, body_mr);
        - a task with one model runs it for any quality, except that 'fast' is refused
          where the official tool refuses --fast for that task (a clear error, never a
          silent switch the user did not ask for).
        """
        check_quality(quality)
        if quality in self.modes:
            return quality
        if quality == "fastest" and "fast" in self.modes:
            return "fast"
        if quality == "fast" and not self.allow_fast_flag:
            raise UnknownTaskError(f"Task '{self.name}' has no fast mode.", "Run it with quality 'normal'.")
        return "normal"

    def mode(self, quality="normal"):
        """The ModeSpec run for a quality (see run_quality)."""
        return self.modes[self.run_quality(quality)]

    def check_roi_subset(self, roi_subset):
        """The requested structures as a list (None: all), or a clear error for names this
        task does not have or a task that cannot segment a subset."""
        if not roi_subset:
            return None
        if isinstance(roi_subset, str):
            roi_subset = [roi_subset]
        if not self.roi_subset:
            raise UnknownTaskError(f"Task '{self.name}' cannot segment a subset of structures (roi_subset).",
                                   "Use roi_subset with task 'total' (CT) or 'total_mr' (MR), "
                                   "or clear the structure selection.")
        known = set(self.classes.values())
        unknown = [n for n in roi_subset if n not in known]
        if unknown:
            hints = [m for n in unknown for m in difflib.get_close_matches(n, known, n=1)]
            raise UnknownTaskError(f"Task '{self.name}' has no structure named {', '.join(map(repr, unknown))}.",
                                   (f"Did you mean {', '.join(hints)}? " if hints else "")
                                   + f"List them with 'python -m SegmentationLogic classes {self.name}'.")
        return list(roi_subset)

    def class_names(self):
        return [self.classes[k] for k in sorted(self.classes)]

    def label_of(self, name):
        for value, cls in self.classes.items():
            if cls == name:
                return value
        raise KeyError(name)


class Catalogue:
    def __init__(self, data):
        self.data = data
        self.weights_url_template = data["weights_url"]
        self.licensed_weights_url = data["licensed_weights_url"]
        self.license_info_url = data["license_info_url"]
        self.official_version = data["totalsegmentator_version"]  # the release whose results the engine matches
        self.total_v1_classes = {int(k): v for k, v in data["total_v1_classes"].items()}  # --v1_order
        self.datasets = {int(k): v for k, v in data["datasets"].items()}
        self._tasks = {name: self._task(name, t) for name, t in data["tasks"].items()}

    def _model(self, m):
        ds = self.datasets[m["dataset"]]
        classes = {int(k): v for k, v in m["classes"].items()} if "classes" in m else None
        return ModelSpec(m["dataset"], ds["folder"], ds["release"], m["trainer"], m["plans"], m["configuration"],
                         tuple(m["folds"]) if m["folds"] is not None else None, classes, m.get("part"))

    def _task(self, name, t):
        modes = {}
        for quality, m in t["modes"].items():
            crop_model = (m["crop_model"]["task"], m["crop_model"]["mode"]) if m.get("crop_model") else None
            modes[quality] = ModeSpec(
                task=name, quality=quality, models=tuple(self._model(x) for x in m["models"]),
                resample=tuple(m["resample"]) if m["resample"] else None, step_size=m["step_size"],
                crop=tuple(m["crop"]) if m.get("crop") else None, crop_model=crop_model,
                crop_addon_mm=tuple(m["crop_addon_mm"]) if m.get("crop_addon_mm") else None,
                robust_crop=m.get("robust_crop", False), remove_outside=m.get("remove_outside"))
        return TaskSpec(
            name=name, modality=t["modality"], licensed=t["licensed"], description=t["description"],
            classes={int(k): v for k, v in t["classes"].items()}, modes=modes, roi_subset=t["roi_subset"],
            allow_fast_flag=t["allow_fast_flag"], auxiliary_labels=tuple(t.get("auxiliary_labels", ())),
            postprocessing=t.get("postprocessing"), note=t.get("note"),
            extra_datasets=tuple(t.get("extra_datasets", ())), qualities=tuple(q for q in QUALITIES if q in modes))

    # -- queries -------------------------------------------------------------------
    def task_names(self):
        return list(self._tasks)

    def tasks(self):
        return list(self._tasks.values())

    def task(self, name):
        try:
            return self._tasks[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._tasks, n=3)
            hint = f"Did you mean {', '.join(close)}? " if close else ""
            raise UnknownTaskError(f"Unknown task '{name}'.",
                                   f"{hint}Run 'python -m SegmentationLogic list-tasks' for all tasks.") from None

    def model(self, dataset, trainer=None, plans="nnUNetPlans", configuration="3d_fullres"):
        """A ModelSpec by dataset id (first use in the catalogue if trainer is not given)."""
        for task in self._tasks.values():
            for mode in task.modes.values():
                for m in mode.models:
                    if m.dataset == dataset and (trainer is None or m.trainer == trainer):
                        return m
        raise KeyError(dataset)

    def weights_url(self, dataset):
        ds = self.datasets[dataset]
        if ds["release"] is None:
            return None
        return self.weights_url_template.format(release=ds["release"], folder=ds["folder"])


@functools.lru_cache(maxsize=1)
def load_catalogue():
    with open(resource_path("tasks.json"), encoding="utf-8") as f:
        return Catalogue(json.load(f))
