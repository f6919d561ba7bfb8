"""nnU-Net's own predictor, for the models the engine's faster path does not cover.

`sliding_window.py` and `nnunet_preprocessing.py` reproduce nnU-Net 2.6-2.8 for models with
plain labels and the default preprocessor. Anything else (region-based labels, an ignore
label, another preprocessor or label manager, an nnU-Net release outside that range) runs
through nnU-Net's classes here: `run_case_npy` of the plans' preprocessor, nnUNetPredictor's
sliding window and `convert_predicted_logits_to_segmentation_with_correct_shape`. They are
also the reference the faster path is tested against.
"""
import contextlib
import io
import logging
import threading

from ..errors import Cancelled
from .sliding_window import labels_from_logits

log = logging.getLogger(__name__)


def _nnunet():
    # torch and nnU-Net's predictor are heavy (seconds: torch._dynamo, blosc2, pandas): imported only here
    import torch
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    return torch, nnUNetPredictor, PlansManager, convert_predicted_logits_to_segmentation_with_correct_shape


def _predictor_class():
    torch, nnUNetPredictor = _nnunet()[:2]

    class TileReportingPredictor(nnUNetPredictor):
        """nnUNetPredictor that reports each sliding-window tile and can be cancelled.

        Only two hooks are added; the sliding window itself is nnU-Net's. On cancel the
        remaining tiles return zeros instead of running the network, so the loop (and its
        producer thread) ends normally within moments, then `Cancelled` is raised."""

        tile_callback = None
        clock = None
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
            if self.clock is not None and not self.use_mirroring:
                prediction = self.clock.forward_call(self.network, x)
            else:
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


class NnunetPredictor:
    """A loaded model's network and weights inside nnU-Net's own predictor."""

    def __init__(self, model):
        torch, _, PlansManager, _ = _nnunet()
        self.plans_manager = PlansManager(model.plans.plans)
        self.configuration_manager = self.plans_manager.get_configuration(model.plans.configuration_name)
        self.label_manager = self.plans_manager.get_label_manager(model.dataset_json)
        cls = predictor_class()
        # nnU-Net prints "perform_everything_on_device=True is only supported for cuda devices"
        # on every non-CUDA device, even when False was asked: noise to a user, and stdout
        # carries the JSON events. Anything it prints goes to the debug log instead.
        printed = io.StringIO()
        benchmark = torch.backends.cudnn.benchmark  # the run's setting (system.devices), not the constructor's
        with contextlib.redirect_stdout(printed):
            self.predictor = cls(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                 perform_everything_on_device=model.device.type == "cuda", device=model.device,
                                 verbose=False, verbose_preprocessing=False, allow_tqdm=False)
        torch.backends.cudnn.benchmark = benchmark
        if printed.getvalue().strip():
            log.debug("nnU-Net: %s", printed.getvalue().strip())
        self.predictor.manual_initialization(model.network, self.plans_manager, self.configuration_manager,
                                             model.parameters, model.dataset_json, model.trainer_name,
                                             model.mirror_axes)
        self.model = model

    def preprocess(self, data, props):
        """The plans' preprocessor on (c, z, y, x) float32 data -> (float32 array, properties)."""
        preprocessor = self.configuration_manager.preprocessor_class(verbose=False)
        data, _, props = preprocessor.run_case_npy(data, None, props, self.plans_manager, self.configuration_manager,
                                                   self.model.dataset_json)
        return data, props

    def segment(self, tensor, props, step_size, tile_callback=None, clock=None, probabilities=False, cropped=False):
        """nnU-Net's prediction and export: labels (reader's axis order) before nnU-Net's crop;
        with `probabilities`, (labels, probabilities) as nnU-Net's save_probabilities exports them."""
        convert = _nnunet()[3]
        predictor = self.predictor
        predictor.tile_step_size = step_size
        predictor.tile_callback = tile_callback
        predictor.clock = clock
        predictor._tiles_total = 0
        predictor._tiles_done = 0
        predictor._cancelled = None
        try:
            logits = predictor.predict_logits_from_preprocessed_data(tensor)
        finally:
            predictor.tile_callback = predictor.clock = None
        if clock is not None:
            clock.settle()
        if predictor._cancelled is not None:
            raise predictor._cancelled
        if cropped and not probabilities:  # the official --higher_order_resampling export
            return labels_from_logits(logits, self.model.plans, props, cropped=True)
        # exactly what the official export worker receives: the fp16 logits as a numpy array
        return convert(logits.numpy(), self.plans_manager, self.configuration_manager, self.label_manager, props,
                       return_probabilities=probabilities)
