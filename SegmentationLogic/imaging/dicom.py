"""DICOM series read exactly as the official tool reads them.

The official tool converts a DICOM folder with dicom2nifti (`reorient_nifti=True`) and
loads the written NIfTI. We read the pixels with SimpleITK (GDCM applies the modality
rescale exactly as pydicom does) and build the geometry from the DICOM headers the way
that conversion does: affine from ImageOrientationPatient, PixelSpacing and the
first/last ImagePositionPatient, voxel axes permuted and flipped to the closest LAS
order, affine rounded through float32 as the NIfTI round trip does. Values are float64
when the series has a rescale slope and intercept, otherwise the stored integer type.

Slices are grouped into series; a folder holding several series is refused with a list
of them (number, description, modality, slices, size) unless `series_uid` picks one:
guessing the largest could silently segment the wrong reconstruction. Localizers,
duplicates and a minority orientation are dropped as the official conversion drops them.
"""
import os
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import InputImageError
from ..progress import Reporter
from .checks import check_fits
from .itk_files import error_line, float32_affine, nifti_from_itk

SUPPORTED = "NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd), a DICOM folder or a zip of one DICOM series"

# tag -> short name
_TAGS = {
    "0020|000e": "series_uid", "0020|0011": "series_number", "0008|103e": "description",
    "0008|0060": "modality", "0008|0008": "image_type", "0020|0032": "position",
    "0020|0037": "orientation", "0028|0030": "pixel_spacing", "0028|0010": "rows",
    "0028|0011": "columns", "0028|1053": "slope", "0028|1052": "intercept",
    "0028|0008": "frames", "0018|0050": "thickness",
}


def is_dicom_file(path):
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _read_header(path):
    """Selected tags of one DICOM file, or None if it is not an image SimpleITK can read."""
    import SimpleITK as sitk  # heavy (ITK): only when DICOM is read

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


def series_of(path):
    """The series instance UID of one DICOM file ('' when it has none, None when it is no image)."""
    h = _read_header(path)
    return h.get("series_uid", "") if h else None


def load_dicom_file(path, progress=None, series_uid=None, available_bytes=None):
    """The series one DICOM file belongs to, read from the files beside it."""
    path = Path(path)
    return load_dicom_folder(path.parent, progress, series_uid or series_of(path), available_bytes)


def _scan_dicom(folder, progress=None):
    files = [Path(root) / name for root, _, names in os.walk(folder) for name in sorted(names)]
    dicom_files = [f for f in files if is_dicom_file(f)]
    headers = []
    for i, f in enumerate(dicom_files):
        h = _read_header(f)
        if h is not None:
            headers.append(h)
        if i % 50 == 0:
            Reporter(progress, "load")(0.3 * i / max(len(dicom_files), 1), f"scanning DICOM files ({i}/{len(dicom_files)})")
    return files, headers


def _describe_series(uid, hs):
    h = hs[0]
    return (f"series {h.get('series_number', '?')} '{h.get('description', '')}' ({h.get('modality', '?')}, "
            f"{len(hs)} file(s), {h.get('columns')}x{h.get('rows')}) uid={uid or '(none)'}")


def load_dicom_folder(folder, progress=None, series_uid=None, available_bytes=None):
    """The one series in `folder` (or the one `series_uid` names) as a NIfTI image; see the module docstring."""
    return _dicom_series_to_nifti(series_headers(folder, progress, series_uid), progress, available_bytes)


def series_headers(folder, progress=None, series_uid=None):
    """Header dicts (with 'path') of the one series `load_dicom_folder` reads from `folder`.

    The DICOM outputs use this to reference exactly the files the image was built from."""
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


def is_multiframe(headers):
    """Whether a series is one enhanced (multi-frame) file."""
    return len(headers) == 1 and (_floats(headers[0].get("frames", "1"), 1) or [1])[0] > 1


def volume_slices(headers):
    """The slices a volume is built from, sorted as the image's slice axis (localizers,
    duplicates and a minority orientation dropped): what `load_dicom_folder` reads."""
    return _dicom_geometry(_usable_slices(headers))[0]


def _dicom_series_to_nifti(hs, progress=None, available_bytes=None):
    if is_multiframe(hs):
        return _dicom_multiframe(hs[0], available_bytes)
    hs, affine = _dicom_geometry(_usable_slices(hs))
    rows, cols = int(hs[0]["rows"]), int(hs[0]["columns"])
    rescaled = any("slope" in h and "intercept" in h for h in hs)
    check_fits((cols, rows, len(hs)), 8 if rescaled else 2, available_bytes, "the DICOM series")
    Reporter(progress, "load")(0.35, f"reading {len(hs)} DICOM slices")
    data = _read_slices(hs, rows, cols, np.float64 if rescaled else None, progress)
    data, affine = _reorient_like_dicom2nifti(data, affine)
    img = nib.Nifti1Image(data, float32_affine(affine))
    img.header.set_xyzt_units("mm")
    return img


def _read_slice(path, float64):
    import SimpleITK as sitk  # heavy (ITK): only when DICOM is read

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
        raise InputImageError(f"Cannot read the pixel data of {Path(path).name}: {error_line(e)}",
                              "The series may be compressed with an unsupported codec or damaged; "
                              "export it again (uncompressed) from the PACS or scanner.") from e
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputImageError("Colour (RGB) DICOM images cannot be segmented.",
                              "Use the original greyscale CT or MR series.")
    return sitk.GetArrayFromImage(image)


def _read_slices(hs, rows, cols, dtype, progress):
    """Pixel data of the sorted slices as (column, row, slice); slices are decoded in
    threads (GDCM releases the GIL: JPEG 2000 series decode ~2x faster on 2 cores)."""
    import SimpleITK as sitk  # heavy (ITK): only when DICOM is read

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
                    Reporter(progress, "load")(0.35 + 0.6 * done / len(hs), f"read {done}/{len(hs)} DICOM slices")
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
    import SimpleITK as sitk  # heavy (ITK): only when DICOM is read

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
    import SimpleITK as sitk  # heavy (ITK): only when DICOM is read

    reader = sitk.ImageFileReader()
    reader.SetFileName(h["path"])
    reader.ReadImageInformation()
    check_fits(tuple(reader.GetSize()), 8, available_bytes, "the DICOM image")
    image = reader.Execute()
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputImageError("This multi-frame DICOM is not a single greyscale 3D volume.",
                              "Use the original CT or MR series.")
    img = nifti_from_itk(np.array(sitk.GetArrayViewFromImage(image).T), image.GetDirection(),
                          image.GetSpacing(), image.GetOrigin())
    data, affine = _reorient_like_dicom2nifti(np.asanyarray(img.dataobj), img.affine)
    out = nib.Nifti1Image(data, float32_affine(affine))
    out.header.set_xyzt_units("mm")
    return out
