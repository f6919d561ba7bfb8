"""Model weights: where they live, and making sure the ones a run needs are there.

The folder layout and environment variables are the official tool's, so weights a user
already downloaded with TotalSegmentator are reused:
    $TOTALSEG_WEIGHTS_PATH                      (used as is), else
    $TOTALSEG_HOME_DIR/nnunet/results, else
    ~/.totalsegmentator/nnunet/results
    <weights>/<DatasetXXX_name>/<trainer>__<plans>__<configuration>/{dataset.json, plans.json, fold_N/...}

Getting weights there: download.py (official release URLs, a mirror, the licence server),
install.py (import from a zip or folder; verified, atomic), license.py (the licence key),
model_check.py (what "a usable model" means, and loading checkpoints safely).
"""
import os
from pathlib import Path

from .errors import WeightsMissingError


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


def ensure_models(models, weights_dir=None, download=True, license_key=None, progress=None, mirror=None):
    """Return the model folders, downloading what is missing when allowed (see download.py)."""
    missing = [m for m in models if not is_installed(m, weights_dir)]
    if missing and download:
        from .download import download_models  # network code only when needed

        download_models(missing, weights_dir=weights_dir, license_key=license_key, progress=progress, mirror=mirror)
        missing = [m for m in models if not is_installed(m, weights_dir)]
    if missing:
        names = ", ".join(m.folder for m in missing)
        raise WeightsMissingError(
            f"Model weights not installed: {names} (looked in {resolve_weights_dir(weights_dir)}).",
            "Download them (python -m SegmentationLogic download-weights --task ...), or import a zip or folder "
            "you downloaded elsewhere (python -m SegmentationLogic import-weights PATH).")
    return [model_dir(m, weights_dir) for m in models]


# -- facade for the GUI and scripts (implementations in install.py and license.py) -----------

def import_weights(path, weights_dir=None, progress=None):
    """Install weights from a zip or folder (verified, atomic); return the installed dataset folders."""
    from .install import import_weights as _import

    return _import(path, weights_dir=weights_dir, progress=progress)


def set_license(key):
    """Store a licence key (user-only readable config.json); return the file's path."""
    from .license import set_license as _set

    return _set(key)


def get_license():
    """The stored licence key masked for display ("aca_****...1234"), or None."""
    from .license import get_license as _get

    return _get()
