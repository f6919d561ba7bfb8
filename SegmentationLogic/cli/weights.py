"""`download-weights`, `import-weights`, `set-license`: getting model weights and the licence key."""
import getpass
import sys

from ..request import quality_from_flags
from .common import add_common, add_quality_flags, emit_result, print_paths, progress_from_args


def cmd_download_weights(args):
    # the engine (numpy, nibabel, torch): imported when the command runs
    from ..pipeline.plan import required_models
    from ..weights import DownloadLimits, ensure_models

    models = required_models(args.task, quality_from_flags(args.fast, args.fastest), roi_subset=args.roi_subset,
                             body_seg=args.body_seg)
    limits = DownloadLimits.from_env(connect_timeout=args.connect_timeout, read_timeout=args.read_timeout,
                                     min_speed_kbps=args.min_speed, speed_window=args.speed_window,
                                     deadline=args.download_deadline)
    paths = ensure_models(models, weights_dir=args.weights_dir, download=True, progress=progress_from_args(args),
                          mirror=args.mirror, limits=limits)
    emit_result(args, {"installed": [str(p) for p in paths]})
    print_paths(args, paths)
    return 0


def cmd_import_weights(args):
    from ..weights import import_weights  # numpy (checkpoint checks): imported when the command runs

    installed = import_weights(args.path, weights_dir=args.weights_dir, progress=progress_from_args(args))
    emit_result(args, {"installed": [str(p) for p in installed]})
    print_paths(args, installed)
    return 0


def cmd_set_license(args):
    from ..weights import mask_license, set_license, validate_license  # the weights package needs numpy

    key = args.license_key
    if key in (None, "-"):  # keeps the key out of the shell history and the process list
        key = getpass.getpass("Licence key: ") if sys.stdin.isatty() else sys.stdin.readline()
    path = set_license(key)
    print(f"Licence key {mask_license(validate_license(key))} stored in {path} (readable by you only).")
    return 0


def add_parsers(sub):
    p = sub.add_parser("download-weights", help="download the weights a task needs")
    p.add_argument("-ta", "--task", default="total")
    add_quality_flags(p, with_help=False)
    p.add_argument("-rs", "--roi_subset", nargs="+", default=None)
    p.add_argument("-bs", "--body_seg", action="store_true")
    p.add_argument("--mirror", default=None,
                   help="download from this URL (serving <Dataset>.zip files) or folder of zips instead of the "
                        "official source (default: $TOTALSEG_WEIGHTS_MIRROR)")
    # the limits' environment variables are weights.download.DownloadLimits.ENV (not imported here: --help
    # must start without the engine)
    p.add_argument("--connect_timeout", type=float, default=None, metavar="S",
                   help="seconds to open a connection (default 10, $TOTALSEG_DOWNLOAD_CONNECT_TIMEOUT)")
    p.add_argument("--read_timeout", type=float, default=None, metavar="S",
                   help="seconds without a byte before the server counts as stalled (default 20, "
                        "$TOTALSEG_DOWNLOAD_READ_TIMEOUT)")
    p.add_argument("--min_speed", type=float, default=None, metavar="KBPS",
                   help="fail when fewer KB/s arrive over the speed window (default 10, 0 = off, "
                        "$TOTALSEG_DOWNLOAD_MIN_SPEED)")
    p.add_argument("--speed_window", type=float, default=None, metavar="S",
                   help="seconds the minimum speed is averaged over (default 60, $TOTALSEG_DOWNLOAD_SPEED_WINDOW)")
    p.add_argument("--download_deadline", type=float, default=None, metavar="S",
                   help="seconds the whole download may take (default 10800, 0 = none, $TOTALSEG_DOWNLOAD_DEADLINE)")
    add_common(p)
    p.set_defaults(func=cmd_download_weights)

    p = sub.add_parser("import-weights", help="install weights from a zip file or folder")
    p.add_argument("path")
    add_common(p)
    p.set_defaults(func=cmd_import_weights)

    p = sub.add_parser("set-license", help="store a licence key for licensed tasks")
    p.add_argument("license_key", nargs="?", default=None,
                   help="the key; omit it (or give '-') to type it or pipe it in, out of the shell history")
    add_common(p)
    p.set_defaults(func=cmd_set_license)
