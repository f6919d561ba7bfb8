"""DICOM series read exactly as the official tool reads them.

The official tool converts a DICOM folder with dicom2nifti (`reorient_nifti=True`) and
loads the written NIfTI. We read the pixels with SimpleITK (GDCM applies the modality
rescale exactly as pydicom does) and build the geometry from the DICOM headers the way
that conversion does: affine from ImageOrientationPatient, PixelSpacing and the
first/last ImagePositionPatient, voxel axes permuted and flipped to the closest LAS
order, affine rounded through float32 as the NIfTI round trip does. Values are float64
when the series has a rescale slope and intercept, otherwise the stored integer type.

Slices are grouped into series by what their headers declare (SeriesInstanceUID, series
number, description, time, kernel) and then by geometry, because UIDs go missing
(anonymisers strip them or set one for all): within a declared series, slices of
another orientation, size (rows, columns) or pixel spacing form another stack, and so do
slices separated from the rest by a gap along the slice normal (more than 3 slice steps,
with at least 4 slices on each side). A folder holding several stacks is refused with a
list of them (number, description, modality, slices, size, orientation, spacing, extent,
a file name) unless `series_uid` picks one: guessing the largest could silently segment
the wrong reconstruction, and merging two stacks gives a volume that exists nowhere.
Localizers, duplicates and a handful of slices in a minority geometry (scouts) are
dropped as the official conversion drops them. A spacing or position that is zero,
negative or not a number is refused, naming the file. Two stacks that agree in all of
that and interleave at one even spacing cannot be told apart from one series.
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
from .itk_files import execute, float32_affine, nifti_from_itk

SUPPORTED = "NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd), a DICOM folder or a zip of one DICOM series"

# tag -> short name
_TAGS = {
    "0020|000e": "series_uid", "0020|0011": "series_number", "0008|103e": "description",
    "0008|0060": "modality", "0008|0008": "image_type", "0020|0032": "position",
    "0020|0037": "orientation", "0028|0030": "pixel_spacing", "0028|0010": "rows",
    "0028|0011": "columns", "0028|1053": "slope", "0028|1052": "intercept",
    "0028|0008": "frames", "0018|0050": "thickness", "0008|0031": "series_time", "0018|1210": "kernel",
}
# SOP classes of slices of a volume (CT, MR, PET, enhanced and legacy-converted): such a file that
# cannot be read is damaged, not a report or a screen to skip (so is one whose class cannot be read)
VOLUME_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1." + s for s in ("2", "2.1", "2.2", "4", "4.1", "4.4", "128",
                                                              "128.1", "130")}
MIN_STACK = 4  # slices: fewer in another geometry are scouts (dropped); a gap splits stacks this big
GAP_STEPS = 3.0  # a gap along the normal larger than this many slice steps separates two stacks


def is_dicom_file(path):
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def sop_class(path):
    """MediaStorageSOPClassUID from a DICOM file's meta header (group 0002, explicit VR little
    endian by the standard, at the start of the file: readable even when the rest is cut off)."""
    try:
        with open(path, "rb") as f:
            data = f.read(4096)
    except OSError:
        return None
    pos = 132
    while pos + 8 <= len(data):
        group, element = int.from_bytes(data[pos:pos + 2], "little"), int.from_bytes(data[pos + 2:pos + 4], "little")
        if group != 0x0002:
            return None
        vr = data[pos + 4:pos + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            length, start = int.from_bytes(data[pos + 8:pos + 12], "little"), pos + 12
        else:
            length, start = int.from_bytes(data[pos + 6:pos + 8], "little"), pos + 8
        if element == 0x0002:
            if start + length > len(data):
                return None  # cut off inside the UID
            return data[start:start + length].rstrip(b"\0 ").decode("ascii", "replace")
        pos = start + length
    return None


def _readable(path):
    try:
        with open(path, "rb"):
            return True
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


def load_dicom_file(path, progress=None, series_uid=None, available_bytes=None):
    """The series one DICOM file belongs to, read from the files beside it."""
    path = Path(path)
    return load_dicom_folder(path.parent, progress, series_uid, available_bytes, member=None if series_uid else path)


def _scan_dicom(folder, progress=None):
    files = [Path(root) / name for root, _, names in os.walk(folder) for name in sorted(names)]
    unreadable = [f for f in files if not _readable(f)]
    if unreadable:
        shown = ", ".join(f.name for f in unreadable[:5]) + (f" and {len(unreadable) - 5} more"
                                                            if len(unreadable) > 5 else "")
        raise InputImageError(
            f"{len(unreadable)} file(s) in {folder} cannot be read (permission denied): {shown}. Reading the "
            "series without them would silently leave out slices.",
            "Give yourself read permission on every file (e.g. chmod -R u+r on the folder), or copy the series "
            "to a folder of yours.")
    dicom_files = [f for f in files if is_dicom_file(f)]
    # named as DICOM but not even its preamble and magic there: cut off in its first bytes
    damaged = [f for f in files if f.suffix.lower() in (".dcm", ".dicom", ".ima") and f not in set(dicom_files)]
    headers = []
    for i, f in enumerate(dicom_files):
        h = _read_header(f)
        if h is not None:
            headers.append(h)
        elif sop_class(f) in VOLUME_SOP_CLASSES | {None}:  # an image slice, or cut off in its first bytes
            damaged.append(f)
        if i % 50 == 0:
            Reporter(progress, "load")(0.3 * i / max(len(dicom_files), 1), f"scanning DICOM files ({i}/{len(dicom_files)})")
    if damaged:
        shown = ", ".join(f.name for f in damaged[:5]) + (f" and {len(damaged) - 5} more" if len(damaged) > 5 else "")
        raise InputImageError(
            f"{len(damaged)} DICOM image file(s) in {folder} cannot be read (truncated or damaged): {shown}. "
            "Reading the series without them would silently leave out slices.",
            "Copy or export the series again from the PACS or scanner (check that every file arrived whole).")
    return files, headers


def _vector(h, key, n, what):
    """The floats of tag `key`, which must be `n` finite numbers; else an error naming the file."""
    values = _floats(h.get(key), n)
    if values is None or not np.all(np.isfinite(values)):
        raise InputImageError(f"DICOM file {Path(h['path']).name} has no valid {what} ({h.get(key) or 'missing'}).",
                              "The file is damaged or not part of a 3D scan; export the series again from the "
                              "PACS or scanner.")
    return np.array(values)


def _geometry(h):
    """(normal, pixel spacing) of a slice, checked: spacing positive, orientation two unit vectors."""
    spacing = _floats(h.get("pixel_spacing"), 2)
    if spacing is None:
        raise InputImageError(f"DICOM file {Path(h['path']).name} has no PixelSpacing.",
                              "Use the original CT or MR series; exported screenshots have no geometry.")
    if not all(np.isfinite(v) and v > 0 for v in spacing):
        raise InputImageError(
            f"DICOM file {Path(h['path']).name} has the PixelSpacing {h['pixel_spacing']}: a spacing that is zero, "
            "negative or not a number. The volume cannot be built at its true size.",
            "The header is damaged; export the series again from the PACS or scanner.")
    iop = _vector(h, "orientation", 6, "ImageOrientationPatient")
    _vector(h, "position", 3, "ImagePositionPatient")
    row, col = iop[:3], iop[3:]
    if not (0.5 < np.linalg.norm(row) < 1.5 and 0.5 < np.linalg.norm(col) < 1.5):
        raise InputImageError(f"DICOM file {Path(h['path']).name} has an ImageOrientationPatient that is not two "
                              f"unit vectors ({h['orientation']}).", "The header is damaged; export the series "
                              "again from the PACS or scanner.")
    return np.cross(row, col), tuple(spacing)


def _is_localizer(h):
    image_type = h.get("image_type", "").upper()
    return "LOCALIZER" in image_type or (h.get("modality") == "CT" and "PROJECTION IMAGE" in image_type)


def _split_at_gaps(hs):
    """One geometry's slices as stacks separated by gaps along the normal (see module docstring)."""
    normal, _ = _geometry(hs[0])
    d = {id(h): float(_vector(h, "position", 3, "ImagePositionPatient") @ normal) for h in hs}
    positions = np.unique(np.round(sorted(d.values()), 3))
    if len(positions) < 2 * MIN_STACK:
        return [hs]
    steps = np.diff(positions)
    cuts = [i for i, step in enumerate(steps) if step > GAP_STEPS * np.median(steps)]
    bounds = [positions[0] - 1] + [positions[i] for i in cuts] + [positions[-1]]
    runs = [[h for h in hs if lo < round(d[id(h)], 3) <= hi] for lo, hi in zip(bounds, bounds[1:])]
    counts = [len({round(d[id(h)], 3) for h in run}) for run in runs]
    return runs if min(counts) >= MIN_STACK else [hs]


def _stacks(hs):
    """The stacks of one declared series (see module docstring)."""
    frames = _floats(hs[0].get("frames", "1"), 1) or [1]
    if len(hs) == 1 or frames[0] > 1:
        return [[h] for h in hs]  # multi-frame files hold their own geometry
    kept = [h for h in hs if not _is_localizer(h)] or hs  # a series of localizers only: listed, refused later
    groups = defaultdict(list)
    for h in kept:
        normal, spacing = _geometry(h)
        groups[(tuple(np.round(normal, 3)), h.get("rows"), h.get("columns"), tuple(np.round(spacing, 4)))].append(h)
    groups = list(groups.values())
    big = [g for g in groups if len(g) >= MIN_STACK]
    if len(groups) > 1 and big:
        groups = big  # stray slices of another geometry (scouts, dose screens) are dropped, as dicom2nifti does
    return [run for g in groups for run in _split_at_gaps(g)]


def _series_key(h):
    return tuple(h.get(k, "") for k in ("series_uid", "series_number", "description", "series_time", "kernel"))


def _orientation_name(normal):
    axis = int(np.argmax(np.abs(normal)))
    return ("sagittal", "coronal", "axial")[axis] if abs(normal[axis]) > 0.9 else "oblique"


def _describe_series(hs):
    h = hs[0]
    text = (f"series {h.get('series_number', '?')} '{h.get('description', '')}' ({h.get('modality', '?')}, "
            f"{len(hs)} file(s), {h.get('columns')}x{h.get('rows')})")
    try:
        normal, spacing = _geometry(h)
        d = [float(_vector(x, "position", 3, "ImagePositionPatient") @ normal) for x in hs]
        text += (f" {_orientation_name(normal)}, {spacing[1]:g}x{spacing[0]:g} mm, slices at {min(d):.1f} to "
                 f"{max(d):.1f} mm")
    except InputImageError:
        pass
    return text + f", e.g. {Path(h['path']).name}, uid={h.get('series_uid') or '(none)'}"


def _find_series(stacks, folder, series_uid=None, member=None):
    """The one stack to read: the only one, the one holding `member` (a file), or the one of `series_uid`."""
    if member is not None:
        stacks = [hs for hs in stacks if any(os.path.samefile(h["path"], member) for h in hs)] or stacks
    elif series_uid is not None:
        chosen = [hs for hs in stacks if hs[0].get("series_uid", "") == series_uid]
        if not chosen:
            raise InputImageError(
                f"DICOM series {series_uid} not found in {folder}. Found: "
                + "; ".join(_describe_series(hs) for hs in stacks), "Use one of the series UIDs listed.")
        stacks = chosen
    if len(stacks) > 1:
        listing = "\n  ".join(_describe_series(hs) for hs in sorted(stacks, key=lambda hs: -len(hs)))
        same_uid = len({hs[0].get("series_uid", "") for hs in stacks}) < len(stacks)
        raise InputImageError(
            f"The DICOM folder {folder} holds {len(stacks)} series:\n  {listing}",
            "Choose one: copy its files into a folder of their own, load it in Slicer's DICOM module"
            + (", or pass its uid (Python API: series_uid=...)." if not same_uid else
               " (series without distinct UIDs cannot be picked by uid)."))
    return stacks[0]


def load_dicom_folder(folder, progress=None, series_uid=None, available_bytes=None, member=None):
    """The one series in `folder` (or the one `series_uid` names, or the one holding the file
    `member`) as a NIfTI image; see the module docstring."""
    return _dicom_series_to_nifti(series_headers(folder, progress, series_uid, member), progress, available_bytes)


def series_headers(folder, progress=None, series_uid=None, member=None):
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
    declared = defaultdict(list)
    for h in slices:  # other images (dose screens, secondary captures) are ignored, as dicom2nifti does
        declared[_series_key(h)].append(h)
    stacks = [stack for hs in declared.values() for stack in _stacks(hs)]
    return _find_series(stacks, folder, series_uid, member)


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
    image = execute(reader, Path(path).name, "The series may be compressed with an unsupported codec or damaged; "
                                             "export it again (uncompressed) from the PACS or scanner.")
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
    """Drop localizers and exact duplicates, as the official conversion does; refuse what
    cannot be one volume (one stack: one orientation, size and spacing, see _stacks)."""
    kept = [h for h in hs if not _is_localizer(h)]
    if not kept:
        raise InputImageError("The DICOM series holds only localizer (scout) images.",
                              "Choose the axial (or other 3D) series of the study instead.")
    by_pos = defaultdict(list)
    for h in kept:
        by_pos[tuple(np.round(_floats(h["position"]), 3))].append(h)
    if any(len(v) > 1 for v in by_pos.values()):
        kept = _drop_duplicates(by_pos)
    return kept


def _drop_duplicates(by_pos):
    import SimpleITK as sitk  # heavy (ITK): only when DICOM is read

    def pixels(h):
        reader = sitk.ImageFileReader()
        reader.SetFileName(h["path"])
        return sitk.GetArrayFromImage(execute(reader, Path(h["path"]).name, "The file is truncated or damaged; "
                                                                            "export the series again."))

    kept, volumes = [], Counter()
    for hs in by_pos.values():
        first = pixels(hs[0])
        distinct = [hs[0]] + [h for h in hs[1:] if not np.array_equal(first, pixels(h))]
        kept.append(distinct[0])
        volumes[len(distinct)] += 1
    n = max(volumes)
    if n > 1:
        raise InputImageError(
            f"The DICOM series holds {n} images at each slice position: it is 4D "
            "(several phases, echoes or time points), or several series without distinct UIDs.",
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
    image = execute(reader, Path(h["path"]).name, "The file is truncated or damaged; export it again.")
    if not all(np.isfinite(v) and v > 0 for v in image.GetSpacing()):
        raise InputImageError(f"The multi-frame DICOM {Path(h['path']).name} gives the voxel spacing "
                              f"{image.GetSpacing()}: zero, negative or not a number.",
                              "The header is damaged; export the series again from the PACS or scanner.")
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputImageError("This multi-frame DICOM is not a single greyscale 3D volume.",
                              "Use the original CT or MR series.")
    img = nifti_from_itk(np.array(sitk.GetArrayViewFromImage(image).T), image.GetDirection(),
                          image.GetSpacing(), image.GetOrigin())
    data, affine = _reorient_like_dicom2nifti(np.asanyarray(img.dataobj), img.affine)
    out = nib.Nifti1Image(data, float32_affine(affine))
    out.header.set_xyzt_units("mm")
    return out
