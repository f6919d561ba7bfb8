"""Build small nnU-Net v2 models in the real TotalSegmentator weights layout.

Real weights cannot be downloaded here, so tests, the demo and benchmarks use models
built by this module: the official dataset folders and trainer names
(`<weights>/<DatasetXXX_...>/<trainer>__nnUNetPlans__<config>/{dataset.json, plans.json,
fold_0/checkpoint_final.pth}`), the official label maps of each model (part), plans at
the official model spacing, and weights fitted for a few seconds to the official
reference segmentations of the example images, so their outputs are not empty and
sit roughly where the anatomy is (crop models find the liver, roi_subset has work).

`size="realistic"` gives the network size of a real TotalSegmentator model
(6 stages, 32..320 features, 128^3 patch) with untrained weights, for benchmarks.

Models are built once into a cache folder keyed by this file's content and the torch
version, under a file lock, so parallel test sessions share them.
"""
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from SegmentationLogic.catalogue import load_catalogue  # noqa: E402
from sample_data import example_path  # noqa: E402

TEST_MODEL_MARKER = "TEST MODEL built by Testing/testmodels.py - not the real TotalSegmentator weights"

CT_INTENSITIES = {"max": 3071.0, "mean": 60.0, "median": 50.0, "min": -1024.0,
                  "percentile_00_5": -1000.0, "percentile_99_5": 1600.0, "std": 400.0}

# dataset id -> how to make its training target
#   ref: reference segmentation file; mr: whether the input is the MR example
# vertebrae_pp (803) and vertebrae_body (305) learn from the total reference (see _training_pair)
# pleural_pericard_effusion (315) ensembles all folds: its test model has two
DEFAULT_DATASETS = (291, 292, 293, 294, 295, 297, 298, 300, 8, 850, 851, 852, 853, 803, 305, 315)


def default_cache_root():
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "totalsegmentator-slicer" / "test-models"


def _builder_key(size, datasets):
    import torch

    h = hashlib.sha256(Path(__file__).read_bytes())
    h.update(f"{torch.__version__}|{size}|{sorted(datasets)}".encode())
    return h.hexdigest()[:16]


def build_test_weights(cache_root=None, size="tiny", datasets=DEFAULT_DATASETS, iterations=None, log=print):
    """Return a weights folder holding test models for `datasets`, building it if needed."""
    cache_root = Path(cache_root or default_cache_root())
    cache_root.mkdir(parents=True, exist_ok=True)
    target = cache_root / f"{size}-{_builder_key(size, datasets)}"
    if (target / "COMPLETE").is_file():
        return target
    with open(cache_root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "COMPLETE").is_file():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=cache_root))
        try:
            for ds in datasets:
                log(f"building {size} test model for dataset {ds}")
                build_model(tmp, ds, size=size, iterations=iterations)
            (tmp / "COMPLETE").write_text(TEST_MODEL_MARKER + "\n")
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


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
    arch = {"n_stages": len(feats), "features_per_stage": feats, "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[3, 3, 3]] * len(feats), "strides": strides, "n_conv_per_stage": n_conv,
            "n_conv_per_stage_decoder": n_conv[:-1], "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}}
    return arch, patch


def _network(arch, n_classes):
    import torch
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    return PlainConvUNet(1, arch["n_stages"], arch["features_per_stage"], torch.nn.Conv3d, arch["kernel_sizes"],
                         arch["strides"], arch["n_conv_per_stage"], n_classes, arch["n_conv_per_stage_decoder"],
                         conv_bias=True, norm_op=torch.nn.InstanceNorm3d,
                         norm_op_kwargs={"eps": 1e-05, "affine": True}, nonlin=torch.nn.LeakyReLU,
                         nonlin_kwargs={"inplace": True}, deep_supervision=False)


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


TRAIN_PATCH = (32, 32, 32)  # fully convolutional: train on small patches, infer on the plans patch

# liver_vessels and pleural_pericard_effusion have no TotalSegmentator resampling: nnU-Net resamples to its plans spacing
PLANS_SPACING_OVERRIDE_ZYX = {8: [1.5, 1.0, 1.0], 315: [1.5, 1.5, 1.5]}
ENSEMBLE_FOLDS = 2


def build_model(weights_dir, dataset, size="tiny", iterations=None, seed=0):
    import torch

    task_name, model, resample_xyz = _task_of(dataset)
    cat = load_catalogue()
    classes = model.classes or cat.task(task_name).classes
    n_classes = max(classes) + 1
    mr = task_name.endswith("_mr")
    norm = "ZScoreNormalization" if mr else "CTNormalization"
    spacing_zyx = PLANS_SPACING_OVERRIDE_ZYX.get(dataset) or list(resample_xyz[::-1])
    arch, patch = _arch(size, n_classes)

    out = Path(weights_dir) / model.folder / model.subdir
    # a task that ensembles "all folds" gets two, fitted differently, so the ensemble differs from either
    for fold in range(1 if model.folds is not None else ENSEMBLE_FOLDS):
        torch.manual_seed(seed + dataset + 1000 * fold)
        net = _network(arch, n_classes)
        if size == "tiny":
            image, label = _training_pair(model, task_name, spacing_zyx[::-1])
            image = _normalise(image, norm).astype(np.float32)
            _fit(net, image, label, TRAIN_PATCH, n_classes, iterations or 100, seed + dataset + 1000 * fold)
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


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=["tiny", "realistic"], default="tiny")
    ap.add_argument("--cache", default=None)
    ap.add_argument("--datasets", type=int, nargs="*", default=list(DEFAULT_DATASETS))
    a = ap.parse_args()
    print(build_test_weights(a.cache, a.size, tuple(a.datasets)))
