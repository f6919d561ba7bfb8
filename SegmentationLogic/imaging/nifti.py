"""NIfTI files: what nibabel would silently repair, and what a damaged file looks like.

nibabel repairs headers while loading: a voxel size (pixdim) of 0 becomes 1 mm and a
negative one its absolute value; with neither sform nor qform the affine is built from
those repaired sizes. An image that really has 0.8 mm voxels and a broken header would
then be segmented at an invented 1 mm spacing, wrong without a word. `check_header(path)`
reads the raw header (before any repair) and refuses:

- a voxel size (pixdim 1-3) that is 0 or not finite;
- a negative voxel size when the geometry comes from the qform or from pixdim alone
  (the sign, which flips an axis, would be dropped; with an sform the sform decides and
  pixdim only has to agree with it, which checks.py verifies);
- an sform (sform_code > 0) or qform (qform_code > 0) with values that are not finite;
- an uncompressed file shorter than its header says (truncated);
- a file that is not NIfTI at all (named after what it looks like).

`load_nifti(path)` loads a checked file; `read_voxels(img)` reads the voxel data, turning
the errors of a truncated or corrupt file (.nii.gz that ends early, bad CRC) into an
InputImageError with cause and fix.
"""
import contextlib
import gzip
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import InputImageError
from ..system.files import file_error

REEXPORT = ("Export or copy the image again from its source and check that the transfer finished (compare "
            "the file size with the original).")
_MAGIC = [(b"\x89PNG", "a PNG picture"), (b"\xff\xd8\xff", "a JPEG picture"), (b"PK\x03\x04", "a zip archive"),
          (b"NRRD", "an NRRD file (name it .nrrd)"), (b"%PDF", "a PDF document"), (b"GIF8", "a GIF picture"),
          (b"II*\x00", "a TIFF picture"), (b"MM\x00*", "a TIFF picture"), (b"ObjectType", "a MetaImage file")]


def looks_like(head):
    """What the first bytes of a file suggest it is, in words (for messages)."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "a DICOM file"
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    text = head[:256].lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html")):
        return "an HTML page (a download that failed?)"
    if head and all(32 <= c < 127 or c in (9, 10, 13) for c in head[:256]):
        return "a text file"
    return "not a known image format"


def _header_class(head):
    """Nifti1Header / Nifti2Header from the first field (sizeof_hdr: 348 or 540, either byte order), or None."""
    if len(head) < 4:
        return None
    for order in ("little", "big"):
        size = int.from_bytes(head[:4], order)
        if size == 348:
            return nib.Nifti1Header
        if size == 540:
            return nib.Nifti2Header
    return None


def check_header(path):
    """Refuse a NIfTI file whose header nibabel would have to repair, or that is no NIfTI (see module docstring)."""
    path = Path(path)
    try:
        with nib.openers.ImageOpener(str(path)) as f:
            head = f.read(540)
    except gzip.BadGzipFile:  # named .gz but not compressed: say what it is
        with open(path, "rb") as f:
            head = f.read(540)
        raise InputImageError(f"{path.name} is not a compressed NIfTI image: it is {looks_like(head)}.",
                              "Give the image as NIfTI (.nii, .nii.gz), NRRD, MetaImage, a DICOM folder or zip.") \
            from None
    except (EOFError, zlib.error) as e:
        raise InputImageError(f"The image file {path.name} is truncated or damaged: its compressed data ends "
                              f"early or is corrupt ({e}).", REEXPORT) from None
    except OSError as e:
        raise file_error(e, path, reading=True) from None
    klass = _header_class(head)
    if not head:
        raise InputImageError(f"The image file {path.name} is empty (0 bytes).",
                              "The file was not saved or copied completely: " + REEXPORT[0].lower() + REEXPORT[1:])
    if klass is None:
        raise InputImageError(f"{path.name} is not a NIfTI image: it is {looks_like(head)}.",
                              "Give the image as NIfTI (.nii, .nii.gz), NRRD, MetaImage, a DICOM folder or zip.")
    if len(head) < klass.sizeof_hdr:
        raise InputImageError(f"The image file {path.name} is truncated: it ends inside its header "
                              f"({len(head)} of {klass.sizeof_hdr} bytes).", REEXPORT)
    try:
        with nib.openers.ImageOpener(str(path)) as f:
            hdr = klass.from_fileobj(f, check=False)
    except Exception as e:  # noqa: BLE001 - nibabel raises many types for a damaged header or extension
        raise InputImageError(f"The NIfTI header of {path.name} is damaged ({e}).", REEXPORT) from None
    ndim = min(max(int(hdr["dim"][0]), 0), 7)
    shape = [int(n) for n in hdr["dim"][1:ndim + 1]]
    # axes of one voxel (a single slice) are refused as 2D later, whatever their size says
    pixdim = np.array([hdr["pixdim"][i + 1] for i in range(min(ndim, 3)) if shape[i] > 1], dtype=np.float64)
    sform, qform = int(hdr["sform_code"]), int(hdr["qform_code"])
    sizes = ", ".join(f"{v:g}" for v in pixdim)
    if not np.all(np.isfinite(pixdim)) or np.any(pixdim == 0):
        raise InputImageError(
            f"The NIfTI header of {path.name} gives a voxel size (pixdim) of {sizes} mm: zero or not a number. "
            "nibabel would silently assume 1 mm and the segmentation would come out at the wrong scale.",
            "Set the correct voxel size (e.g. Slicer: Volumes module, Volume Information, then save as .nii.gz) "
            "or export the image again from its source.")
    if np.any(pixdim < 0) and sform <= 0:
        raise InputImageError(
            f"The NIfTI header of {path.name} gives a negative voxel size (pixdim {sizes} mm) and no sform: "
            "the sign would be dropped, mirroring the image.",
            "Export the image again from its source (a valid header has positive voxel sizes).")
    if sform > 0:
        srow = np.array([hdr["srow_x"], hdr["srow_y"], hdr["srow_z"]], dtype=np.float64)
        if not np.all(np.isfinite(srow)):
            raise InputImageError(f"The NIfTI sform of {path.name} contains values that are not numbers.", REEXPORT)
    if qform > 0 and sform <= 0:
        q = np.array([hdr["quatern_b"], hdr["quatern_c"], hdr["quatern_d"], hdr["qoffset_x"], hdr["qoffset_y"],
                      hdr["qoffset_z"]], dtype=np.float64)
        if not np.all(np.isfinite(q)):
            raise InputImageError(f"The NIfTI qform of {path.name} contains values that are not numbers.", REEXPORT)
    if not path.name.lower().endswith(".gz"):
        try:
            need = int(hdr["vox_offset"]) + int(np.prod(shape)) * hdr.get_data_dtype().itemsize
        except Exception:  # noqa: BLE001 - unknown data type code: nibabel's load names it
            return
        size = path.stat().st_size
        if size < need:
            raise InputImageError(
                f"The image file {path.name} is truncated: {size} bytes, but its header describes {need}.",
                REEXPORT)


@contextlib.contextmanager
def voxel_read_errors(name):
    """Reading voxel data: a truncated or corrupt file is an InputImageError, a system error a file error."""
    try:
        yield
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise InputImageError(f"The image file {name} is truncated or corrupt: its voxel data ends early or cannot "
                              f"be decompressed ({e}).", REEXPORT) from None
    except OSError as e:
        if e.errno is not None:
            raise file_error(e, name, reading=True) from None
        raise InputImageError(f"The image file {name} is truncated: {e}.".replace("\n", " "), REEXPORT) from None
    except ValueError as e:  # e.g. a memory map longer than the file
        raise InputImageError(f"The image file {name} is truncated or corrupt ({e}).", REEXPORT) from None


def image_name(img):
    return Path(img.get_filename() or "the image").name


def read_voxels(img, name=None):
    """`np.asanyarray(img.dataobj)`, with a truncated or corrupt file as an InputImageError."""
    with voxel_read_errors(name or image_name(img)):
        return np.asanyarray(img.dataobj)


def load_nifti(path):
    """nib.load with errors as cause and fix (call check_header first)."""
    try:
        img = nib.load(str(path))
        img.shape  # noqa: B018 - header parsed
    except OSError as e:
        if e.errno is not None:
            raise file_error(e, path, reading=True) from None
        raise InputImageError(f"Cannot read NIfTI file {Path(path).name}: {e}", REEXPORT) from e
    except Exception as e:  # nibabel raises many types for broken headers
        raise InputImageError(f"Cannot read NIfTI file {Path(path).name}: {e}",
                              "The file is damaged or not NIfTI; export it again from the source.") from e
    return img
