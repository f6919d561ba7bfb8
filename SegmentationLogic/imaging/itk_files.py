"""NRRD and MetaImage files (.nrrd, .nhdr, .mha, .mhd) read with SimpleITK, as NIfTI images.

ITK's LPS geometry becomes the RAS affine NIfTI uses, voxel order kept as in the file:
the same image ITK's own NIfTI writer would produce. The affine is rounded through
float32, as a NIfTI file stores it (the official tool reads every input from NIfTI).
(The official tool cannot read these formats.)
"""
import numpy as np
import nibabel as nib

from ..errors import InputImageError
from .checks import check_fits


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
    img = reader.Execute()
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
