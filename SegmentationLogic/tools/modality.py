"""`get-modality`: CT or MR, from the image's intensities (the official `totalseg_get_modality`).

The official classifier: five XGBoost models (one per cross-validation fold) on four
features of the whole image (mean, standard deviation, minimum, maximum of the voxel
values); each fold votes 0 (CT) or 1 (MR); the mean vote decides, and the share of folds
that agree is the probability. Any input the engine reads is accepted (the official
command takes NIfTI only). `-n` (the variant on normalised intensities inside organs) is
not available yet.
"""

import numpy as np

from . import classifiers

MODEL_PREFIX = "modality_classifiers_2025_02_24.json"
FOLDS = 5


def features(img):
    data = np.asanyarray(img.get_fdata())
    return [np.mean(data), np.std(data), np.min(data), np.max(data)]


def load_models(prefix=None, download=True):
    """The five fold classifiers; `prefix`: a path whose '.0'..'.4' files are the models."""
    classifiers.require_xgboost("get-modality")
    import xgboost as xgb  # optional (`tools` extra), checked above

    paths = [f"{prefix}.{k}" for k in range(FOLDS)] if prefix else \
        [classifiers.locate(f"{MODEL_PREFIX}.{k}", download) for k in range(FOLDS)]
    models = []
    for path in paths:
        model = xgb.XGBClassifier()
        try:
            model.load_model(str(path))
        except Exception as e:  # noqa: BLE001 - xgboost raises its own error types for bad files
            raise classifiers.ClassifierError(f"Cannot read the modality classifier {path}: {e}",
                                              "Give the five fold files of the official classifier.") from e
        models.append(model)
    return models


def predict_modality(img, models):
    """{"modality": "ct" | "mr", "probability": share of the folds that agree}."""
    votes = np.mean([m.predict([features(img)])[0] for m in models])
    return {"modality": "ct" if votes < 0.5 else "mr", "probability": float(1 - votes if votes < 0.5 else votes)}
