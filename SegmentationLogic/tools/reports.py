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


def _not_available(name):
    official, what = REPORTS[name]

    def run(args):
        raise NotAvailableError(f"`{name}` ({what}) is not available in this engine yet.",
                                f"Use the official `{official}` (pip install TotalSegmentator) meanwhile; the "
                                "segmentations it needs can come from this engine (`segment`).")
    return run


def add_command(sub, common, progress_from_args, emit_result):
    for name, (official, what) in REPORTS.items():
        p = sub.add_parser(name, help=f"{what} (not available yet)",
                           description=f"As the official {official}: {what}. Not available in this engine yet.")
        p.add_argument("args", nargs="*", help="the official command's arguments")
        p.add_argument("--debug", action="store_true", help="show tracebacks")
        p.set_defaults(func=_not_available(name))
