"""`crop-to-body`: cut an image down to the body (the official `crop_to_body`).

The 6 mm body model segments the image; the box around the body (`--only_trunc`: the
trunk only), widened by 3 mm, is cut out of the input and written with the voxel values
as 32-bit integers and the origin moved to the box corner, as the official command does.
"""
import numpy as np

ADDON_MM = (3, 3, 3)


def crop_to_body(input, segmenter, only_trunc=False, progress=None):
    """The cropped image (nibabel) and its box [[lo, hi] x 3] in input voxels."""
    import nibabel as nib

    from .. import geometry
    from ..image_io import load_image

    img = load_image(input)
    labels = np.asanyarray(segmenter.segment(img, None, task="body", quality="fast", progress=progress).labelmap.dataobj)
    mask = labels == 1 if only_trunc else labels > 0  # 1: body_trunc
    bbox = geometry.bbox_from_mask(mask, geometry.addon_voxels(ADDON_MM, img.affine))
    data, affine = geometry.crop(geometry.exact_values(img), img.affine, bbox)
    return nib.Nifti1Image(data, affine), bbox


def cmd_crop_to_body(args, progress_from_args):
    from ..pipeline import Segmenter
    from .results import write_nifti

    segmenter = Segmenter(device=args.device, weights_dir=args.weights_dir, download=not args.no_download)
    img, bbox = crop_to_body(args.input, segmenter, args.only_trunc, progress_from_args(args))
    write_nifti(img, args.output)
    if not args.quiet:
        print(f"cropped to {'x'.join(map(str, img.shape))} (box {bbox}): {args.output}")
    return 0


def add_command(sub, common, progress_from_args, emit_result):
    p = sub.add_parser("crop-to-body", help="cut an image down to the body (6 mm body model)",
                       description="Crop an image to the body, as the official crop_to_body.")
    p.add_argument("-i", dest="input", required=True, help="image (NIfTI, NRRD, DICOM folder or zip)")
    p.add_argument("-o", dest="output", required=True, help="output .nii.gz")
    p.add_argument("-t", "--only_trunc", action="store_true", help="crop to the trunk instead of the whole body")
    p.add_argument("-d", "--device", default="auto", help="auto, cpu, cuda, cuda:N, gpu, gpu:N or mps")
    p.add_argument("--no_download", action="store_true", help="fail instead of downloading the body model")
    common(p)
    p.set_defaults(func=lambda a: cmd_crop_to_body(a, progress_from_args))
