"""`get-phase`: the contrast phase of a CT (the official `totalseg_get_phase`).

Features: the median intensity of 16 organs and vessels from `total --fast` statistics
(border classes included) and of four neck vessels from `headneck_bones_vessels` (run
only when the brain is in the image, more than 100 mm3; otherwise 0). The official
classifier (five XGBoost regressors, one per fold, in a pickle) predicts the time since
injection; their mean gives the phase:

  < 10 s native, < 30 s arterial early, < 60 s arterial late, else portal venous
  (probability 1.0 in the middle of a band, 0.7 near its edges, 0.3 beyond 100 s).

`-s stats.json` takes the total statistics from a file instead of running the model, as
the official option does. The pickle is loaded with an unpickler that accepts only the
XGBoost model classes it holds, so a tampered file cannot run code.
"""
import pickle

import numpy as np

from ..errors import SegmentationError
from . import classifiers

MODEL_FILE = "contrast_phase_classifiers_2024_07_19.pkl"
ORGANS = ["liver", "pancreas", "urinary_bladder", "gallbladder", "heart", "aorta", "inferior_vena_cava",
          "portal_vein_and_splenic_vein", "iliac_vena_left", "iliac_vena_right", "iliac_artery_left",
          "iliac_artery_right", "pulmonary_vein", "brain", "colon", "small_bowel"]
ORGANS_HEADNECK = ["internal_carotid_artery_right", "internal_carotid_artery_left", "internal_jugular_vein_right",
                   "internal_jugular_vein_left"]
BRAIN_MIN_MM3 = 100
ALLOWED_GLOBALS = {("xgboost.sklearn", "XGBRegressor"), ("xgboost.sklearn", "XGBClassifier"),
                   ("xgboost.core", "Booster"), ("builtins", "bytearray")}
# (upper bound of pi time in s, phase, probability), first match wins
PHASES = [(5, "native", 1.0), (10, "native", 0.7), (20, "arterial_early", 0.7), (30, "arterial_early", 1.0),
          (50, "arterial_late", 1.0), (60, "arterial_late", 0.7), (90, "portal_venous", 1.0),
          (100, "portal_venous", 0.7), (float("inf"), "portal_venous", 0.3)]


def pi_time_to_phase(pi_time):
    return next((phase, p) for bound, phase, p in PHASES if pi_time < bound)


class _ModelUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a phase classifier")
        return super().find_class(module, name)


def load_models(path=None, download=True):
    """{fold: regressor} from the official pickle (or a file in its format)."""
    classifiers.require_xgboost("get-phase")
    path = path or classifiers.locate(MODEL_FILE, download)
    try:
        with open(path, "rb") as f:
            models = _ModelUnpickler(f).load()
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ValueError) as e:
        raise classifiers.ClassifierError(f"Cannot read the phase classifier {path}: {e}",
                                          "Give the official contrast-phase classifier (a pickle of XGBoost "
                                          "regressors, one per fold).") from e
    if not isinstance(models, dict) or not models:
        raise classifiers.ClassifierError(f"{path} is not a phase classifier (a dict of fold models).",
                                          "Give the official contrast-phase classifier.")
    return models


def predict_phase(stats, stats_headneck, models):
    features = [stats[o]["intensity"] for o in ORGANS] + [stats_headneck[o]["intensity"] for o in ORGANS_HEADNECK]
    preds = np.array([m.predict([features])[0] for m in models.values()])
    pi_time = round(float(np.mean(preds)), 2)
    phase, probability = pi_time_to_phase(pi_time)
    return {"pi_time": pi_time, "phase": phase, "probability": probability,
            "pi_time_min": round(float(preds.min()), 2), "pi_time_max": round(float(preds.max()), 2),
            "stddev": round(float(np.std(preds)), 4)}


def contrast_phase(input, models, segmenter, existing_stats=None, progress=None):
    """Run the models as the official command does and predict the phase."""
    options = dict(statistics=True, stats_aggregation="median", stats_include_incomplete=True, progress=progress)
    stats = existing_stats
    if stats is None:
        stats = segmenter.segment(input, None, task="total", quality="fast", **options).statistics
    missing = [o for o in ORGANS if o not in stats]
    if missing:
        raise SegmentationError(f"The statistics lack {', '.join(missing)}.",
                                "Give statistics of the task 'total' (all classes), or let get-phase run it.")
    if stats["brain"]["volume"] > BRAIN_MIN_MM3:
        stats_hn = segmenter.segment(input, None, task="headneck_bones_vessels", **options).statistics
    else:
        stats_hn = {o: {"intensity": 0.0} for o in ORGANS_HEADNECK}
    return predict_phase(stats, stats_hn, models)
