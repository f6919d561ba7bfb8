"""`get-body-stats`: weight, height, age, sex, BMI from a CT/MR (the official
`totalseg_get_body_stats`), a licensed feature.

The official command needs a licence key and the licensed body-stats models (a CNN by
default, or XGBoost models on organ statistics). Without a key it stops with where to
get one; with one it needs those models, which are licensed weights that cannot be
fetched here yet: it says so instead of guessing.
"""
from ..errors import LicenseError, WeightsMissingError


def cmd_get_body_stats(args):
    from ..license import require_license, set_license

    if args.license_number:
        set_license(args.license_number)
    try:
        require_license()
    except LicenseError as e:
        raise LicenseError("get-body-stats is a licensed TotalSegmentator feature, and no licence key is stored.",
                           e.fix) from None
    raise WeightsMissingError(
        "get-body-stats needs the licensed body-stats models (weight, size, age and sex predictors), which this "
        "engine cannot obtain or run yet.",
        "Use the official totalseg_get_body_stats with your licence for now; support here is planned.")


def add_command(sub, common, progress_from_args, emit_result):
    p = sub.add_parser("get-body-stats", help="body weight, size, age, sex (licensed)",
                       description="Body statistics from a CT/MR, as the official totalseg_get_body_stats (licensed).")
    p.add_argument("-i", dest="input", required=True, help="CT or MR image")
    p.add_argument("-o", dest="output", required=True, help="output JSON file")
    p.add_argument("-m", dest="modality", choices=["ct", "mr"], required=True)
    p.add_argument("-l", "--license_number", default=None, help="licence key (stored for later runs)")
    p.add_argument("-d", "--device", default="auto")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=cmd_get_body_stats)
