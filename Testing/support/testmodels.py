"""Small nnU-Net v2 models in the real TotalSegmentator weights layout.

Real weights cannot be downloaded here, so tests, the demo and benchmarks use models
built by this module, in the official layout (`<weights>/<DatasetXXX_...>/<trainer>__
nnUNetPlans__<config>/{dataset.json, plans.json, fold_N/checkpoint_final.pth}`), with the
official label maps of each model (part) and plans at the official model spacing.
Three kinds:

- "known": hand-set networks whose output is known by construction (known_models.py).
  Every voxel is classified by its own intensity alone: class C wins exactly where the
  (CT, Hounsfield) value lies in known_models.KNOWN_BANDS_HU[C], and the margins are wide,
  so the output is the same on any machine. Tests that assert what
  a segmentation contains use these, on inputs made to match (e.g. vessel_phantoms.phantom_ct)
  or on real images, where the band rule says what must come out.
- "fitted" (size "tiny"): fitted for a few seconds to the official reference segmentations
  of the example images, so their outputs look like anatomy (crop models find the liver,
  roi_subset has work). For parity tests (both tools on the same weights, whatever they
  are), the demo and benchmarks; no test asserts what they segment. Built reproducibly in
  worker processes (one thread each, deterministic algorithms, a fixed seed per model, CPU
  kernels capped at AVX2 on x86-64), so a model's weights do not depend on the machine's
  core count or vector unit, nor on which worker built it; their fingerprints are recorded
  in testmodels_fingerprints.json.
- "realistic": the network size of a real TotalSegmentator model (6 stages, 32..320
  features, 128^3 patch), untrained, for benchmarks.

Models are built once per content key (this file, the torch version, the kind) into one
shared cache, `$XDG_CACHE_HOME/totalsegmentator-slicer/test-models/<kind>-<key>/`, dataset
by dataset (so `make demo` and the tests share what either built), under a file lock, with
one progress line per model. Command line (prints the weights folder on stdout):

    python Testing/support/testmodels.py [--kind fitted|known|realistic] [--datasets 297 298]
    python Testing/support/testmodels.py --all          # what the tests need (`make testmodels`)
    python Testing/support/testmodels.py --record       # record the fitted models' fingerprints
"""
import argparse
import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[2]
for _path in (REPO, Path(__file__).resolve().parent):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import known_models  # noqa: E402
from SegmentationLogic.catalogue import load_catalogue  # noqa: E402
from sample_data import example_path  # noqa: E402

TEST_MODEL_MARKER = "TEST MODEL built by Testing/testmodels.py - not the real TotalSegmentator weights"
FINGERPRINTS = Path(__file__).with_name("testmodels_fingerprints.json")

CT_INTENSITIES = {"max": 3071.0, "mean": 60.0, "median": 50.0, "min": -1024.0,
                  "percentile_00_5": -1000.0, "percentile_99_5": 1600.0, "std": 400.0}

# dataset id -> how to make its training target
#   ref: reference segmentation file; mr: whether the input is the MR example
# vertebrae_pp (803) and vertebrae_body (305) learn from the total reference (see _training_pair)
# pleural_pericard_effusion (315) ensembles all folds: its test model has two
DEFAULT_DATASETS = (291, 292, 293, 294, 295, 297, 298, 300, 8, 850, 851, 852, 853, 803, 305, 315)
KINDS = ("known", "fitted", "realistic")

def default_cache_root():
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "totalsegmentator-slicer" / "test-models"


def recipe_hash(kind="fitted"):
    """What models of a kind are made from: this file, and known_models.py for the known
    ones. (Editing them builds new models.)"""
    files = [Path(__file__)] + ([Path(known_models.__file__)] if kind == "known" else [])
    return hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()[:16]


def _kind(size):
    return {"tiny": "fitted"}.get(size, size)


def weights_folder(cache_root=None, size="fitted"):
    """Where models of a kind live (whether built or not)."""
    import torch

    kind = _kind(size)
    if kind not in KINDS:
        raise ValueError(f"unknown kind of test model {size!r}: use one of {KINDS}")
    key = hashlib.sha256(f"{recipe_hash(kind)}|{torch.__version__}|{kind}".encode()).hexdigest()[:16]
    return Path(cache_root or default_cache_root()) / f"{kind}-{key}"


def _folder_of(dataset):
    return _task_of(dataset)[1].folder


def missing_datasets(folder, datasets):
    return [ds for ds in datasets if not (Path(folder) / _folder_of(ds)).is_dir()]


def build_test_weights(cache_root=None, size="tiny", datasets=DEFAULT_DATASETS, iterations=None, log=print):
    """Return a weights folder holding test models of a kind for `datasets`, building what is missing.

    size: "tiny" / "fitted" (fitted models), "known" (known-output models) or "realistic".
    log: called with one line per model built (nothing when all are cached)."""
    kind = _kind(size)
    target = weights_folder(cache_root, kind)
    datasets = tuple(dict.fromkeys(datasets))
    if not missing_datasets(target, datasets):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel sessions: one builds, the others wait and reuse
        todo = missing_datasets(target, datasets)
        if not todo:
            return target
        target.mkdir(exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=target))
        try:
            if kind == "fitted":
                _build_fitted(tmp, target, todo, iterations, log)
            else:
                for n, ds in enumerate(todo, start=1):
                    t = time.perf_counter()
                    build_model(tmp, ds, size=kind)
                    _install(tmp, target, ds)
                    log(f"test models ({kind}): [{n}/{len(todo)}] {_folder_of(ds)} ({time.perf_counter() - t:.1f} s)")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _install(tmp, target, dataset):
    """Move a finished dataset folder into the cache in one step: a dataset folder there is complete."""
    folder = _folder_of(dataset)
    os.replace(tmp / folder, target / folder)
    if (tmp / f"{dataset}.fingerprint").is_file():
        prints = _read_json(target / "fingerprints.json")
        prints[str(dataset)] = (tmp / f"{dataset}.fingerprint").read_text().strip()
        _write_json(target / "fingerprints.json", prints)


def _read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def _write_json(path, data):
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


# -- reproducible fitting: single-threaded worker processes with pinned CPU kernels --------

def _cpu_flags():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def reproducible_environment(env=None):
    """Environment for a fitting process: one thread, and on x86-64 with AVX2 the CPU kernels
    of torch, oneDNN and MKL capped at AVX2, so any such machine computes the same weights
    bit for bit (by default each picks the widest vector unit it has, and sums differ)."""
    env = dict(os.environ if env is None else env)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONHASHSEED="0")
    if platform.machine().lower() in ("x86_64", "amd64") and "avx2" in _cpu_flags():
        env.update(ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2", DNNL_MAX_CPU_ISA="AVX2",
                   MKL_CBWR="AVX2", MKL_ENABLE_INSTRUCTIONS="AVX2")
    return env


def platform_class():
    """The machines whose fitted models should match ours bit for bit."""
    env = reproducible_environment({})
    machine = platform.machine().lower()
    return f"{machine}-avx2" if env.get("ATEN_CPU_CAPABILITY") == "avx2" else machine


def _build_fitted(tmp, target, todo, iterations, log):
    """Fit the models in worker processes (as many as cores, at most 2), one line per model."""
    import selectors

    workers = max(1, min(2, os.cpu_count() or 1, len(todo)))
    queues = [todo[i::workers] for i in range(workers)]
    env = reproducible_environment()
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    procs = []
    for queue in queues:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(tmp), "--datasets", *map(str, queue)]
        if iterations:
            cmd += ["--iterations", str(iterations)]
        stderr = tempfile.TemporaryFile(mode="w+")  # a file: a chatty worker must not block on a full pipe
        procs.append((subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env), stderr))
    sel = selectors.DefaultSelector()
    for p, _ in procs:
        sel.register(p.stdout, selectors.EVENT_READ, p)
    done, open_pipes = 0, len(procs)
    try:
        while open_pipes:
            for key, _ in sel.select():
                line = key.fileobj.readline()
                if not line:
                    sel.unregister(key.fileobj)
                    open_pipes -= 1
                    continue
                if not line.startswith(BUILT):  # anything a library prints
                    continue
                _, ds, seconds = line.split()
                _install(tmp, target, int(ds))
                done += 1
                log(f"test models (fitted): [{done}/{len(todo)}] {_folder_of(int(ds))} ({float(seconds):.1f} s)")
        errors = []
        for p, stderr in procs:
            if p.wait() != 0:
                stderr.seek(0)
                errors.append(stderr.read()[-4000:])
        if errors:
            raise RuntimeError("building the fitted test models failed:\n" + "\n".join(errors))
    finally:
        for p, stderr in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            stderr.close()


BUILT = "built-test-model"  # a worker's line for each model it finished: BUILT dataset seconds


def _worker(out, datasets, iterations):
    import torch

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    torch.use_deterministic_algorithms(True)
    out = Path(out)
    for ds in datasets:
        t = time.perf_counter()
        folder = build_model(out, ds, size="fitted", iterations=iterations)
        (out / f"{ds}.fingerprint").write_text(fingerprint(folder) + "\n")
        print(BUILT, ds, round(time.perf_counter() - t, 2), flush=True)


def fingerprint(model_folder):
    """sha256 of a model's weights (every fold; names, dtypes, shapes and values)."""
    import torch

    h = hashlib.sha256()
    for path in sorted(Path(model_folder).glob("fold_*/checkpoint_final.pth")):
        weights = torch.load(path, map_location="cpu", weights_only=False)["network_weights"]
        h.update(path.parent.name.encode())
        for name in sorted(weights):
            t = weights[name].detach().cpu().contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
            h.update(t.numpy().tobytes())
    return h.hexdigest()[:24]


def _versions():
    import scipy
    import torch

    return {"torch": torch.__version__, "numpy": np.__version__, "scipy": scipy.__version__}


def fingerprint_differences(folder):
    """Plain sentences on how the fitted models in `folder` differ from the recorded ones
    ([] when they match, or when nothing is recorded for a model that is not built)."""
    recorded = _read_json(FINGERPRINTS)
    built = _read_json(Path(folder) / "fingerprints.json")
    if not recorded:
        return [f"no fingerprints are recorded ({FINGERPRINTS.name} is missing)"]
    if recorded.get("recipe") != recipe_hash():
        return [f"the recorded fingerprints are for another version of testmodels.py "
                f"(recorded {recorded.get('recipe')}, this one {recipe_hash()}): record them again with "
                f"`python Testing/support/testmodels.py --record`"]
    out = []
    here = {**_versions(), "platform": platform_class()}
    for ds, value in sorted(built.items(), key=lambda kv: int(kv[0])):
        want = recorded.get("models", {}).get(ds)
        if want and want != value:
            out.append(f"{_folder_of(int(ds))}: weights {value}, recorded {want}")
    if out:
        was = {k: recorded.get(k) for k in here}
        if was != here:
            out.append(f"built with {here}, recorded with {was}")
    return out


def record_fingerprints(folder):
    built = _read_json(Path(folder) / "fingerprints.json")
    _write_json(FINGERPRINTS, {"recipe": recipe_hash(), **_versions(), "platform": platform_class(),
                               "models": built})
    return FINGERPRINTS


# -- model definition ----------------------------------------------------------------

def _arch(size, n_classes):
    if size == "realistic":
        feats = [32, 64, 128, 256, 320, 320]
        strides = [[1, 1, 1]] + [[2, 2, 2]] * 5
        patch = [128, 128, 128]
        n_conv = [2] * 6
    else:
        feats = [6, 12, 24]
        strides = [[1, 1, 1], [2, 2, 2], [2, 2, 2]]
        patch = [64, 64, 64]  # fewer, larger tiles: half the CPU time per voxel of 48^3
        n_conv = [1, 1, 1]
    # 3x3x3 at every stage: with 1x1x1 at full resolution the 6 mm model no longer finds the
    # lungs, and the lung-cropped task's parity case has nothing to compare
    kernels = [[3, 3, 3]] * len(feats)
    arch = {"n_stages": len(feats), "features_per_stage": feats, "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": kernels, "strides": strides, "n_conv_per_stage": n_conv,
            "n_conv_per_stage_decoder": n_conv[:-1], "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}}
    if size == "known":
        arch = known_models.known_arch(arch)
    return arch, patch


def _network(arch, n_classes):
    import pydoc

    import torch
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    norm = pydoc.locate(arch["norm_op"]) if arch["norm_op"] else None
    return PlainConvUNet(1, arch["n_stages"], arch["features_per_stage"], torch.nn.Conv3d, arch["kernel_sizes"],
                         arch["strides"], arch["n_conv_per_stage"], n_classes, arch["n_conv_per_stage_decoder"],
                         conv_bias=True, norm_op=norm, norm_op_kwargs=arch["norm_op_kwargs"],
                         nonlin=pydoc.locate(arch["nonlin"]), nonlin_kwargs=arch["nonlin_kwargs"],
                         deep_supervision=False)


def _plans(folder, spacing_zyx, arch, patch, norm, plans_name="nnUNetPlans", configuration="3d_fullres"):
    def rs(is_seg, order):
        return {"is_seg": is_seg, "order": order, "order_z": 0, "force_separate_z": None}

    return {
        "dataset_name": folder, "plans_name": plans_name,
        "original_median_spacing_after_transp": list(spacing_zyx),
        "original_median_shape_after_transp": [100, 100, 100],
        "image_reader_writer": "NibabelIOWithReorient",
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "configurations": {configuration: {
            "data_identifier": f"{plans_name}_{configuration}", "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 2, "patch_size": list(patch), "median_image_size_in_voxels": [100, 100, 100],
            "spacing": list(spacing_zyx), "normalization_schemes": [norm], "use_mask_for_norm": [False],
            "resampling_fn_data": "resample_data_or_seg_to_shape",
            "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": rs(False, 3), "resampling_fn_seg_kwargs": rs(True, 1),
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": rs(False, 1),
            "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                             "arch_kwargs": arch, "_kw_requires_import": ["conv_op", "norm_op", "dropout_op",
                                                                          "nonlin"]},
            "batch_dice": False}},
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": CT_INTENSITIES},
    }


# -- training data -------------------------------------------------------------------

def _canonical(path):
    return nib.as_closest_canonical(nib.load(str(path)))


def _to_spacing(img, spacing_xyz, order):
    """Resample a canonical image's array to a spacing (training data only)."""
    from scipy.ndimage import zoom

    zooms = np.array(img.header.get_zooms()[:3], dtype=float)
    factor = zooms / np.array(spacing_xyz, dtype=float)
    data = np.asarray(img.dataobj)
    if np.allclose(factor, 1):
        return data
    return zoom(data, factor, order=order, mode="nearest")


def _training_pair(model, task_name, spacing_xyz):
    """(image, label) arrays in canonical x,y,z at the model spacing, labels model-local."""
    cat = load_catalogue()
    mr = task_name.endswith("_mr")
    img = _canonical(example_path("example_mr_sm.nii.gz" if mr else "example_ct_sm.nii.gz"))
    image = _to_spacing(img, spacing_xyz, order=1).astype(np.float32)
    if task_name in ("total", "total_mr"):
        if mr:
            ref_name = "example_seg_mr.nii.gz"
        else:  # parts of the 1.5 mm model learn from the normal reference, 3/6 mm from the fast one
            ref_name = "example_seg.nii.gz" if model.part else "example_seg_fast.nii.gz"
        ref = _to_spacing(_canonical(example_path(ref_name)), spacing_xyz, order=0).astype(np.int64)
        task_classes = cat.task(task_name).classes
        local = model.classes or task_classes
        lut = np.zeros(max(task_classes) + 1, dtype=np.int64)
        name_to_local = {v: k for k, v in local.items()}
        for value, name in task_classes.items():
            lut[value] = name_to_local.get(name, 0)
        return image, lut[ref]
    # the other tasks learn targets derived from the CT and its total reference, made at the
    # example's resolution, then brought to the model spacing
    from scipy.ndimage import binary_dilation, binary_erosion, binary_fill_holes, label

    ct = np.asarray(img.dataobj).astype(np.float32)
    total = cat.task("total")
    ref = np.asarray(_canonical(example_path("example_seg.nii.gz")).dataobj)
    if task_name == "body":
        body = binary_fill_holes(ct > -300)
        lab, n = label(body)
        if n:
            body = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
        target = body.astype(np.uint8)  # 1 body_trunc; extremities are outside this field of view
    elif task_name == "liver_vessels":
        liver = ref == total.label_of("liver")
        thr = np.percentile(ct[liver], 85) if liver.any() else 200
        target = (liver & (ct >= thr)).astype(np.uint8)
    elif task_name == "vertebrae_pp":
        # the vertebral bodies by level (the real model trained on labels eroded by 3 mm: here one voxel)
        target = np.zeros(ref.shape, np.uint8)
        for value, name in cat.task(task_name).classes.items():
            if name in total.classes.values():
                target[binary_erosion(ref == total.label_of(name))] = value
    elif task_name == "vertebrae_body":
        # the vertebrae as one class (1)
        target = np.isin(ref, [v for v, n in total.classes.items() if n.startswith("vertebrae_")]).astype(np.uint8)
    elif task_name == "pleural_pericard_effusion":
        # stand-ins the lung crop holds: lung_pleural = the lungs, pleural_effusion = the
        # soft tissue (-50..100 HU) right below them
        lungs = np.isin(ref, [v for v, n in total.classes.items() if n.startswith("lung_")])
        target = lungs.astype(np.uint8)
        target[binary_dilation(lungs, iterations=3) & ~lungs & (ct > -50) & (ct < 100)] = 2
    else:
        raise ValueError(f"no training recipe for {task_name}")
    return image, _to_spacing(nib.Nifti1Image(target, img.affine), spacing_xyz, 0).astype(np.int64)


def _normalise(image, norm):
    if norm == "CTNormalization":
        p = CT_INTENSITIES
        image = np.clip(image, p["percentile_00_5"], p["percentile_99_5"])
        return (image - p["mean"]) / p["std"]
    return (image - image.mean()) / max(image.std(), 1e-8)


def _fit(net, image_xyz, label_xyz, patch, n_classes, iterations, seed):
    import torch

    rng = np.random.default_rng(seed)
    img = image_xyz.transpose(2, 1, 0).astype(np.float32)  # nnU-Net order z, y, x
    lab = label_xyz.transpose(2, 1, 0)
    pad = [(0, max(0, p - s)) for p, s in zip(patch, img.shape)]
    img = np.pad(img, pad, mode="constant", constant_values=float(img.min()))
    lab = np.pad(lab, pad)
    counts = np.bincount(lab.ravel(), minlength=n_classes).astype(np.float64)
    weights = np.where(counts > 0, 1.0 / np.sqrt(counts + 1.0), 0.0)
    weights = torch.tensor(weights / weights[weights > 0].mean(), dtype=torch.float32)
    fg = np.argwhere(lab > 0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights)
    net.train()
    for _ in range(iterations):
        xs, ys = [], []
        for i in range(2):
            if i == 0 and fg.size:  # like nnU-Net, oversample foreground so small classes are learnt
                centre = fg[rng.integers(len(fg))]
                start = [int(np.clip(c - p // 2, 0, s - p)) for c, s, p in zip(centre, img.shape, patch)]
            else:
                start = [int(rng.integers(0, s - p + 1)) for s, p in zip(img.shape, patch)]
            sl = tuple(slice(a, a + p) for a, p in zip(start, patch))
            xs.append(img[sl][None])
            ys.append(lab[sl])
        x = torch.from_numpy(np.stack(xs))
        y = torch.from_numpy(np.stack(ys))
        opt.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
    net.eval()


def _task_of(dataset):
    """(task name, ModelSpec, spacing [x,y,z]) of the first catalogue use of a dataset."""
    cat = load_catalogue()
    for task in cat.tasks():
        for mode in task.modes.values():
            for model in mode.models:
                if model.dataset == dataset:
                    return task.name, model, mode.resample
    raise KeyError(dataset)


TRAIN_PATCH = (24, 24, 24)  # fully convolutional: train on small patches (fast), infer on the plans patch

# liver_vessels and pleural_pericard_effusion have no TotalSegmentator resampling: nnU-Net
# resamples to its plans spacing (fitted models use a spacing that differs from the examples',
# so that path is exercised; known models keep 1.5 mm, the phantoms' spacing, so nothing moves)
PLANS_SPACING_OVERRIDE_ZYX = {8: [1.5, 1.0, 1.0], 315: [1.5, 1.5, 1.5]}
KNOWN_SPACING_ZYX = [1.5, 1.5, 1.5]
ENSEMBLE_FOLDS = 2


def build_model(weights_dir, dataset, size="fitted", iterations=None, seed=0):
    import torch

    kind = _kind(size)
    task_name, model, resample_xyz = _task_of(dataset)
    cat = load_catalogue()
    classes = model.classes or cat.task(task_name).classes
    n_classes = max(classes) + 1
    mr = task_name.endswith("_mr")
    norm = "ZScoreNormalization" if mr else "CTNormalization"
    spacing_zyx = list(resample_xyz[::-1]) if resample_xyz else None
    if dataset in PLANS_SPACING_OVERRIDE_ZYX:
        spacing_zyx = KNOWN_SPACING_ZYX if kind == "known" else PLANS_SPACING_OVERRIDE_ZYX[dataset]
    arch, patch = _arch(kind, n_classes)

    out = Path(weights_dir) / model.folder / model.subdir
    # a task that ensembles "all folds" gets two, fitted differently, so the ensemble differs from either
    for fold in range(1 if model.folds is not None else ENSEMBLE_FOLDS):
        torch.manual_seed(seed + dataset + 1000 * fold)
        net = _network(arch, n_classes)
        if kind == "fitted":
            image, label = _training_pair(model, task_name, spacing_zyx[::-1])
            image = _normalise(image, norm).astype(np.float32)
            _fit(net, image, label, TRAIN_PATCH, n_classes, iterations or 100, seed + dataset + 1000 * fold)
        elif kind == "known":
            known_models.set_known_weights(net, classes, norm, CT_INTENSITIES)
        (out / f"fold_{fold}").mkdir(parents=True, exist_ok=True)
        torch.save({"network_weights": net.state_dict(), "trainer_name": model.trainer,
                    "init_args": {"configuration": model.configuration},
                    "inference_allowed_mirroring_axes": (0, 1, 2)}, out / f"fold_{fold}" / "checkpoint_final.pth")
    labels = {"background": 0, **{classes[k]: k for k in sorted(classes)}}
    dataset_json = {"channel_names": {"0": "MRI" if mr else "CT"}, "labels": labels, "numTraining": 1,
                    "file_ending": ".nii.gz", "overwrite_image_reader_writer": "NibabelIOWithReorient",
                    "description": TEST_MODEL_MARKER}
    (out / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    (out / "plans.json").write_text(json.dumps(_plans(model.folder, spacing_zyx, arch, patch, norm), indent=2))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", "--size", dest="kind", choices=[*KINDS, "tiny"], default="fitted")
    ap.add_argument("--cache", default=None, help="cache folder (default: %(default)s -> the user cache)")
    ap.add_argument("--datasets", type=int, nargs="*", default=list(DEFAULT_DATASETS))
    ap.add_argument("--all", action="store_true", help="the known and the fitted models the tests use")
    ap.add_argument("--record", action="store_true", help="record the fitted models' fingerprints")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--iterations", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        _worker(a.worker, a.datasets, a.iterations)
        return 0
    log = (lambda line: None) if a.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    kinds = ("known", "fitted") if a.all or a.record else (_kind(a.kind),)
    for kind in kinds:
        folder = build_test_weights(a.cache, kind, tuple(a.datasets), log=log)
        if kind == "fitted":
            differences = fingerprint_differences(folder)
            if a.record:
                log(f"fingerprints recorded in {record_fingerprints(folder)}")
            elif differences:
                log("test models differ from the recorded ones: " + "; ".join(differences))
            elif not a.quiet:
                log("fitted test models: the same as the recorded ones")
        print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
