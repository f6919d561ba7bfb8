"""Fixtures of the module's Slicer self-test: a small CT-like phantom, and a test model fitted
to it in seconds.

The self-test runs where Slicer's extensions are built and tested: no network (no sample
data, no weights), a CPU, short test timeouts. So it makes its own volume and its own
model, in the official nnU-Net layout the engine reads from a weights folder. The model
is not TotalSegmentator: a tiny network that learns the phantom's organs from a few
seconds of fitting, enough that a run of the real engine produces named segments.
"""
import json
from pathlib import Path

import numpy as np

TASK, QUALITY = "total", "fastest"  # one 6 mm model: the quickest real run
ORGANS = {"liver": 90.0, "spleen": 45.0, "kidney_left": 150.0, "vertebrae_L1": 700.0}  # class -> HU
MARKER = "Self-test model built by TotalSegmentatorLib/selftest.py - not the TotalSegmentator weights"
# Hounsfield statistics of the plans (CTNormalization clips and scales with them)
CT_PROPERTIES = {"max": 1500.0, "mean": 60.0, "median": 50.0, "min": -1024.0, "percentile_00_5": -1000.0,
                 "percentile_99_5": 1000.0, "std": 300.0}


def phantom(spacing=3.0, size_mm=(192.0, 192.0, 192.0)):
    """(Hounsfield units [i, j, k], official `total` labels, voxel-to-RAS affine): air around an
    elliptic body of soft tissue holding a liver, a spleen, a kidney and a vertebra."""
    from SegmentationLogic.catalogue import load_catalogue

    shape = [int(round(s / spacing)) for s in size_mm]
    x, y, z = np.meshgrid(*[(np.arange(n) + 0.5) * spacing - s / 2 for n, s in zip(shape, size_mm)], indexing="ij")
    hu = np.full(shape, -1000.0, np.float32)
    labels = np.zeros(shape, np.uint8)
    hu[(x / 85) ** 2 + (y / 65) ** 2 <= 1] = 0.0  # the body, all the way up and down
    value = {name: label for label, name in load_catalogue().task(TASK).classes.items()}
    shapes = {"liver": ((-35, -5, 15), (40, 35, 35)), "spleen": ((45, 10, 20), (18, 25, 25)),
              "kidney_left": ((35, 35, -25), (15, 15, 25)), "vertebrae_L1": ((0, 45, -20), (12, 12, 15))}
    for name, (centre, radii) in shapes.items():
        inside = sum(((c - m) / r) ** 2 for c, m, r in zip((x, y, z), centre, radii)) <= 1
        hu[inside] = ORGANS[name]
        labels[inside] = value[name]
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = [-s / 2 + spacing / 2 for s in size_mm]
    return hu, labels, affine


def _network(n_classes):
    import torch
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    return PlainConvUNet(1, 3, [8, 16, 32], torch.nn.Conv3d, [[3, 3, 3]] * 3, [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
                         [1, 1, 1], n_classes, [1, 1], conv_bias=True, norm_op=torch.nn.InstanceNorm3d,
                         norm_op_kwargs={"eps": 1e-05, "affine": True}, nonlin=torch.nn.LeakyReLU,
                         nonlin_kwargs={"inplace": True}, deep_supervision=False)


def _plans(folder, spacing_zyx, patch):
    kwargs = {"n_stages": 3, "features_per_stage": [8, 16, 32], "conv_op": "torch.nn.modules.conv.Conv3d",
              "kernel_sizes": [[3, 3, 3]] * 3, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
              "n_conv_per_stage": [1, 1, 1], "n_conv_per_stage_decoder": [1, 1], "conv_bias": True,
              "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
              "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
              "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}}
    resampling = {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None}
    configuration = {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": list(patch), "median_image_size_in_voxels": list(patch), "spacing": list(spacing_zyx),
        "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape", "resampling_fn_data_kwargs": resampling,
        "resampling_fn_seg_kwargs": {**resampling, "is_seg": True}, "resampling_fn_probabilities_kwargs": resampling,
        "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                         "arch_kwargs": kwargs, "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
        "batch_dice": False}
    return {"dataset_name": folder, "plans_name": "nnUNetPlans", "original_median_spacing_after_transp":
            list(spacing_zyx), "original_median_shape_after_transp": list(patch),
            "image_reader_writer": "NibabelIOWithReorient", "transpose_forward": [0, 1, 2],
            "transpose_backward": [0, 1, 2], "configurations": {"3d_fullres": configuration},
            "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel": {"0": CT_PROPERTIES}}


def _fit(x, y, n_classes, iterations, seed):
    """A network with `n_classes` outputs fitted to image x / labels y (z, y, x: one patch)."""
    import torch

    torch.manual_seed(seed)
    net = _network(n_classes)
    counts = np.bincount(y.ravel(), minlength=n_classes).astype(np.float64)
    weights = torch.tensor(1.0 / np.sqrt(counts + 1.0), dtype=torch.float32)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    loss = torch.nn.CrossEntropyLoss(weight=weights / weights.mean())
    image, target = torch.from_numpy(x[None, None].astype(np.float32)), torch.from_numpy(y[None])
    net.train()
    for _ in range(iterations):
        optimiser.zero_grad()
        loss(net(image), target).backward()
        optimiser.step()
    return net.eval()


def build_model(weights_dir, iterations=80, seed=0):
    """Write the self-test model for TASK at QUALITY into `weights_dir` (seconds on a CPU).

    The network learns the few phantom classes; its output layers are then widened to all the
    task's classes, the others never chosen (a large negative bias)."""
    import torch

    from SegmentationLogic.catalogue import load_catalogue

    task = load_catalogue().task(TASK)
    mode = task.mode(QUALITY)
    model = mode.models[0]
    classes = model.classes or task.classes
    spacing = float(mode.resample[0])
    hu, labels, _ = phantom(spacing)
    image = (np.clip(hu, CT_PROPERTIES["percentile_00_5"], CT_PROPERTIES["percentile_99_5"]) - CT_PROPERTIES["mean"]) \
        / CT_PROPERTIES["std"]
    patch = [32, 32, 32]
    present = [0] + sorted(int(v) for v in np.unique(labels) if v)  # official values, local index = position
    local = np.zeros(max(present) + 1, np.int64)
    local[present] = np.arange(len(present))
    # nnU-Net's axis order is z, y, x; the whole phantom is one patch
    pad = [(0, max(0, p - s)) for p, s in zip(patch, image.shape[::-1])]
    x = np.pad(image.transpose(2, 1, 0), pad, constant_values=float(image.min()))
    y = np.pad(local[labels.transpose(2, 1, 0)], pad)
    small = _fit(x, y, len(present), iterations, seed).state_dict()
    net = _network(max(classes) + 1)
    state = net.state_dict()
    for key, value in small.items():
        if value.shape == state[key].shape:
            state[key] = value
        else:  # a segmentation layer: the learnt classes at their official values
            state[key] = torch.full_like(state[key], -50.0 if key.endswith("bias") else 0.0)
            state[key][present] = value
    out = Path(weights_dir) / model.folder / model.subdir
    (out / "fold_0").mkdir(parents=True, exist_ok=True)
    torch.save({"network_weights": state, "trainer_name": model.trainer,
                "init_args": {"configuration": model.configuration}, "inference_allowed_mirroring_axes": (0, 1, 2)},
               out / "fold_0" / "checkpoint_final.pth")
    dataset = {"channel_names": {"0": "CT"}, "labels": {"background": 0, **{classes[k]: k for k in sorted(classes)}},
               "numTraining": 1, "file_ending": ".nii.gz", "overwrite_image_reader_writer": "NibabelIOWithReorient",
               "description": MARKER}
    (out / "dataset.json").write_text(json.dumps(dataset, indent=2))
    (out / "plans.json").write_text(json.dumps(_plans(model.folder, [spacing] * 3, patch), indent=2))
    return out
