"""nnU-Net v2 inference in memory, computing exactly what the official tool gets from
`nnUNetPredictor.predict_from_files` on the temporary NIfTI it writes.

The official tool writes the resampled image to `s01_0000.nii.gz`, lets nnU-Net read it
(reader class from plans.json, in a spawned worker), predicts, sends the logits to a
spawned export worker, and reads `s01.nii.gz` back. Here the same functions run on
arrays in this process:

- reader: for NibabelIOWithReorient / NibabelIO (what TotalSegmentator models use) the
  array the reader would produce is built directly: float32, (z, y, x), C-contiguous,
  spacing = the float32 zooms of the written header, reversed. Any other reader gets
  the exact fallback: the file is written and read (and the result written and read)
  with that reader, as the official tool does.
- preprocessing: the plans' preprocessor `run_case_npy` (crop to non-zero,
  normalisation, nnU-Net's own resampling to the plans spacing).
- prediction: nnUNetPredictor's sliding window (Gaussian, fp16 accumulation, tile step
  from the catalogue, no mirroring), all folds of the ensemble.
- export: nnU-Net's `convert_predicted_logits_to_segmentation_with_correct_shape`.

The network is built from plans.json (`get_network_from_plans`, which is what
`nnUNetTrainer.build_network_architecture` does for every trainer TotalSegmentator
uses), so nnU-Net's recursive trainer-class search is never run. Models stay loaded in a
`ModelCache`, so a persistent worker segments a second image without reloading.
"""
import contextlib
import io
import json
import logging
import tempfile
import threading
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import Cancelled, InvalidWeightsError

log = logging.getLogger(__name__)

IN_MEMORY_READERS = ("NibabelIOWithReorient", "NibabelIO")


def _nnunet():
    # torch and nnU-Net are heavy (seconds): imported only when a model is really loaded
    import torch
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    return (torch, nnUNetPredictor, PlansManager, get_network_from_plans, determine_num_input_channels,
            convert_predicted_logits_to_segmentation_with_correct_shape)


def warm_up():
    """Import torch and nnU-Net now (seconds), e.g. while a user still picks options."""
    _nnunet()


def _predictor_class():
    torch, nnUNetPredictor = _nnunet()[:2]

    class TileReportingPredictor(nnUNetPredictor):
        """nnUNetPredictor that reports each sliding-window tile and can be cancelled.

        Only two hooks are added; the sliding window itself is nnU-Net's. On cancel the
        remaining tiles return zeros instead of running the network, so the loop (and its
        producer thread) ends normally within moments, then `Cancelled` is raised."""

        tile_callback = None
        _tiles_total = 0
        _tiles_done = 0
        _cancelled = None

        def _internal_get_sliding_window_slicers(self, image_size):
            slicers = super()._internal_get_sliding_window_slicers(image_size)
            self._tiles_total += len(slicers)
            return slicers

        def _internal_maybe_mirror_and_predict(self, x):
            if self._cancelled is not None:
                return torch.zeros((x.shape[0], self.label_manager.num_segmentation_heads, *x.shape[2:]),
                                   dtype=torch.float32, device=x.device)
            prediction = super()._internal_maybe_mirror_and_predict(x)
            self._tiles_done += 1
            if self.tile_callback is not None:
                try:
                    self.tile_callback(self._tiles_done, self._tiles_total)
                except Cancelled as e:
                    self._cancelled = e
            return prediction

    return TileReportingPredictor


_PREDICTOR_CLASS = None
_PREDICTOR_LOCK = threading.Lock()


def predictor_class():
    global _PREDICTOR_CLASS
    with _PREDICTOR_LOCK:
        if _PREDICTOR_CLASS is None:
            _PREDICTOR_CLASS = _predictor_class()
    return _PREDICTOR_CLASS


class LoadedModel:
    """One nnU-Net model folder loaded on a device: plans, network, fold weights."""

    def __init__(self, folder, device, folds, name=None):
        torch, _, PlansManager, get_network_from_plans, determine_num_input_channels, _ = _nnunet()
        self.folder = Path(folder)
        self.device = device
        self.folds = list(folds)
        self.name = name or self.folder.parent.name
        try:
            self.dataset_json = json.loads((self.folder / "dataset.json").read_text(encoding="utf-8"))
            plans = json.loads((self.folder / "plans.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise InvalidWeightsError(f"Model {self.name}: cannot read dataset.json/plans.json ({e}).",
                                      "Re-download or re-import the weights of this model.") from e
        self.plans_manager = PlansManager(plans)
        if not self.folds:
            raise InvalidWeightsError(f"Model {self.name} has no fold_*/checkpoint_final.pth in {self.folder}.",
                                      "Re-download or re-import the weights of this model.")
        parameters = []
        for i, f in enumerate(self.folds):
            path = self.folder / f"fold_{f}" / "checkpoint_final.pth"
            try:
                # nnU-Net checkpoints hold plain Python objects besides tensors, as nnU-Net loads them
                checkpoint = torch.load(path, map_location=torch.device("cpu"), weights_only=False)
            except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is the same user problem
                raise InvalidWeightsError(f"Model {self.name}: cannot load {path} ({e}).",
                                          "Re-download or re-import the weights of this model.") from e
            if i == 0:
                self.trainer_name = checkpoint["trainer_name"]
                configuration = checkpoint["init_args"]["configuration"]
                self.mirror_axes = checkpoint.get("inference_allowed_mirroring_axes")
            parameters.append(checkpoint["network_weights"])
        self.configuration_name = configuration
        self.configuration_manager = self.plans_manager.get_configuration(configuration)
        self.label_manager = self.plans_manager.get_label_manager(self.dataset_json)
        n_in = determine_num_input_channels(self.plans_manager, self.configuration_manager, self.dataset_json)
        if n_in != 1:
            raise InvalidWeightsError(f"Model {self.name} expects {n_in} input channels; TotalSegmentator models "
                                      "take one image.", "Use weights made for TotalSegmentator.")
        network = get_network_from_plans(
            self.configuration_manager.network_arch_class_name, self.configuration_manager.network_arch_init_kwargs,
            self.configuration_manager.network_arch_init_kwargs_req_import, n_in,
            self.label_manager.num_segmentation_heads, allow_init=True, deep_supervision=False)
        try:
            network.load_state_dict(parameters[0])  # as nnU-Net: the first fold initialises the network
        except RuntimeError as e:
            raise InvalidWeightsError(
                f"Model {self.name}: the checkpoint does not fit the network described in plans.json "
                f"(trainer {self.trainer_name}).", "Re-download or re-import the weights of this model.") from e
        cls = predictor_class()
        # nnU-Net prints "perform_everything_on_device=True is only supported for cuda devices"
        # on every non-CUDA device, even when False was asked: noise to a user, and stdout
        # carries the JSON events. Anything it prints goes to the debug log instead.
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            self.predictor = cls(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                 perform_everything_on_device=device.type == "cuda", device=device, verbose=False,
                                 verbose_preprocessing=False, allow_tqdm=False)
        if printed.getvalue().strip():
            log.debug("nnU-Net: %s", printed.getvalue().strip())
        self.predictor.manual_initialization(network, self.plans_manager, self.configuration_manager, parameters,
                                             self.dataset_json, self.trainer_name, self.mirror_axes)
        self.reader_name = self.plans_manager.plans.get("image_reader_writer", "SimpleITKIO")
        self.num_heads = self.label_manager.num_segmentation_heads
        self.description = self.dataset_json.get("description")

    # -- what is shared between models -------------------------------------------------
    @property
    def preprocessing_key(self):
        """Everything preprocessing depends on; models with equal keys share one result."""
        cm, pm = self.configuration_manager, self.plans_manager
        cfg = cm.configuration
        key = {"reader": self.reader_name if self.reader_name in IN_MEMORY_READERS else None,
               "preprocessor": cm.preprocessor_name, "transpose": pm.transpose_forward, "spacing": cm.spacing,
               "norm": cm.normalization_schemes, "mask": cm.use_mask_for_norm,
               "rs": [cfg.get("resampling_fn_data"), cfg.get("resampling_fn_data_kwargs")],
               "intensity": pm.foreground_intensity_properties_per_channel}
        if key["reader"] is None:  # exact file fallback: never shared
            key["model"] = str(self.folder)
        return json.dumps(key, sort_keys=True, default=str)

    def estimate_bytes(self, shape_xyz, spacing_xyz):
        """Peak memory (bytes, CPU side) of one prediction on an image of this shape and spacing.

        Counts what nnU-Net allocates: the fp16 logit and weight accumulators over the
        padded image, one tile's network output and activations, the input copies and,
        when nnU-Net resamples, its float64 copy of the logits and the resampled logits."""
        cm = self.configuration_manager
        zyx = np.array(shape_xyz[::-1], dtype=np.float64)
        spacing = np.array([float(s) for s in spacing_xyz[::-1]])
        model_zyx = np.maximum(np.round(zyx * spacing / np.array(cm.spacing, dtype=np.float64)), 1)
        patch = np.array(cm.patch_size, dtype=np.float64)
        model_vox, in_vox = float(np.prod(model_zyx)), float(np.prod(zyx))
        padded_vox, patch_vox = float(np.prod(np.maximum(model_zyx, patch))), float(np.prod(patch))
        heads = self.num_heads
        features = (cm.network_arch_init_kwargs.get("features_per_stage") or [32])[0]
        weights = sum(p.numel() for p in self.predictor.network.parameters()) * 4 * (1 + len(self.folds))
        tile = patch_vox * (heads * 4 * 2 + features * 4 * 10)
        accumulate = padded_vox * (heads * 2 + 2 + 4 * 3)
        export = in_vox * 9 + (heads * (model_vox * 8 + in_vox * 2) if abs(model_vox - in_vox) > 0.5 else 0)
        return int(weights + tile + accumulate + export)


class ModelCache:
    """Loaded models by (folder, folds, device): load once, reuse across segmentations."""

    def __init__(self):
        self._models = {}
        self._lock = threading.Lock()

    def get(self, folder, device, folds, name=None):
        key = (str(Path(folder).resolve()), tuple(folds), str(device))
        with self._lock:
            model = self._models.get(key)
            if model is None:
                model = LoadedModel(folder, device, folds, name=name)
                self._models[key] = model
            return model

    def __contains__(self, key):
        return key in self._models

    def __len__(self):
        return len(self._models)

    def clear(self):
        with self._lock:
            self._models.clear()


# -- one prediction ---------------------------------------------------------------------

def reader_input(data_xyz, zooms_xyz):
    """What NibabelIOWithReorient returns for a canonical image written with these zooms:
    (1, z, y, x) float32 C-contiguous data, and the spacing (z, y, x) as Python floats."""
    data = np.ascontiguousarray(np.asarray(data_xyz).transpose(2, 1, 0)[None], dtype=np.float32)
    return data, {"spacing": [float(z) for z in zooms_xyz[::-1]]}


def _file_round_trip_input(model, data_xyz, affine, workdir):
    path = Path(workdir) / "s01_0000.nii.gz"
    nib.save(nib.Nifti1Image(data_xyz, affine), path)
    rw = model.plans_manager.image_reader_writer_class()
    return rw.read_images([str(path)])


def _file_round_trip_output(model, seg, props, workdir):
    rw = model.plans_manager.image_reader_writer_class()
    path = Path(workdir) / f"s01{model.dataset_json['file_ending']}"
    rw.write_seg(seg, str(path), props)
    return np.asanyarray(nib.load(path).dataobj)


def preprocess(model, data_xyz, zooms_xyz, affine, workdir=None):
    """Run the model's preprocessor; returns (torch tensor, properties).

    With a `workdir` the image goes through a NIfTI file and the model's own reader."""
    torch = _nnunet()[0]
    if workdir is None:
        data, props = reader_input(data_xyz, zooms_xyz)
    else:
        data, props = _file_round_trip_input(model, data_xyz, affine, workdir)
    preprocessor = model.configuration_manager.preprocessor_class(verbose=False)
    data, _, props = preprocessor.run_case_npy(data, None, props, model.plans_manager, model.configuration_manager,
                                               model.dataset_json)
    tensor = torch.from_numpy(data).to(dtype=torch.float32, memory_format=torch.contiguous_format)
    return tensor, props


def predict(model, data_xyz, zooms_xyz, affine, step_size, tile_callback=None, preprocessed=None, via_files=None,
            probabilities=False):
    """Segment one image (canonical x, y, z array) with one model.

    Returns the labelmap (x, y, z) with the model's own label values, as the official tool
    reads it from nnU-Net's output file. `preprocessed` is an optional dict shared between
    models of one run: models whose preprocessing is identical reuse the tensor.
    `tile_callback(done, total)` is called after every sliding-window tile and may raise
    Cancelled. `via_files` forces (True) or forbids (False) the file round trip through
    the model's reader/writer; by default only readers not emulated in memory use it.
    `probabilities`: nnU-Net's export with probabilities, as with its save_probabilities
    (the labels then come from the probabilities); returns (labels, (probabilities,
    properties)) instead, the probabilities as nnU-Net saves them.
    """
    convert = _nnunet()[5]
    workdir = None
    tmp = None
    if via_files is None:
        via_files = model.reader_name not in IN_MEMORY_READERS
    if via_files:
        tmp = tempfile.TemporaryDirectory(prefix="totalseg_slicer_")
        workdir = tmp.name
    try:
        key = model.preprocessing_key + ("|files" if via_files else "")
        if preprocessed is not None and key in preprocessed:
            tensor, props = preprocessed[key]
        else:
            tensor, props = preprocess(model, data_xyz, zooms_xyz, affine, workdir)
            if preprocessed is not None:
                preprocessed[key] = (tensor, props)
        props = dict(props)
        predictor = model.predictor
        predictor.tile_step_size = step_size
        predictor.tile_callback = tile_callback
        predictor._tiles_total = 0
        predictor._tiles_done = 0
        predictor._cancelled = None
        try:
            logits = predictor.predict_logits_from_preprocessed_data(tensor)
        finally:
            predictor.tile_callback = None
        if predictor._cancelled is not None:
            raise predictor._cancelled
        # exactly what the official export worker receives: the fp16 logits as a numpy array
        seg = convert(logits.numpy(), model.plans_manager, model.configuration_manager, model.label_manager,
                      props, return_probabilities=probabilities)
        del logits
        probs = None
        if probabilities:
            seg, probs = seg
            probs = (probs, props)
        if workdir is not None:
            seg = _file_round_trip_output(model, seg, props, workdir)
        else:
            seg = np.asarray(seg).transpose(2, 1, 0)
        return (seg, probs) if probabilities else seg
    finally:
        if tmp is not None:
            tmp.cleanup()
