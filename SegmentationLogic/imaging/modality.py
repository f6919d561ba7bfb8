"""Does a volume look like CT (Hounsfield units) or MR? One guess, one warning text.

Needs only numpy, so the Slicer panel can warn before the engine's other dependencies
(nibabel, SimpleITK) are installed: `guess_modality` takes a voxel array or anything
with a `dataobj` (a nibabel image).
"""
import numpy as np

from ..errors import InputImageError

REFUSE_CONFIDENCE = 0.85  # a guess this sure stops a CT task (see check_modality)
WARN_CONFIDENCE = 0.7  # a guess this sure is worth a warning (engine log, Slicer panel)


def _sample(img, max_voxels=2_000_000):
    data = np.asanyarray(getattr(img, "dataobj", img))
    data = data.reshape(data.shape[:3]) if data.ndim > 3 and np.prod(data.shape[3:]) == 1 else data
    step = max(1, int(np.ceil((data.size / max_voxels) ** (1 / 3))))
    sample = np.asarray(data[::step, ::step, ::step], dtype=np.float64).ravel()
    return sample[np.isfinite(sample)]


def guess_modality(img):
    """("CT" | "MR", confidence 0..1, reason) from the intensity distribution of an image or array.

    CT is stored in Hounsfield units: air is about -1000, so a scan with the patient's
    outline or lungs has many voxels below -500, and fat (-100) gives negative values
    even in a tight crop. MR intensities are arbitrary non-negative units.
    """
    v = _sample(img)
    if v.size == 0:
        return "MR", 0.0, "no finite voxel values"
    lo, hi = float(np.percentile(v, 0.5)), float(np.percentile(v, 99.5))
    air = float(np.mean(v < -500))
    negative = float(np.mean(v < -50))
    vmin = float(v.min())
    if air >= 0.01:
        conf = 0.99 if air >= 0.05 and -1100 <= lo <= -700 or vmin <= -1000 else 0.85
        return "CT", conf, (f"{air:.0%} of voxels are below -500 (air in Hounsfield units), "
                            f"minimum {vmin:g}: intensities look like CT")
    if negative >= 0.02 and vmin < -80:
        return "CT", 0.7, (f"{negative:.0%} of voxels are below -50 (fat in Hounsfield units), minimum {vmin:g}: "
                           "likely a CT without air in the field of view")
    if vmin >= -100:
        if hi <= 1.5:
            return "MR", 0.5, (f"intensities range {lo:g}..{hi:g}: normalised values, neither Hounsfield units "
                               "nor raw MR; treated as MR")
        return "MR", 0.85, (f"no voxel below -100 (minimum {vmin:g}, 99.5th percentile {hi:g}): arbitrary "
                            "non-negative units, as in MR. (A CT would show air at about -1000 Hounsfield units; "
                            "if this is a CT, its rescale intercept may be missing.)")
    return "CT", 0.5, f"negative values down to {vmin:g} but little air: probably CT"


def modality_warning(task_name, task_modality, guess):
    """The one warning text for a volume that looks like another modality than a task's, else None.

    `guess`: ("CT" | "MR", confidence, reason) from `guess_modality`."""
    modality, confidence, reason = guess
    if not task_modality or not modality or modality == task_modality or confidence < WARN_CONFIDENCE:
        return None
    example = "total_mr" if modality == "MR" else "total"
    return (f"This volume looks like {modality}" + (f" ({reason})" if reason else "") + f", but the task is for "
            f"{task_modality}: '{task_name}' is for {task_modality} images, so its result will probably be wrong. "
            f"Choose a task made for {modality} (e.g. '{example}') or check the volume.")


def check_modality(img, task_name, task_modality):
    """Refuse a CT task on a volume that clearly is not in Hounsfield units; returns a
    warning (or None) otherwise.

    CT models clip intensities to a fixed Hounsfield window, so an MR volume (or a CT
    whose rescale slope/intercept were lost) gives a confident-looking but meaningless
    result: that is an error. MR models normalise each image by its own mean and
    deviation and still run on CT, so an MR task on a CT volume only warns."""
    guess = modality, confidence, reason = guess_modality(img)
    if task_modality == "CT" and modality != "CT" and confidence >= REFUSE_CONFIDENCE:
        raise InputImageError(
            f"The volume does not look like a CT in Hounsfield units ({reason}); task '{task_name}' is made for CT, "
            f"so its result would be meaningless.",
            "For an MR volume choose an MR task (e.g. 'total_mr'). For a CT, check that its intensities are "
            "Hounsfield units (air about -1000). To run anyway: --ignore_modality on the command line, "
            "check_modality=False in Python, or confirm the warning in the Slicer panel.")
    return modality_warning(task_name, task_modality, guess)
