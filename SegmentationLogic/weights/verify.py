"""Checks that a folder is a usable nnU-Net model before it is installed.

A model folder (`<trainer>__<plans>__<configuration>`) must hold a dataset.json and a
plans.json that parse, plans for its configuration, and fold_N/checkpoint_final.pth
files that load and hold finite network weights whose output layer matches the labels.

Checkpoints are pickles, and unpickling an untrusted file can run arbitrary code. We
load them with `torch.load(weights_only=True)`, which refuses every Python object but
tensors and plain containers, plus an allow-list of what nnU-Net really stores besides
the weights: numpy scalars and arrays in the training log (`_best_ema`, losses, Dice)
and `torch.device` in `init_args`. A checkpoint needing anything else is refused, naming
the objects. Because a pickle that loads under this restricted unpickler references
nothing outside the allow-list, nnU-Net's own later `weights_only=False` load of the
same file runs no foreign code either.
"""
import contextlib
import json
import pickle
import re
import zipfile
from pathlib import Path

from ..errors import InvalidWeightsError

SUBDIR_RE = re.compile(r"^(?P<trainer>[^_][^/]*?)__(?P<plans>[^/]+?)__(?P<configuration>[^/_][^/]*)$")
DATASET_RE = re.compile(r"^Dataset\d{3}_[^/]+$")
CHECKPOINT = "checkpoint_final.pth"

_FIX = ("Download the model again, or import the official release zip of this dataset "
        "(python -m SegmentationLogic import-weights FILE.zip).")


def _safe_globals():
    """What nnU-Net checkpoints hold besides tensors (numpy 1 and numpy 2 names)."""
    # numpy only here: a remote-only client imports this package (the token's home) without it
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    scalar, reconstruct = core.multiarray.scalar, core.multiarray._reconstruct
    allowed = [np.dtype, np.ndarray, (scalar, "numpy.core.multiarray.scalar"),
               (scalar, "numpy._core.multiarray.scalar"), (reconstruct, "numpy.core.multiarray._reconstruct"),
               (reconstruct, "numpy._core.multiarray._reconstruct")]
    allowed += [type(np.dtype(t)) for t in ("f8", "f4", "f2", "i8", "i4", "i2", "i1", "u8", "u4", "u2", "u1", "?")]
    return allowed


def load_checkpoint(path):
    """Load an nnU-Net checkpoint without executing code from it (see module docstring)."""
    import torch  # heavy: only when a checkpoint is really checked

    path = Path(path)
    try:
        with _allowing(_safe_globals()):
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:  # legacy (non-zip) checkpoints cannot be memory-mapped
                if "mmap" not in str(e):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = _unsafe_globals(path)
        if unsafe:
            raise InvalidWeightsError(
                f"{path} contains Python objects that are not model weights ({', '.join(unsafe[:5])}); "
                f"it was refused because loading it could run code.",
                "Use the official weights. If you trust this file, copy its folder into the weights folder "
                "by hand (this skips the check).") from None
        raise InvalidWeightsError(f"{path} is not a readable PyTorch checkpoint ({_short(e)}).", _FIX) from None
    except Exception as e:  # truncated or damaged file: zip errors, EOF, bad magic...
        raise InvalidWeightsError(f"{path} is not a readable PyTorch checkpoint ({_short(e)}).", _FIX) from None


def _allowing(allowed):
    """torch >= 2.5: a scoped allow-list; 2.4: a process-wide one; older: no safe way to load them."""
    import torch  # heavy: only when a checkpoint is really checked

    ser = torch.serialization
    if hasattr(ser, "safe_globals"):
        return ser.safe_globals(allowed)
    if hasattr(ser, "add_safe_globals"):
        ser.add_safe_globals([g[0] if isinstance(g, tuple) else g for g in allowed])
        return contextlib.nullcontext()
    raise InvalidWeightsError(f"PyTorch {torch.__version__} cannot check model checkpoints safely.",
                              "Update PyTorch to 2.4 or newer.")


def _unsafe_globals(path):
    import torch  # heavy: only when a checkpoint is really checked

    allowed = set()
    for g in _safe_globals():
        obj, name = g if isinstance(g, tuple) else (g, f"{g.__module__}.{g.__name__}")
        allowed.add(name)
    try:
        return [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(path) if g not in allowed]
    except Exception:
        return []


def _short(e):
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:200]


def _load_json(path, what):
    if not path.is_file():
        raise InvalidWeightsError(f"The model folder {path.parent} has no {path.name} ({what}).", _FIX)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise InvalidWeightsError(f"{path} is not valid JSON ({_short(e)}).", _FIX) from None
    if not isinstance(data, dict):
        raise InvalidWeightsError(f"{path} is not a JSON object.", _FIX)
    return data


def _output_channels(weights):
    """Number of output channels of the deepest-resolution segmentation head, if recognisable."""
    heads = [(k, v) for k, v in weights.items() if re.search(r"seg_layers\.\d+\.weight$", k)]
    if not heads:
        return None
    key, tensor = max(heads, key=lambda kv: int(re.search(r"seg_layers\.(\d+)\.", kv[0]).group(1)))
    return int(tensor.shape[0])


def check_checkpoint(path, n_labels=None):
    import torch  # heavy: only when a checkpoint is really checked

    ckpt = load_checkpoint(path)
    weights = ckpt.get("network_weights") if isinstance(ckpt, dict) else None
    if not isinstance(weights, dict) or not weights:
        raise InvalidWeightsError(f"{path} holds no network weights ('network_weights' is missing or empty).", _FIX)
    for name, tensor in weights.items():
        if not isinstance(tensor, torch.Tensor):
            raise InvalidWeightsError(f"{path}: network weight '{name}' is not a tensor.", _FIX)
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise InvalidWeightsError(f"{path}: network weight '{name}' contains NaN or infinite values.", _FIX)
    channels = _output_channels(weights)
    if n_labels is not None and channels is not None and channels != n_labels:
        raise InvalidWeightsError(
            f"{path} predicts {channels} labels but its dataset.json lists {n_labels}: the files do not belong "
            f"together.", _FIX)
    return ckpt


def folds_in(model_folder):
    return sorted(int(p.name[5:]) for p in Path(model_folder).glob("fold_*") if p.name[5:].isdigit() and p.is_dir())


def verify_model_folder(folder, folds=None, progress=None):
    """Check one `<trainer>__<plans>__<configuration>` folder; return the folds verified.

    `folds`: folds that must be present (None: at least one). Raises InvalidWeightsError
    naming what is missing or broken.
    """
    folder = Path(folder)
    m = SUBDIR_RE.match(folder.name)
    if not m:
        raise InvalidWeightsError(f"{folder} is not named <trainer>__<plans>__<configuration>.", _FIX)
    dataset = _load_json(folder / "dataset.json", "labels and channels")
    plans = _load_json(folder / "plans.json", "network and preprocessing plans")
    labels = dataset.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise InvalidWeightsError(f"{folder / 'dataset.json'} has no 'labels'.", _FIX)
    configs = plans.get("configurations")
    if not isinstance(configs, dict) or m["configuration"] not in configs:
        raise InvalidWeightsError(
            f"{folder / 'plans.json'} has no configuration '{m['configuration']}' "
            f"(has: {', '.join(configs) if isinstance(configs, dict) else 'none'}).", _FIX)
    present = [f for f in folds_in(folder) if (folder / f"fold_{f}" / CHECKPOINT).is_file()]
    wanted = list(folds) if folds is not None else present
    missing = [f for f in wanted if f not in present]
    if missing or not wanted:
        what = ", ".join(f"fold_{f}/{CHECKPOINT}" for f in missing) if missing else f"fold_N/{CHECKPOINT}"
        raise InvalidWeightsError(f"The model folder {folder} has no {what}.", _FIX)
    # Region-based models (label values are lists) have one output channel per region.
    n_labels = None
    if all(isinstance(v, int) for v in labels.values()):
        n_labels = len(labels) - (1 if "ignore" in labels else 0)  # the ignore label has no output channel
    for i, f in enumerate(present):
        if progress is not None:
            progress(f"fold_{f}", i, len(present))
        check_checkpoint(folder / f"fold_{f}" / CHECKPOINT, n_labels)
    return present


def quick_check(folder, folds):
    """What a run checks of an installed model before it starts (milliseconds, no torch):
    dataset.json and plans.json parse and hold the labels and this folder's configuration,
    and each fold's checkpoint is a complete file (torch saves a zip archive; a truncated
    copy has no central directory). `verify_model_folder` is the full check made on install."""
    folder = Path(folder)
    m = SUBDIR_RE.match(folder.name)
    dataset = _load_json(folder / "dataset.json", "labels and channels")
    plans = _load_json(folder / "plans.json", "network and preprocessing plans")
    if not isinstance(dataset.get("labels"), dict) or not dataset["labels"]:
        raise InvalidWeightsError(f"{folder / 'dataset.json'} has no 'labels'.", _FIX)
    configs = plans.get("configurations")
    if m and (not isinstance(configs, dict) or m["configuration"] not in configs):
        raise InvalidWeightsError(
            f"{folder / 'plans.json'} has no configuration '{m['configuration']}' "
            f"(has: {', '.join(configs) if isinstance(configs, dict) else 'none'}).", _FIX)
    for f in folds:
        path = folder / f"fold_{f}" / CHECKPOINT
        try:
            with open(path, "rb") as fh:
                magic = fh.read(2)
            if magic == b"PK":
                zipfile.ZipFile(path).close()  # reads only the central directory, at the end of the file
        except (OSError, zipfile.BadZipFile, EOFError) as e:
            raise InvalidWeightsError(f"{path} is damaged or incomplete ({_short(e)}).", _FIX) from None
        if magic != b"PK" and magic[:1] != b"\x80":  # a zip, or a legacy pickle
            raise InvalidWeightsError(f"{path} is not a PyTorch checkpoint (empty or another kind of file).", _FIX)


def model_subdirs(dataset_folder):
    return sorted(p for p in Path(dataset_folder).iterdir() if p.is_dir() and SUBDIR_RE.match(p.name))


def verify_dataset_folder(dataset_folder, required=None, progress=None):
    """Check every model folder of a dataset folder.

    `required`: {subdir name: folds or None} that must be present (from the catalogue).
    """
    dataset_folder = Path(dataset_folder)
    subdirs = model_subdirs(dataset_folder)
    names = {p.name for p in subdirs}
    for name in required or {}:
        if name not in names:
            raise InvalidWeightsError(
                f"{dataset_folder.name} has no model folder {name} (found: {', '.join(sorted(names)) or 'none'}).",
                _FIX)
    if not subdirs:
        raise InvalidWeightsError(
            f"{dataset_folder.name} holds no model folder (<trainer>__<plans>__<configuration> with "
            f"plans.json, dataset.json and fold_N/{CHECKPOINT}).", _FIX)
    for p in subdirs:
        verify_model_folder(p, (required or {}).get(p.name), progress)
