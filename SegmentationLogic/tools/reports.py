"""`evans-index`, `spine-report`, `aorta-report`, `pulmonary-report`: the official report
commands (`totalseg_evans_index`, `totalseg_*_report`), not available in this engine yet.

Each is a measurement pipeline of its own on top of segmentations (Evans index: brain,
skull and ventricle parts registered to a CT brain atlas; spine: vertebral heights on
vertebrae_pp_refined; aorta and pulmonary artery: diameters in planes through landmarks
of the licensed heartchambers_highres / aorta / pulmonary landmark models). The commands
exist so that a user finds them, and say what to use meanwhile.
"""
from ..errors import SegmentationError

REPORTS = {
    "evans-index": ("totalseg_evans_index", "Evans index of a head CT (brain, skull and ventricle_parts models, "
                                            "rigid registration to a CT brain atlas)"),
    "spine-report": ("totalseg_spine_report", "vertebral body heights and fractures (vertebrae_pp_refined)"),
    "aorta-report": ("totalseg_aorta_report", "aortic diameters at the standard landmarks (licensed models)"),
    "pulmonary-report": ("totalseg_pulmonary_report", "pulmonary artery diameters (licensed models)"),
}


class NotAvailableError(SegmentationError):
    kind = "unsupported"


def not_available(name):
    official, what = REPORTS[name]
    raise NotAvailableError(f"`{name}` ({what}) is not available in this engine yet.",
                            f"Use the official `{official}` (pip install TotalSegmentator) meanwhile; the "
                            "segmentations it needs can come from this engine (`segment`).")
