"""`download-weights`, `import-weights`, `set-license`: getting model weights and the licence key."""
import getpass
import sys

from ..request import quality_from_flags
from .common import add_common, add_quality_flags, emit_result, print_paths, progress_from_args


def cmd_download_weights(args):
    # the engine (numpy, nibabel, torch): imported when the command runs
    from ..pipeline.plan import required_models
    from ..weights import ensure_models

    models = required_models(args.task, quality_from_flags(args.fast, args.fastest), roi_subset=args.roi_subset,
                             body_seg=args.body_seg)
    paths = ensure_models(models, weights_dir=args.weights_dir, download=True, progress=progress_from_args(args),
                          mirror=args.mirror)
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
