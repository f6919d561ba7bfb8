"""The one contract of a segmentation run: a typed request in, a typed result out.

Every front door builds a `SegmentRequest` and gets a `SegmentResult` back: the CLI (from
its flags), the Python API (from keyword arguments), the persistent worker and the HTTP
server (from JSON), the Slicer job, the batch script and the cohort runner. Requests and
results travel as JSON between processes (`to_json` / `from_json`); nothing goes through
an argv round trip.
"""
from dataclasses import asdict, dataclass, field, fields
from pathlib import PurePath
from typing import Optional

from .errors import SegmentationError, UnknownTaskError

QUALITIES = ("normal", "fast", "fastest")
# fields naming files or folders (where the run reads or writes); a server decides these itself
PATH_FIELDS = ("output", "weights_dir", "statistics_file", "save_probabilities", "report")


def quality_from_flags(fast=False, fastest=False):
    """The official `--fast` / `--fastest` flags as a quality name (the only place that maps them)."""
    return "fastest" if fastest else ("fast" if fast else "normal")


def flags_for_quality(quality):
    """The official CLI flags for a quality name: [] | ["--fast"] | ["--fastest"]."""
    check_quality(quality)
    return [] if quality == "normal" else [f"--{quality}"]


def check_quality(quality):
    if quality not in QUALITIES:
        raise UnknownTaskError(f"Unknown quality '{quality}'.", f"Use one of: {', '.join(QUALITIES)}.")
    return quality


class BadRequestError(SegmentationError):
    """A request that cannot be run as it stands (unknown field, wrong type)."""

    kind = "request"


OUTPUT_TYPES = ("nifti", "dicom_seg", "dicom_rtstruct")
DICOM_OUTPUT_TYPES = ("dicom_seg", "dicom_rtstruct")
_OUTPUT_TYPE_ALIASES = {"dicom": "dicom_rtstruct"}  # the official tool's backward-compatible name
STATS_AGGREGATIONS = ("mean", "median")
MODEL_SIZES = ("big", "small")
SMALL_BLOB_MM3 = 200.0  # official --remove_small_blobs default


def normalize_output_types(values):
    """['nifti,dicom_seg', 'dicom'] -> ['nifti', 'dicom_seg', 'dicom_rtstruct'] (checked, no repeats), as the
    official CLI reads `--output_type`."""
    if values is None:
        return ["nifti"]
    if isinstance(values, str):
        values = [values]
    out = []
    for value in values:
        for name in str(value).split(","):
            name = _OUTPUT_TYPE_ALIASES.get(name.strip(), name.strip())
            if not name:
                continue
            if name not in OUTPUT_TYPES:
                raise BadRequestError(f"Unknown output type {name!r}.", f"Use one or more of: {', '.join(OUTPUT_TYPES)}.")
            if name not in out:
                out.append(name)
    return out or ["nifti"]


def _choice(name, value, choices):
    if value not in choices:
        raise BadRequestError(f"Unknown {name} {value!r}.", f"Use one of: {', '.join(map(str, choices))}.")
    return value


@dataclass
class SegmentRequest:
    """What to segment and how; field names follow the official tool's options.

    As in the official Python API, `statistics` may be a file path (statistics on, written
    there: stored as `statistics_file`) and `remove_small_blobs` a size in mm3 (stored as
    `remove_small_blobs_mm3`); on the wire both are plain booleans plus those fields."""

    input: str  # image file, DICOM folder or zip (the Python API also takes a nibabel image)
    output: Optional[str] = None  # None: nothing written; a .nii.gz with `ml`, else a folder
    task: str = "total"
    quality: str = "normal"  # normal | fast (3 mm) | fastest (6 mm)
    roi_subset: Optional[list] = None
    device: str = "auto"  # auto | cpu | cuda[:N] | gpu[:N] | mps
    ml: bool = True
    statistics: bool = False
    preview: bool = False
    body_seg: bool = False
    force_split: bool = False
    remove_small_blobs: bool = False
    robust_crop: bool = False
    weights_dir: Optional[str] = None
    download: bool = True
    check_modality: bool = True
    overwrite: bool = False  # replace existing files that are not results of ours (outputs/ownership.py)
    deterministic: bool = False  # GPU: no cuDNN autotuning, deterministic algorithms (CPU: always reproducible)
    output_types: list = field(default_factory=lambda: ["nifti"])  # nifti | dicom_seg | dicom_rtstruct
    statistics_extra: bool = False  # n_voxels, intensity std/min/max, centroid and bounding box
    stats_aggregation: str = "mean"  # mean | median
    stats_include_incomplete: bool = False  # also classes touching the image border
    statistics_file: Optional[str] = None  # -s PATH: statistics.json written there
    remove_small_blobs_mm3: float = SMALL_BLOB_MM3  # -rmb MM3
    resampling_order: int = 1  # -ro: spline order of the input resampling (0-5)
    higher_order_resampling: bool = False  # -ho: nnU-Net resamples (order 3 in, logits out)
    higher_order_resampling_legacy: bool = False  # smooth (order 1, one-hot) upsampling of the labelmap
    save_lowres: bool = False  # -sl: with fast/fastest, the labelmap at the model resolution
    v1_order: bool = False  # -v1o: task total with the label values of TotalSegmentator v1
    no_derived_masks: bool = False  # -ndm: task body per class without body.nii.gz and skin.nii.gz
    skip_saving: bool = False  # -ss: no segmentation files (statistics, report, ... still written)
    save_probabilities: Optional[str] = None  # -sp PATH: nnU-Net's probabilities (.npz) and properties (.pkl)
    radiomics: bool = False  # -r: statistics_radiomics.json (pyradiomics)
    report: Optional[str] = None  # -rp PATH: a JSON manifest of the run
    model_size: str = "big"  # -ms: small = the total_v3 ResEnc-L models

    def __post_init__(self):
        check_quality(self.quality)
        if self.roi_subset is not None:
            self.roi_subset = [str(c) for c in self.roi_subset] or None
        if isinstance(self.statistics, (str, PurePath)):  # official API: statistics=<path>
            self.statistics_file, self.statistics = str(self.statistics), True
        if not isinstance(self.remove_small_blobs, bool) and isinstance(self.remove_small_blobs, (int, float)):
            self.remove_small_blobs_mm3, self.remove_small_blobs = float(self.remove_small_blobs), True
        if self.statistics_file is not None:
            self.statistics_file, self.statistics = str(self.statistics_file), True
        self.output_types = normalize_output_types(self.output_types)
        _choice("statistics aggregation", self.stats_aggregation, STATS_AGGREGATIONS)
        _choice("model size", self.model_size, MODEL_SIZES)
        if isinstance(self.resampling_order, bool) or not isinstance(self.resampling_order, int) \
                or not 0 <= self.resampling_order <= 5:
            raise BadRequestError(f"Invalid resampling order {self.resampling_order!r}.",
                                  "Use a spline order from 0 to 5 (default 1).")
        if isinstance(self.remove_small_blobs_mm3, bool) or not isinstance(self.remove_small_blobs_mm3, (int, float)) \
                or not self.remove_small_blobs_mm3 > 0:
            raise BadRequestError(f"Invalid blob size {self.remove_small_blobs_mm3!r} mm3.",
                                  "Give a positive number of mm3 (default 200).")
        self.remove_small_blobs_mm3 = float(self.remove_small_blobs_mm3)

    def to_json(self):
        data = asdict(self)
        if not isinstance(data["input"], str):  # an in-memory image cannot travel
            raise BadRequestError("Only a request whose input is a path can be sent to another process.",
                                  "Save the image to a file first.")
        for key in PATH_FIELDS:
            if data[key] is not None:
                data[key] = str(data[key])
        return data

    @classmethod
    def from_json(cls, data):
        if not isinstance(data, dict):
            raise BadRequestError(f"A segment request must be a JSON object, not {type(data).__name__}.",
                                  "Send the fields of SegmentRequest as one object.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise BadRequestError(f"Unknown segment request field(s): {', '.join(unknown)}.",
                                  f"Known fields: {', '.join(sorted(known))}.")
        if "input" not in data:
            raise BadRequestError("A segment request needs an 'input'.", "Give the path of the image to segment.")
        for f in fields(cls):
            if f.name in data and f.type is bool and not isinstance(data[f.name], bool):
                raise BadRequestError(f"Segment request field '{f.name}' must be true or false.",
                                      "Send a JSON boolean.")
        return cls(**data)


@dataclass
class SegmentResult:
    """What a run produced. `labelmap` stays in the process; the rest travels as JSON."""

    labelmap: object = None  # nibabel image in the input geometry, official label values
    class_map: dict = field(default_factory=dict)  # {label value: class name} of labels that may occur
    statistics: Optional[dict] = None
    files: list = field(default_factory=list)
    model_note: Optional[str] = None  # e.g. "TEST MODEL ..." when the weights are test models
    timings: dict = field(default_factory=dict)

    @property
    def array(self):
        import numpy as np  # the contract itself needs no numpy: remote clients import it without

        return np.asanyarray(self.labelmap.dataobj)

    def to_json(self):
        """The `result` event payload (CLI `--progress json`, worker, server)."""
        return {"files": [str(f) for f in self.files], "note": self.model_note, "classes": len(self.class_map),
                "class_map": {str(k): v for k, v in sorted(self.class_map.items())}, "timings": self.timings,
                "statistics": self.statistics}

    @classmethod
    def from_json(cls, data):
        return cls(class_map={int(k): v for k, v in (data.get("class_map") or {}).items()},
                   statistics=data.get("statistics"), files=list(data.get("files") or []),
                   model_note=data.get("note"), timings=dict(data.get("timings") or {}))
