"""Command line: `python -m SegmentationLogic <command> ...`.

Flags follow the official TotalSegmentator CLI where they overlap, so scripts carry over.
With `--progress json` every event is one JSON object per stdout line (see progress.py);
otherwise progress goes to stderr as short human lines. Errors end with exit code 1 and
a cause + fix message (or an `error` event), never a traceback, unless `--debug`.
"""
import argparse
import json
import sys

from .cli_output_flags import add_output_flags, output_options
from .errors import SegmentationError

EXIT_ERROR = 1
EXIT_CANCELLED = 130


# In --progress json mode stdout carries only JSON events: the real stream is kept here and
# sys.stdout points at stderr while a command runs, so a stray print from a library cannot
# break the protocol.
_EVENT_STREAM = None


def _events_stream():
    return _EVENT_STREAM or sys.stdout


def _progress_from_args(args):
    from .progress import Progress, json_lines_writer, text_writer

    if getattr(args, "progress", "text") == "json":
        return Progress(json_lines_writer(_events_stream()))
    if getattr(args, "quiet", False):
        return Progress(None)
    return Progress(text_writer())


def _emit(event):
    out = _events_stream()
    out.write(json.dumps(event, default=str) + "\n")
    out.flush()


def _emit_result(args, payload):
    if getattr(args, "progress", "text") == "json":
        _emit({"event": "result", **payload})


# -- commands ----------------------------------------------------------------------

def cmd_list_tasks(args):
    from .catalogue import load_catalogue

    cat = load_catalogue()
    rows = [{"name": t.name, "modality": t.modality, "licensed": t.licensed, "classes": len(t.classes),
             "qualities": list(t.qualities), "description": t.description} for t in cat.tasks()]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    table = [["TASK", "MOD", "LICENCE", "CLASSES", "QUALITIES", "DESCRIPTION"]] + [
        [r["name"], r["modality"], "yes" if r["licensed"] else "no", str(r["classes"]), ",".join(r["qualities"]),
         r["description"]] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    for row in table:  # every column as wide as its widest cell; counts right-aligned
        cells = [c.rjust(w) if i == 3 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        print("  ".join(cells + [row[-1]]))
    print(f"\n{len(rows)} tasks. Licensed tasks need a licence key (free for non-commercial use): "
          f"{cat.license_info_url}")
    return 0


def cmd_classes(args):
    from .catalogue import load_catalogue

    task = load_catalogue().task(args.task)
    if args.json:
        print(json.dumps({str(k): v for k, v in sorted(task.classes.items())}, indent=1))
        return 0
    print(f"Task '{task.name}' [{task.modality}, {'licence required' if task.licensed else 'open'}, "
          f"{len(task.classes)} classes]")
    for value in sorted(task.classes):
        print(f"{value:>4}  {task.classes[value]}")
    return 0


def segment_options(args):
    """Keyword arguments of `pipeline.segment` from parsed `segment` flags (CLI and worker share them)."""
    quality = "fastest" if args.fastest else ("fast" if args.fast else "normal")
    return dict(task=args.task, quality=quality, roi_subset=args.roi_subset, device=args.device, ml=args.ml,
                statistics=args.statistics, preview=args.preview, body_seg=args.body_seg,
                force_split=args.force_split, remove_small_blobs=args.remove_small_blobs,
                robust_crop=args.robust_crop, weights_dir=args.weights_dir, download=not args.no_download,
                check_modality=not args.ignore_modality, **output_options(args))


def result_payload(result):
    return {"files": [str(f) for f in result.files], "note": result.model_note,
            "classes": len(result.class_map), "timings": getattr(result, "timings", None)}


def cmd_segment(args):
    from .pipeline import segment

    result = segment(args.input, args.output, progress=_progress_from_args(args), **segment_options(args))
    _emit_result(args, result_payload(result))
    if args.progress != "json" and not args.quiet:
        for f in result.files:
            print(f)
        if result.model_note:
            print(f"NOTE: {result.model_note}", file=sys.stderr)
    return 0


def cmd_download_weights(args):
    from .catalogue import load_catalogue
    from .weights import ensure_models

    cat = load_catalogue()
    quality = "fastest" if args.fastest else ("fast" if args.fast else "normal")
    models = cat.models_for(args.task, quality, roi_subset=args.roi_subset, body_seg=args.body_seg)
    paths = ensure_models(models, weights_dir=args.weights_dir, download=True, progress=_progress_from_args(args),
                          mirror=args.mirror)
    _emit_result(args, {"installed": [str(p) for p in paths]})
    if args.progress != "json":
        for p in paths:
            print(p)
    return 0


def cmd_import_weights(args):
    from .weights import import_weights

    installed = import_weights(args.path, weights_dir=args.weights_dir, progress=_progress_from_args(args))
    _emit_result(args, {"installed": [str(p) for p in installed]})
    if args.progress != "json":
        for p in installed:
            print(p)
    return 0


def cmd_set_license(args):
    from .license import mask_license, set_license, validate_license

    key = args.license_key
    if key in (None, "-"):  # keeps the key out of the shell history and the process list
        if sys.stdin.isatty():
            import getpass

            key = getpass.getpass("Licence key: ")
        else:
            key = sys.stdin.readline()
    path = set_license(key)
    print(f"Licence key {mask_license(validate_license(key))} stored in {path} (readable by you only).")
    return 0


def cmd_worker(args):
    from .worker import serve

    return serve()


def cmd_evaluate(args):
    from .evaluation import dice_per_class_files

    scores = dice_per_class_files(args.prediction, args.reference, task=args.task)
    print(json.dumps(scores, indent=1))
    return 0


# -- parser ------------------------------------------------------------------------

def _common(p):
    p.add_argument("--progress", choices=["text", "json"], default="text",
                   help="json: one JSON event per stdout line (for GUIs and batch runners)")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--weights_dir", default=None,
                   help="weights folder (default: $TOTALSEG_WEIGHTS_PATH or $TOTALSEG_HOME_DIR/nnunet/results "
                        "or ~/.totalsegmentator/nnunet/results, as the official tool)")


def build_parser():
    ap = argparse.ArgumentParser(prog="python -m SegmentationLogic",
                                 description="TotalSegmentator-exact segmentation on nnU-Net v2.")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("segment", help="segment an image (NIfTI, NRRD, DICOM folder or zip)")
    p.add_argument("-i", "--input", required=True)
    p.add_argument("-o", "--output", required=True,
                   help="with --ml a .nii.gz file, otherwise a folder with one file per class")
    p.add_argument("-ta", "--task", default="total")
    p.add_argument("-rs", "--roi_subset", nargs="+", default=None, help="only these classes (total, total_mr)")
    p.add_argument("-f", "--fast", action="store_true", help="3 mm model")
    p.add_argument("-ff", "--fastest", action="store_true", help="6 mm model")
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
    add_output_flags(p)
    _common(p)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("download-weights", help="download the weights a task needs")
    p.add_argument("-ta", "--task", default="total")
    p.add_argument("-f", "--fast", action="store_true")
    p.add_argument("-ff", "--fastest", action="store_true")
    p.add_argument("-rs", "--roi_subset", nargs="+", default=None)
    p.add_argument("-bs", "--body_seg", action="store_true")
    p.add_argument("--mirror", default=None,
                   help="download from this URL (serving <Dataset>.zip files) or folder of zips instead of the "
                        "official source (default: $TOTALSEG_WEIGHTS_MIRROR)")
    _common(p)
    p.set_defaults(func=cmd_download_weights)

    p = sub.add_parser("import-weights", help="install weights from a zip file or folder")
    p.add_argument("path")
    _common(p)
    p.set_defaults(func=cmd_import_weights)

    p = sub.add_parser("set-license", help="store a licence key for licensed tasks")
    p.add_argument("license_key", nargs="?", default=None,
                   help="the key; omit it (or give '-') to type it or pipe it in, out of the shell history")
    _common(p)
    p.set_defaults(func=cmd_set_license)

    p = sub.add_parser("worker", help="persistent worker for the Slicer module: one JSON request per stdin line, "
                                      "JSON events on stdout; keeps models loaded between requests")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("list-tasks", help="list every task")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list_tasks)

    p = sub.add_parser("classes", help="list the classes of a task with their label values")
    p.add_argument("task")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_classes)

    p = sub.add_parser("evaluate", help="Dice per class of a result against a reference")
    p.add_argument("prediction")
    p.add_argument("reference")
    p.add_argument("-ta", "--task", default=None, help="names the classes in the report")
    p.set_defaults(func=cmd_evaluate)

    from .vessels.cli import add_commands as add_vessel_commands  # liver-vessels, split-vessels

    add_vessel_commands(sub, _common, _progress_from_args, _emit_result)
    from .tools import add_commands as add_tool_commands  # info, combine-masks, get-modality, get-phase, ...

    add_tool_commands(sub, _common, _progress_from_args, _emit_result)
    return ap


def _report_error(args, err):
    if getattr(args, "progress", "text") == "json":
        _emit({"event": "error", **err})
    else:
        print(f"ERROR: {err['cause']}", file=sys.stderr)
        if err.get("fix"):
            print(f"  Fix: {err['fix']}", file=sys.stderr)


def main(argv=None):
    global _EVENT_STREAM
    args = build_parser().parse_args(argv)
    json_mode = getattr(args, "progress", "text") == "json"
    saved_stdout = sys.stdout
    if json_mode:
        _EVENT_STREAM = saved_stdout
        sys.stdout = sys.stderr
    try:
        return args.func(args)
    except SegmentationError as e:
        if getattr(args, "debug", False):
            raise
        from .errors import Cancelled

        _report_error(args, e.to_dict())
        return EXIT_CANCELLED if isinstance(e, Cancelled) else EXIT_ERROR
    except KeyboardInterrupt:
        _report_error(args, {"kind": "cancelled", "type": "KeyboardInterrupt", "cause": "Interrupted.", "fix": ""})
        return EXIT_CANCELLED
    except Exception as e:  # noqa: BLE001 - a bug: still one error event, never a bare traceback
        if getattr(args, "debug", False):
            raise
        import traceback

        traceback.print_exc(file=sys.stderr)
        _report_error(args, {"kind": "internal", "type": type(e).__name__, "cause": f"Internal error: {e}",
                             "fix": "Run again with --debug and report the traceback."})
        return EXIT_ERROR
    finally:
        if json_mode:
            sys.stdout = saved_stdout
            _EVENT_STREAM = None
