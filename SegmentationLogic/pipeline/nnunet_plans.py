"""What a model folder's plans.json and dataset.json say, resolved as nnU-Net resolves them.

nnU-Net's own PlansManager / ConfigurationManager / LabelManager pull in its image readers
(SimpleITK, tifffile), blosc2 and pandas on import: about a second of start-up that
inference never uses. This module reads the same files with the same rules and only the
standard library:

- a configuration may inherit from another (`inherits_from`), the child's keys win;
- plans written by nnU-Net before the `architecture` entry existed (TotalSegmentator's
  released weights) describe the U-Net with `UNet_class_name` and friends; they are
  turned into the same `architecture` entry nnU-Net reconstructs;
- labels: 0 is background, `ignore` is no output channel, a label given as a list of
  several values is a region (region-based models use sigmoid outputs).

`ModelPlans.fast_path_problem()` says why a model needs nnU-Net's own classes instead
(regions, an ignore label, a preprocessor other than the default one).
"""
import copy

OLD_FORMAT_CLASSES = {
    "PlainConvUNet": ("dynamic_network_architectures.architectures.unet.PlainConvUNet", "n_conv_per_stage"),
    "ResidualEncoderUNet": ("dynamic_network_architectures.architectures.residual_unet.ResidualEncoderUNet",
                            "n_blocks_per_stage"),
}
CONV_OPS = {1: "torch.nn.modules.conv.Conv1d", 2: "torch.nn.modules.conv.Conv2d", 3: "torch.nn.modules.conv.Conv3d"}
INSTANCE_NORMS = {1: "torch.nn.modules.instancenorm.InstanceNorm1d", 2: "torch.nn.modules.instancenorm.InstanceNorm2d",
                  3: "torch.nn.modules.instancenorm.InstanceNorm3d"}
DEFAULT_PREPROCESSOR = "DefaultPreprocessor"


class PlansError(ValueError):
    """plans.json / dataset.json do not describe a model nnU-Net could run."""


def resolve_configuration(plans, name, visited=()):
    """The configuration dict `name` with its `inherits_from` chain applied (a deep copy)."""
    configurations = plans.get("configurations") or {}
    if name not in configurations:
        raise PlansError(f"configuration {name!r} is not in plans.json (it has {sorted(configurations)})")
    config = copy.deepcopy(configurations[name])
    parent = config.get("inherits_from")
    if parent is not None:
        if parent in visited or parent == name:
            raise PlansError(f"circular 'inherits_from' in plans.json: {(*visited, name, parent)}")
        base = resolve_configuration(plans, parent, (*visited, name))
        base.update(config)
        config = base
    if "architecture" not in config:
        config = _architecture_from_old_format(config)
    return config


def _architecture_from_old_format(config):
    """The `architecture` entry nnU-Net reconstructs for plans of its first v2 releases."""
    try:
        network_class, blocks_key = OLD_FORMAT_CLASSES[config["UNet_class_name"]]
        n_stages = len(config["n_conv_per_stage_encoder"])
        dim = len(config["patch_size"])
        arch_kwargs = {
            "n_stages": n_stages,
            "features_per_stage": [min(config["UNet_base_num_features"] * 2 ** i, config["unet_max_num_features"])
                                   for i in range(n_stages)],
            "conv_op": CONV_OPS[dim],
            "kernel_sizes": copy.deepcopy(config["conv_kernel_sizes"]),
            "strides": copy.deepcopy(config["pool_op_kernel_sizes"]),
            blocks_key: copy.deepcopy(config["n_conv_per_stage_encoder"]),
            "n_conv_per_stage_decoder": copy.deepcopy(config["n_conv_per_stage_decoder"]),
            "conv_bias": True,
            "norm_op": INSTANCE_NORMS[dim],
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        }
    except KeyError as e:
        raise PlansError(f"plans.json has neither an 'architecture' entry nor the older U-Net keys ({e})") from e
    config = dict(config)
    for key in ("UNet_class_name", "UNet_base_num_features", "n_conv_per_stage_encoder", "n_conv_per_stage_decoder",
                "num_pool_per_axis", "pool_op_kernel_sizes", "conv_kernel_sizes", "unet_max_num_features"):
        config.pop(key, None)
    config["architecture"] = {"network_class_name": network_class, "arch_kwargs": arch_kwargs,
                              "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}
    return config


class ModelPlans:
    """One configuration of one model: what preprocessing, the network and the export need."""

    def __init__(self, plans, dataset_json, configuration):
        self.plans = plans
        self.dataset_json = dataset_json
        self.configuration_name = configuration
        self.config = resolve_configuration(plans, configuration)
        labels = dataset_json.get("labels") or {}
        if "background" not in labels or isinstance(labels["background"], (list, tuple)) \
                or int(labels["background"]) != 0:
            raise PlansError("dataset.json must declare label 'background' = 0")
        self.labels = labels
        self.has_regions = any(isinstance(v, (list, tuple)) and len(v) > 1 for v in labels.values())
        self.ignore_label = labels.get("ignore")
        values = set()
        for key, value in labels.items():
            if key == "ignore":
                continue
            values.update(int(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
        self.all_labels = sorted(values)
        self.foreground_labels = [v for v in self.all_labels if v != 0]

    # -- configuration --------------------------------------------------------------------
    @property
    def patch_size(self):
        return self.config["patch_size"]

    @property
    def spacing(self):
        return self.config["spacing"]

    @property
    def normalization_schemes(self):
        return self.config["normalization_schemes"]

    @property
    def use_mask_for_norm(self):
        return self.config["use_mask_for_norm"]

    @property
    def preprocessor_name(self):
        return self.config["preprocessor_name"]

    @property
    def architecture(self):
        arch = self.config["architecture"]
        return arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"]

    @property
    def transpose_forward(self):
        return self.plans["transpose_forward"]

    @property
    def transpose_backward(self):
        return self.plans["transpose_backward"]

    @property
    def intensity_properties(self):
        return self.plans.get("foreground_intensity_properties_per_channel") or {}

    @property
    def reader_name(self):
        return self.plans.get("image_reader_writer", "SimpleITKIO")

    def resampling(self, kind):
        """(function name, kwargs) of resampling_fn_<kind>: data, seg or probabilities."""
        return self.config[f"resampling_fn_{kind}"], self.config.get(f"resampling_fn_{kind}_kwargs") or {}

    # -- labels ---------------------------------------------------------------------------
    @property
    def num_segmentation_heads(self):
        if self.has_regions:
            return len([v for k, v in self.labels.items() if k != "ignore" and not _is_background_region(v)])
        return len(self.all_labels)

    @property
    def seg_dtype_name(self):
        """nnU-Net's output dtype: uint8 below 255 foreground labels, else uint16."""
        return "uint8" if len(self.foreground_labels) < 255 else "uint16"

    def num_input_channels(self):
        """nnU-Net: one per image channel (`modality` in older dataset.json, else `channel_names`),
        plus one per foreground label for the second stage of a cascade."""
        ds = self.dataset_json
        n = len(ds["modality"] if "modality" in ds else ds.get("channel_names") or {})
        if self.config.get("previous_stage") is not None:
            n += len(self.foreground_labels)
        return n

    def fast_path_problem(self):
        """None when this engine's own preprocessing and export reproduce nnU-Net for this
        model, else the reason to use nnU-Net's classes."""
        if self.plans.get("label_manager", "LabelManager") != "LabelManager":
            return f"label manager {self.plans['label_manager']}"
        if self.has_regions:
            return "region-based labels"
        if self.ignore_label is not None:
            return "an ignore label"
        if self.preprocessor_name != DEFAULT_PREPROCESSOR:
            return f"preprocessor {self.preprocessor_name}"
        if len(self.patch_size) != 3:
            return "a 2D configuration"
        return None


def _is_background_region(value):
    if isinstance(value, (list, tuple)):
        return len(set(value)) == 1 and list(value)[0] == 0
    return value == 0
