"""`crop-to-body`: cut an image down to the body (the official `crop_to_body`).

The 6 mm body model segments the image; the box around the body (`--only_trunc`: the
trunk only), widened by 3 mm, is cut out of the input and written with the voxel values
as 32-bit integers and the origin moved to the box corner, as the official command does.
"""
import nibabel as nib
import numpy as np

from ..imaging.read import load_image
from ..pipeline import geometry

ADDON_MM = (3, 3, 3)


def crop_to_body(input, segmenter, only_trunc=False, progress=None):
    """The cropped image (nibabel) and its box [[lo, hi] x 3] in input voxels."""
    img = load_image(input)
    labels = np.asanyarray(segmenter.segment(img, None, task="body", quality="fast", progress=progress).labelmap.dataobj)
    mask = labels == 1 if only_trunc else labels > 0  # 1: body_trunc
    bbox = geometry.bbox_from_mask(mask, geometry.addon_voxels(ADDON_MM, img.affine))
    data, affine = geometry.crop(geometry.exact_values(img), img.affine, bbox)
    return nib.Nifti1Image(data, affine), bbox
