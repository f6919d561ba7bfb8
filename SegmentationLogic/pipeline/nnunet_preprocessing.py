"""nnU-Net's DefaultPreprocessor for inference, value for value, with fewer copies.

`DefaultPreprocessor.run_case_npy` does, in this order: cast to float32 (a copy),
transpose_forward, crop to the bounding box of the non-zero voxels (holes filled), compute
the target shape, normalise each channel with the plans' scheme, resample when the shape
changes. Its normaliser classes and resampling functions are nnU-Net's own, called here.

What differs is only the work, not the numbers:
- the bounding box of the hole-filled non-zero mask is the bounding box of the non-zero
  voxels (background outside that box touches the image border, so filling never reaches
  it), so the costly hole filling runs only when a normaliser uses the mask;
- with element-wise normalisers (CT, none, rescale to 0..1: clip, subtract, divide or
  min/max) the image is cropped first and copied once, cropped, into the contiguous
  float32 array the network reads. Normalisers that average over the image (z-score)
  get exactly nnU-Net's array layout, because the order of a sum changes its last bits.
"""
import functools

import numpy as np

# normalisers whose result does not depend on the memory layout of the image
ELEMENTWISE_NORMALIZERS = ("CTNormalization", "NoNormalization", "RescaleTo01Normalization")
# normalisers that read the non-zero mask only when use_mask_for_norm is set
MASK_ONLY_IF_ASKED = ("CTNormalization", "NoNormalization", "RescaleTo01Normalization", "ZScoreNormalization")
STANDARD_RESAMPLING = "resample_data_or_seg_to_shape"  # returns its input when the shape does not change


def compute_new_shape(old_shape, old_spacing, new_spacing):
    """nnU-Net's target shape: round(old spacing / new spacing * old size) per axis."""
    return np.array([int(round(i / j * k)) for i, j, k in zip(old_spacing, new_spacing, old_shape)])


def nonzero_bbox(data):
    """[[lo, hi) x 3] of the voxels that are non-zero in any channel; the whole image when
    there are none (as nnU-Net's get_bbox_from_mask)."""
    mask = data[0] != 0
    for c in range(1, data.shape[0]):
        mask |= data[c] != 0
    bbox = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(mask.any(axis=other))
        if present.size == 0:
            return [[0, s] for s in mask.shape]
        bbox.append([int(present[0]), int(present[-1]) + 1])
    return bbox


def _normalizer_class(scheme):
    from nnunetv2.preprocessing.normalization import default_normalization_schemes as schemes  # light: numpy only

    cls = getattr(schemes, scheme, None)
    if cls is None:
        # a scheme outside nnU-Net's defaults: nnU-Net's own lookup (imports every scheme module)
        import nnunetv2
        from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

        cls = recursive_find_python_class(f"{nnunetv2.__path__[0]}/preprocessing/normalization", scheme,
                                          "nnunetv2.preprocessing.normalization")
        if cls is None:
            raise RuntimeError(f"Unable to locate class '{scheme}' for normalization")
    return cls


def resampling_function(plans, kind):
    from nnunetv2.preprocessing.resampling.utils import recursive_find_resampling_fn_by_name  # heavy (pandas)

    name, kwargs = plans.resampling(kind)
    return functools.partial(recursive_find_resampling_fn_by_name(name), **kwargs)


def preprocess(plans, data, properties):
    """DefaultPreprocessor.run_case_npy(data, None, properties, ...) for one image.

    data: (channels, z, y, x) as the plans' reader gives it, any dtype or memory layout
    (a view is fine: it is not modified). Returns (float32 array, properties) with the
    properties nnU-Net's export needs."""
    props = dict(properties)
    schemes = plans.normalization_schemes
    use_mask = plans.use_mask_for_norm
    need_mask = any(use_mask) or any(s not in MASK_ONLY_IF_ASKED for s in schemes)
    elementwise = all(s in ELEMENTWISE_NORMALIZERS for s in schemes)

    axes = [0, *[i + 1 for i in plans.transpose_forward]]
    spacing = [props["spacing"][i] for i in plans.transpose_forward]
    if elementwise:
        view = data.transpose(axes)
    else:  # nnU-Net's layout: a C-contiguous float32 copy, then the transpose (a view)
        view = np.ascontiguousarray(data, dtype=np.float32).transpose(axes)
    props["shape_before_cropping"] = view.shape[1:]
    seg = None
    if need_mask:
        from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero  # heavy (blosc2): only when needed

        if elementwise:
            view = np.ascontiguousarray(view, dtype=np.float32)
        cropped, seg, bbox = crop_to_nonzero(view)
    else:
        bbox = nonzero_bbox(view)
        cropped = view[(slice(None), *(slice(lo, hi) for lo, hi in bbox))]
    props["bbox_used_for_cropping"] = bbox
    props["shape_after_cropping_and_before_resampling"] = cropped.shape[1:]
    if elementwise and not need_mask:
        cropped = np.ascontiguousarray(cropped, dtype=np.float32)  # the only copy of the image
    new_shape = compute_new_shape(cropped.shape[1:], spacing, plans.spacing)

    intensities = plans.intensity_properties
    for c in range(cropped.shape[0]):
        normalizer = _normalizer_class(schemes[c])(use_mask_for_norm=use_mask[c],
                                                   intensityproperties=intensities[str(c)])
        cropped[c] = normalizer.run(cropped[c], seg[0] if seg is not None else None)

    name, _ = plans.resampling("data")
    if name != STANDARD_RESAMPLING or np.any(np.array(cropped.shape[1:]) != new_shape):
        cropped = resampling_function(plans, "data")(cropped, new_shape, spacing, plans.spacing)
    return cropped, props
