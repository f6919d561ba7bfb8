"""The engine's own nnU-Net inference (preprocessing, sliding window, export) gives exactly
what nnU-Net's classes give: its preprocessor's `run_case_npy`, nnUNetPredictor's sliding
window and `convert_predicted_logits_to_segmentation_with_correct_shape` are the reference
here, on the fitted test models (their outputs look like anatomy and depend on context, so
tile blending matters; the known-output ones answer voxel by voxel) and real example images. The official tool end to end is in
Testing/parity."""
import sys

import nibabel as nib
import numpy as np
import pytest

from SegmentationLogic.catalogue import load_catalogue
from SegmentationLogic.imaging.orientation import to_canonical
from SegmentationLogic.pipeline import geometry, inference, sliding_window
from SegmentationLogic.weights import model_dir

torch = pytest.importorskip("torch")

CT, MR = "example_ct_sm.nii.gz", "example_mr_sm.nii.gz"


def _model_folder(fitted_weights, task, quality="normal", index=0):
    spec = load_catalogue().task(task).mode(quality).models[index]
    return model_dir(spec, fitted_weights)


def _image(example, name, spacing, pad=0, crop=None):
    img = nib.load(example(name))
    data, affine = to_canonical(geometry.exact_values(img), img.affine)
    if crop is not None:
        data = data[crop]
    if pad:  # a zero border: nnU-Net crops it away and puts it back
        data = np.pad(data, pad)
    data, affine, _ = geometry.resample_to_spacing(data, affine, spacing)
    return data, affine, geometry.header_zooms(affine)


def _both(folder, folds=(0,)):
    cpu = torch.device("cpu")
    ours = inference.LoadedModel(folder, cpu, list(folds))
    theirs = inference.LoadedModel(folder, cpu, list(folds), use_nnunet_predictor=True)
    assert ours.reference is None and theirs.reference is not None
    return ours, theirs


@pytest.mark.parametrize("model, image, spacing, step, pad, crop", [
    (("total", "fast", 0), CT, (3.0, 3.0, 3.0), 0.5, 0, None),  # 118 classes, 9 tiles
    (("total", "fast", 0), CT, (3.0, 3.0, 3.0), 0.8, 6, None),  # zero border: nnU-Net's crop to non-zero
    (("total", "normal", 0), CT, (1.5, 1.5, 1.5), 0.5, 0, (slice(20, 60), slice(10, 50), slice(None))),  # padded
    (("total_mr", "normal", 1), MR, (1.5, 1.5, 1.5), 0.5, 0, None),  # z-score normalisation (a mean: layout)
    (("liver_vessels", "normal", 0), CT, (1.6, 1.3, 1.1), 0.5, 0,
     (slice(30, 90), slice(20, 80), slice(None))),  # nnU-Net resamples in and out (the whole image: parity)
], ids=["fast", "fast-zero-border", "part-padded", "mr-zscore", "nnunet-resamples"])
def test_engine_inference_equals_nnunet_classes(fitted_weights, example, model, image, spacing, step, pad, crop):
    ours, theirs = _both(_model_folder(fitted_weights, *model))
    data, affine, zooms = _image(example, image, spacing, pad, crop)
    a_tensor, a_props = inference.preprocess(ours, data, zooms, affine)
    b_tensor, b_props = inference.preprocess(theirs, data, zooms, affine)
    assert torch.equal(a_tensor, b_tensor)
    for key in ("shape_before_cropping", "bbox_used_for_cropping", "shape_after_cropping_and_before_resampling"):
        assert np.array_equal(np.array(a_props[key]), np.array(b_props[key])), key
    a = inference.predict(ours, data, zooms, affine, step)
    b = inference.predict(theirs, data, zooms, affine, step)
    assert a.shape == data.shape and a.dtype == b.dtype
    assert len(np.unique(b)) > 1, "the case must have labels to compare"
    assert np.array_equal(a, b)


def test_ensemble_of_two_folds_equals_nnunet(fitted_weights, example):
    """pleural_pericard_effusion ensembles its folds (fp16 sum and average); two images on
    the same loaded model: the folds are reloaded, not mixed up (the whole image: parity)."""
    ours, theirs = _both(_model_folder(fitted_weights, "pleural_pericard_effusion"), folds=(0, 1))
    for crop in ((slice(20, 80), slice(20, 80), slice(None)), (slice(40, 100), slice(30, 90), slice(None))):
        data, affine, zooms = _image(example, CT, (1.5, 1.5, 1.5), crop=crop)
        a = inference.predict(ours, data, zooms, affine, 0.5)
        b = inference.predict(theirs, data, zooms, affine, 0.5)
        assert len(np.unique(b)) > 1, "the case must have labels to compare"
        assert np.array_equal(a, b)


def test_forward_and_window_times_are_reported(fitted_weights, example):
    ours = inference.LoadedModel(_model_folder(fitted_weights, "total", "fastest"), torch.device("cpu"), [0])
    data, affine, zooms = _image(example, CT, (6.0, 6.0, 6.0))
    clock = sliding_window.Clock()
    inference.predict(ours, data, zooms, affine, 0.5, clock=clock)
    assert clock.tiles >= 1 and clock.forward > 0 and clock.window > 0 and clock.preprocess > 0


# -- the arithmetic, on values chosen to break a careless reimplementation ----------------

def test_fp16_accumulation_rounds_twice_as_nnunet():
    """logits[sl] += prediction (fp16 += fp32) rounds the fp32 sum to fp16; so does the
    engine's per-channel buffer. 1 + (2^-11 + 2^-30) is 1.0 that way, 1 + 2^-10 rounded once."""
    values = torch.tensor([2 ** -11 + 2 ** -30, 2 ** -11, -2 ** -25, 3.0e4, 1e-8, -7.25], dtype=torch.float32)
    start = torch.tensor([1.0, 1.0, 2 ** -14, 4.0e4, -0.0, 7.25], dtype=torch.half)
    reference = start.clone()
    reference += values
    buffer = start.float()
    buffer += values
    ours = buffer.half()
    assert torch.equal(ours.view(torch.int16), reference.view(torch.int16))
    assert reference[0].item() == 1.0 and torch.isinf(reference[3])


def _reference_argmax(logits, weights=None):
    if weights is not None:
        logits = torch.div(logits, weights)
        if torch.any(torch.isinf(logits)):
            raise RuntimeError("inf")
    return logits.numpy().argmax(0)


@pytest.mark.parametrize("seed", [0, 1])
def test_argmax_equals_numpy_on_ties_nan_and_infinity(seed):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randint(-3, 4, (7, 9, 5, 6), generator=gen).float() / 2).half()  # many exact ties
    weights = (torch.rand((9, 5, 6), generator=gen) * 3 + 0.25).half()
    assert np.array_equal(sliding_window.argmax_channels(logits), _reference_argmax(logits))
    assert np.array_equal(sliding_window.argmax_channels(logits, weights), _reference_argmax(logits, weights))
    nan = logits.clone()
    nan[3, 4, 2, 1] = float("nan")
    nan[5, 0, 0, 0] = float("nan")
    assert np.array_equal(sliding_window.argmax_channels(nan), _reference_argmax(nan))
    low = logits.clone()
    low[:, 2, 2, 2] = float("-inf")
    low[4, 2, 2, 2] = -60000
    assert np.array_equal(sliding_window.argmax_channels(low), _reference_argmax(low))
    high = logits.clone()
    high[2, 8, 4, 5] = 60000
    tiny = torch.full_like(weights, 0.01)
    with pytest.raises(RuntimeError):
        _reference_argmax(high, tiny)  # 60000 / 0.01 overflows fp16: nnU-Net refuses
    with pytest.raises(RuntimeError):
        sliding_window.argmax_channels(high, tiny)


def test_argmax_writes_into_a_strided_view():
    logits = (torch.randn((5, 40, 7, 3)) * 4).half()
    out = np.zeros((50, 9, 3), np.uint8)
    sliding_window.argmax_channels(logits, out=out[5:45, 1:8])
    assert np.array_equal(out[5:45, 1:8], _reference_argmax(logits))
    assert not out[:5].any() and not out[:, 0].any()


# -- plans ------------------------------------------------------------------------------

def _old_format_plans():
    config = {"data_identifier": "x", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
              "patch_size": [64, 80, 96], "median_image_size_in_voxels": [1, 1, 1], "spacing": [1.5, 1.5, 1.5],
              "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
              "UNet_class_name": "PlainConvUNet", "UNet_base_num_features": 32,
              "n_conv_per_stage_encoder": [2, 2, 2, 2], "n_conv_per_stage_decoder": [2, 2, 2],
              "num_pool_per_axis": [3, 3, 3], "pool_op_kernel_sizes": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
              "conv_kernel_sizes": [[3, 3, 3]] * 4, "unet_max_num_features": 80,
              "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "x",
              "resampling_fn_probabilities": "resample_data_or_seg_to_shape", "resampling_fn_data_kwargs": {},
              "resampling_fn_seg_kwargs": {}, "resampling_fn_probabilities_kwargs": {}, "batch_dice": False}
    lowres = {"inherits_from": "3d_fullres", "spacing": [3.0, 3.0, 3.0], "patch_size": [32, 40, 48]}
    return {"dataset_name": "D", "plans_name": "P", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
            "configurations": {"3d_fullres": config, "3d_lowres": lowres},
            "foreground_intensity_properties_per_channel": {"0": {}}, "image_reader_writer": "NibabelIOWithReorient"}


@pytest.mark.parametrize("configuration", ["3d_fullres", "3d_lowres"])
def test_plans_resolve_as_nnunet(configuration):
    """Old-format plans (TotalSegmentator's released weights) and inheritance, as nnU-Net reads them."""
    import warnings

    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from SegmentationLogic.pipeline.nnunet_plans import ModelPlans

    plans = _old_format_plans()
    dataset = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1, "b": 2}, "file_ending": ".nii.gz"}
    ours = ModelPlans(plans, dataset, configuration)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cm = PlansManager(_old_format_plans()).get_configuration(configuration)
    assert ours.architecture == (cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                 cm.network_arch_init_kwargs_req_import)
    assert ours.patch_size == cm.patch_size and ours.spacing == cm.spacing
    assert ours.num_segmentation_heads == 3 and ours.num_input_channels() == 1 and ours.fast_path_problem() is None


def test_models_outside_the_fast_path_use_nnunet():
    from SegmentationLogic.pipeline.nnunet_plans import ModelPlans

    plans = _old_format_plans()
    regions = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": [1, 2], "b": 2},
               "regions_class_order": [1, 2]}
    assert "region" in ModelPlans(plans, regions, "3d_fullres").fast_path_problem()
    ignore = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1, "ignore": 2}}
    assert ModelPlans(plans, ignore, "3d_fullres").num_segmentation_heads == 2
    assert "ignore" in ModelPlans(plans, ignore, "3d_fullres").fast_path_problem()
    plans["configurations"]["3d_fullres"]["preprocessor_name"] = "OtherPreprocessor"
    assert "OtherPreprocessor" in ModelPlans(plans, {"channel_names": {"0": "CT"}, "labels": {"background": 0}},
                                             "3d_fullres").fast_path_problem()


def test_segmenting_imports_nothing_heavy_it_does_not_use(fitted_weights, example, tmp_path):
    """Start-up: a CPU run of the engine's path never loads nnU-Net's predictor module (and
    with it torch._dynamo, sympy), blosc2, pandas, SimpleITK's reader registry or timm."""
    import subprocess

    code = (
        "import sys\n"
        "from SegmentationLogic.cli.main import main\n"
        f"rc = main(['segment', '-i', {str(example(CT))!r}, '-o', {str(tmp_path / 's.nii.gz')!r}, '--ml', '--fastest',"
        f" '--device', 'cpu', '--weights_dir', {str(fitted_weights)!r}, '--no_download', '-q'])\n"
        "heavy = ['torch._dynamo', 'sympy', 'blosc2', 'pandas', 'nnunetv2.inference.predict_from_raw_data',"
        " 'nnunetv2.imageio.reader_writer_registry', 'timm', 'torchvision']\n"
        "print('LOADED', [m for m in heavy if m in sys.modules], rc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "LOADED [] 0" in out.stdout, out.stdout + out.stderr
