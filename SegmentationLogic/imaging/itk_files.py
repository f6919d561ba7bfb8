"""NRRD and MetaImage files (.nrrd, .nhdr, .mha, .mhd) read with SimpleITK, as NIfTI images.

ITK's LPS geometry becomes the RAS affine NIfTI uses, voxel order kept as in the file:
the same image ITK's own NIfTI writer would produce. The affine is rounded through
float32, as a NIfTI file stores it (the official tool reads every input from NIfTI).
(The official tool cannot read these formats.)

ITK replaces a missing or unusable voxel spacing with 1 mm without a word (an NRRD
without "space directions"/"spacings" or with NaN in them, a MetaImage without
ElementSpacing, a negative spacing made positive). `check_itk_header` reads the text
header first and refuses those, so a volume is never segmented at an invented scale.
"""
import math
import re
from pathlib import Path

import numpy as np
import nibabel as nib

from ..errors import InputImageError
from ..system.files import file_error
from .checks import check_fits
from .nifti import looks_like

HEADER_BYTES = 65536
_SPACING_FIX = ("Set the voxel spacing in the header (Slicer: load it, Volumes module > Volume Information, "
                "then save) or export the image again from its source.")


def nifti_from_itk(array_xyz, direction, spacing, origin, dim=3):
    """Nifti image of ITK geometry (LPS) as ITK's NIfTI writer makes it: RAS affine,
    qform = sform (code 1, scanner), units mm and s."""
    d = np.array(direction, dtype=float).reshape(dim, dim)[:3, :3]
    affine = np.eye(4)
    affine[:3, :3] = d * np.array(spacing[:3], dtype=float)
    affine[:3, 3] = origin[:3]
    affine[:2] *= -1  # LPS -> RAS
    affine = float32_affine(affine)
    img = nib.Nifti1Image(array_xyz, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    return img


def float32_affine(affine):
    # The official path writes the converted image to NIfTI and loads it back: the
    # sform is stored as float32.
    return np.asarray(affine, dtype=np.float32).astype(np.float64)


def error_line(e):
    """The last line of an ITK error: the part that names the problem."""
    text = str(e).strip().splitlines()
    return text[-1] if text else type(e).__name__


def execute(reader, name, fix):
    """`reader.Execute()` with an ITK error as InputImageError: the voxel data of `name` cannot be read."""
    try:
        return reader.Execute()
    except RuntimeError as e:
        raise InputImageError(f"Cannot read the voxel data of {name}: {error_line(e)}", fix) from e


def _header_text(path, nrrd):
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
    except OSError as e:
        raise file_error(e, path, reading=True) from None
    if nrrd:
        if not raw.startswith(b"NRRD"):
            raise InputImageError(f"{path.name} is not an NRRD image: it is {looks_like(raw)}.",
                                  "Give the image as NRRD, NIfTI, MetaImage, a DICOM folder or zip.")
        raw = re.split(rb"\r?\n\r?\n", raw, maxsplit=1)[0]  # the header ends at the first blank line
    else:
        end = re.search(rb"ElementDataFile\s*=[^\n]*", raw)
        if end is None:
            raise InputImageError(f"{path.name} is not a MetaImage: it is {looks_like(raw)} (no ElementDataFile).",
                                  "Give the image as MetaImage, NIfTI, NRRD, a DICOM folder or zip.")
        raw = raw[:end.end()]
    return raw.decode("latin-1")


def _numbers(text):
    """Floats of a header value ("1 2 3", "(1,0,0)", "nan"); None if any is not a number."""
    try:
        return [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        return None


def _usable(values, n):
    return values is not None and len(values) >= n and all(math.isfinite(v) and v > 0 for v in values[:n])


def _fields(text, separator):
    """Header lines "key<separator>value" as {lower-case key: value} (NRRD key/value pairs ':=' skipped)."""
    out = {}
    for line in text.splitlines():
        if separator in line and ":=" not in line and not line.startswith("#"):
            key, value = line.split(separator, 1)
            out[key.strip().lower()] = value.strip()
    return out


def _wrong_scale(path, what, given):
    return InputImageError(
        f"The {what} header of {path.name} gives {given}: a voxel spacing that is missing, zero, negative or not a "
        "number. ITK would replace it (1 mm, or drop the sign) and the segmentation would come out at the wrong "
        "scale or mirrored.", _SPACING_FIX)


def check_itk_header(path):
    """Refuse an NRRD or MetaImage whose header gives no usable voxel spacing (see module docstring)."""
    path = Path(path)
    nrrd = path.name.lower().endswith((".nrrd", ".nhdr"))
    text = _header_text(path, nrrd)
    if not nrrd:
        fields = _fields(text, "=")
        ndims = _numbers(fields.get("ndims", "3")) or [3]
        key = next((k for k in ("elementspacing", "elementsize") if k in fields), None)
        if key is None or not _usable(_numbers(fields[key]), min(int(ndims[0]), 3)):
            raise _wrong_scale(path, "MetaImage", f"{'ElementSpacing' if key == 'elementspacing' else 'ElementSize'}"
                                                  f" = {fields[key]}" if key else "no ElementSpacing")
        return
    fields = _fields("\n".join(text.splitlines()[1:]), ":")
    kinds = fields.get("kinds", "").lower().split()
    dimension = int((_numbers(fields.get("dimension", "3")) or [3])[0])
    n_spatial = sum(k in ("domain", "space") for k in kinds) if kinds else min(dimension, 3)
    if "space directions" in fields:
        vectors = [_numbers(inside) for inside, none in re.findall(r"\(([^)]*)\)|(none)", fields["space directions"])
                   if not none]
        lengths = [math.sqrt(sum(x * x for x in v)) if v and all(map(math.isfinite, v)) else float("nan")
                   for v in vectors]
        if not _usable(lengths, max(len(lengths), n_spatial, 1)):
            raise _wrong_scale(path, "NRRD", f"space directions {fields['space directions']}")
        return
    if "spacings" in fields:
        values = _numbers(fields["spacings"]) or []
        spatial = [v for i, v in enumerate(values) if not kinds or kinds[i:i + 1] in (["domain"], ["space"])]
        if not _usable(spatial, max(len(spatial), n_spatial, 1)):
            raise _wrong_scale(path, "NRRD", f"spacings {fields['spacings']}")
        return
    raise _wrong_scale(path, "NRRD", "neither 'space directions' nor 'spacings'")


def load_itk(path, available_bytes=None):
    import SimpleITK as sitk  # heavy (ITK): only for these formats and DICOM

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise InputImageError(f"Cannot read {path.name}: {error_line(e)}",
                              "The file is damaged or not a supported image; save it again from Slicer.") from e
    size = reader.GetSize()
    ncomp = reader.GetNumberOfComponents()
    check_fits(tuple(size) + ((ncomp,) if ncomp > 1 else ()), 8, available_bytes, f"{path.name}")
    img = execute(reader, path.name, "The file is truncated or damaged (or its data file is missing); save it "
                                     "again from Slicer or export it again from its source.")
    arr = sitk.GetArrayViewFromImage(img)  # (z, y, x[, c]) or (t, z, y, x)
    dim = img.GetDimension()
    if ncomp > 1:  # vector image: components become the 4th axis
        arr = np.moveaxis(arr, -1, 0)
    arr = np.array(arr.T)  # x, y, z[, c|t]; a copy, ITK's buffer is released with img
    if dim == 2:
        arr = arr[:, :, None] if arr.ndim == 2 else arr
        direction = (*img.GetDirection()[:2], 0, *img.GetDirection()[2:4], 0, 0, 0, 1)
        return nifti_from_itk(arr, direction, (*img.GetSpacing(), 1.0), (*img.GetOrigin(), 0.0))
    return nifti_from_itk(arr, img.GetDirection(), img.GetSpacing(), img.GetOrigin(), dim)
