"""`segment`: flags (the official tool's names) -> SegmentRequest -> Segmenter.run -> files.

Every flag of the official `TotalSegmentator` command is accepted with its short and long
name. Three change nothing here, as in the official 2.18 where they change nothing either
or belong to its authors' own infrastructure: -nr/-ns (thread counts for resampling and
saving: the results are the same), -cp (crop masks now come from the run itself) and
-t (their in-house "nora" database); the last two say so when given.
"""
import argparse
import logging
import sys

from ..errors import SegmentationError
from ..request import OUTPUT_TYPES, SegmentRequest, quality_from_flags
from ..system.process import process_age
from .common import VersionAction, add_common, add_quality_flags, emit_result, json_mode, print_paths, progress_from_args
from .tasks import cmd_classes, cmd_list_tasks

IGNORED = {
    "--nora_tag": "--nora_tag is ignored: it tags results in the TotalSegmentator authors' in-house 'nora' database.",
    "--crop_path": "--crop_path is ignored: as in TotalSegmentator 2.18, crop masks come from the run itself.",
}


class UsageError(SegmentationError):
    kind = "request"


def _resampling_order(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid resampling order: {text!r}") from None
    if not 0 <= value <= 5:
        raise argparse.ArgumentTypeError("the resampling order must be between 0 and 5")
    return value


def _positive(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("the value must be greater than 0")
    return value


def request_from_args(args):
    """The SegmentRequest the `segment` flags describe."""
    roi_subset = args.roi_subset_robust or args.roi_subset  # official: -rsr is -rs with the 3 mm crop model
    return SegmentRequest(
        input=args.input, output=args.output, task=args.task, quality=quality_from_flags(args.fast, args.fastest),
        roi_subset=roi_subset, device=args.device, ml=args.ml, statistics=args.statistics or False,
        preview=args.preview, body_seg=args.body_seg, force_split=args.force_split,
        remove_small_blobs=args.remove_small_blobs or False, robust_crop=args.robust_crop or bool(args.roi_subset_robust),
        weights_dir=args.weights_dir, download=not args.no_download, check_modality=not args.ignore_modality,
        output_types=args.output_type, statistics_extra=args.statistics_extra, stats_aggregation=args.stats_aggregation,
        stats_include_incomplete=args.stats_include_incomplete, resampling_order=args.resampling_order,
        higher_order_resampling=args.higher_order_resampling,
        higher_order_resampling_legacy=args.higher_order_resampling_LEGACY, save_lowres=args.save_lowres,
        v1_order=args.v1_order, no_derived_masks=args.no_derived_masks, skip_saving=args.skip_saving,
        save_probabilities=args.save_probabilities, radiomics=args.radiomics, report=args.report,
        model_size=args.model_size, overwrite=args.overwrite, deterministic=args.deterministic)


def cmd_segment(args):
    startup = process_age()  # interpreter and imports, before the run starts
    if args.list_tasks:  # official: -lt / -lc answer and exit, no input needed
        return cmd_list_tasks(argparse.Namespace(json=False))
    if args.list_classes is not None:
        return cmd_classes(argparse.Namespace(task=args.list_classes, json=False))
    missing = [flag for flag, value in (("-i", args.input), ("-o", args.output)) if value is None]
    if missing:
        raise UsageError(f"segment needs {' and '.join(missing)}.",
                         "Give the image with -i and where to write with -o (or use -lt / -lc to list tasks or "
                         "classes).")
    if args.license_number:  # official -l: stored for later runs, then the run goes on
        from ..weights import set_license  # the weights package: only when a key is given

        set_license(args.license_number)
    ignored = [flag for flag, used in (("--nora_tag", args.nora_tag not in (None, "None")),
                                       ("--crop_path", args.crop_path is not None)) if used]
    request, progress = request_from_args(args), progress_from_args(args)
    if args.verbose:  # official -v: more intermediate output (our debug log, and the timings at the end)
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    for flag in ignored:
        progress.log(IGNORED[flag], "warning")
    if getattr(args, "server", None):
        # on a segmentation server: the client needs no torch, nnU-Net or nibabel here
        from ..server.client import RemoteSegmenter

        ignored = [flag for flag, used in (("--device", args.device != "auto"), ("--weights_dir", args.weights_dir),
                                           ("--no_download", args.no_download)) if used]
        if ignored:
            progress.log(f"{', '.join(ignored)}: decided by the server, ignored with --server.", "warning")
        # SIGTERM stops it as Ctrl+C does (cli/main: system/signals), and the server's job is cancelled
        result = RemoteSegmenter(args.server, token_file=args.token_file, ca_cert=args.ca_cert).run(request, progress)
    else:
        from ..pipeline import default_segmenter  # the engine (numpy, nibabel, torch): imported when it runs

        result = default_segmenter().run(request, progress)
        if startup is not None:
            result.timings["startup"] = round(startup, 3)
    emit_result(args, result.to_json())
    if not json_mode(args):
        if not args.quiet:
            print_paths(args, result.files)
        if result.model_note:  # also with -q: nobody should take a test model's output for a real one
            print(f"NOTE: {result.model_note}", file=sys.stderr)
        if args.verbose:
            print("timings (s): " + ", ".join(f"{k} {v}" for k, v in result.timings.items()), file=sys.stderr)
    return 0


def add_parser(sub):
    p = sub.add_parser("segment", help="segment an image (NIfTI, NRRD, DICOM folder or zip)")
    p.add_argument("-i", "--input", help="image: NIfTI, NRRD, MetaImage, a DICOM folder, file or zip")
    p.add_argument("-o", "--output",
                   help="with --ml a .nii.gz file, otherwise a folder with one file per class; with one DICOM "
                        "output type the .dcm file")
    p.add_argument("-ta", "--task", default="total")
    p.add_argument("-rs", "--roi_subset", nargs="+", default=None, help="only these classes (total, total_mr)")
    p.add_argument("-rsr", "--roi_subset_robust", nargs="+", default=None,
                   help="as --roi_subset, cropping with the 3 mm model (slower, more robust)")
    add_quality_flags(p)
    p.add_argument("-d", "--device", default="auto", help="auto, cpu, cuda, cuda:N, gpu, gpu:N or mps")
    p.add_argument("-ml", "--ml", action="store_true", help="one multilabel file instead of one file per class")
    p.add_argument("-ot", "--output_type", nargs="+", default=None, metavar="TYPE",
                   help=f"{', '.join(OUTPUT_TYPES)} (default nifti); several at once, space or comma separated. "
                        "DICOM outputs need a DICOM input; with one DICOM type -o is the file")
    p.add_argument("-s", "--statistics", nargs="?", const=True, default=False, metavar="PATH",
                   help="write statistics.json (volume, intensity) beside the result, or to PATH")
    p.add_argument("-sx", "--statistics_extra", action="store_true",
                   help="statistics also give n_voxels, intensity std/min/max, centroid_vox and bbox_vox")
    p.add_argument("-sa", "--stats_aggregation", choices=["mean", "median"], default="mean",
                   help="intensity statistic per class (default: mean)")
    p.add_argument("-sii", "--stats_include_incomplete", action="store_true",
                   help="statistics also for classes that touch the image border (cut off; excluded by default)")
    p.add_argument("-r", "--radiomics", action="store_true",
                   help="statistics_radiomics.json: shape and first-order features per class file (pyradiomics)")
    p.add_argument("-p", "--preview", action="store_true", help="write a 3D preview PNG")
    p.add_argument("-bs", "--body_seg", action="store_true", help="crop to the body first (body model)")
    p.add_argument("-fs", "--force_split", action="store_true", help="predict in three parts along z")
    p.add_argument("-rmb", "--remove_small_blobs", nargs="?", const=200.0, default=False, type=_positive,
                   metavar="MM3", help="remove connected components smaller than MM3 (default 200)")
    p.add_argument("-rc", "--robust_crop", action="store_true", help="use the 3 mm model for cropping")
    p.add_argument("-ro", "--resampling_order", type=_resampling_order, default=1,
                   help="spline order (0-5) of the input resampling (default 1; no effect with -ho)")
    p.add_argument("-ho", "--higher_order_resampling", "--high_order_resampling", action="store_true",
                   help="let nnU-Net resample the input and the result (its own higher-order resampling)")
    p.add_argument("--higher_order_resampling_LEGACY", "--high_order_resampling_LEGACY", action="store_true",
                   help="smooth labelmap upsampling (each label one-hot, order 1)")
    p.add_argument("-sl", "--save_lowres", action="store_true",
                   help="with --fast/--fastest: keep the labelmap at the model resolution")
    p.add_argument("-v1o", "--v1_order", action="store_true",
                   help="task total, multilabel: label values of TotalSegmentator v1 (classes new in v2 dropped)")
    p.add_argument("-ndm", "--no_derived_masks", action="store_true",
                   help="task body per class: no body.nii.gz / skin.nii.gz")
    p.add_argument("-ss", "--skip_saving", action="store_true",
                   help="write no segmentation files (statistics, preview, report still)")
    p.add_argument("-sp", "--save_probabilities", default=None, metavar="PATH",
                   help="nnU-Net's class probabilities to PATH (.npz) and its properties beside it (.pkl)")
    p.add_argument("-rp", "--report", default=None, metavar="PATH", help="a JSON manifest of the run")
    p.add_argument("-ms", "--model_size", choices=["big", "small"], default="big",
                   help="small: the ResEnc-L models of task total_v3")
    p.add_argument("-l", "--license_number", default=None, help="licence key (stored for later runs)")
    p.add_argument("-nr", "--nr_thr_resamp", type=int, default=1, help="accepted; results do not depend on it")
    p.add_argument("-ns", "--nr_thr_saving", type=int, default=6, help="accepted; results do not depend on it")
    p.add_argument("-cp", "--crop_path", default=None, help="accepted; crop masks come from the run itself")
    p.add_argument("-t", "--nora_tag", default=None, help=argparse.SUPPRESS)
    p.add_argument("-v", "--verbose", action="store_true", help="also show debug messages and timings")
    p.add_argument("-lt", "--list-tasks", dest="list_tasks", action="store_true", help="list the tasks and exit")
    p.add_argument("-lc", "--list-classes", dest="list_classes", nargs="?", const="total", default=None,
                   metavar="TASK", help="list the classes of TASK (default total) and exit")
    p.add_argument("--version", action=VersionAction)
    p.add_argument("--no_download", action="store_true", help="fail instead of downloading missing weights")
    p.add_argument("--ignore_modality", action="store_true",
                   help="run a CT task even when the volume does not look like CT")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing output files that are not results of this tool (results of earlier runs "
                        "are replaced anyway); the input is never replaced")
    p.add_argument("--deterministic", action="store_true",
                   help="GPU: the same labelmap run after run (no cuDNN autotuning, deterministic algorithms; "
                        "slower). The CPU is reproducible without it")
    add_common(p)
    p.set_defaults(func=cmd_segment)
