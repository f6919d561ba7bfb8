"""nnU-Net v2 inference in memory, computing exactly what the official tool gets from
`nnUNetPredictor.predict_from_files` on the temporary NIfTI it writes.

The official tool writes the resampled image to `s01_0000.nii.gz`, lets nnU-Net read it
(reader class from plans.json, in a spawned worker), predicts, sends the logits to a
spawned export worker, and reads `s01.nii.gz` back. Here the same computation runs on
arrays in this process:

- reader: for NibabelIOWithReorient / NibabelIO (what TotalSegmentator models use) the
  array the reader would produce is the canonical image itself, seen as (1, z, y, x),
  with spacing = the float32 zooms of the written header, reversed; its float32 copy is
  made by the preprocessing. Any other reader gets the exact fallback: the file is
  written and read (and the result written and read) with that reader, as the official
  tool does.
- preprocessing, sliding window (Gaussian, fp16 accumulation, tile step from the
  catalogue, no mirroring, all folds of the ensemble) and export (argmax): nnU-Net 2.6-2.8's
  numbers, computed by `nnunet_preprocessing.py` and `sliding_window.py` with fewer copies
  and passes; models those do not cover go through nnU-Net's own classes
  (`nnunet_predictor.py`).

The network is built from plans.json (`get_network_from_plans`, which is what
`nnUNetTrainer.build_network_architecture` does for every trainer TotalSegmentator uses),
so nnU-Net's recursive trainer-class search is never run, and it is built without random
initialisation: its parameters are the checkpoint's tensors. Models stay loaded in a
`ModelCache`, so a persistent worker segments a second image without reloading.
"""
import importlib.metadata
import itertools
import json
import logging
import tempfile
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import InvalidWeightsError
from . import nnunet_preprocessing, sliding_window
from .nnunet_plans import ModelPlans, PlansError
from .nnunet_predictor import NnunetPredictor

log = logging.getLogger(__name__)

IN_MEMORY_READERS = ("NibabelIOWithReorient", "NibabelIO")
# nnU-Net releases whose inference sliding_window.py and nnunet_preprocessing.py reproduce
FAST_PATH_NNUNET = ((2, 6), (2, 9))


def _torch():
    import torch  # heavy (seconds): imported only when a model is really loaded

    return torch


def warm_up():
    """Import what a prediction needs now (seconds), e.g. while a user still picks options."""
    _torch()
    import dynamic_network_architectures.architectures.unet  # noqa: F401 - heavy: the network classes
    import nnunetv2.inference.sliding_window_prediction  # noqa: F401 - heavy: nnU-Net's tile helpers
    import nnunetv2.utilities.get_network_from_plans  # noqa: F401


class WarmUp:
    """`warm_up()` in a background thread, e.g. while the image is read. `wait()` returns
    once the imports are done (any import error surfaces later, where the import is used)."""

    def __init__(self):
        self._thread = threading.Thread(target=self._run, name="totalseg-warm-up", daemon=True)
        self._thread.start()

    @staticmethod
    def _run():
        try:
            warm_up()
        except Exception:  # noqa: BLE001 - the real import in the run reports it with its context
            log.debug("warm-up import failed", exc_info=True)

    def wait(self):
        self._thread.join()


def nnunet_version_problem():
    """None when the installed nnU-Net is one whose inference the faster path reproduces."""
    try:
        version = importlib.metadata.version("nnunetv2")
        release = tuple(int(p) for p in version.split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return "an nnU-Net version that could not be determined"
    low, high = FAST_PATH_NNUNET
    return None if low <= release < high else f"nnunetv2 {version}"


def build_network(plans, n_in, n_heads, state, share_tensors):
    """The network of `plans` holding the weights `state`, without random initialisation.

    The modules are made on the meta device (no memory, no init) and take the checkpoint's
    tensors as their parameters; `share_tensors=False` gives them copies (an ensemble
    loads other folds into the same network later). Where that cannot give exactly the
    parameters nnU-Net's load_state_dict would (another dtype or layout, a buffer the
    checkpoint lacks), the network is built and loaded as nnU-Net does."""
    torch = _torch()
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans  # heavy: network classes, torch

    cls, kwargs, req_import = plans.architecture

    def make(allow_init=True):
        return get_network_from_plans(cls, kwargs, req_import, n_in, n_heads, allow_init=allow_init,
                                      deep_supervision=False)

    with torch.device("meta"):  # no init: every parameter is replaced (and meta init imports torch._dynamo)
        network = make(allow_init=False)
    expected = network.state_dict()
    if all(k in state and state[k].shape == v.shape and state[k].dtype == v.dtype and state[k].stride() == v.stride()
           for k, v in expected.items()):
        tensors = state if share_tensors else {k: v.clone() for k, v in state.items()}
        network.load_state_dict(tensors, assign=True)
        if not any(t.is_meta for t in itertools.chain(network.parameters(), network.buffers())):
            return network
    network = make()
    network.load_state_dict(state)
    return network


class LoadedModel:
    """One nnU-Net model folder loaded on a device: plans, network, fold weights."""

    def __init__(self, folder, device, folds, name=None, use_nnunet_predictor=False):
        torch = _torch()
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
        if not self.folds:
            raise InvalidWeightsError(f"Model {self.name} has no fold_*/checkpoint_final.pth in {self.folder}.",
                                      "Re-download or re-import the weights of this model.")
        self.parameters = []
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
            self.parameters.append(checkpoint["network_weights"])
        try:
            self.plans = ModelPlans(plans, self.dataset_json, configuration)
            n_in = self.plans.num_input_channels()
        except (PlansError, KeyError, TypeError, ValueError) as e:
            raise InvalidWeightsError(f"Model {self.name}: plans.json/dataset.json do not describe its network ({e}).",
                                      "Download or import the weights of this model again (python -m "
                                      "SegmentationLogic download-weights, or import-weights with the official "
                                      "zip).") from e
        if n_in != 1:
            raise InvalidWeightsError(f"Model {self.name} expects {n_in} input channels; TotalSegmentator models "
                                      "take one image.", "Use weights made for TotalSegmentator.")
        self.num_heads = self.plans.num_segmentation_heads
        try:
            self.network = build_network(self.plans, n_in, self.num_heads, self.parameters[0],
                                         share_tensors=len(self.parameters) == 1)
        except RuntimeError as e:
            raise InvalidWeightsError(
                f"Model {self.name}: the checkpoint does not fit the network described in plans.json "
                f"(trainer {self.trainer_name}).", "Re-download or re-import the weights of this model.") from e
        self.reader_name = self.plans.reader_name
        self.description = self.dataset_json.get("description")
        self.nnunet_path_reason = "asked for" if use_nnunet_predictor else \
            (self.plans.fast_path_problem() or nnunet_version_problem())
        self.reference = None
        if self.nnunet_path_reason is not None:
            log.debug("model %s runs through nnU-Net's predictor: %s", self.name, self.nnunet_path_reason)
            self.reference = NnunetPredictor(self)

    # -- what is shared between models -------------------------------------------------
    @property
    def preprocessing_key(self):
        """Everything preprocessing depends on; models with equal keys share one result."""
        plans = self.plans
        key = {"reader": self.reader_name if self.reader_name in IN_MEMORY_READERS else None,
               "preprocessor": plans.preprocessor_name, "transpose": plans.transpose_forward,
               "spacing": plans.spacing, "norm": plans.normalization_schemes, "mask": plans.use_mask_for_norm,
               "rs": list(plans.resampling("data")), "intensity": plans.intensity_properties,
               "nnunet": self.reference is not None}
        if key["reader"] is None:  # exact file fallback: never shared
            key["model"] = str(self.folder)
        return json.dumps(key, sort_keys=True, default=str)

    def estimate_bytes(self, shape_xyz, spacing_xyz):
        """Peak memory (bytes, CPU side) of one prediction on an image of this shape and spacing.

        Counts what nnU-Net allocates: the fp16 logit and weight accumulators over the
        padded image, one tile's network output and activations, the input copies and,
        when nnU-Net resamples, its float64 copy of the logits and the resampled logits."""
        plans = self.plans
        zyx = np.array(shape_xyz[::-1], dtype=np.float64)
        spacing = np.array([float(s) for s in spacing_xyz[::-1]])
        model_zyx = np.maximum(np.round(zyx * spacing / np.array(plans.spacing, dtype=np.float64)), 1)
        patch = np.array(plans.patch_size, dtype=np.float64)
        model_vox, in_vox = float(np.prod(model_zyx)), float(np.prod(zyx))
        padded_vox, patch_vox = float(np.prod(np.maximum(model_zyx, patch))), float(np.prod(patch))
        heads = self.num_heads
        features = (plans.architecture[1].get("features_per_stage") or [32])[0]
        weights = sum(p.numel() for p in self.network.parameters()) * 4 * (1 + len(self.folds))
        tile = patch_vox * (heads * 4 * 2 + features * 4 * 10)
        accumulate = padded_vox * (heads * 2 + 2 + 4 * 3)
        export = in_vox * 9 + (heads * (model_vox * 8 + in_vox * 2) if abs(model_vox - in_vox) > 0.5 else 0)
        return int(weights + tile + accumulate + export)

    # -- one prediction -----------------------------------------------------------------
    def segment(self, tensor, props, step_size, tile_callback=None, clock=None, cache=None, cropped=False):
        """Labels (reader's axis order, before nnU-Net's crop) of a preprocessed image:
        nnUNetPredictor.predict_logits_from_preprocessed_data, then the export. `cache`: a
        dict shared by the models of one run, for what they can share. `cropped`: the official
        --higher_order_resampling export (cropped_export)."""
        clock = clock or sliding_window.Clock()
        if self.reference is not None:
            return self.reference.segment(tensor, props, step_size, tile_callback, clock, cropped=cropped)
        torch = _torch()
        threads = torch.get_num_threads()
        torch.set_num_threads(min(sliding_window.default_num_processes(), threads))  # as nnU-Net
        try:
            with torch.inference_mode():
                return self._segment(tensor, props, step_size, tile_callback, clock, cache, cropped)
        finally:
            torch.set_num_threads(threads)

    def _segment(self, tensor, props, step_size, tile_callback, clock, cache, cropped):
        plans, on_device = self.plans, self.device.type == "cuda"
        if len(self.parameters) == 1:
            logits, weights, unpad = sliding_window.sliding_window_logits(
                self.network, tensor, plans.patch_size, self.num_heads, step_size, self.device, on_device, clock,
                tile_callback, cache)
            if logits.device.type != "cpu":  # nnU-Net divides on the GPU, then moves the logits
                logits = sliding_window.divided(logits, weights, unpad)
                labels = sliding_window.labels_on_device(logits, plans, props)
                clock.settle()
                if labels is not None:
                    return labels
                logits, weights, unpad = logits.to("cpu"), None, None
            clock.settle()
            return sliding_window.labels_from_logits(logits, plans, props, weights, unpad, cropped)
        total = None
        for params in self.parameters:  # the ensemble, in fp16, as nnU-Net sums and averages it
            self.network.load_state_dict(params)
            logits, weights, unpad = sliding_window.sliding_window_logits(
                self.network, tensor, plans.patch_size, self.num_heads, step_size, self.device, on_device, clock,
                tile_callback, cache)
            logits = sliding_window.divided(logits, weights, unpad).to("cpu")
            if total is None:
                total = logits
            else:
                total += logits
        total /= len(self.parameters)
        clock.settle()
        return sliding_window.labels_from_logits(total, plans, props, cropped=cropped)


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
                try:
                    model = LoadedModel(folder, device, folds, name=name)
                except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
                    # files that parse but lack what nnU-Net needs (a hand-edited or foreign plans.json)
                    raise InvalidWeightsError(
                        f"Model {name or Path(folder).parent.name}: plans.json, dataset.json or a checkpoint in "
                        f"{folder} lacks what nnU-Net needs ({type(e).__name__}: {e}).",
                        "Download or import the weights of this model again (python -m SegmentationLogic "
                        "download-weights, or import-weights with the official zip).") from e
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
    """What NibabelIOWithReorient returns for a canonical image written with these zooms,
    as a view: (1, z, y, x) data (its float32 copy is the preprocessing's), and the
    spacing (z, y, x) as Python floats."""
    return np.asarray(data_xyz).transpose(2, 1, 0)[None], {"spacing": [float(z) for z in zooms_xyz[::-1]]}


def _file_round_trip_input(model, data_xyz, affine, workdir):
    from nnunetv2.imageio.reader_writer_registry import recursive_find_reader_writer_by_name  # heavy: readers

    path = Path(workdir) / "s01_0000.nii.gz"
    nib.save(nib.Nifti1Image(data_xyz, affine), path)
    rw = recursive_find_reader_writer_by_name(model.reader_name)()
    return rw.read_images([str(path)])


def _file_round_trip_output(model, seg, props, workdir):
    from nnunetv2.imageio.reader_writer_registry import recursive_find_reader_writer_by_name  # heavy: readers

    rw = recursive_find_reader_writer_by_name(model.reader_name)()
    path = Path(workdir) / f"s01{model.dataset_json['file_ending']}"
    rw.write_seg(seg, str(path), props)
    return np.asanyarray(nib.load(path).dataobj)


def preprocess(model, data_xyz, zooms_xyz, affine, workdir=None):
    """Run the model's preprocessing; returns (float32 torch tensor (1, z, y, x), properties).

    With a `workdir` the image goes through a NIfTI file and the model's own reader."""
    torch = _torch()
    if workdir is None:
        data, props = reader_input(data_xyz, zooms_xyz)
    else:
        data, props = _file_round_trip_input(model, data_xyz, affine, workdir)
    if model.reference is not None:
        data, props = model.reference.preprocess(np.ascontiguousarray(data, dtype=np.float32), props)
    else:
        data, props = nnunet_preprocessing.preprocess(model.plans, data, props)
    tensor = torch.from_numpy(data).to(dtype=torch.float32, memory_format=torch.contiguous_format)
    return tensor, props


def predict(model, data_xyz, zooms_xyz, affine, step_size, tile_callback=None, preprocessed=None, via_files=None,
            clock=None, probabilities=False, cropped=False):
    """Segment one image (canonical x, y, z array) with one model.

    Returns the labelmap (x, y, z) with the model's own label values, as the official tool
    reads it from nnU-Net's output file. `preprocessed` is an optional dict shared between
    models of one run: models whose preprocessing is identical reuse the tensor.
    `tile_callback(done, total)` is called after every sliding-window tile and may raise
    Cancelled. `via_files` forces (True) or forbids (False) the file round trip through
    the model's reader/writer; by default only readers not emulated in memory use it.
    `clock` (a sliding_window.Clock) collects the time of preprocessing, forwards and the
    sliding window around them.
    `probabilities`: nnU-Net's export with probabilities, as with its save_probabilities
    (the labels then come from the probabilities); returns (labels, (probabilities,
    properties)) instead, the probabilities as nnU-Net saves them (the official tool then
    ignores --higher_order_resampling's export too). `cropped`: that export (cropped_export).
    """
    clock = clock or sliding_window.Clock()
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
            t = time.perf_counter()
            tensor, props = preprocess(model, data_xyz, zooms_xyz, affine, workdir)
            clock.preprocess += time.perf_counter() - t
            if preprocessed is not None:
                preprocessed[key] = (tensor, props)
        t, forward = time.perf_counter(), clock.forward
        probs = None
        if probabilities:  # official --save_probabilities: nnU-Net's own export, which returns them too
            props = dict(props)
            seg, probs = (model.reference or NnunetPredictor(model)).segment(tensor, props, step_size, tile_callback,
                                                                              clock, probabilities=True)
            probs = (probs, props)
        else:
            seg = model.segment(tensor, dict(props), step_size, tile_callback, clock, preprocessed, cropped)
        clock.window += time.perf_counter() - t - (clock.forward - forward)
        if workdir is not None:
            seg = _file_round_trip_output(model, seg, props, workdir)
        else:
            seg = np.asarray(seg).transpose(2, 1, 0)
        return (seg, probs) if probabilities else seg
    finally:
        if tmp is not None:
            tmp.cleanup()
