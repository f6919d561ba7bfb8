"""DICOM RT Structure Set (RTSTRUCT) of a labelmap, written with pydicom.

Why not rt-utils (the official tool's choice): it needs OpenCV with its GUI libraries and
a `dataclasses` backport, and it has not been released since 2023. The structure set is
a small, well-defined object; we write it directly and trace the contours with
scikit-image, which the engine already depends on.

Contours: per source slice and class, marching squares at level 0.5 on the mask (padded
by one pixel, so every contour closes) gives closed polygons through the pixel-edge
midpoints; holes come out as their own polygons (viewers fill with the even-odd rule,
as for any RTSTRUCT). Points in the middle of straight runs are dropped, which leaves the
polygon itself unchanged, so rasterising the contours gives back the traced mask.
Each ROI has one contour on exactly the slices where its mask has pixels.
"""
import datetime

import numpy as np
from scipy import ndimage

from . import dicom_codes as codes
from .dicom_source import frames_from_labelmap, patient_points, present_classes

RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
STUDY_COMPONENT_MANAGEMENT = "1.2.840.10008.3.1.2.3.2"  # retired detached study class, still the referenced one
SERIES_NUMBER = 101


CONTOUR_DATA = 0x30060050


def _contour_data(points):
    """ContourData as an encoded element (DS values of at most 16 characters, 3 decimals: 1 micrometre).
    Building it as text in one go: pydicom would make one object per number (most of the time of a
    large structure set)."""
    from pydicom.dataelem import RawDataElement  # the optional `dicom` extra
    from pydicom.tag import Tag

    values = np.round(points.ravel(), 3) + 0.0  # + 0.0: no "-0.000"
    value = ("\\".join(["%.3f"] * values.size) % tuple(values.tolist())).encode("ascii")
    if len(value) % 2:
        value += b" "
    return RawDataElement(Tag(CONTOUR_DATA), "DS", len(value), value, 0, False, True)


def _drop_collinear(contour):
    """The same closed polygon without the points in the middle of straight runs (exact)."""
    step_in = contour - np.roll(contour, 1, axis=0)
    step_out = np.roll(contour, -1, axis=0) - contour
    turn = step_in[:, 0] * step_out[:, 1] - step_in[:, 1] * step_out[:, 0]
    return contour[np.abs(turn) > 1e-9]


def slice_contours(mask):
    """Closed polygons [(n, 2) arrays of (row, col)] outlining a 2D boolean mask."""
    from skimage.measure import find_contours  # scikit-image: heavy, only for RTSTRUCT contours

    padded = np.pad(mask.astype(np.float32), 1)
    out = []
    for contour in find_contours(padded, 0.5, fully_connected="high"):
        if len(contour) > 1 and np.allclose(contour[0], contour[-1]):
            contour = contour[:-1]  # CLOSED_PLANAR: the closing segment is implied
        contour = _drop_collinear(contour - 1.0)
        if len(contour) >= 3:
            out.append(contour)
    return out


def _image_ref(ds):
    from pydicom.dataset import Dataset  # the optional `dicom` extra

    ref = Dataset()
    ref.ReferencedSOPClassUID = ds.SOPClassUID
    ref.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    return ref


def _code_item(code):
    from pydicom.dataset import Dataset  # the optional `dicom` extra

    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme
    item.CodeMeaning = code.meaning
    return item


def build_rtstruct(labels, affine, class_map, series, task, description=None):
    """The RT Structure Set dataset (pydicom FileDataset-ready Dataset)."""
    import pydicom  # the optional `dicom` extra
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

    frames = frames_from_labelmap(labels, affine, series)
    present = present_classes(frames, class_map, "an RTSTRUCT")
    boxes = ndimage.find_objects(frames)
    src = series.first
    now = datetime.datetime.now()
    ds = Dataset()
    ds.SpecificCharacterSet = src.get("SpecificCharacterSet", "ISO_IR 100") or "ISO_IR 100"
    ds.SOPClassUID = RT_STRUCTURE_SET_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    for attr in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                 "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber"):
        setattr(ds, attr, src.get(attr, ""))
    for attr in ("StudyDescription", "PatientAge", "PatientWeight", "PatientSize", "IssuerOfPatientID"):
        if src.get(attr, None) not in (None, ""):
            setattr(ds, attr, src.get(attr))
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = SERIES_NUMBER
    ds.SeriesDescription = f"TotalSegmentator {task}"[:64]
    ds.OperatorsName = ""
    ds.Manufacturer = codes.MANUFACTURER
    ds.ManufacturerModelName = codes.MODEL_NAME
    ds.SoftwareVersions = codes.engine_version()
    ds.DeviceSerialNumber = "1"
    ds.FrameOfReferenceUID = src.FrameOfReferenceUID
    ds.PositionReferenceIndicator = src.get("PositionReferenceIndicator", "")
    ds.StructureSetLabel = "TotalSegmentator"
    ds.StructureSetName = task[:64]
    ds.StructureSetDescription = (description or f"TotalSegmentator {task}")[:1024]
    ds.StructureSetDate = ds.InstanceCreationDate
    ds.StructureSetTime = ds.InstanceCreationTime
    ds.InstanceNumber = 1

    image_refs = [_image_ref(d) for d in series.datasets]
    series_ref = Dataset()
    series_ref.SeriesInstanceUID = src.SeriesInstanceUID
    series_ref.ContourImageSequence = image_refs
    study_ref = Dataset()
    study_ref.ReferencedSOPClassUID = STUDY_COMPONENT_MANAGEMENT
    study_ref.ReferencedSOPInstanceUID = src.StudyInstanceUID
    study_ref.RTReferencedSeriesSequence = [series_ref]
    frame_ref = Dataset()
    frame_ref.FrameOfReferenceUID = src.FrameOfReferenceUID
    frame_ref.RTReferencedStudySequence = [study_ref]
    ds.ReferencedFrameOfReferenceSequence = [frame_ref]

    rois, contours, observations = [], [], []
    for number, (value, name) in enumerate(present, 1):
        category, type_, modifier, region, rgb = codes.segment_codes(name)
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = src.FrameOfReferenceUID
        roi.ROIName = name[:64]
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        roi.ROIGenerationDescription = f"{codes.ALGORITHM_NAME} {codes.engine_version()}, task {task}"[:64]
        rois.append(roi)

        roi_contour = Dataset()
        roi_contour.ReferencedROINumber = number
        roi_contour.ROIDisplayColor = list(rgb)
        items = []
        box = boxes[value - 1]  # only the slices, rows and columns the class occupies
        for k in range(box[0].start, box[0].stop):
            mask = frames[k, box[1], box[2]] == value
            if not mask.any():
                continue
            for polygon in slice_contours(mask):
                polygon = polygon + (box[1].start, box[2].start)
                points = patient_points(series, k, polygon[:, 0], polygon[:, 1])
                contour = Dataset()
                contour.ContourImageSequence = [_image_ref(series.datasets[k])]
                contour.ContourGeometricType = "CLOSED_PLANAR"
                contour.NumberOfContourPoints = len(points)
                contour[CONTOUR_DATA] = _contour_data(points)
                # encoded as the file will be: pydicom then writes the raw value instead of parsing it back
                contour.set_original_encoding(False, True, contour._character_set)
                items.append(contour)
        roi_contour.ContourSequence = items
        contours.append(roi_contour)

        obs = Dataset()
        obs.ObservationNumber = number
        obs.ReferencedROINumber = number
        obs.RTROIInterpretedType = "ORGAN"
        obs.ROIInterpreter = ""
        code = _code_item(type_)
        if modifier is not None:
            code.SegmentedPropertyTypeModifierCodeSequence = [_code_item(modifier)]
        obs.RTROIIdentificationCodeSequence = [code]
        observations.append(obs)
    ds.StructureSetROISequence = rois
    ds.ROIContourSequence = contours
    ds.RTROIObservationsSequence = observations
    if codes.uses_private_scheme(n for _, n in present):
        ds.CodingSchemeIdentificationSequence = [codes.private_scheme_identification()]

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    ds.preamble = b"\x00" * 128
    ds = pydicom.dataset.FileDataset(None, ds, file_meta=meta, preamble=ds.preamble)
    return ds


def write_rtstruct(path, labels, affine, class_map, series, task, description=None):
    ds = build_rtstruct(labels, affine, class_map, series, task, description=description)
    ds.save_as(str(path), enforce_file_format=True)
    return ds
