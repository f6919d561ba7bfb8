"""The one contract of a segmentation run: a typed request in, a typed result out.

Every front door builds a `SegmentRequest` and gets a `SegmentResult` back: the CLI (from
its flags), the Python API (from keyword arguments), the persistent worker and the HTTP
server (from JSON), the Slicer job, the batch script and the cohort runner. Requests and
results travel as JSON between processes (`to_json` / `from_json`); nothing goes through
an argv round trip.
"""
from dataclasses import asdict, dataclass, field, fields
from typing import Optional

from .errors import SegmentationError

QUALITIES = ("normal", "fast", "fastest")


def quality_from_flags(fast=False, fastest=False):
    """The official `--fast` / `--fastest` flags as a quality name (the only place that maps them)."""
    return "fastest" if fastest else ("fast" if fast else "normal")


def flags_for_quality(quality):
    """The official CLI flags for a quality name: [] | ["--fast"] | ["--fastest"]."""
    check_quality(quality)
    return [] if quality == "normal" else [f"--{quality}"]


def check_quality(quality):
    if quality not in QUALITIES:
        raise SegmentationError(f"Unknown quality {quality!r}.", f"Use one of: {', '.join(QUALITIES)}.")
    return quality


class BadRequestError(SegmentationError):
    """A request that cannot be run as it stands (unknown field, wrong type)."""

    kind = "request"


@dataclass
class SegmentRequest:
    """What to segment and how; field names follow the official tool's options."""

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
    output_types: list = field(default_factory=lambda: ["nifti"])  # nifti | dicom_seg | dicom_rtstruct
    statistics_extra: bool = False
    stats_aggregation: str = "mean"  # mean | median
    stats_include_incomplete: bool = False

    def __post_init__(self):
        check_quality(self.quality)
        if self.roi_subset is not None:
            self.roi_subset = [str(c) for c in self.roi_subset] or None

    def to_json(self):
        data = asdict(self)
        if not isinstance(data["input"], str):  # an in-memory image cannot travel
            raise BadRequestError("Only a request whose input is a path can be sent to another process.",
                                  "Save the image to a file first.")
        for key in ("output", "weights_dir"):
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
        import numpy as np

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
