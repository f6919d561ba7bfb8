"""Reading vessel and support masks, and writing the split's files (atomically).

Masks are NIfTI (or anything nibabel reads). All masks of one split must share the
vessel mask's grid (shape and affine): masks from the same CT always do, and a mask
from another image would give a silently wrong split, so a mismatch is an error that
names both files. The split runs in RAS-canonical array order (axis 2 inferior to
superior) and the outputs are written back in the vessel file's own orientation.
"""
import json
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import InputImageError
from ..imaging import orientation
from ..system import files
from ..system.files import atomic_path, json_safe  # noqa: F401 (json_safe: vessel review)

OUTPUT_FILES = {
    "portal": "portal_vein_branches.nii.gz",
    "hepatic": "hepatic_veins.nii.gz",
    "labeled": "liver_vessels_labeled.nii.gz",
    "skeleton": "liver_vessels_skeleton_labeled.nii.gz",
    "confidence": "liver_vessels_split_confidence.nii.gz",
    "enhanced": "enhanced_liver_vessels.nii.gz",
    "metadata": "enhanced_liver_vessels_metadata.json",
}
SUPPORT_FILES = {
    "liver": "liver.nii.gz",
    "portal_trunk": "portal_vein_and_splenic_vein.nii.gz",
    "ivc": "inferior_vena_cava.nii.gz",
}
SUPPORT_NAMES = {"vessels": "vessel mask", "liver": "liver mask", "portal_trunk": "portal trunk mask",
                 "ivc": "IVC mask"}
AFFINE_TOLERANCE_MM = 1e-3
LIVER_VESSELS_TUMOUR_LABEL = 2


class VesselInputError(InputImageError):
    """A vessel or support mask cannot be used as given (empty, missing, other geometry)."""


def load_image(path, what):
    """nibabel image of a 3D mask; clear errors for a missing, unreadable, 2D or 4D file."""
    path = Path(path)
    name = SUPPORT_NAMES.get(what, what)
    if not path.exists():
        raise VesselInputError(f"The {name} file does not exist: {path}",
                               f"Check the path, or leave the {name} out (the split then falls back on anatomy "
                               "and says so in its warnings).")
    try:
        img = nib.load(str(path))
    except Exception as e:
        raise VesselInputError(f"The {name} file {path} cannot be read as an image ({e}).",
                               "Pass a NIfTI file (.nii or .nii.gz), e.g. a TotalSegmentator output.") from e
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        img = img.slicer[..., 0]
    elif len(shape) != 3:
        raise VesselInputError(f"The {name} {path} is {len(shape)}D (shape {shape}); a 3D mask is needed.",
                               "Pass the 3D mask exactly as the segmentation wrote it.")
    if min(img.shape) < 2:
        raise VesselInputError(f"The {name} {path} is a single slice (shape {img.shape}); a 3D mask is needed.",
                               "Segment the whole 3D image, not one slice.")
    return img


def check_same_grid(ref_img, img, ref_path, path, what):
    """Raise unless `img` has the vessel mask's shape and affine."""
    name = SUPPORT_NAMES.get(what, what)
    same_shape = tuple(img.shape) == tuple(ref_img.shape)
    same_affine = np.allclose(img.affine, ref_img.affine, atol=AFFINE_TOLERANCE_MM)
    if same_shape and same_affine:
        return
    sp_ref = np.round(np.linalg.norm(ref_img.affine[:3, :3], axis=0), 3).tolist()
    sp = np.round(np.linalg.norm(img.affine[:3, :3], axis=0), 3).tolist()
    raise VesselInputError(
        f"The {name} {path} has another geometry than the vessel mask {ref_path} "
        f"(shape {tuple(img.shape)} vs {tuple(ref_img.shape)}, spacing {sp} vs {sp_ref} mm"
        f"{'' if same_affine or not same_shape else ', same shape but a different position or orientation'}).",
        "Use masks computed from the same CT (TotalSegmentator writes every mask in the input's geometry), "
        "or resample this mask onto the vessel mask's grid first.")


def to_canonical(img):
    """(array in RAS-canonical axis order, canonical affine, spacing) of a 3D image."""
    data, affine = orientation.to_canonical(np.asanyarray(img.dataobj), img.affine)
    return data, affine, np.linalg.norm(affine[:3, :3], axis=0)


def from_canonical(data, ref_img):
    """Array in canonical order back to the axis order of `ref_img`."""
    return orientation.from_canonical(data, ref_img.affine)


def ras_to_ijk(points_ras, affine):
    """RAS points (n, 3) in mm -> fractional array indices for `affine`."""
    pts = np.atleast_2d(np.asarray(points_ras, float))
    if pts.size == 0:
        return np.zeros((0, 3))
    homo = np.c_[pts, np.ones(len(pts))]
    return (np.linalg.inv(affine) @ homo.T).T[:, :3]


def vessel_array(img, path, notes):
    """Binary vessel mask from a vessel file. A liver_vessels multilabel result (1 vessels,
    2 tumour) keeps label 1; the tumour is not a vessel and is noted."""
    data = np.asanyarray(img.dataobj)
    values = np.unique(data[data != 0]) if data.any() else np.array([])
    if len(values) == 2 and set(np.round(values).astype(int)) == {1, LIVER_VESSELS_TUMOUR_LABEL}:
        notes.append(f"{path} holds vessels (1) and liver tumour (2): only label 1 is split.")
        return data == 1
    return data > 0


def load_masks(vessels, liver=None, portal_trunk=None, ivc=None):
    """Load and check the masks; returns (ref_img, {name: canonical bool array or None}, spacing,
    canonical affine, notes). Missing optional masks are None."""
    notes = []
    ref = load_image(vessels, "vessels")
    arrays = {}
    can = None
    spacing = None
    for what, path in (("vessels", vessels), ("liver", liver), ("portal_trunk", portal_trunk), ("ivc", ivc)):
        if path is None:
            arrays[what] = None
            continue
        img = ref if what == "vessels" else load_image(path, what)
        if what != "vessels":
            check_same_grid(ref, img, vessels, path, what)
        raw = vessel_array(img, path, notes) if what == "vessels" else np.asanyarray(img.dataobj) > 0
        data, can, spacing = to_canonical(nib.Nifti1Image(raw.astype(np.uint8), img.affine))
        arrays[what] = data > 0
    return ref, arrays, spacing, can, notes


# ---------------------------------------------------------------------------------------
# writing

def write_nifti(data, ref_img, path, dtype=np.uint8):
    """Write `data` (in ref_img's axis order) with ref_img's geometry, atomically."""
    path = Path(path)
    header = ref_img.header.copy()
    header.set_data_dtype(dtype)
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), ref_img.affine, header)
    img.set_qform(ref_img.affine, code=1)
    img.set_sform(ref_img.affine, code=1)
    with atomic_path(path, ".nii.gz") as tmp:
        nib.save(img, tmp)
    return path


def write_json(data, path):
    return files.write_json(data, path, indent=2)


def read_metadata(out_dir):
    path = Path(out_dir) / OUTPUT_FILES["metadata"]
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def write_split_files(out_dir, labels, ref_img, skeleton_labels=None, labeled_only=False, confidence=None):
    """Write the split's NIfTI files (arrays in ref_img's axis order); returns their paths.

    labeled_only: liver_vessels_labeled.nii.gz instead of the per-class files (stale
    per-class files are removed). `confidence` (float, 0.5-1.0 on vessel voxels, 0
    elsewhere) goes to liver_vessels_split_confidence.nii.gz in either case: it belongs to
    the split the way the skeleton does."""
    out_dir = Path(out_dir)
    files = [write_nifti(labels, ref_img, out_dir / OUTPUT_FILES["labeled"])]
    for key, value in (("portal", 1), ("hepatic", 2)):
        path = out_dir / OUTPUT_FILES[key]
        if labeled_only:
            if path.exists():
                path.unlink()
            continue
        files.append(write_nifti(labels == value, ref_img, path))
    if skeleton_labels is not None:
        files.append(write_nifti(skeleton_labels, ref_img, out_dir / OUTPUT_FILES["skeleton"]))
    if confidence is not None:
        files.append(write_nifti(confidence, ref_img, out_dir / OUTPUT_FILES["confidence"], dtype=np.float32))
    return files


def mask_metadata(mask, spacing):
    voxels = int(np.count_nonzero(mask))
    voxel_volume = float(np.prod(spacing))
    return {"voxels": voxels, "voxel_volume_mm3": voxel_volume, "volume_mm3": voxels * voxel_volume}
