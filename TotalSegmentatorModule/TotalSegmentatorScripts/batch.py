"""Segment every image in a folder, one `.seg.nrrd` per case plus a summary CSV.

In Slicer (no window):
    Slicer --no-main-window --python-script batch.py -- --input-dir D --output-dir O \\
        [--task total] [--quality fast] [--roi-subset liver spleen] [--device auto]
In plain Python (with the `slicer-core` package for MRML):
    python batch.py --input-dir D --output-dir O [...]

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
error (missing folder, no cases), 130 when interrupted.
"""
import argparse
import csv
import sys
import time
import traceback
from pathlib import Path

SUMMARY_FIELDS = ("case", "status", "seconds", "segments", "error", "output", "note")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


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


def find_cases(input_dir):
    """[(case name, path)] in name order, and the other files (skipped): the engine's case
    discovery, shared with `python -m SegmentationLogic cohort`."""
    _add_package_path()
    from SegmentationLogic.cohort.cases import find_cases as engine_find_cases

    return engine_find_cases(input_dir)


def build_parser():
    p = argparse.ArgumentParser(prog="batch.py", description=__doc__.split("\n\n")[0],
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
    p.add_argument("--summary", type=Path, help="summary CSV (default OUTPUT_DIR/summary.csv)")
    return p


def _say(message):
    print(message, flush=True)


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
    from SegmentationLogic.errors import Cancelled, SegmentationError
    from SegmentationLogic.mrml.scene import new_scene
    from SegmentationLogic.pipeline import Segmenter
    from SegmentationLogic.progress import Progress, text_writer

    if _in_slicer_app():
        import slicer

        scene = slicer.mrmlScene
    else:
        scene = new_scene()
    segmenter = Segmenter(device=args.device, weights_dir=args.weights_dir)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    summary_path = args.summary or args.output_dir / "summary.csv"
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
                except (KeyboardInterrupt, Cancelled):
                    row.update(status="cancelled", seconds=f"{time.time() - start:.1f}", error="interrupted")
                    summary.writerow(row)
                    _say("Interrupted: remaining cases not run.")
                    return EXIT_INTERRUPTED
                except SegmentationError as e:
                    failed += 1
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
