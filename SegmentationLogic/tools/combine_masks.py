"""`combine-masks`: one mask from several classes, e.g. the whole lung from its five lobes.

As the official `totalseg_combine_masks`: the input is a folder of per-class masks (every
mask of the group must be there) or a multilabel file with its label table; the output is
a uint8 0/1 image on the input grid (`--multilabel`: with a label table naming value 1).
Groups are the official ones; `-m` also takes class names (`-m liver,spleen`). The
official `heart` choice has no group and crashes; here it is the total task's `heart` class.
"""
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import SegmentationError
from ..outputs.labelmap import label_table_xml, read_label_table

RIBS = [f"rib_left_{i}" for i in range(1, 13)] + [f"rib_right_{i}" for i in range(1, 13)]
VERTEBRAE = (["sacrum", "vertebrae_S1"] + [f"vertebrae_L{i}" for i in range(5, 0, -1)]
             + [f"vertebrae_T{i}" for i in range(12, 0, -1)] + [f"vertebrae_C{i}" for i in range(7, 0, -1)])
GROUPS = {
    "lung": ["lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right", "lung_middle_lobe_right",
             "lung_lower_lobe_right"],
    "lung_left": ["lung_upper_lobe_left", "lung_lower_lobe_left"],
    "lung_right": ["lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right"],
    "vertebrae": VERTEBRAE,
    "ribs": RIBS,
    "vertebrae_ribs": VERTEBRAE + RIBS,
    "heart": ["heart"],
    "pelvis": ["femur_left", "femur_right", "hip_left", "hip_right"],
    "body": ["body_trunc", "body_extremities"],
}


class CombineMasksError(SegmentationError):
    kind = "input"


def classes_of(masks):
    """Group name or comma-separated class names -> class names."""
    if masks in GROUPS:
        return list(GROUPS[masks])
    names = [m.strip() for m in str(masks).split(",") if m.strip()]
    if not names:
        raise CombineMasksError("No classes to combine.", f"Use one of {', '.join(GROUPS)} or class names.")
    return names


def combine_masks(source, masks, multilabel=False):
    """The combined mask as a nibabel image (see module docstring)."""
    source = Path(source)
    names = classes_of(masks)
    if source.is_file():
        img = nib.load(str(source))
        table = read_label_table(img)
        if not table:
            raise CombineMasksError(f"{source.name} has no label table, so its classes are unknown.",
                                    "Give a multilabel file written by TotalSegmentator or this engine, or a "
                                    "folder of per-class masks.")
        inverse = {v: k for k, v in table.items()}
        missing = [n for n in names if n not in inverse]
        if missing:
            raise CombineMasksError(f"{source.name} has no class {', '.join(missing)}.",
                                    "Segment with a task that has these classes (e.g. total), or pick others.")
        data = np.asanyarray(img.dataobj)
        combined = np.isin(data, [inverse[n] for n in names]).astype(np.uint8)
        affine = img.affine
    elif source.is_dir():
        missing = [n for n in names if not (source / f"{n}.nii.gz").exists()]
        if missing:
            raise CombineMasksError(f"Masks missing in {source}: {', '.join(m + '.nii.gz' for m in missing)}.",
                                    "Run the segmentation without --ml (one file per class) for a task that has "
                                    "these classes, or give its multilabel file.")
        first = nib.load(str(source / f"{names[0]}.nii.gz"))
        combined = np.zeros(first.shape, np.uint8)
        for n in names:
            combined[np.asanyarray(nib.load(str(source / f"{n}.nii.gz")).dataobj) > 0.5] = 1
        affine = first.affine
    else:
        raise CombineMasksError(f"Not found: {source}", "Give a folder of masks or a multilabel .nii.gz file.")
    out = nib.Nifti1Image(combined, affine)
    if multilabel:
        out.header.extensions.append(nib.nifti1.Nifti1Extension(0, label_table_xml({1: str(masks)}).encode()))
    return out
