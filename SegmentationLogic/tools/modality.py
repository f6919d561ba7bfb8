"""`get-modality`: CT or MR, from the image's intensities (the official `totalseg_get_modality`).

The official classifier: five XGBoost models (one per cross-validation fold) on four
features of the whole image (mean, standard deviation, minimum, maximum of the voxel
values); each fold votes 0 (CT) or 1 (MR); the mean vote decides, and the share of folds
that agree is the probability. Any input the engine reads is accepted (the official
command takes NIfTI only). `-n` (the variant on normalised intensities inside organs) is
not available yet.
"""

import numpy as np

from ..errors import SegmentationError
from . import classifiers
from .results import write_result

MODEL_PREFIX = "modality_classifiers_2025_02_24.json"
FOLDS = 5


def features(img):
    data = np.asanyarray(img.get_fdata())
    return [np.mean(data), np.std(data), np.min(data), np.max(data)]


def load_models(prefix=None, download=True):
    """The five fold classifiers; `prefix`: a path whose '.0'..'.4' files are the models."""
    classifiers.require_xgboost("get-modality")
    import xgboost as xgb

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


def cmd_get_modality(args):
    from ..image_io import load_image

    if args.normalized_intensities:
        raise SegmentationError("get-modality -n (normalised intensities inside organs) is not available yet.",
                                "Run without -n: the intensity-based classifier works on CT in Hounsfield units "
                                "and on MR.")
    models = load_models(args.model, download=not args.no_download)
    result = predict_modality(load_image(args.input), models)
    return write_result(result, args.output, args.quiet)


def add_command(sub, common, progress_from_args, emit_result):
    p = sub.add_parser("get-modality", help="CT or MR? (the official intensity classifier)",
                       description="Predict whether an image is CT or MR, as the official totalseg_get_modality.")
    p.add_argument("-i", dest="input", required=True, help="image (NIfTI, NRRD, DICOM folder or zip)")
    p.add_argument("-o", dest="output", required=True, help="output JSON file")
    p.add_argument("-n", dest="normalized_intensities", action="store_true",
                   help="(not available yet) use normalised intensities inside organs")
    p.add_argument("--model", default=None,
                   help="classifier path prefix (files PREFIX.0 .. PREFIX.4); default: the official classifier, "
                        "downloaded once into the TotalSegmentator home")
    p.add_argument("--no_download", action="store_true", help="fail instead of downloading the classifier")
    p.add_argument("-d", "--device", default="cpu", help="accepted for compatibility; the classifier runs on the CPU")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=cmd_get_modality)
