"""What a DICOM output says about each segment and about the algorithm that made it.

Segment codes come from our terminology data (terminology.py: TotalSegmentator's SNOMED
mapping with its corrections, and a private-scheme fallback for classes the mapping does
not cover), so a segment carries category, type, the left/right modifier and anatomic
region where the mapping has them: the same codes Slicer gets when it imports the result.
"""
from .. import terminology
from ..version import __version__

ALGORITHM_NAME = "TotalSegmentator"
MANUFACTURER = "TotalSegmentator for 3D Slicer"
MODEL_NAME = "SegmentationLogic"
PRIVATE_SCHEME_NAME = "TotalSegmentator classes without a standard code"


def engine_version():
    return __version__


def coded(code):
    from highdicom.sr import CodedConcept  # the optional `dicom` extra

    return CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def segment_codes(class_name):
    """(category, type, type modifier or None, anatomic region or None, rgb 0..255) of a class."""
    entry = terminology.entry(class_name)
    rgb = tuple(int(round(c * 255)) for c in entry.color)
    return entry.category, entry.type, entry.modifier, entry.region, rgb


def uses_private_scheme(class_names):
    return any(terminology.entry(n).type.scheme == terminology.PRIVATE_SCHEME for n in class_names)


def private_scheme_identification():
    """CodingSchemeIdentificationSequence item declaring our private scheme (DICOM requires it)."""
    from pydicom.dataset import Dataset  # the optional `dicom` extra

    item = Dataset()
    item.CodingSchemeDesignator = terminology.PRIVATE_SCHEME
    item.CodingSchemeName = PRIVATE_SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = MANUFACTURER
    return item


def algorithm_identification(task):
    import highdicom as hd  # the optional `dicom` extra
    from pydicom.sr.codedict import codes

    return hd.AlgorithmIdentificationSequence(name=ALGORITHM_NAME, version=engine_version(),
                                              family=codes.DCM.ArtificialIntelligence,
                                              parameters={"task": task})


def cielab(rgb):
    """DICOM-encoded CIELab (three 0..65535 integers) of an sRGB colour (0..255)."""
    from highdicom.color import CIELabColor  # the optional `dicom` extra

    lab = CIELabColor.from_rgb(*rgb)
    return [int(v) for v in lab.value]
