"""Can this image be segmented? Geometry, size and values checked, with cause and fix.

`check_image(img)` raises `InputImageError` for images that cannot be segmented (2D or
4D, colour, NaN, empty, implausible or inconsistent spacing, sheared axes, too large for
this machine's memory) and returns a list of warnings for those that can. Geometry and
size are checked from the header first, before any voxel is read.
"""

import nibabel as nib
import numpy as np

from ..errors import InputImageError, OutOfMemoryError
from ..system.memory import available_memory, format_bytes, limit_note
from .nifti import read_voxels

# Orthonormality tolerance on the unit direction vectors: float32-rounded NIfTI headers
# are ~1e-7 off; a 0.1 degree gantry tilt is ~2e-3.
ORTHO_TOL = 1e-3
MIN_SPACING_MM, MAX_SPACING_MM = 0.01, 100.0


class ImageTooLargeError(InputImageError, OutOfMemoryError):
    """The image (or the run on it) needs more memory than this machine has."""

    kind = "memory"


def estimate_memory_bytes(shape, zooms, target_spacing=None, n_classes=None):
    """Rough peak memory of one run on an image.

    Input resolution: the float64 image and its float64 working copy, plus the uint8
    result and the float64 canvas it is written back into (~25 bytes per voxel).
    Model resolution (only when `n_classes` is given): int32 resampled image, float32
    network input and its normalised copy, and per class the fp16 logit accumulator and
    a float32 copy for the argmax (~12 + 6 * n_classes bytes per voxel; nnunetv2 2.8.1
    on CPU measured 5.4 bytes per class-voxel above the loaded model, 118 classes at
    160x140x100).
    """
    n_in = float(np.prod(shape[:3]))
    total = 25.0 * n_in
    if n_classes:
        if target_spacing is not None:
            factors = np.array(zooms[:3], dtype=float) / np.array(target_spacing, dtype=float)
            n_model = float(np.prod([max(int(round(s * f)), 1) for s, f in zip(shape[:3], factors)]))
        else:
            n_model = n_in
        total += n_model * (12.0 + 6.0 * (n_classes + 1))
    return int(total)


def check_fits(shape, bytes_per_voxel, available_bytes, what):
    """Refuse to read an image whose voxels alone do not fit in memory (before reading them)."""
    avail = available_memory() if available_bytes is None else available_bytes
    note = limit_note(avail) if available_bytes is None and avail is not None else ""
    need = float(np.prod(shape)) * bytes_per_voxel
    if avail is not None and need > avail:
        raise ImageTooLargeError(
            f"{what} is {'x'.join(map(str, shape))} voxels: reading it needs {format_bytes(need)}, "
            f"but only {format_bytes(avail)} of memory is available{note}.",
            "Crop or downsample the volume first (Slicer: Crop Volume module), or run on a machine "
            "with more memory.")


def _spacing(affine):
    return np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)


def check_image(img, target_spacing=None, n_classes=None, available_bytes=None):
    """Raise InputImageError if `img` cannot be segmented; return a list of warnings.

    Geometry and size are checked from the header first (nothing is read), then the
    voxel values. With `target_spacing` (model spacing, mm, x/y/z) and `n_classes` (the
    largest model's class count) the memory estimate covers the model run too.
    """
    warnings = check_header(img, target_spacing, n_classes, available_bytes)
    data = read_voxels(img)
    check_values(data.reshape(tuple(int(n) for n in img.shape)[:3]))
    return warnings


def check_header(img, target_spacing=None, n_classes=None, available_bytes=None):
    """The checks of `check_image` that need only the header (nothing is read): a caller
    that reads the voxels itself passes them to `check_values` afterwards, so a
    compressed file is decompressed once."""
    shape = tuple(int(n) for n in img.shape)
    warnings = []
    dtype = img.get_data_dtype()
    if dtype.fields is not None:
        raise InputImageError(f"The image has {len(dtype.fields)}-channel (colour/RGB) voxels, not intensities.",
                              "Use the original greyscale CT or MR volume, not a colour rendering of it.")
    if len(shape) < 3 or (len(shape) == 3 and sum(n > 1 for n in shape) < 3):
        raise InputImageError(
            f"The image is 2D ({'x'.join(map(str, shape))}): segmentation needs a 3D volume.",
            "Load the whole series (all slices) as one volume, not a single slice or screenshot.")
    if len(shape) > 3:
        n = int(np.prod(shape[3:]))
        if n > 1:
            raise InputImageError(
                f"The image is 4D: {n} volumes of {'x'.join(map(str, shape[:3]))} "
                "(several phases, echoes or time points).",
                "Pick one volume: in Slicer, browse the sequence to the wanted phase and segment that volume; "
                "in Python, SegmentationLogic.imaging.select_volume(img, index) (the official tool would use "
                "volume 0).")
    affine = np.asarray(img.affine, dtype=float)
    zooms = np.array(img.header.get_zooms()[:3], dtype=float)
    spacing = _spacing(affine)
    if not np.all(np.isfinite(affine)) or not np.all(np.isfinite(zooms)):
        raise InputImageError("The image geometry (affine) contains NaN or infinite values.",
                              "The header is damaged; export the image again from the source.")
    if np.any(zooms <= 0) or np.any(spacing <= 0):
        bad = zooms if np.any(zooms <= 0) else spacing
        raise InputImageError(
            f"The voxel spacing is {', '.join(f'{z:g}' for z in bad)} mm: it must be positive.",
            "The header is damaged; set the correct spacing (Slicer: Volumes module, Volume Information) "
            "or export the image again.")
    if np.any(spacing < MIN_SPACING_MM) or np.any(spacing > MAX_SPACING_MM):
        raise InputImageError(
            f"The voxel spacing {' x '.join(f'{z:g}' for z in spacing)} mm is implausible for CT/MR "
            f"(expected {MIN_SPACING_MM:g} to {MAX_SPACING_MM:g} mm; metres or inches instead of mm?).",
            "Correct the spacing to millimetres (Slicer: Volumes module, Volume Information) and try again.")
    unit = affine[:3, :3] / spacing
    dots = np.abs(unit.T @ unit - np.eye(3))
    if dots.max() > ORTHO_TOL:
        angle = np.degrees(np.arcsin(min(dots.max(), 1.0)))
        raise InputImageError(
            f"The image axes are not orthogonal (sheared by {angle:.1f} degrees): a gantry tilt or a "
            "sheared transform. The models need a rectilinear grid.",
            "Resample to an orthogonal grid first: in Slicer, Harden transform (or load the DICOM with "
            "gantry tilt correction) and Resample Scalar Volume; elsewhere, resample with ITK.")
    if not np.allclose(zooms, spacing, rtol=1e-3, atol=1e-4):
        # the official tool resamples with the header's voxel size: a mismatch would put
        # the segmentation at the wrong scale
        raise InputImageError(
            f"The header's voxel size ({' x '.join(f'{z:g}' for z in zooms)} mm) disagrees with its affine "
            f"({' x '.join(f'{z:g}' for z in spacing)} mm): the header is inconsistent.",
            "Save the image again from the program that made it (Slicer, ITK and nibabel write consistent "
            "headers), then segment the saved file.")
    hdr = img.header
    if isinstance(img, nib.Nifti1Image) and hdr["sform_code"] > 0 and hdr["qform_code"] > 0:
        if not np.allclose(hdr.get_sform(), hdr.get_qform(), atol=1e-3):
            warnings.append("The NIfTI sform and qform disagree; the sform is used (as the official tool "
                            "and nibabel do); other programs may place the image elsewhere.")
    avail = available_memory() if available_bytes is None else available_bytes
    note = limit_note(avail) if available_bytes is None and avail is not None else ""
    need = estimate_memory_bytes(shape, zooms, target_spacing, n_classes)
    if avail is not None and need > avail:
        raise ImageTooLargeError(
            f"The image ({'x'.join(map(str, shape[:3]))} voxels) needs about {format_bytes(need)} of memory to "
            f"segment, but only {format_bytes(avail)} is available{note}.",
            "Use a faster/coarser quality (--fast or --fastest), segment a region (crop the volume, "
            "Slicer: Crop Volume), close other programs, or use a machine with more memory.")
    if avail is not None and need > 0.7 * avail:
        warnings.append(f"The run may need about {format_bytes(need)} of the {format_bytes(avail)} memory available.")
    return warnings


def check_values(data):
    """Refuse voxel values that cannot be segmented: NaN or infinite, empty, constant."""
    if data.dtype.kind == "f":
        finite = np.isfinite(data)
        bad = data.size - int(np.count_nonzero(finite))
        if bad:
            n_nan = int(np.count_nonzero(np.isnan(data)))
            raise InputImageError(
                f"The image contains {n_nan} NaN and {bad - n_nan} infinite voxel values.",
                "Replace them (e.g. with the background value, numpy.nan_to_num) or export the image again; "
                "NaN usually marks voxels outside a resampled field of view.")
    lo, hi = data.min(), data.max()
    if lo == hi:
        if lo == 0:
            raise InputImageError("The image is empty: every voxel is 0.",
                                  "Choose the volume that holds the scan; this one has no image data.")
        raise InputImageError(f"The image is constant: every voxel is {lo:g}.",
                              "Choose the volume that holds the scan; this one has no image data.")
