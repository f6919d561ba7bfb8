"""Classifier files in the official formats, trained here on synthetic features (test models).

- modality: five XGBoost classifiers (one per fold) on [mean, std, min, max] of an image,
  saved as the official `modality_classifiers_2025_02_24.json.<fold>` files (UBJSON, as
  XGBoost writes a name not ending in .json), CT-like features -> 0, MR-like -> 1;
- contrast phase: a pickle of {fold: XGBRegressor} on the 20 organ intensities, predicting a
  time since injection, as the official `contrast_phase_classifiers_2024_07_19.pkl`.
They are small and quick to fit; they say nothing about real images.
"""
import pickle
from pathlib import Path

import numpy as np

MODALITY_PREFIX = "modality_classifiers_2025_02_24.json"


def build_modality_classifiers(folder, seed=0):
    """Write the five fold files into `folder`; returns the path prefix (folder/MODALITY_PREFIX)."""
    import xgboost as xgb

    rng = np.random.default_rng(seed)
    n = 200
    ct = np.column_stack([rng.uniform(-700, 100, n), rng.uniform(300, 600, n), rng.uniform(-1100, -900, n),
                          rng.uniform(1000, 3100, n)])
    mr = np.column_stack([rng.uniform(20, 600, n), rng.uniform(30, 400, n), rng.uniform(-60, 10, n),
                          rng.uniform(300, 5000, n)])
    x, y = np.vstack([ct, mr]), np.r_[np.zeros(n), np.ones(n)]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for fold in range(5):
        keep = np.arange(len(y)) % 5 != fold
        clf = xgb.XGBClassifier(n_estimators=15, max_depth=3, random_state=fold)
        clf.fit(x[keep], y[keep])
        clf.save_model(str(folder / f"{MODALITY_PREFIX}.{fold}"))
    return folder / MODALITY_PREFIX


def build_phase_classifier(path, seed=0):
    """Write a {fold: XGBRegressor} pickle to `path` (20 features -> seconds after injection)."""
    import xgboost as xgb

    rng = np.random.default_rng(seed)
    x = rng.uniform(-100, 400, (300, 20))
    y = np.clip(x[:, 5] * 0.2 + x[:, 0] * 0.1 + rng.normal(0, 5, 300), 0, 150)  # aorta and liver drive it
    models = {}
    for fold in range(5):
        keep = np.arange(len(y)) % 5 != fold
        models[fold] = xgb.XGBRegressor(n_estimators=20, max_depth=3, random_state=fold).fit(x[keep], y[keep])
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(models, f)
    return Path(path)
