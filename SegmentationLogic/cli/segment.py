"""`segment`: flags (the official tool's names) -> SegmentRequest -> Segmenter.run -> files."""
import sys

from ..request import SegmentRequest, quality_from_flags
from ..system.process import process_age
from .common import add_common, add_quality_flags, emit_result, json_mode, print_paths, progress_from_args


def request_from_args(args):
    """The SegmentRequest the `segment` flags describe."""
    return SegmentRequest(
        input=args.input, output=args.output, task=args.task, quality=quality_from_flags(args.fast, args.fastest),
        roi_subset=args.roi_subset, device=args.device, ml=args.ml, statistics=args.statistics, preview=args.preview,
        body_seg=args.body_seg, force_split=args.force_split, remove_small_blobs=args.remove_small_blobs,
        robust_crop=args.robust_crop, weights_dir=args.weights_dir, download=not args.no_download,
        check_modality=not args.ignore_modality, overwrite=args.overwrite, deterministic=args.deterministic)


def cmd_segment(args):
    startup = process_age()  # interpreter and imports, before the run starts
    request, progress = request_from_args(args), progress_from_args(args)
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
    return 0


def add_parser(sub):
    p = sub.add_parser("segment", help="segment an image (NIfTI, NRRD, DICOM folder or zip)")
    p.add_argument("-i", "--input", required=True)
    p.add_argument("-o", "--output", required=True,
                   help="with --ml a .nii.gz file, otherwise a folder with one file per class")
    p.add_argument("-ta", "--task", default="total")
    p.add_argument("-rs", "--roi_subset", nargs="+", default=None, help="only these classes (total, total_mr)")
    add_quality_flags(p)
    p.add_argument("-d", "--device", default="auto", help="auto, cpu, cuda, cuda:N, gpu, gpu:N or mps")
    p.add_argument("-ml", "--ml", action="store_true", help="one multilabel file instead of one file per class")
    p.add_argument("-s", "--statistics", action="store_true", help="write statistics.json (volume, intensity)")
    p.add_argument("-p", "--preview", action="store_true", help="write a 3D preview PNG")
    p.add_argument("-bs", "--body_seg", action="store_true", help="crop to the body first (body model)")
    p.add_argument("-fs", "--force_split", action="store_true", help="predict in three parts along z")
    p.add_argument("-rmb", "--remove_small_blobs", action="store_true", help="remove blobs < 200 mm3")
    p.add_argument("--robust_crop", action="store_true", help="use the 3 mm model for cropping")
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
