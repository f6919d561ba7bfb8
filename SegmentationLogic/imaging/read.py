"""Reading an input image: one entry point for every format.

`load_image(path)` returns a nibabel image that is exactly what the official
TotalSegmentator tool feeds into its pipeline for the same input:

- NIfTI (.nii, .nii.gz): the image as nibabel loads it (lazy, header untouched).
- DICOM folder, file or zip of one series: as the official dicom2nifti conversion
  makes it (dicom.py, archive.py).
- NRRD / MetaImage (.nrrd, .nhdr, .mha, .mhd): as ITK's NIfTI writer would (itk_files.py).

`check_input(path)` is what can be known cheaply before any work (before weights are
downloaded): the input exists, can be read, is not empty, and a NIfTI / NRRD / MetaImage
header gives a usable voxel size (nifti.py, itk_files.py: what nibabel and ITK would
silently replace with 1 mm is refused). `load_image` runs it too.

4D images: a trailing axis of length 1 is dropped as the official tool does (`[..., 0]`).
A real 4D image (several volumes) is refused by `check_image` with the number of volumes
and how to pick one (`select_volume`): silently segmenting the first phase or echo of a
multi-volume series is not what a clinician expects.
"""
import os
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import InputImageError
from ..progress import Reporter
from ..system.files import file_error
from .archive import load_dicom_zip
from .checks import check_image
from .dicom import SUPPORTED, is_dicom_file, load_dicom_file, load_dicom_folder
from .itk_files import check_itk_header, load_itk
from .nifti import check_header, load_nifti

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")


def load_image(path, progress=None, series_uid=None, available_bytes=None):
    """Read an input image (see module docstring) and return a nibabel image.

    `series_uid` picks one series of a DICOM folder that holds several.
    `available_bytes` overrides the memory this machine has (for the size check made
    before pixel data is read).
    """
    if isinstance(path, nib.spatialimages.SpatialImage):
        return as_3d(path)
    path = check_input(path)
    report = Reporter(progress, "load")
    report(0.0, f"reading {path.name}")
    name = path.name.lower()
    if path.is_dir():
        img = load_dicom_folder(path, progress, series_uid, available_bytes)
    elif name.endswith(NIFTI_SUFFIXES):
        img = load_nifti(path)
    elif name.endswith(ITK_SUFFIXES):
        img = load_itk(path, available_bytes)
    elif name.endswith(".zip") or zipfile.is_zipfile(path):
        img = load_dicom_zip(path, progress, series_uid, available_bytes)
    elif is_dicom_file(path):
        img = load_dicom_file(path, progress, series_uid, available_bytes)
    else:
        raise InputImageError(f"Unsupported input format: {path.name}",
                              f"Give {SUPPORTED}. In Slicer, save the volume as .nrrd or .nii.gz first.")
    report(1.0, f"read {path.name}: {'x'.join(map(str, img.shape))}")
    return as_3d(img)


def check_input(path):
    """The cheap checks made before any work (see module docstring); returns the path."""
    path = Path(path).expanduser()
    if not path.exists():
        raise InputImageError(f"Input image not found: {path}", f"Check the path. Supported inputs: {SUPPORTED}.")
    try:
        if path.is_dir():
            os.listdir(path)
            return path
        with open(path, "rb") as f:
            empty = not f.read(1)
    except OSError as e:
        raise file_error(e, path, reading=True) from None
    if empty:
        raise InputImageError(f"The input {path.name} is empty (0 bytes).",
                              "The file was not saved or copied completely: export or copy it again.")
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        check_header(path)
    elif name.endswith(ITK_SUFFIXES):
        check_itk_header(path)
    return path


def open_input(source, progress=None, series_uid=None, target_spacing=None, n_classes=None, available_bytes=None):
    """`load_image` then `check_image`: (image ready for the pipeline, warnings).

    `source` is a path or a nibabel image; see `check_image` for the other arguments.
    """
    img = load_image(source, progress=progress, series_uid=series_uid, available_bytes=available_bytes)
    return img, check_image(img, target_spacing=target_spacing, n_classes=n_classes,
                            available_bytes=available_bytes)


def as_3d(img):
    """Drop trailing axes of length 1 ((x,y,z,1) -> (x,y,z)) the way the official tool
    does (`Nifti1Image(get_fdata()[..., 0], affine)`, a fresh header). Images with
    several volumes are returned unchanged, for `check_image` to refuse."""
    if len(img.shape) > 3 and all(n == 1 for n in img.shape[3:]):
        return select_volume(img, 0)
    return img


def select_volume(img, index):
    """Volume `index` of a 4D image, as the official tool takes volume 0 of a 4D input."""
    n = int(np.prod(img.shape[3:]))
    if not 0 <= index < n:
        raise InputImageError(f"Volume {index} does not exist: the image has {n} volume(s).",
                              f"Pick a volume between 0 and {n - 1}.")
    data = np.asanyarray(img.dataobj).reshape(img.shape[:3] + (n,))[..., index]
    return nib.Nifti1Image(data.astype(np.float64), img.affine)
