"""Reading input images and checking that they can be segmented.

`load_image(path)` returns a nibabel image that is exactly what the official
TotalSegmentator tool feeds into its pipeline for the same input:

- NIfTI (.nii, .nii.gz): the image as nibabel loads it (lazy, header untouched).
- DICOM folder or zip of one DICOM series: the official tool converts with dicom2nifti
  (`reorient_nifti=True`) and loads the written NIfTI. We read the pixels with SimpleITK
  (GDCM applies the modality rescale exactly as pydicom does) and build the geometry from
  the DICOM headers the way that conversion does: affine from ImageOrientationPatient,
  PixelSpacing and the first/last ImagePositionPatient, voxel axes permuted and flipped to
  the closest LAS order, affine rounded through float32 as the NIfTI round trip does.
  Values are float64 when the series has a rescale slope and intercept, otherwise the
  stored integer type.
- NRRD / MetaImage (.nrrd, .nhdr, .mha, .mhd): read with SimpleITK; ITK's LPS geometry
  is converted to the RAS affine NIfTI uses, voxel order kept as in the file, the same
  image ITK's own NIfTI writer would produce. (The official tool cannot read these.)

4D images: a trailing axis of length 1 is dropped as the official tool does (`[..., 0]`).
A real 4D image (several volumes) is refused by `check_image` with the number of volumes
and how to pick one (`select_volume`): silently segmenting the first phase or echo of a
multi-volume series is not what a clinician expects.

A DICOM folder holding several series is refused with a list of the series (number,
description, modality, slices, size) unless `series_uid` picks one; guessing the largest
could silently segment the wrong reconstruction.

`check_image(img)` raises `InputImageError` (cause + fix) for images that cannot be
segmented and returns a list of warnings for those that can. `guess_modality(img)` says
whether intensities look like CT (Hounsfield units) or MR; `check_modality` refuses a
volume that clearly is not what a task's models were trained on.
"""
import os
import shutil
import sys
import tempfile
import zipfile
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path, PurePosixPath

import nibabel as nib
import numpy as np

from .errors import InputImageError, OutOfMemoryError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
SUPPORTED = "NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd), a DICOM folder or a zip of one DICOM series"

# Orthonormality tolerance on the unit direction vectors: float32-rounded NIfTI headers
# are ~1e-7 off; a 0.1 degree gantry tilt is ~2e-3.
ORTHO_TOL = 1e-3
MIN_SPACING_MM, MAX_SPACING_MM = 0.01, 100.0


class ImageTooLargeError(InputImageError, OutOfMemoryError):
    """The image (or the run on it) needs more memory than this machine has."""

    kind = "memory"


def _report(progress, fraction, message):
    if progress is not None:
        progress("load", fraction, message)


# -- reading -----------------------------------------------------------------------

def load_image(path, progress=None, series_uid=None, available_bytes=None):
    """Read an input image (see module docstring) and return a nibabel image.

    `series_uid` picks one series of a DICOM folder that holds several.
    `available_bytes` overrides the memory this machine has (for the size check made
    before pixel data is read).
    """
    if isinstance(path, nib.spatialimages.SpatialImage):
        return as_3d(path)
    path = Path(path).expanduser()
    if not path.exists():
        raise InputImageError(f"Input image not found: {path}",
                              f"Check the path. Supported inputs: {SUPPORTED}.")
    _report(progress, 0.0, f"reading {path.name}")
    name = path.name.lower()
    if path.is_dir():
        img = _load_dicom_dir(path, progress, series_uid, available_bytes)
    elif name.endswith(NIFTI_SUFFIXES):
        img = _load_nifti(path)
    elif name.endswith(ITK_SUFFIXES):
        img = _load_itk(path, available_bytes)
    elif name.endswith(".zip") or zipfile.is_zipfile(path):
        img = _load_dicom_zip(path, progress, series_uid, available_bytes)
    elif _is_dicom_file(path):
        img = _load_dicom_dir(path.parent, progress, series_uid or _series_of(path), available_bytes)
    else:
        raise InputImageError(f"Unsupported input format: {path.name}",
                              f"Give {SUPPORTED}. In Slicer, save the volume as .nrrd or .nii.gz first.")
    _report(progress, 1.0, f"read {path.name}: {'x'.join(map(str, img.shape))}")
    return as_3d(img)


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


def _load_nifti(path):
    try:
        img = nib.load(str(path))
        img.shape  # noqa: B018 - header parsed
    except Exception as e:  # nibabel raises many types for broken headers
        raise InputImageError(f"Cannot read NIfTI file {path.name}: {e}",
                              "The file is damaged or not NIfTI; export it again from the source.") from e
    return img


def _nifti_from_itk(array_xyz, direction, spacing, origin, dim=3):
    """Nifti image of ITK geometry (LPS) as ITK's NIfTI writer makes it: RAS affine,
    qform = sform (code 1, scanner), units mm and s."""
    d = np.array(direction, dtype=float).reshape(dim, dim)[:3, :3]
    affine = np.eye(4)
    affine[:3, :3] = d * np.array(spacing[:3], dtype=float)
    affine[:3, 3] = origin[:3]
    affine[:2] *= -1  # LPS -> RAS
    affine = _float32_affine(affine)
    img = nib.Nifti1Image(array_xyz, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    return img


def _load_itk(path, available_bytes=None):
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise InputImageError(f"Cannot read {path.name}: {_first_line(e)}",
                              "The file is damaged or not a supported image; save it again from Slicer.") from e
    size = reader.GetSize()
    ncomp = reader.GetNumberOfComponents()
    _check_fits(tuple(size) + ((ncomp,) if ncomp > 1 else ()), 8, available_bytes, f"{path.name}")
    img = reader.Execute()
    arr = sitk.GetArrayViewFromImage(img)  # (z, y, x[, c]) or (t, z, y, x)
    dim = img.GetDimension()
    if ncomp > 1:  # vector image: components become the 4th axis
        arr = np.moveaxis(arr, -1, 0)
    arr = np.array(arr.T)  # x, y, z[, c|t]; a copy, ITK's buffer is released with img
    if dim == 2:
        arr = arr[:, :, None] if arr.ndim == 2 else arr
        direction = (*img.GetDirection()[:2], 0, *img.GetDirection()[2:4], 0, 0, 0, 1)
        return _nifti_from_itk(arr, direction, (*img.GetSpacing(), 1.0), (*img.GetOrigin(), 0.0))
    return _nifti_from_itk(arr, img.GetDirection(), img.GetSpacing(), img.GetOrigin(), dim)


def _float32_affine(affine):
    # The official path writes the converted image to NIfTI and loads it back: the
    # sform is stored as float32.
    return np.asarray(affine, dtype=np.float32).astype(np.float64)


def _first_line(e):
    text = str(e).strip().splitlines()
    return text[-1] if text else type(e).__name__


# -- DICOM -------------------------------------------------------------------------

# tag -> short name
_TAGS = {
    "0020|000e": "series_uid", "0020|0011": "series_number", "0008|103e": "description",
    "0008|0060": "modality", "0008|0008": "image_type", "0020|0032": "position",
    "0020|0037": "orientation", "0028|0030": "pixel_spacing", "0028|0010": "rows",
    "0028|0011": "columns", "0028|1053": "slope", "0028|1052": "intercept",
    "0028|0008": "frames", "0018|0050": "thickness",
}


def _is_dicom_file(path):
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _read_header(path):
    """Selected tags of one DICOM file, or None if it is not an image SimpleITK can read."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(str(path))
    reader.LoadPrivateTagsOff()
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    h = {"path": str(path)}
    for tag, name in _TAGS.items():
        if reader.HasMetaDataKey(tag):
            h[name] = reader.GetMetaData(tag).strip()
    if "rows" not in h or "columns" not in h:
        return None  # structured report, RT plan, ... (no pixels)
    return h


def _floats(text, n=None):
    try:
        values = [float(v) for v in text.replace("\\", " ").split()]
    except (AttributeError, ValueError):
        return None
    return values if n is None or len(values) == n else None


def _is_volume_slice(h):
    frames = _floats(h.get("frames", "1"), 1) or [1]
    return frames[0] > 1 or (_floats(h.get("orientation"), 6) is not None and _floats(h.get("position"), 3) is not None)


def _series_of(path):
    h = _read_header(path)
    return h.get("series_uid", "") if h else None


def _scan_dicom(folder, progress=None):
    files = [Path(root) / name for root, _, names in os.walk(folder) for name in sorted(names)]
    dicom_files = [f for f in files if _is_dicom_file(f)]
    headers = []
    for i, f in enumerate(dicom_files):
        h = _read_header(f)
        if h is not None:
            headers.append(h)
        if i % 50 == 0:
            _report(progress, 0.3 * i / max(len(dicom_files), 1), f"scanning DICOM files ({i}/{len(dicom_files)})")
    return files, headers


def _describe_series(uid, hs):
    h = hs[0]
    return (f"series {h.get('series_number', '?')} '{h.get('description', '')}' ({h.get('modality', '?')}, "
            f"{len(hs)} file(s), {h.get('columns')}x{h.get('rows')}) uid={uid or '(none)'}")


def _load_dicom_dir(folder, progress=None, series_uid=None, available_bytes=None):
    return _dicom_series_to_nifti(series_headers(folder, progress, series_uid), progress, available_bytes)


def series_headers(folder, progress=None, series_uid=None):
    """Header dicts (with 'path') of the one series `load_image` reads from a DICOM folder."""
    files, headers = _scan_dicom(folder, progress)
    if not headers:
        found = ", ".join(sorted({f.suffix or f.name for f in files})[:8]) or "nothing"
        raise InputImageError(
            f"No DICOM images found in {folder} (found: {found}).",
            f"Point to the folder that holds the DICOM files of one series, or give {SUPPORTED}.")
    slices = [h for h in headers if _is_volume_slice(h)]
    if not slices:
        raise InputImageError(
            f"{folder} holds {len(headers)} DICOM image(s), but none is a slice of a 3D scan (no image "
            "position/orientation: secondary captures, screenshots or reports).",
            "Export the original CT or MR series from the PACS or scanner and give that folder.")
    series = defaultdict(list)
    for h in slices:  # other images (dose screens, secondary captures) are ignored, as dicom2nifti does
        series[h.get("series_uid", "")].append(h)
    if series_uid is not None:
        if series_uid not in series:
            raise InputImageError(
                f"DICOM series {series_uid} not found in {folder}. Found: "
                + "; ".join(_describe_series(u, hs) for u, hs in series.items()),
                "Use one of the series UIDs listed.")
        hs = series[series_uid]
    elif len(series) > 1:
        listing = "\n  ".join(_describe_series(u, hs) for u, hs in
                              sorted(series.items(), key=lambda kv: -len(kv[1])))
        raise InputImageError(
            f"The DICOM folder {folder} holds {len(series)} series:\n  {listing}",
            "Choose one: copy its files into a folder of their own, load it in Slicer's DICOM module, "
            "or pass its uid (Python API: series_uid=...).")
    else:
        hs = next(iter(series.values()))
    return hs


def _dicom_series_to_nifti(hs, progress=None, available_bytes=None):
    frames = _floats(hs[0].get("frames", "1"), 1) or [1]
    if len(hs) == 1 and frames[0] > 1:
        return _dicom_multiframe(hs[0], available_bytes)
    hs, affine = _dicom_geometry(_usable_slices(hs))
    rows, cols = int(hs[0]["rows"]), int(hs[0]["columns"])
    rescaled = any("slope" in h and "intercept" in h for h in hs)
    _check_fits((cols, rows, len(hs)), 8 if rescaled else 2, available_bytes, "the DICOM series")
    _report(progress, 0.35, f"reading {len(hs)} DICOM slices")
    data = _read_slices(hs, rows, cols, np.float64 if rescaled else None, progress)
    data, affine = _reorient_like_dicom2nifti(data, affine)
    img = nib.Nifti1Image(data, _float32_affine(affine))
    img.header.set_xyzt_units("mm")
    return img


def _read_slice(path, float64):
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(path)
    if float64:
        # GDCM applies slope/intercept in double precision, as pydicom's modality LUT
        # does; float64 output keeps slices with different rescales exact.
        reader.SetOutputPixelType(sitk.sitkFloat64)
    try:
        image = reader.Execute()
    except RuntimeError as e:
        raise InputImageError(f"Cannot read the pixel data of {Path(path).name}: {_first_line(e)}",
                              "The series may be compressed with an unsupported codec or damaged; "
                              "export it again (uncompressed) from the PACS or scanner.") from e
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputImageError("Colour (RGB) DICOM images cannot be segmented.",
                              "Use the original greyscale CT or MR series.")
    return sitk.GetArrayFromImage(image)


def _read_slices(hs, rows, cols, dtype, progress):
    """Pixel data of the sorted slices as (column, row, slice); slices are decoded in
    threads (GDCM releases the GIL: JPEG 2000 series decode ~2x faster on 2 cores)."""
    import SimpleITK as sitk

    if dtype is None:
        reader = sitk.ImageFileReader()
        reader.SetFileName(hs[0]["path"])
        reader.ReadImageInformation()
        dtype = sitk.GetArrayViewFromImage(sitk.Image([1, 1], reader.GetPixelID())).dtype
    data = np.empty((cols, rows, len(hs)), dtype=dtype, order="F")

    def read(i):
        data[:, :, i] = _read_slice(hs[i]["path"], dtype == np.float64).reshape(rows, cols).T

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        futures = [pool.submit(read, i) for i in range(len(hs))]
        try:
            for done, future in enumerate(as_completed(futures), 1):
                future.result()
                if done % 10 == 0 or done == len(hs):
                    _report(progress, 0.35 + 0.6 * done / len(hs), f"read {done}/{len(hs)} DICOM slices")
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    return data


def _usable_slices(hs):
    """Drop localizers, exact duplicates and a minority orientation (scouts), as the
    official conversion does; refuse what cannot be one volume."""
    kept = [h for h in hs if "LOCALIZER" not in h.get("image_type", "").upper()
            and not (h.get("modality") == "CT" and "PROJECTION IMAGE" in h.get("image_type", "").upper())]
    if not kept:
        raise InputImageError("The DICOM series holds only localizer (scout) images.",
                              "Choose the axial (or other 3D) series of the study instead.")
    for h in kept:
        if _floats(h.get("pixel_spacing"), 2) is None:
            raise InputImageError(f"DICOM file {Path(h['path']).name} has no PixelSpacing.",
                                  "Use the original CT or MR series; exported screenshots have no geometry.")
    orientations = defaultdict(list)
    for h in kept:
        key = tuple(np.round(_floats(h["orientation"]), 3))
        orientations[key].append(h)
    if len(orientations) > 1:
        big = [v for v in orientations.values() if len(v) >= 4]
        if len(big) != 1:
            raise InputImageError(
                f"The DICOM series mixes {len(orientations)} slice orientations "
                f"({', '.join(str(len(v)) for v in orientations.values())} slices).",
                "Export the axial (or one) stack as its own series, or load it in Slicer's DICOM module.")
        kept = big[0]
    by_pos = defaultdict(list)
    for h in kept:
        by_pos[tuple(np.round(_floats(h["position"]), 3))].append(h)
    if any(len(v) > 1 for v in by_pos.values()):
        kept = _drop_duplicates(by_pos)
    sizes = Counter((h["rows"], h["columns"]) for h in kept)
    if len(sizes) > 1:
        raise InputImageError(f"The DICOM slices have different sizes: {dict(sizes)}.",
                              "The folder mixes series; keep only the files of one series.")
    return kept


def _drop_duplicates(by_pos):
    import SimpleITK as sitk

    kept, volumes = [], Counter()
    for hs in by_pos.values():
        first = sitk.GetArrayFromImage(sitk.ReadImage(hs[0]["path"]))
        distinct = [hs[0]] + [h for h in hs[1:]
                              if not np.array_equal(first, sitk.GetArrayFromImage(sitk.ReadImage(h["path"])))]
        kept.append(distinct[0])
        volumes[len(distinct)] += 1
    n = max(volumes)
    if n > 1:
        raise InputImageError(
            f"The DICOM series holds {n} images at each slice position: it is 4D "
            "(several phases, echoes or time points).",
            "Export one phase/echo as its own series (Slicer's DICOM module lists them), then segment that.")
    return kept


def _dicom_geometry(hs):
    """Sort slices and build the RAS affine from the headers (dicom2nifti's formula)."""
    pos = np.array([_floats(h["position"]) for h in hs])
    axis = int(np.argmax(pos.max(axis=0) - pos.min(axis=0)))  # sort along the most varying coordinate
    order = sorted(range(len(hs)), key=lambda i: pos[i][axis])
    hs = [hs[i] for i in order]
    pos = pos[order]
    iop = np.array(_floats(hs[0]["orientation"]))
    row_spacing, col_spacing = _floats(hs[0]["pixel_spacing"])
    n = len(hs)
    if n == 1:
        thickness = _floats(hs[0].get("thickness", "1"), 1) or [1.0]
        step = -np.cross(iop[:3], iop[3:]) * thickness[0]
    else:
        step = (pos[0] - pos[-1]) / (1 - n)
        increments = np.diff(pos, axis=0)
        bad = [i for i in range(1, n - 1)
               if not np.allclose(increments[0], increments[i], rtol=0.05, atol=0.1)]
        if bad:
            gaps = np.linalg.norm(increments, axis=1)
            i = bad[0]
            raise InputImageError(
                f"The DICOM slices are not evenly spaced: {gaps[i]:.2f} mm between slices {i + 1} and {i + 2}, "
                f"{gaps[0]:.2f} mm elsewhere (a missing slice, or two stacks in one series).",
                "Export the complete series again, or load it in Slicer's DICOM module, which can "
                "resample irregular series, and segment the loaded volume.")
    if np.linalg.norm(step) == 0:
        raise InputImageError("All DICOM slices are at the same position: this is not a volume.",
                              "Use a 3D series (the files of one series at different positions).")
    affine = np.array([
        [-iop[0] * col_spacing, -iop[3] * row_spacing, -step[0], -pos[0][0]],
        [-iop[1] * col_spacing, -iop[4] * row_spacing, -step[1], -pos[0][1]],
        [iop[2] * col_spacing, iop[5] * row_spacing, step[2], pos[0][2]],
        [0, 0, 0, 1]])
    return hs, affine


def _closest_axes(affine):
    """For world x, y, z: the voxel axis that moves most along it per mm (from the inverse
    affine), clashes resolved in favour of the stronger match, as dicom2nifti does."""
    inv = np.abs(np.linalg.inv(affine)[:3, :3])  # [voxel axis, world axis]
    strength = [list(inv[:, w]) for w in range(3)]
    pick = [int(np.argmax(s)) for s in strength]
    best = [max(s) for s in strength]
    for _ in range(10):
        if len(set(pick)) == 3:
            break
        for a, b in ((0, 1), (0, 2), (1, 2)):
            if pick[a] == pick[b]:
                loser = b if best[a] >= best[b] else a
                strength[loser][pick[loser]] = 0
                pick[loser] = int(np.argmax(strength[loser]))
                best[loser] = max(strength[loser])
    return pick


def _reorient_like_dicom2nifti(data, affine):
    """Permute and flip voxel axes to the closest LAS order, with the matching affine."""
    perm = _closest_axes(affine)
    signs = [np.sign(np.linalg.inv(affine)[perm[w], w]) for w in range(3)]
    flip = [signs[0] >= 0, signs[1] < 0, signs[2] < 0]  # want L (-x), A (+y), S (+z)
    new = np.eye(4)
    point = np.array([0.0, 0.0, 0.0, 1.0])
    for w in range(3):
        new[:, w] = affine[:, perm[w]]
        if flip[w]:
            new[:, w] = -new[:, w]
            point[perm[w]] = data.shape[perm[w]] - 1
    new[:, 3] = affine @ point
    data = np.moveaxis(data, perm, [0, 1, 2])
    data = data[tuple(slice(None, None, -1) if f else slice(None) for f in flip)]
    return data, new


def _dicom_multiframe(h, available_bytes=None):
    """Enhanced (multi-frame) DICOM: pixels and geometry from ITK, then LAS as above."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(h["path"])
    reader.ReadImageInformation()
    _check_fits(tuple(reader.GetSize()), 8, available_bytes, "the DICOM image")
    image = reader.Execute()
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputImageError("This multi-frame DICOM is not a single greyscale 3D volume.",
                              "Use the original CT or MR series.")
    img = _nifti_from_itk(np.array(sitk.GetArrayViewFromImage(image).T), image.GetDirection(),
                          image.GetSpacing(), image.GetOrigin())
    data, affine = _reorient_like_dicom2nifti(np.asanyarray(img.dataobj), img.affine)
    out = nib.Nifti1Image(data, _float32_affine(affine))
    out.header.set_xyzt_units("mm")
    return out


# -- zip ---------------------------------------------------------------------------

def _safe_members(zf, zip_path):
    members = []
    for info in zf.infolist():
        name = info.filename.replace("\\", "/")
        p = PurePosixPath(name)
        if name.startswith("/") or (len(name) > 1 and name[1] == ":") or ".." in p.parts:
            raise InputImageError(
                f"Refusing {Path(zip_path).name}: entry '{info.filename}' points outside the archive "
                "(absolute path or '..').",
                "The zip is unsafe or damaged; create it again from the DICOM folder.")
        members.append(info)
    return members


def _load_dicom_zip(path, progress=None, series_uid=None, available_bytes=None):
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise InputImageError(f"Cannot open zip file {path.name}: {e}",
                              "The zip is damaged; create it again from the DICOM folder.") from e
    with zf:
        members = _safe_members(zf, path)
        need = sum(m.file_size for m in members)
        tmp = tempfile.mkdtemp(prefix="totalseg_dicom_")
        try:
            free = shutil.disk_usage(tmp).free
            if need > free:
                raise InputImageError(
                    f"Unpacking {path.name} needs {need / 2**30:.1f} GiB, but the temporary folder "
                    f"{tempfile.gettempdir()} has {free / 2**30:.1f} GiB free.",
                    "Free disk space, set TMPDIR to a larger disk, or unzip the series yourself and give the folder.")
            _report(progress, 0.0, f"unpacking {path.name} ({len(members)} files)")
            try:
                zf.extractall(tmp, members)
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise InputImageError(f"Cannot unpack {path.name}: {e}",
                                      "The zip is damaged; create it again from the DICOM folder.") from e
            img = _load_dicom_dir(Path(tmp), progress, series_uid, available_bytes)
            # the pixel data is in memory (not a proxy on the files we are about to remove)
            return img
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


# -- checks ------------------------------------------------------------------------

def available_memory_bytes():
    """Memory this process can still use: MemAvailable, capped by a cgroup limit."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:
            cg = max(int(limit) - usage, 0)
            avail = cg if avail is None else min(avail, cg)
        break
    if avail is None and sys.platform == "win32":
        import ctypes

        class MemStatus(ctypes.Structure):
            _fields_ = [("dwLength", ctypes.c_ulong), ("dwMemoryLoad", ctypes.c_ulong),
                        ("ullTotalPhys", ctypes.c_ulonglong), ("ullAvailPhys", ctypes.c_ulonglong),
                        ("ullTotalPageFile", ctypes.c_ulonglong), ("ullAvailPageFile", ctypes.c_ulonglong),
                        ("ullTotalVirtual", ctypes.c_ulonglong), ("ullAvailVirtual", ctypes.c_ulonglong),
                        ("ullAvailExtendedVirtual", ctypes.c_ulonglong)]
        st = MemStatus()
        st.dwLength = ctypes.sizeof(MemStatus)
        if ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(st)):
            avail = st.ullAvailPhys
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = 1 << 62  # unknown: do not block
    return avail


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


def _check_fits(shape, bytes_per_voxel, available_bytes, what):
    avail = available_memory_bytes() if available_bytes is None else available_bytes
    need = float(np.prod(shape)) * bytes_per_voxel
    if need > avail:
        raise ImageTooLargeError(
            f"{what} is {'x'.join(map(str, shape))} voxels: reading it needs {_gib(need)}, "
            f"but only {_gib(avail)} of memory is available.",
            "Crop or downsample the volume first (Slicer: Crop Volume module), or run on a machine "
            "with more memory.")


def _gib(n):
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _spacing(affine):
    return np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)


def check_image(img, target_spacing=None, n_classes=None, available_bytes=None):
    """Raise InputImageError if `img` cannot be segmented; return a list of warnings.

    Geometry and size are checked from the header first (nothing is read), then the
    voxel values. With `target_spacing` (model spacing, mm, x/y/z) and `n_classes` (the
    largest model's class count) the memory estimate covers the model run too.
    """
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
                "in Python, SegmentationLogic.image_io.select_volume(img, index) (the official tool would use "
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
    avail = available_memory_bytes() if available_bytes is None else available_bytes
    need = estimate_memory_bytes(shape, zooms, target_spacing, n_classes)
    if need > avail:
        raise ImageTooLargeError(
            f"The image ({'x'.join(map(str, shape[:3]))} voxels) needs about {_gib(need)} of memory to "
            f"segment, but only {_gib(avail)} is available.",
            "Use a faster/coarser quality (--fast or --fastest), segment a region (crop the volume, "
            "Slicer: Crop Volume), close other programs, or use a machine with more memory.")
    if need > 0.7 * avail:
        warnings.append(f"The run may need about {_gib(need)} of the {_gib(avail)} memory available.")
    _check_values(np.asanyarray(img.dataobj).reshape(shape[:3]))
    return warnings


def _check_values(data):
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


# -- modality ----------------------------------------------------------------------

def _sample(img, max_voxels=2_000_000):
    data = np.asanyarray(img.dataobj)
    data = data.reshape(data.shape[:3]) if data.ndim > 3 and np.prod(data.shape[3:]) == 1 else data
    step = max(1, int(np.ceil((data.size / max_voxels) ** (1 / 3))))
    sample = np.asarray(data[::step, ::step, ::step], dtype=np.float64).ravel()
    return sample[np.isfinite(sample)]


def guess_modality(img):
    """("CT" | "MR", confidence 0..1, reason) from the intensity distribution.

    CT is stored in Hounsfield units: air is about -1000, so a scan with the patient's
    outline or lungs has many voxels below -500, and fat (-100) gives negative values
    even in a tight crop. MR intensities are arbitrary non-negative units.
    """
    v = _sample(img)
    if v.size == 0:
        return "MR", 0.0, "no finite voxel values"
    lo, hi = float(np.percentile(v, 0.5)), float(np.percentile(v, 99.5))
    air = float(np.mean(v < -500))
    negative = float(np.mean(v < -50))
    vmin = float(v.min())
    if air >= 0.01:
        conf = 0.99 if air >= 0.05 and -1100 <= lo <= -700 or vmin <= -1000 else 0.85
        return "CT", conf, (f"{air:.0%} of voxels are below -500 (air in Hounsfield units), "
                            f"minimum {vmin:g}: intensities look like CT")
    if negative >= 0.02 and vmin < -80:
        return "CT", 0.7, (f"{negative:.0%} of voxels are below -50 (fat in Hounsfield units), minimum {vmin:g}: "
                           "likely a CT without air in the field of view")
    if vmin >= -100:
        if hi <= 1.5:
            return "MR", 0.5, (f"intensities range {lo:g}..{hi:g}: normalised values, neither Hounsfield units "
                               "nor raw MR; treated as MR")
        return "MR", 0.85, (f"no voxel below -100 (minimum {vmin:g}, 99.5th percentile {hi:g}): arbitrary "
                            "non-negative units, as in MR. (A CT would show air at about -1000 Hounsfield units; "
                            "if this is a CT, its rescale intercept may be missing.)")
    return "CT", 0.5, f"negative values down to {vmin:g} but little air: probably CT"


REFUSE_CONFIDENCE = 0.85  # a guess this sure stops a CT task (see check_modality)
WARN_CONFIDENCE = 0.7


def check_modality(img, task_name, task_modality):
    """Refuse a CT task on a volume that clearly is not in Hounsfield units; returns a
    warning (or None) otherwise.

    CT models clip intensities to a fixed Hounsfield window, so an MR volume (or a CT
    whose rescale slope/intercept were lost) gives a confident-looking but meaningless
    result: that is an error. MR models normalise each image by its own mean and
    deviation and still run on CT, so an MR task on a CT volume only warns."""
    modality, confidence, reason = guess_modality(img)
    if not task_modality or modality == task_modality or confidence < WARN_CONFIDENCE:
        return None
    if task_modality == "CT" and confidence >= REFUSE_CONFIDENCE:
        raise InputImageError(
            f"The volume does not look like a CT in Hounsfield units ({reason}); task '{task_name}' is made for CT, "
            f"so its result would be meaningless.",
            "For an MR volume choose an MR task (e.g. 'total_mr'). For a CT, check that its intensities are "
            "Hounsfield units (air about -1000). To run anyway: --ignore_modality on the command line, "
            "check_modality=False in Python, or confirm the warning in the Slicer panel.")
    return (f"The volume looks like {modality} ({reason}) but task '{task_name}' is made for {task_modality}; "
            f"check the result, or choose a {modality} task if one fits.")


def modality_warning(img, task_modality):
    """A sentence for the GUI when the volume looks like the other modality, else None."""
    modality, confidence, reason = guess_modality(img)
    if task_modality and modality != task_modality and confidence >= 0.7:
        return (f"This volume looks like {modality} ({reason}) but the task is for {task_modality}. "
                f"Results may be meaningless; pick a {modality} task if one fits.")
    return None
