"""`make demo`: segment the example CT with `total --fast` and show what came out.

1. Finds the example CT (../shared/data, the user cache, or a download from the public
   TotalSegmentator repository).
2. Makes sure the real `total --fast` weights (dataset 297) are installed, downloading
   them if needed. Where that is impossible (offline, firewall) it says so in one plain
   paragraph and builds a small TEST model instead (Testing/support/testmodels.py). Everything
   made with it is labelled: the output folder name (`..._TEST_MODEL`), the printed
   summary, `demo_summary.json` and a red note on the preview PNG.
3. Runs the engine (Python API, same as `python -m SegmentationLogic segment -i CT -o OUT
   --task total --fast --ml --statistics --preview`) and prints where the labelmap,
   statistics.json and preview PNG are, with a short summary of what was found.

Options: --output DIR (default demo_output), --no-download (use installed real weights
only, never download), --test-weights DIR (where a test model is needed, use this
existing test-model weights folder instead of building one), --device.
Exit code 0 on success, 1 with a cause and fix otherwise.
"""
import argparse
import json
import sys
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for p in (str(REPO), str(HERE), str(HERE / "support")):
    if p not in sys.path:
        sys.path.insert(0, p)

from SegmentationLogic.errors import SegmentationError  # noqa: E402

TASK, QUALITY, DATASET = "total", "fast", 297
WIDTH = 88


def say(text=""):
    print(textwrap.fill(text, WIDTH, break_on_hyphens=False, break_long_words=False) if text else "", flush=True)


def download_failure_paragraph(error, folder, tried_download=True):
    """One plain paragraph (no traceback) on why the real weights are not used."""
    cause = error.cause if isinstance(error, SegmentationError) else f"{type(error).__name__}: {error}"
    why = "could not be downloaded" if tried_download else "downloading is switched off (--no-download)"
    return (f"The real TotalSegmentator weights for 'total --fast' (dataset {DATASET}, {folder}) are not "
            f"installed and {why}: {cause.rstrip('.')}. This demo therefore runs a small "
            f"TEST model built on this machine from the example data (Testing/support/testmodels.py). Its output "
            f"shows that the whole pipeline works, but it is NOT a real TotalSegmentator segmentation and "
            f"every file it writes is labelled TEST MODEL. To run the real model, connect to the internet "
            f"and run `make demo` again, or import the weights zip you downloaded elsewhere with "
            f"`python -m SegmentationLogic import-weights {folder}.zip`.")


def real_weights(no_download, progress):
    """Weights folder of the real models, or (None, reason) when they cannot be had."""
    from SegmentationLogic.pipeline.plan import required_models
    from SegmentationLogic.weights import ensure_models, resolve_weights_dir

    models = required_models(TASK, QUALITY)
    try:
        ensure_models(models, download=not no_download, progress=progress)
    except (SegmentationError, ImportError, OSError) as e:
        # ImportError: a checkout without the download module; OSError: e.g. no writable home
        return None, e, models[0].folder
    return resolve_weights_dir(None), None, models[0].folder


# the 3 mm model, and the 6 mm one that crops for --roi_subset: the folder serves the README's recipes too
TEST_DATASETS = (DATASET, 298)


def build_test_model_weights(folder=None):
    """The fitted test models' folder (shared with the tests: built once, then reused)."""
    from testmodels import TEST_MODEL_MARKER, build_test_weights, missing_datasets, weights_folder

    if folder:
        return Path(folder), TEST_MODEL_MARKER
    if missing_datasets(weights_folder(size="fitted"), TEST_DATASETS):
        say(f"Building the TEST models (once; cached in {weights_folder(size='fitted').parent})...")
    return build_test_weights(datasets=TEST_DATASETS, log=say), TEST_MODEL_MARKER


def summarise(labelmap, class_map, top=5):
    """(number of classes found, [(name, volume in ml)] of the largest)."""
    import numpy as np

    data = np.asanyarray(labelmap.dataobj)
    counts = np.bincount(data.astype(np.int64).ravel())
    voxel_ml = float(np.prod(labelmap.header.get_zooms()[:3])) / 1000.0
    found = [v for v in np.nonzero(counts)[0] if v > 0]
    largest = sorted(found, key=lambda v: -counts[v])[:top]
    return len(found), [(class_map.get(int(v), str(v)), round(counts[v] * voxel_ml, 1)) for v in largest]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--output", default="demo_output")
    ap.add_argument("--no-download", action="store_true", help="use installed real weights only, never download")
    ap.add_argument("--test-weights", default=None,
                    help="where a test model is needed, use this test-model weights folder instead of building one")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)

    from SegmentationLogic.progress import Progress, text_writer
    from sample_data import example_path

    progress = Progress(text_writer(sys.stdout))
    try:
        ct = example_path("example_ct_sm.nii.gz", progress=progress)
    except SegmentationError as e:
        say(f"ERROR: the example CT is not available: {e.cause}")
        say(f"Fix: {e.fix}")
        return 1
    say(f"Example CT: {ct}")
    try:
        from SegmentationLogic.pipeline import segment
    except ImportError as e:
        say(f"ERROR: the segmentation engine (SegmentationLogic.pipeline) is missing from this checkout: {e}")
        return 1

    weights_dir, error, folder = real_weights(args.no_download, progress)
    note = None
    if weights_dir is None:
        if error is not None:
            say()
            say(download_failure_paragraph(error, folder, tried_download=not args.no_download))
            say()
        weights_dir, note = build_test_model_weights(args.test_weights)
    kind = "TEST_MODEL" if note else "real"
    out_dir = Path(args.output) / (f"{TASK}_{QUALITY}_TEST_MODEL" if note else f"{TASK}_{QUALITY}")
    out_dir.mkdir(parents=True, exist_ok=True)
    labelmap_path = out_dir / "segmentation.nii.gz"
    say(f"Segmenting with {'the TEST model' if note else 'the real weights'} in {weights_dir} ...")
    try:
        result = segment(str(ct), str(labelmap_path), task=TASK, quality=QUALITY, device=args.device, ml=True,
                         statistics=True, preview=True, weights_dir=str(weights_dir), download=False,
                         progress=progress)
    except SegmentationError as e:
        say(f"ERROR: {e.cause}")
        say(f"Fix: {e.fix}")
        return 1

    from SegmentationLogic.catalogue import load_catalogue

    class_map = result.class_map or load_catalogue().task(TASK).classes
    files = [Path(f) for f in result.files]
    stats = next((f for f in files if f.name == "statistics.json"), None)
    preview = next((f for f in files if f.suffix == ".png"), None)
    label = result.model_note or note
    if preview is None or (note and not result.model_note):
        # the engine did not draw (or did not label) the preview: draw it, labelled
        from SegmentationLogic.outputs.preview import render_preview

        preview = render_preview(result.labelmap, class_map, out_dir / f"preview_{TASK}.png", note=label,
                                 title=f"TotalSegmentator {TASK} --{QUALITY}")
    n_found, largest = summarise(result.labelmap, class_map)
    summary = {
        "weights": label if note else "real TotalSegmentator weights",
        "test_model": bool(note),
        "input": str(ct), "task": TASK, "quality": QUALITY, "weights_dir": str(weights_dir),
        "labelmap": str(labelmap_path), "statistics": str(stats) if stats else None, "preview": str(preview),
        "classes_found": n_found, "largest_structures_ml": dict(largest),
        "download_error": (error.cause if isinstance(error, SegmentationError) else str(error)) if error else None,
    }
    (out_dir / "demo_summary.json").write_text(json.dumps(summary, indent=1) + "\n")

    say()
    if note:
        print(f"*** {label} ***")
    print(f"Labelmap:    {labelmap_path}")
    print(f"Statistics:  {stats if stats else '(not written)'}")
    cut_off = [k for k, v in (result.statistics or {}).items() if "excluded" in v]
    if cut_off:  # the official border rule: say why these have no volume in statistics.json
        print(f"             {len(cut_off)} structures touch the image border (cut off): statistics.json gives "
              "them no volume and says why ('excluded'); --stats_include_incomplete counts them anyway.")
    print(f"3D preview:  {preview}")
    print(f"Summary:     {out_dir / 'demo_summary.json'}")
    print(f"{n_found} of {len(class_map)} classes found ({kind}); largest structures (all voxels in the image):")
    for name, ml in largest:
        print(f"  {name:<32} {ml:>9.1f} ml")
    if note:
        say("These results come from a TEST model, not from the real TotalSegmentator weights.")
        say(f"To try the command line on it: --weights_dir {weights_dir} (README: 'Offline, on the test models').")
    return 0


if __name__ == "__main__":
    sys.exit(main())
