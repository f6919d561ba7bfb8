"""Where model weights live, and whether a model is installed there.

The folder layout and environment variables are the official tool's, so weights a user
already downloaded with TotalSegmentator are reused:
    $TOTALSEG_WEIGHTS_PATH                      (used as is), else
    $TOTALSEG_HOME_DIR/nnunet/results, else
    ~/.totalsegmentator/nnunet/results
    <weights>/<DatasetXXX_name>/<trainer>__<plans>__<configuration>/{dataset.json, plans.json, fold_N/...}
"""
import os
from pathlib import Path


def totalseg_home():
    env = os.environ.get("TOTALSEG_HOME_DIR")
    if env:
        return Path(env)
    home = Path.home()
    if str(home) == "/":  # as the official tool: a home-less service account
        return Path(os.environ.get("TMPDIR", "/tmp")) / ".totalsegmentator"
    return home / ".totalsegmentator"


def default_weights_dir():
    env = os.environ.get("TOTALSEG_WEIGHTS_PATH")
    if env:
        return Path(env)
    return totalseg_home() / "nnunet" / "results"


def resolve_weights_dir(weights_dir=None):
    return Path(weights_dir) if weights_dir else default_weights_dir()


def model_dir(model, weights_dir=None):
    """Folder of one trainer/plans/configuration of a dataset (may not exist)."""
    return resolve_weights_dir(weights_dir) / model.folder / model.subdir


def folds_of(model, weights_dir=None):
    """Folds to run: the catalogue's, or, where the task ensembles all, every fold_N folder
    holding a final checkpoint, in nnU-Net's order (folder names sorted as text: the
    ensemble sums the folds' logits in this order)."""
    if model.folds is not None:
        return list(model.folds)
    folder = model_dir(model, weights_dir)
    names = sorted(p.name for p in folder.glob("fold_*")
                   if p.name[5:].isdigit() and (p / "checkpoint_final.pth").is_file())
    return [int(n[5:]) for n in names]


def is_installed(model, weights_dir=None):
    d = model_dir(model, weights_dir)
    if not ((d / "plans.json").is_file() and (d / "dataset.json").is_file()):
        return False
    folds = folds_of(model, weights_dir)
    return bool(folds) and all((d / f"fold_{f}" / "checkpoint_final.pth").is_file() for f in folds)
