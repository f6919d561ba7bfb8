"""`get-body-stats`: weight, height, age, sex, BMI from a CT/MR (the official
`totalseg_get_body_stats`), a licensed feature.

The official command needs a licence key and the licensed body-stats models (a CNN by
default, or XGBoost models on organ statistics). Without a key it stops with where to
get one; with one it needs those models, which are licensed weights that cannot be
fetched here yet: it says so instead of guessing.
"""
from ..errors import LicenseError, WeightsMissingError
from ..weights import require_license, set_license


def get_body_stats(license_number=None):
    """Stops with what is missing: the licence key, then the licensed models this engine cannot run yet."""
    if license_number:
        set_license(license_number)
    try:
        require_license()
    except LicenseError as e:
        raise LicenseError("get-body-stats is a licensed TotalSegmentator feature, and no licence key is stored.",
                           e.fix) from None
    raise WeightsMissingError(
        "get-body-stats needs the licensed body-stats models (weight, size, age and sex predictors), which this "
        "engine cannot obtain or run yet.",
        "Use the official totalseg_get_body_stats with your licence for now; support here is planned.")
