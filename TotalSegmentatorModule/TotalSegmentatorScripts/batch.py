"""Segment every image in a folder, one `.seg.nrrd` per case plus a summary CSV.

In Slicer (no window):
    Slicer --no-main-window --python-script batch.py -- --input-dir D --output-dir O \\
        [--task total] [--quality normal|fast|fastest] [--roi-subset liver spleen] [--device auto] \\
        [--weights-dir W] [--ignore-modality] [--class-names] [--skip-existing] [--summary S.csv]
In plain Python (with the `slicer-core` package for MRML, e.g. the project's .venv/bin/python):
    python batch.py --input-dir D --output-dir O [...]
Multi-word flags may also be written with underscores (--roi_subset, --weights_dir), as the
engine's command line writes them.

Cases are the NIfTI / NRRD / MetaImage files, zips of one DICOM series, and folders
holding one DICOM series, directly inside D. Each case runs the engine, imports the
result with standard names, colours and terminology, and writes O/<case>.seg.nrrd.
The same typed request as every other front door
(`SegmentRequest`, run by one `Segmenter` that keeps the models loaded from case to case)
and the same way into the scene as the Slicer module (`SegmentationLogic.mrml`).
A failing case is reported and the others still run. O/summary.csv gets one row per
case as it finishes (case, status, seconds, segments, error, output, note: e.g. that a
test model ran instead of the real weights). Progress lines
go to stdout. Exit code: 0 when every case succeeded, 1 when any failed, 2 for a usage
error (missing folder, no cases, an output that cannot or must not be written), and
128 + the signal number when stopped: 130 Ctrl+C (SIGINT), 143 SIGTERM (what `timeout`,
`kill` and cluster schedulers send), 129 SIGHUP; the case that was running is recorded
as "cancelled", its partial file and temporary files are removed.

Before the first case: the output folder must be writable, and an existing
`<case>.seg.nrrd` or summary CSV that this script did not write (ours: the segments carry
the TotalSegmentator class tag, or our earlier summary lists the file; the CSV starts with
our header) is only replaced with
--overwrite (--skip-existing keeps finished cases instead). `.seg.nrrd` files in the
input folder are results, not images, and are skipped.
"""
import argparse
import csv
import sys
import time
import traceback
from pathlib import Path

RESULT_SUFFIX = ".seg.nrrd"
SUMMARY_FIELDS = ("case", "status", "seconds", "segments", "error", "output", "note")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
NOTE_TAG = "TotalSegmentator.Note"  # segment tag: e.g. that a TEST MODEL made the segment


def _add_package_path():
    """Make `SegmentationLogic` importable: in an installed extension it sits next to this
    folder (qt-scripted-modules/), in the source tree at the repository root."""
    here = Path(__file__).resolve().parent
    for folder in (here, here.parent, here.parent.parent):
        if (folder / "SegmentationLogic" / "__init__.py").is_file() and str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
            return


def _in_slicer_app():
    try:
        import slicer
    except ImportError:
        return False
    return hasattr(slicer, "app")


def _missing_requirement():
    """One line with cause and fix when this Python cannot run the batch (else None)."""
    import importlib.util

    if importlib.util.find_spec("slicer") is None:
        return (f"ERROR: this Python ({sys.executable}) has no Slicer MRML (module 'slicer'). Fix: run the script "
                f"in Slicer (Slicer --no-main-window --python-script batch.py -- ...), or with a Python that has "
                f"the slicer-core package, e.g. the project's .venv/bin/python (`make setup`) or after "
                f"`pip install slicer-core`.")
    try:
        import SegmentationLogic.pipeline  # noqa: F401 - torch, nnU-Net, nibabel...
    except ImportError as e:
        return (f"ERROR: this Python ({sys.executable}) cannot run the segmentation engine: {e}. Fix: install the "
                f"engine's packages (`pip install -e .` in the project, or use its .venv/bin/python), or run the "
                f"script in Slicer after the module installed them.")
    return None


def find_cases(input_dir):
    """[(case name, path)] in name order, and the other files (skipped): the engine's case
    discovery, shared with `python -m SegmentationLogic cohort`."""
    _add_package_path()
    from SegmentationLogic.cohort.cases import find_cases as engine_find_cases

    return engine_find_cases(input_dir)


class _Parser(argparse.ArgumentParser):
    """`--roi_subset` is read as `--roi-subset` (and so on): both spellings work."""

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args([self._spelled(a) for a in args], namespace)

    def _spelled(self, token):
        flag, eq, value = token.partition("=")
        hyphens = "--" + flag[2:].replace("_", "-")
        if flag.startswith("--") and flag not in self._option_string_actions and hyphens in self._option_string_actions:
            return hyphens + eq + value
        return token


def build_parser():
    p = _Parser(prog="batch.py", description=__doc__.split("\n\n")[0],
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input-dir", required=True, type=Path, help="folder with one image or DICOM series per case")
    p.add_argument("--output-dir", required=True, type=Path, help="where <case>.seg.nrrd and summary.csv go")
    p.add_argument("--task", default="total", help="task name (python -m SegmentationLogic list-tasks)")
    p.add_argument("--quality", default="normal", choices=("normal", "fast", "fastest"))
    p.add_argument("--roi-subset", nargs="+", metavar="CLASS", help="only these structures")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--weights-dir", type=Path, help="weights folder (default: TotalSegmentator's)")
    p.add_argument("--ignore-modality", action="store_true",
                   help="segment cases that do not look like the task's modality (CT task on MR) anyway")
    p.add_argument("--class-names", action="store_true", help="name segments by class name, not standard name")
    p.add_argument("--skip-existing", action="store_true", help="keep cases whose .seg.nrrd already exists")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing .seg.nrrd / summary files that this script did not write")
    p.add_argument("--summary", type=Path, help="summary CSV (default OUTPUT_DIR/summary.csv)")
    return p


def _say(message):
    print(message, flush=True)


def _our_summary(path):
    """The rows of a summary CSV this script wrote (its header is ours), else None."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            if f.readline().strip() != ",".join(SUMMARY_FIELDS):
                return None
            return list(csv.DictReader(f, fieldnames=SUMMARY_FIELDS))
    except (OSError, UnicodeDecodeError, csv.Error):
        return None


def check_outputs(cases, args, summary_path):
    """Before the first case (SegmentationLogic's output checks): raises OutputPathError.

    Ours: a summary with our header, and a .seg.nrrd whose segments carry our class tag or
    that an earlier summary of ours lists as written (an empty result has no segment)."""
    from SegmentationLogic.mrml.segmentation_import import is_our_segmentation
    from SegmentationLogic.system.output_checks import check_outputs as check

    outputs = [args.output_dir / f"{case}{RESULT_SUFFIX}" for case, _ in cases]
    if args.skip_existing:
        outputs = [o for o in outputs if not o.is_file()]
    rows = _our_summary(summary_path) or []
    written = {Path(r["output"]).resolve() for r in rows if r.get("status") == "ok" and r.get("output")}

    def ours(path):
        if path == summary_path:
            return _our_summary(path) is not None
        return is_our_segmentation(path) or path.resolve() in written

    check(outputs + [summary_path], [path for _, path in cases], overwrite=args.overwrite, is_ours=ours,
          folder=args.output_dir)


def run_case(scene, segmenter, path, output, args, progress):
    """Segment one case and write its .seg.nrrd; returns (number of segments, model note)."""
    from SegmentationLogic.mrml.scene import save_segmentation
    from SegmentationLogic.mrml.segmentation_import import import_result
    from SegmentationLogic.request import SegmentRequest

    request = SegmentRequest(input=str(path), task=args.task, quality=args.quality, roi_subset=args.roi_subset,
                             device=args.device, weights_dir=str(args.weights_dir) if args.weights_dir else None,
                             check_modality=not args.ignore_modality)
    result = segmenter.run(request, progress=progress)
    if result.model_note:
        _say(f"  note: {result.model_note}")
    node = import_result(scene, result, create_surfaces=False, use_standard_names=not args.class_names,
                         task=args.task, name=output.name[: -len(".seg.nrrd")], progress=progress)
    if result.model_note:  # saved in the .seg.nrrd header (Segment<N>_Tags): the file says what made it
        segmentation = node.GetSegmentation()
        for i in range(segmentation.GetNumberOfSegments()):
            segmentation.GetNthSegment(i).SetTag(NOTE_TAG, result.model_note)
    try:
        save_segmentation(node, output)
        return node.GetSegmentation().GetNumberOfSegments(), result.model_note or ""
    finally:
        scene.RemoveNode(node)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:  # Slicer passes the separator through
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    if not args.input_dir.is_dir():
        _say(f"ERROR: input folder {args.input_dir} does not exist.")
        return EXIT_USAGE
    cases, skipped = find_cases(args.input_dir)
    from SegmentationLogic.cohort.cases import IMAGE_SUFFIXES

    for path in skipped:
        _say(f"skipping {path.name}: not an image (accepted: {', '.join(IMAGE_SUFFIXES)} files, DICOM folders)")
    if not cases:
        _say(f"ERROR: no images or DICOM folders in {args.input_dir}.")
        return EXIT_USAGE

    _add_package_path()
    missing = _missing_requirement()
    if missing:
        _say(missing)
        return EXIT_USAGE
    from SegmentationLogic.errors import SegmentationError
    from SegmentationLogic.mrml.scene import new_scene
    from SegmentationLogic.pipeline import Segmenter
    from SegmentationLogic.system.signals import stop_on_signals

    summary_path = args.summary or args.output_dir / "summary.csv"
    try:
        check_outputs(cases, args, summary_path)
    except SegmentationError as e:
        _say(f"ERROR: {e}")
        return EXIT_USAGE
    if _in_slicer_app():
        import slicer

        scene = slicer.mrmlScene
    else:
        scene = new_scene()
    segmenter = Segmenter(device=args.device, weights_dir=args.weights_dir)
    try:
        with stop_on_signals():
            return run_cases(scene, segmenter, cases, args, summary_path)
    except KeyboardInterrupt as e:  # between two cases
        from SegmentationLogic.errors import error_event
        from SegmentationLogic.system.signals import exit_code

        _say(f"{error_event(e)['cause']} Remaining cases not run.")
        return exit_code(e)
    except OSError as e:  # the summary itself cannot be written (disk full, folder removed)
        from SegmentationLogic.system.files import file_error

        _say(f"ERROR: {file_error(e, summary_path)}")
        return EXIT_FAILED


def run_cases(scene, segmenter, cases, args, summary_path):
    """Every case in turn, one summary row each; returns the exit code."""
    from SegmentationLogic.errors import Cancelled, SegmentationError, error_event
    from SegmentationLogic.progress import Progress, text_writer
    from SegmentationLogic.system.files import file_error
    from SegmentationLogic.system.signals import exit_code

    args.output_dir.mkdir(parents=True, exist_ok=True)
    Path(summary_path).unlink(missing_ok=True)  # a new file (umask permissions), not the old one truncated
    failed = 0
    with open(summary_path, "w", newline="", encoding="utf-8") as summary_file:
        summary = csv.DictWriter(summary_file, fieldnames=SUMMARY_FIELDS)
        summary.writeheader()
        summary_file.flush()
        for index, (case, path) in enumerate(cases, start=1):
            output = args.output_dir / f"{case}.seg.nrrd"
            row = {"case": case, "output": "", "error": "", "segments": "", "note": ""}
            _say(f"[{index}/{len(cases)}] {case}: {path}")
            start = time.time()
            if args.skip_existing and output.is_file():
                row.update(status="skipped", seconds="0.0", output=str(output))
                _say("  skipped: output exists")
            else:
                try:
                    row["segments"], row["note"] = run_case(scene, segmenter, path, output, args,
                                                            Progress(text_writer(sys.stdout)))
                    row.update(status="ok", output=str(output))
                    _say(f"  done: {row['segments']} segments -> {output.name} ({time.time() - start:.1f} s)")
                except (KeyboardInterrupt, Cancelled) as e:  # Ctrl+C, SIGTERM, SIGHUP
                    stopped = error_event(e)["cause"] if isinstance(e, KeyboardInterrupt) else "interrupted"
                    row.update(status="cancelled", seconds=f"{time.time() - start:.1f}", error=stopped)
                    summary.writerow(row)
                    summary_file.flush()
                    _say(f"{stopped} Remaining cases not run.")
                    return exit_code(e) if isinstance(e, KeyboardInterrupt) else EXIT_INTERRUPTED
                except (SegmentationError, OSError) as e:
                    failed += 1
                    e = file_error(e, reading=None) if isinstance(e, OSError) else e
                    row.update(status="failed", error=f"{e.cause} Fix: {e.fix}" if e.fix else e.cause)
                    _say(f"  FAILED: {e}")
                except Exception as e:  # one broken case must not stop the batch
                    failed += 1
                    row.update(status="failed", error=f"{type(e).__name__}: {e}".replace("\n", " "))
                    _say(f"  FAILED: {type(e).__name__}: {e}")
                    traceback.print_exc(file=sys.stderr)
                row["seconds"] = f"{time.time() - start:.1f}"
            summary.writerow(row)
            summary_file.flush()
    _say(f"{len(cases) - failed} of {len(cases)} cases succeeded; summary: {summary_path}")
    return EXIT_FAILED if failed else EXIT_OK


def _exit(code):
    if _in_slicer_app():
        import slicer

        slicer.util.exit(code)
    else:
        sys.exit(code)


if __name__ == "__main__":
    _exit(main())
