"""Known-output test models: hand-set nnU-Net networks whose segmentation is known by construction.

Each class of a model answers one band of intensities: a voxel gets class C exactly where
its value lies in KNOWN_BANDS_HU[C] (CT models, Hounsfield units; MR models: the z-scored
value in KNOWN_BANDS_Z[C]), background elsewhere. The network has no normalisation, plain
ReLU and 1x1x1 kernels, so a voxel's class depends on its own value only: the same in
every tile, every mirror image and on every machine (the band edges are sharp to 4 HU,
and phantoms keep far from them: vessel_phantoms.CT_HU). testmodels.py builds them in the
official layout (`build_test_weights(size="known")`).
"""

# class -> [low, high) (None: open). The bands are far apart from the values phantoms use.
KNOWN_BANDS_HU = {
    "liver": (0, 240),                           # soft tissue, and contrast-filled vessels inside it
    "portal_vein_and_splenic_vein": (240, 340),
    "inferior_vena_cava": (340, 440),
    "liver_vessels": (130, None),                # dataset 8: everything contrast-bright
    "body_trunc": (-500, None),
}
KNOWN_BANDS_Z = {"liver": (0.0, 1.0)}            # MR models (z-scored intensities)
KNOWN_SCALE = 100.0  # logit slope per normalised unit outside a band: an edge is sharp to 0.01 (4 HU)


def known_arch(arch):
    """A fitted model's architecture (plans arch_kwargs) made voxel-wise and piecewise linear."""
    return {**arch, "norm_op": None, "norm_op_kwargs": {}, "nonlin": "torch.nn.ReLU",
            "kernel_sizes": [[1, 1, 1]] * arch["n_stages"]}


def _bands(classes, norm, ct_intensities):
    """{label: (low, high)} in normalised units (nnU-Net's CTNormalization with the plans'
    intensity properties, or z-scores) for the classes with a band."""
    def to_norm(hu):
        return None if hu is None else (hu - ct_intensities["mean"]) / ct_intensities["std"]

    out = {}
    for label, name in classes.items():
        if norm == "CTNormalization" and name in KNOWN_BANDS_HU:
            low, high = KNOWN_BANDS_HU[name]
            out[label] = (to_norm(low), to_norm(high))
        elif norm != "CTNormalization" and name in KNOWN_BANDS_Z:
            out[label] = KNOWN_BANDS_Z[name]
    return out


def set_known_weights(net, classes, norm, ct_intensities):
    """Hand-set weights: class k's logit is 1 - KNOWN_SCALE * (distance of the voxel's value
    to its band), background's is 0, every other class's -1. Only the first encoder
    convolution and the last decoder convolution (1x1x1 kernels) carry weights, so each
    voxel is classified on its own value, the same in every tile and every mirror image."""
    import torch

    bands = _bands(classes, norm, ct_intensities)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        first = net.encoder.stages[0][0].convs[0].conv
        last = net.decoder.stages[-1].convs[0].conv
        seg = net.decoder.seg_layers[-1]
        n_up = last.in_channels - first.out_channels  # the decoder concatenates (upsampled, skip)
        seg.bias.fill_(-1.0)
        seg.bias[0] = 0.0
        channel = 0
        for label, (low, high) in sorted(bands.items()):
            seg.bias[label] = 1.0
            for edge, sign in ((low, -1.0), (high, 1.0)):  # relu(s*(low - x)), relu(s*(x - high))
                if edge is None:
                    continue
                if channel >= first.out_channels:
                    raise ValueError(f"too many bands for {first.out_channels} channels: {bands}")
                first.weight[channel, 0, 0, 0, 0] = sign * KNOWN_SCALE
                first.bias[channel] = -sign * KNOWN_SCALE * edge
                last.weight[channel, n_up + channel, 0, 0, 0] = 1.0
                seg.weight[label, channel, 0, 0, 0] = -1.0
                channel += 1
