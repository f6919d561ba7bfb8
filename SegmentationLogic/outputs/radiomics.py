"""`--radiomics`: shape and first-order radiomics features of every class file (pyradiomics).

As the official tool: each `*.nii.gz` of the per-class output folder is a mask on the
input image (a NIfTI file); features of pyradiomics' `shape` and `firstorder` classes,
resampled to 3 mm voxels (geometry tolerance 1e-3), rounded to 4 decimals; an empty
mask, or one pyradiomics fails on, gets 0 for every feature. The result is
`statistics_radiomics.json`: {class: {feature: value}}.

pyradiomics is optional (its releases do not build on every Python): without it the
run is refused before anything is computed, with the fix.
"""
import logging

import nibabel as nib
import numpy as np

from ..errors import SegmentationError

log = logging.getLogger(__name__)

SETTINGS = {"resampledPixelSpacing": [3, 3, 3], "geometryTolerance": 1e-3, "featureClass": ["shape"]}
FEATURE_CLASSES = ("shape", "firstorder")
SHAPE_FEATURES = ["Elongation", "Flatness", "LeastAxisLength", "MajorAxisLength", "Maximum2DDiameterColumn",
                  "Maximum2DDiameterRow", "Maximum2DDiameterSlice", "Maximum3DDiameter", "MeshVolume",
                  "MinorAxisLength", "Sphericity", "SurfaceArea", "SurfaceVolumeRatio", "VoxelVolume"]
FIRSTORDER_FEATURES = ["10Percentile", "90Percentile", "Energy", "Entropy", "InterquartileRange", "Kurtosis", "Maximum",
                       "MeanAbsoluteDeviation", "Mean", "Median", "Minimum", "Range", "RobustMeanAbsoluteDeviation",
                       "RootMeanSquared", "Skewness", "TotalEnergy", "Uniformity", "Variance"]
# what an empty mask gets (the official list also names texture features it never computes; zeros all the same)
EMPTY_FEATURES = [f"shape_{n}" for n in SHAPE_FEATURES] + [f"firstorder_{n}" for n in FIRSTORDER_FEATURES]


class RadiomicsUnavailableError(SegmentationError):
    kind = "dependency"


def require_radiomics():
    try:
        import radiomics  # noqa: F401 - pyradiomics, optional: only --radiomics needs it
    except ImportError:
        raise RadiomicsUnavailableError(
            "--radiomics needs pyradiomics, which is not installed.",
            "Install it (pip install pyradiomics; it builds from source on some Pythons) and run again, or leave "
            "--radiomics out.") from None


def mask_features(extractor, image_path, mask_path):
    """{feature: value} of one mask (zeros for an empty mask or a failure, as the official tool)."""
    try:
        if np.unique(np.asanyarray(nib.load(mask_path).dataobj)).size > 1:
            found = extractor.execute(str(image_path), str(mask_path))
            features = {k[len("original_"):]: v for k, v in found.items() if k.startswith("original_")}
        else:
            features = dict.fromkeys(EMPTY_FEATURES, 0)
    except Exception as e:  # noqa: BLE001 - pyradiomics raises many kinds; the official tool writes zeros
        log.warning("radiomics failed on %s (%s): features set to 0", mask_path.name, e)
        features = dict.fromkeys(EMPTY_FEATURES, 0)
    return {k: round(float(v), 4) for k, v in features.items()}


def radiomics_features(image_path, mask_dir):
    """{class: {feature: value}} for every `*.nii.gz` in `mask_dir` (sorted by name)."""
    require_radiomics()
    from radiomics import featureextractor  # pyradiomics, optional (checked above)

    extractor = featureextractor.RadiomicsFeatureExtractor(**SETTINGS)
    extractor.disableAllFeatures()
    for name in FEATURE_CLASSES:
        extractor.enableFeatureClassByName(name)
    return {mask.name.split(".")[0]: mask_features(extractor, image_path, mask)
            for mask in sorted(mask_dir.glob("*.nii.gz"))}
