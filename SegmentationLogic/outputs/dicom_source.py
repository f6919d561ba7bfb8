"""The source DICOM series of a result, and the labelmap laid out on its frames.

A DICOM SEG or RTSTRUCT describes the source images themselves: frame k of the output is
slice k of the source series, row r / column c are that slice's pixel rows and columns.
The engine's labelmap is in the NIfTI (RAS) geometry the image reader built from the
same series (voxel axes permuted and flipped to LAS order). Instead of undoing that
reordering case by case (axial / coronal / sagittal, rows pointing anterior or posterior),
`frames_from_labelmap` maps every source pixel through the two geometries: the pixel's
patient position from ImagePositionPatient / ImageOrientationPatient / PixelSpacing, then
the labelmap's inverse affine. Any orientation, and either row direction, comes out right
by construction; the tests check it by reading the files back.

The series is found exactly as the reader found it (`imaging.dicom.series_headers` and
`volume_slices`: same series choice, localizers and duplicates dropped, same order), so
frames and voxels correspond.
"""
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import SegmentationError
from ..imaging.archive import safe_members
from ..imaging.dicom import is_dicom_file, is_multiframe, series_headers, volume_slices

# Geometry tolerance: a source pixel must land within this many voxels of a labelmap voxel
# centre (the labelmap affine went through float32, ~1e-5 voxel).
GRID_TOL = 0.05

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SOP_CLASS_BY_MODALITY = {"CT": CT_IMAGE_STORAGE, "MR": MR_IMAGE_STORAGE, "PT": "1.2.840.10008.5.1.4.1.1.128"}
UID_ROOT = "1.2.826.0.1.3680043.10.1566."  # pydicom's generate_uid needs a root ending in '.'


class DicomOutputError(SegmentationError):
    """A DICOM SEG / RTSTRUCT cannot be written for this input or output."""

    kind = "output"


def require_dicom_extra():
    """Import check for the optional DICOM output dependencies (cause + fix when missing)."""
    missing = []
    for module, package in (("pydicom", "pydicom"), ("highdicom", "highdicom")):
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise DicomOutputError(
            f"DICOM output needs the Python package(s) {', '.join(missing)}, which are not installed.",
            "Install the engine's DICOM extra: pip install 'totalsegmentator-slicer[dicom]' (or "
            f"pip install {' '.join(missing)}), or choose --output_type nifti.")


def is_dicom_input(source):
    """Whether `source` is a DICOM folder, zip or file (the inputs DICOM output can refer to)."""
    if not isinstance(source, (str, Path)):
        return False
    path = Path(source)
    name = path.name.lower()
    if path.is_dir():
        return True
    if name.endswith((".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")):
        return False
    if path.is_file():
        return name.endswith(".zip") or zipfile.is_zipfile(path) or is_dicom_file(path)
    return False


@dataclass
class SourceSeries:
    """The source slices (pydicom datasets without pixel data), sorted as the reader sorts them."""

    datasets: list
    warnings: list = field(default_factory=list)

    @property
    def first(self):
        return self.datasets[0]

    @property
    def rows(self):
        return int(self.first.Rows)

    @property
    def columns(self):
        return int(self.first.Columns)


def read_source_series(source, progress=None):
    """The series of `source` (DICOM folder, zip or one file of the series) as SourceSeries."""
    path = Path(source)
    if path.is_dir():
        return _series_from_folder(path, progress)
    if path.name.lower().endswith(".zip") or zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            members = safe_members(zf, path)
            tmp = tempfile.mkdtemp(prefix="totalseg_dicom_out_")
            try:  # headers are read into memory; the patient files do not outlive this call
                zf.extractall(tmp, members)
                return _series_from_folder(Path(tmp), progress)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return _series_from_folder(path.parent, progress, member=path)


def _series_from_folder(folder, progress=None, series_uid=None, member=None):
    import pydicom  # the optional `dicom` extra, only for DICOM outputs

    headers = series_headers(folder, progress, series_uid, member)
    if is_multiframe(headers):
        raise DicomOutputError(
            "DICOM output from an enhanced (multi-frame) DICOM image is not supported yet.",
            "Convert the series to single-frame images (e.g. with dcmtk's or Slicer's DICOM export), or choose "
            "--output_type nifti.")
    headers = volume_slices(headers)
    datasets = [pydicom.dcmread(h["path"], stop_before_pixels=True) for h in headers]
    series = SourceSeries(datasets)
    _complete_identifiers(series)
    return series


def _complete_identifiers(series):
    """Fill identifiers that anonymisation blanked, so the output is valid DICOM.

    SOP Class / Instance UIDs come from the file meta header (what the archive stored).
    A study or series without an instance UID cannot be referenced: the output gets a UID
    derived from the slices' own UIDs (the same one for SEG and RTSTRUCT of one run), and
    a warning says that an archive will not file it with the images."""
    from pydicom.uid import generate_uid  # the optional `dicom` extra

    for ds in series.datasets:
        meta = getattr(ds, "file_meta", None)
        if not str(ds.get("SOPClassUID", "") or ""):
            meta_class = str(getattr(meta, "MediaStorageSOPClassUID", "") or "")
            ds.SOPClassUID = meta_class or SOP_CLASS_BY_MODALITY.get(str(ds.get("Modality", "")), CT_IMAGE_STORAGE)
        if not str(ds.get("SOPInstanceUID", "") or ""):
            meta_uid = str(getattr(meta, "MediaStorageSOPInstanceUID", "") or "")
            ds.SOPInstanceUID = meta_uid or generate_uid(UID_ROOT, [ds.filename, "sop"])
    seeds = sorted(str(ds.SOPInstanceUID) for ds in series.datasets)
    for attr, what in (("StudyInstanceUID", "study"), ("SeriesInstanceUID", "series"),
                       ("FrameOfReferenceUID", "frame of reference")):
        values = {str(ds.get(attr, "") or "") for ds in series.datasets}
        if values == {""}:
            uid = generate_uid(UID_ROOT, seeds + [attr])
            for ds in series.datasets:
                setattr(ds, attr, uid)
            series.warnings.append(
                f"The source images have no {what} instance UID ({attr}; anonymised?): the DICOM output uses "
                f"{uid}, so an archive will not file it with the original images.")
        elif len(values) > 1:
            raise DicomOutputError(f"The source slices disagree on their {attr}: they are not one series.",
                                   "Give a folder with the files of one series only.")
    for attr in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                 "AccessionNumber", "ReferringPhysicianName", "StudyID"):
        for ds in series.datasets:  # type 2 in the output: present, possibly empty
            if attr not in ds:
                setattr(ds, attr, "")


# -- geometry ---------------------------------------------------------------------------

def _ras(point_lps):
    p = np.asarray(point_lps, dtype=np.float64)
    return np.array([-p[0], -p[1], p[2]])


def frames_from_labelmap(labels, affine, series):
    """labels (x, y, z, in the labelmap's affine) -> array (slices, rows, cols) on the source frames.

    Raises DicomOutputError if the labelmap does not cover the source grid voxel for voxel."""
    labels = np.asarray(labels)
    inv = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    first = series.first
    iop = np.array([float(v) for v in first.ImageOrientationPatient])
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    # one column step moves along the row direction cosine by the column spacing, and vice versa
    col_step = inv[:3, :3] @ _ras(iop[:3] * col_spacing)
    row_step = inv[:3, :3] @ _ras(iop[3:] * row_spacing)
    origins = np.array([inv[:3, :3] @ _ras([float(v) for v in ds.ImagePositionPatient]) + inv[:3, 3]
                        for ds in series.datasets])
    steps = []
    for step, what in ((col_step, "column"), (row_step, "row")):
        axis = int(np.argmax(np.abs(step)))
        unit = np.zeros(3)
        unit[axis] = np.sign(step[axis])
        if not np.allclose(step, unit, atol=GRID_TOL):
            raise DicomOutputError(
                f"The segmentation grid does not match the source DICOM pixels (one {what} step is {step} voxels).",
                "Write DICOM output only for the series the segmentation was computed from.")
        steps.append((axis, int(unit[axis])))
    (c_axis, c_sign), (r_axis, r_sign) = steps
    s_axis = ({0, 1, 2} - {c_axis, r_axis}).pop() if c_axis != r_axis else None
    rounded = np.round(origins)
    n_rows, n_cols = series.rows, series.columns
    if (s_axis is None or np.abs(origins - rounded).max() > GRID_TOL
            or labels.shape[s_axis] != len(series.datasets)
            or labels.shape[c_axis] != n_cols or labels.shape[r_axis] != n_rows):
        raise DicomOutputError(
            f"The segmentation ({'x'.join(map(str, labels.shape))} voxels) does not lie on the source DICOM series "
            f"({n_cols}x{n_rows}, {len(series.datasets)} slices).",
            "Write DICOM output only for the series the segmentation was computed from.")
    out = np.empty((len(series.datasets), n_rows, n_cols), dtype=labels.dtype)
    cols = rounded[0, c_axis] + c_sign * np.arange(n_cols)
    rows = rounded[0, r_axis] + r_sign * np.arange(n_rows)
    for k, origin in enumerate(rounded):
        if origin[c_axis] != rounded[0, c_axis] or origin[r_axis] != rounded[0, r_axis]:
            raise DicomOutputError("The source slices are shifted against each other; they are not one grid.",
                                   "Write DICOM output only for a regular series.")
        index = [None, None, None]
        index[s_axis] = int(origin[s_axis])
        index[r_axis] = rows.astype(np.intp)[:, None]
        index[c_axis] = cols.astype(np.intp)[None, :]
        if not (0 <= index[s_axis] < labels.shape[s_axis] and cols.min() >= 0 and rows.min() >= 0
                and cols.max() < labels.shape[c_axis] and rows.max() < labels.shape[r_axis]):
            raise DicomOutputError("Source DICOM pixels fall outside the segmentation.",
                                   "Write DICOM output only for the series the segmentation was computed from.")
        out[k] = labels[tuple(index)]
    return out


def present_classes(frames, class_map, what):
    """[(value, class name)] of the classes with voxels on the frames, in class-map order (none: error)."""
    values = set(np.unique(frames).tolist()) - {0}
    present = [(v, n) for v, n in class_map.items() if v in values]
    if not present:
        raise DicomOutputError(f"The segmentation is empty: {what} needs at least one segment.",
                               "Check the input and the task (or use --output_type nifti, which can be empty).")
    return present


def patient_points(series, k, rows, cols):
    """Patient (LPS, mm) coordinates of (row, column) positions, possibly fractional, on slice k."""
    ds = series.datasets[k]
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
    origin = np.array([float(v) for v in ds.ImagePositionPatient])
    return (origin[None, :] + np.asarray(cols, dtype=np.float64)[:, None] * col_spacing * iop[None, :3]
            + np.asarray(rows, dtype=np.float64)[:, None] * row_spacing * iop[None, 3:])
