"""`python -m SegmentationLogic cohort`: a folder or CSV manifest of cases, segmented on Ray.

Registered on the main parser by `add_commands` (one hook in the CLI's build_parser).
Exit code: 0 when every case is done, 1 when any failed, 130 when stopped (Ctrl+C or
SIGTERM: the running cases finish first; a second signal cancels them).
"""
from ..request import QUALITIES

EXIT_OK, EXIT_FAILED, EXIT_STOPPED = 0, 1, 130


def _callback(args, progress):
    """JSON mode: every event. Text mode: the per-case lines and downloads, not each tile."""
    if getattr(args, "progress", "text") == "json":
        return progress.emit
    return lambda event: (event["event"] == "log" or event.get("stage") == "download") and progress.emit(event)


def cmd_cohort(args, progress_from_args, emit_result):
    from .runner import StopRequest, run_cohort  # the engine (numpy, nibabel, scipy): only for this command

    options = {"task": args.task, "quality": args.quality, "roi_subset": args.roi_subset, "body_seg": args.body_seg,
               "force_split": args.force_split, "remove_small_blobs": args.remove_small_blobs,
               "robust_crop": args.robust_crop, "check_modality": not args.ignore_modality,
               "statistics": args.statistics, "preview": args.preview}
    progress = progress_from_args(args)
    summary = run_cohort(args.input, args.output, options, address=args.address, actors=args.actors,
                         cpus_per_actor=args.cpus_per_actor, gpus_per_actor=args.gpus_per_actor,
                         memory_per_actor_gb=args.memory_per_actor, retries=args.retries, device=args.device,
                         weights_dir=args.weights_dir, download=not args.no_download, verify=args.verify,
                         progress=_callback(args, progress), stop=StopRequest(), handle_signals=True,
                         debug=args.debug)
    emit_result(args, summary)
    if getattr(args, "progress", "text") != "json" and not args.quiet:
        progress.log(f"{summary['cases']} cases: {summary['done']} done, {summary['failed']} failed, "
                     f"{summary['skipped_done']} done earlier, {summary['cancelled']} cancelled, "
                     f"{summary['not_started']} not started; manifest {summary['manifest']}")
    if summary["interrupted"]:
        return EXIT_STOPPED
    return EXIT_FAILED if summary["failed"] else EXIT_OK


def _positive(kind):
    def parse(text):
        value = kind(text)
        if value <= 0:
            raise ValueError(text)
        return value

    parse.__name__ = kind.__name__
    return parse


def add_commands(sub, common, progress_from_args, emit_result):
    """Register `cohort` on the main parser's subparsers."""
    p = sub.add_parser(
        "cohort", help="segment a folder or CSV manifest of cases on Ray (local or a cluster), resumable",
        description="Every case of a folder (images, DICOM folders, zips) or CSV manifest (input[,case,options]) is "
                    "segmented by a pool of Ray actors, each holding a warm engine, into OUT/<case>.nii.gz (as "
                    "`segment -i CASE -o OUT/<case>.nii.gz --ml`). OUT/cohort_manifest.jsonl gets one line per case "
                    "(status, seconds, cause and fix, outputs with SHA-256, versions); a rerun skips what is done "
                    "and retries what failed. Needs Ray: pip install 'totalsegmentator-slicer[cohort]'.")
    p.add_argument("-i", "--input", required=True, help="folder of cases, or a .csv manifest")
    p.add_argument("-o", "--output", required=True, help="output folder (OUT/<case>.nii.gz, the manifest)")
    p.add_argument("-ta", "--task", default="total")
    quality = p.add_mutually_exclusive_group()
    quality.add_argument("--quality", choices=QUALITIES, default="normal")
    quality.add_argument("-f", "--fast", dest="quality", action="store_const", const="fast", help="3 mm model")
    quality.add_argument("-ff", "--fastest", dest="quality", action="store_const", const="fastest",
                         help="6 mm model")
    p.add_argument("-rs", "--roi_subset", nargs="+", default=None, help="only these classes (total, total_mr)")
    p.add_argument("-s", "--statistics", action="store_true",
                   help="statistics.json per case (outputs go to OUT/<case>/<case>.nii.gz)")
    p.add_argument("-p", "--preview", action="store_true", help="a 3D preview PNG per case (OUT/<case>/)")
    p.add_argument("-bs", "--body_seg", action="store_true", help="crop to the body first (body model)")
    p.add_argument("-fs", "--force_split", action="store_true", help="predict in three parts along z")
    p.add_argument("-rmb", "--remove_small_blobs", action="store_true", help="remove blobs < 200 mm3")
    p.add_argument("--robust_crop", action="store_true", help="use the 3 mm model for cropping")
    p.add_argument("--ignore_modality", action="store_true",
                   help="run a CT task even on volumes that do not look like CT")
    p.add_argument("-d", "--device", default="auto",
                   help="auto (GPUs when the cluster has them), cpu, cuda (one GPU per actor) or mps")
    p.add_argument("--address", default=None,
                   help="a running Ray cluster (auto, or HOST:PORT); default: start a private local Ray")
    p.add_argument("--actors", type=_positive(int), default=None,
                   help="engines running at once (default: one per GPU, or one per --cpus_per_actor cores)")
    p.add_argument("--cpus_per_actor", type=_positive(int), default=None,
                   help="CPU cores per actor (default: 4 on CPU, the node's share with GPUs)")
    p.add_argument("--gpus_per_actor", type=_positive(float), default=None,
                   help="GPUs per actor (default 1; 0.5 puts two actors on a GPU)")
    p.add_argument("--memory_per_actor", type=_positive(float), default=None, metavar="GB",
                   help="memory Ray reserves per actor, so no node takes more actors than it can hold")
    p.add_argument("--retries", type=int, default=2,
                   help="how often a case whose worker died is run again before it is marked failed (default 2)")
    p.add_argument("--verify", action="store_true",
                   help="hash every output before skipping a done case (default: size and time decide, as rsync)")
    p.add_argument("--no_download", action="store_true", help="fail instead of downloading missing weights")
    common(p)
    p.set_defaults(func=lambda a: cmd_cohort(a, progress_from_args, emit_result))
    return sub
