"""Where the DICOM outputs of a run go: DICOM SEG (dicom_seg.py) and RTSTRUCT (rtstruct.py).

`--output_type nifti|dicom_seg|dicom_rtstruct` (several at once, comma or space
separated; `dicom` means `dicom_rtstruct`, as in the official tool; parsed by
`request.normalize_output_types`). File names follow the official tool:
- one DICOM type: `-o` is the file (an existing folder gets `<task>_segmentation_seg.dcm`
  or `_rtstruct.dcm` in it);
- several types: `-o` folder -> `<folder>/<task>_segmentation{.nii.gz,_seg.dcm,_rtstruct.dcm}`,
  `-o path/name.ext` -> `path/name{.nii.gz,_seg.dcm,_rtstruct.dcm}`;
- the NIfTI of a run with a DICOM output is the multilabel file; statistics.json and the
  preview go beside the files.
DICOM output needs a DICOM input (folder, zip or file of the series): `plan_outputs`
refuses anything else before inference, and reads the source series' headers then.

Needs the optional `dicom` extra (pydicom, highdicom); imported only when asked for.
"""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..request import DICOM_OUTPUT_TYPES, normalize_output_types
from .dicom_seg import write_seg
from .dicom_source import DicomOutputError, is_dicom_input, read_source_series, require_dicom_extra
from .rtstruct import write_rtstruct

SUFFIX = {"dicom_seg": "_seg.dcm", "dicom_rtstruct": "_rtstruct.dcm"}


@dataclass
class OutputPlan:
    """Where each output of a run with a DICOM output goes, and the source series."""

    types: list
    directory: Path  # statistics.json and the preview go here
    nifti: Optional[Path] = None  # the multilabel NIfTI, when asked for
    dicom: dict = field(default_factory=dict)  # output type -> file
    series: object = None  # dicom_source.SourceSeries

    @property
    def main_path(self):
        """The file the engine's writer treats as its output (NIfTI, else the first DICOM file)."""
        return self.nifti or next(iter(self.dicom.values()))

    def write(self, writer, labelmap, class_map, task, note=None, progress=None):
        """Write the DICOM files through `writer` (temporary names until the run commits)."""
        labels = np.asanyarray(labelmap.dataobj)
        description = f"TotalSegmentator {task}" + (f" - {note}" if note else "")
        for kind, path in self.dicom.items():
            if progress is not None:
                progress("save", None, f"writing {kind} {path.name}")
            tmp = writer.path(path, ".dcm")  # renamed when the whole run's files are complete
            write = write_seg if kind == "dicom_seg" else write_rtstruct
            write(tmp, labels, labelmap.affine, class_map, self.series, task, description=description)


def plan_outputs(source, output, output_types, task, progress=None):
    """None for NIfTI-only runs; otherwise the OutputPlan, checked before any inference.

    Raises DicomOutputError (cause + fix) for a non-DICOM input, a missing output path,
    or a missing `dicom` extra."""
    types = normalize_output_types(output_types)
    if not any(t in DICOM_OUTPUT_TYPES for t in types):
        return None
    wanted = ", ".join(t for t in types if t in DICOM_OUTPUT_TYPES)
    if not is_dicom_input(source):
        what = "an in-memory image" if not isinstance(source, (str, Path)) else Path(str(source)).name
        raise DicomOutputError(
            f"--output_type {wanted} needs a DICOM input (a folder, zip or file of the series), but the input "
            f"is {what}: a DICOM SEG or RTSTRUCT must refer to the source images.",
            "Segment the original DICOM series, or choose --output_type nifti.")
    if output is None:
        raise DicomOutputError(f"--output_type {wanted} needs an output path.", "Give -o with the file to write.")
    require_dicom_extra()
    output = Path(output)
    if len(types) == 1:
        kind = types[0]
        path = output / f"{task}_segmentation{SUFFIX[kind]}" if output.is_dir() else output
        plan = OutputPlan(types, path.parent, dicom={kind: path})
    else:
        directory = output if output.is_dir() else output.parent
        base = f"{task}_segmentation" if output.is_dir() else output.name.split(".")[0]
        plan = OutputPlan(types, directory, nifti=directory / f"{base}.nii.gz" if "nifti" in types else None,
                          dicom={t: directory / f"{base}{SUFFIX[t]}" for t in types if t in DICOM_OUTPUT_TYPES})
    plan.series = read_source_series(source, progress)
    for warning in plan.series.warnings:
        if progress is not None:
            progress.log(warning, "warning")
    return plan

