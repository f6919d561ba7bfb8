"""The official tool's extra commands on the command line (`python -m SegmentationLogic <command>`).

info, combine-masks, crop-to-body, get-modality, get-phase, get-body-stats, evans-index and
the spine / aorta / pulmonary reports: the official `totalseg_*` names without the
prefix, with `-` as our other commands, and the official flags. The work is done by one
module per command in this package, imported when its command runs (a front door: `--help`
needs no numpy).
"""
import json

from .reports import REPORTS, not_available


def cmd_info(args):
    from .info import info  # the catalogue only

    print(info(args.list_tasks, args.classes, args.task, args.json))
    return 0


def cmd_combine_masks(args):
    from .combine_masks import combine_masks  # numpy, nibabel: only when the command runs
    from .results import write_nifti

    path = write_nifti(combine_masks(args.input, args.masks, multilabel=args.multilabel), args.output)
    if not args.quiet:
        print(path)
    return 0


def _segmenter(args):
    from ..pipeline import Segmenter  # the engine (torch, nnU-Net): only when a command runs a model

    return Segmenter(device=args.device, weights_dir=args.weights_dir, download=not args.no_download)


def cmd_crop_to_body(args, progress_from_args):
    from .crop_to_body import crop_to_body  # the engine: only when the command runs
    from .results import write_nifti

    img, bbox = crop_to_body(args.input, _segmenter(args), args.only_trunc, progress_from_args(args))
    write_nifti(img, args.output)
    if not args.quiet:
        print(f"cropped to {'x'.join(map(str, img.shape))} (box {bbox}): {args.output}")
    return 0


def cmd_get_modality(args):
    from ..errors import SegmentationError  # the engine: only when the command runs
    from ..imaging.read import load_image
    from .modality import load_models, predict_modality
    from .results import write_result

    if args.normalized_intensities:
        raise SegmentationError("get-modality -n (normalised intensities inside organs) is not available yet.",
                                "Run without -n: the intensity-based classifier works on CT in Hounsfield units "
                                "and on MR.")
    models = load_models(args.model, download=not args.no_download)
    return write_result(predict_modality(load_image(args.input), models), args.output, args.quiet)


def cmd_get_phase(args, progress_from_args):
    from .phase import contrast_phase, load_models  # the engine: only when the command runs
    from .results import write_result

    models = load_models(args.model, download=not args.no_download)
    existing = None
    if args.existing_stats:
        with open(args.existing_stats, encoding="utf-8") as f:
            existing = json.load(f)
    result = contrast_phase(args.input, models, _segmenter(args), existing, progress_from_args(args))
    return write_result(result, args.output, args.quiet)


def cmd_get_body_stats(args):
    from .body_stats import get_body_stats  # the weights package: only when the command runs

    return get_body_stats(args.license_number)


def _report(name):
    def run(args):
        return not_available(name)
    return run


def _debug_quiet(p):
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def add_commands(sub, common, progress_from_args):
    """Register every tool command on the main parser's subparsers."""
    p = sub.add_parser("info", help="the tasks and their classes (tables, or JSON with --json)",
                       description="Tasks, modalities, licence flags and classes, as the official totalseg_info.")
    group = p.add_mutually_exclusive_group()
    group.add_argument("-lt", "--list-tasks", dest="list_tasks", action="store_true", help="the task table")
    group.add_argument("-cl", "--classes", action="store_true", help="the classes of the task given with -ta")
    p.add_argument("-ta", "--task", default=None, help="task for --classes")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("combine-masks", help="combine classes into one mask (e.g. lung)",
                       description="Combine classes into one mask, as the official totalseg_combine_masks.")
    p.add_argument("-i", dest="input", required=True, help="folder of per-class masks, or a multilabel .nii.gz")
    p.add_argument("-o", dest="output", required=True, help="output .nii.gz")
    p.add_argument("-m", "--masks", required=True,
                   help="lung, lung_left, lung_right, vertebrae, ribs, vertebrae_ribs, heart, pelvis, body, or class "
                        "names separated by commas")
    p.add_argument("-ml", "--multilabel", action="store_true", help="write a label table naming value 1")
    _debug_quiet(p)
    p.set_defaults(func=cmd_combine_masks)

    p = sub.add_parser("crop-to-body", help="cut an image down to the body (6 mm body model)",
                       description="Crop an image to the body, as the official crop_to_body.")
    p.add_argument("-i", dest="input", required=True, help="image (NIfTI, NRRD, DICOM folder or zip)")
    p.add_argument("-o", dest="output", required=True, help="output .nii.gz")
    p.add_argument("-t", "--only_trunc", action="store_true", help="crop to the trunk instead of the whole body")
    p.add_argument("-d", "--device", default="auto", help="auto, cpu, cuda, cuda:N, gpu, gpu:N or mps")
    p.add_argument("--no_download", action="store_true", help="fail instead of downloading the body model")
    common(p)
    p.set_defaults(func=lambda a: cmd_crop_to_body(a, progress_from_args))

    p = sub.add_parser("get-modality", help="CT or MR? (the official intensity classifier)",
                       description="Predict whether an image is CT or MR, as the official totalseg_get_modality.")
    p.add_argument("-i", dest="input", required=True, help="image (NIfTI, NRRD, DICOM folder or zip)")
    p.add_argument("-o", dest="output", required=True, help="output JSON file")
    p.add_argument("-n", dest="normalized_intensities", action="store_true",
                   help="(not available yet) use normalised intensities inside organs")
    p.add_argument("--model", default=None,
                   help="classifier path prefix (files PREFIX.0 .. PREFIX.4); default: the official classifier, "
                        "downloaded once into the TotalSegmentator home")
    p.add_argument("--no_download", action="store_true", help="fail instead of downloading the classifier")
    p.add_argument("-d", "--device", default="cpu", help="accepted for compatibility; the classifier runs on the CPU")
    _debug_quiet(p)
    p.set_defaults(func=cmd_get_modality)

    p = sub.add_parser("get-phase", help="contrast phase of a CT (official classifier)",
                       description="Predict the contrast phase of a CT, as the official totalseg_get_phase.")
    p.add_argument("-i", dest="input", required=True, help="CT (NIfTI, NRRD, DICOM folder or zip)")
    p.add_argument("-o", dest="output", required=True, help="output JSON file")
    p.add_argument("-m", dest="model", default=None,
                   help="classifier file (default: the official one, downloaded once into the TotalSegmentator home)")
    p.add_argument("-s", dest="existing_stats", default=None,
                   help="statistics.json of a total run (median, incomplete classes included) instead of running it")
    p.add_argument("-d", "--device", default="auto", help="auto, cpu, cuda, cuda:N, gpu, gpu:N or mps")
    p.add_argument("--no_download", action="store_true", help="fail instead of downloading weights or the classifier")
    common(p)
    p.set_defaults(func=lambda a: cmd_get_phase(a, progress_from_args))

    p = sub.add_parser("get-body-stats", help="body weight, size, age, sex (licensed)",
                       description="Body statistics from a CT/MR, as the official totalseg_get_body_stats (licensed).")
    p.add_argument("-i", dest="input", required=True, help="CT or MR image")
    p.add_argument("-o", dest="output", required=True, help="output JSON file")
    p.add_argument("-m", dest="modality", choices=["ct", "mr"], required=True)
    p.add_argument("-l", "--license_number", default=None, help="licence key (stored for later runs)")
    p.add_argument("-d", "--device", default="auto")
    _debug_quiet(p)
    p.set_defaults(func=cmd_get_body_stats)

    for name, (official, what) in REPORTS.items():
        p = sub.add_parser(name, help=f"{what} (not available yet)",
                           description=f"As the official {official}: {what}. Not available in this engine yet.")
        p.add_argument("args", nargs="*", help="the official command's arguments")
        p.add_argument("--debug", action="store_true", help="show tracebacks")
        p.set_defaults(func=_report(name))
