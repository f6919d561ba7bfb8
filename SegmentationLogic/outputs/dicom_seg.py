"""DICOM Segmentation (SEG) of a labelmap, referencing its source series (highdicom).

One BINARY segment per non-empty class, in class-map order, numbered 1..N, labelled with
the class name (as the official tool, so scripts that read segment labels carry over),
coded from our terminology (category, type, left/right modifier, anatomic region),
recommended display colour, and the algorithm identification. Frames are the source
slices (empty frames omitted), so the SEG lies on the source grid pixel for pixel.
"""
import numpy as np

from . import dicom_codes as codes
from .dicom_source import frames_from_labelmap, present_classes

SERIES_NUMBER = 100  # as the official tool
CONTENT_LABEL = "TOTALSEG"


def segment_descriptions(present, task):
    """highdicom SegmentDescriptions for [(value, class name)] in segment-number order."""
    import highdicom as hd  # the optional `dicom` extra
    from highdicom.color import CIELabColor

    algorithm = codes.algorithm_identification(task)
    out = []
    for number, (_, name) in enumerate(present, 1):
        category, type_, modifier, region, rgb = codes.segment_codes(name)
        desc = hd.seg.SegmentDescription(
            segment_number=number, segment_label=name,
            segmented_property_category=codes.coded(category), segmented_property_type=codes.coded(type_),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
            tracking_id=name, tracking_uid=hd.UID(),
            anatomic_regions=[codes.coded(region)] if region is not None else None,
            display_color=CIELabColor.from_rgb(*rgb))
        if modifier is not None:  # e.g. Kidney + Left: without it left and right share one code
            desc.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                codes.coded(modifier)]
        out.append(desc)
    return out


def build_seg(labels, affine, class_map, series, task, series_instance_uid=None, description=None):
    """The highdicom Segmentation object (not yet written)."""
    import highdicom as hd  # the optional `dicom` extra

    frames = frames_from_labelmap(labels, affine, series)
    present = present_classes(frames, class_map, "a DICOM SEG")
    lut = np.zeros(max(int(frames.max()), max(class_map)) + 1, dtype=np.uint8 if len(present) < 256 else np.uint16)
    for number, (value, _) in enumerate(present, 1):
        lut[value] = number
    pixel_array = lut[frames]
    seg = hd.seg.Segmentation(
        source_images=series.datasets, pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(present, task),
        series_instance_uid=series_instance_uid or hd.UID(), series_number=SERIES_NUMBER,
        sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer=codes.MANUFACTURER, manufacturer_model_name=codes.MODEL_NAME,
        software_versions=codes.engine_version(), device_serial_number="1",
        content_label=CONTENT_LABEL, content_description=(description or f"TotalSegmentator {task}")[:64],
        series_description=f"TotalSegmentator {task}"[:64])
    if codes.uses_private_scheme(n for _, n in present):
        seg.CodingSchemeIdentificationSequence = [codes.private_scheme_identification()]
    return seg


def write_seg(path, labels, affine, class_map, series, task, description=None):
    seg = build_seg(labels, affine, class_map, series, task, description=description)
    seg.save_as(str(path), enforce_file_format=True)
    return seg
