"""First vs second Apply: one-shot engine processes against the persistent worker.

The module keeps its engine worker (`python -m SegmentationLogic worker`) with its
models loaded, so a second segmentation of the same task skips interpreter start-up, the
torch/nnU-Net imports and model loading. This measures, on the same input and weights in one run:

  one-shot #1, one-shot #2   a new worker per run, ended after it (what "keep models loaded" off does,
                             and what the incumbent extension does)
  worker #1 (cold)           first request to a new worker
  worker #2, #3 (warm)       later requests: models already loaded

and prints wall times and the ratios against the one-shot run measured in the same run.
Test models are used here (real weights cannot be downloaded on this machine); with the
real, larger models the saving in model loading is larger still.

    python Testing/benchmarks/bench_worker_warm_start.py [--task total] [--quality fast] [--input PATH]
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "Testing"), str(REPO / "Testing" / "support"), str(REPO / "TotalSegmentatorModule")]

from sample_data import example_path  # noqa: E402
from SegmentationLogic.request import SegmentRequest  # noqa: E402
from TotalSegmentatorLib.runner import WorkerEngine  # noqa: E402


def request(source, output, task, quality, device):
    return SegmentRequest(input=str(source), output=str(output), task=task, quality=quality, device=device).to_json()


def timed(run):
    t = time.perf_counter()
    run.wait(timeout=1800)
    seconds = time.perf_counter() - t
    if run.outcome != "succeeded":
        raise SystemExit(f"run failed: {run.error}")
    return seconds


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="total")
    ap.add_argument("--quality", default="fast", choices=["normal", "fast", "fastest"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--input", default=None, help="image to segment (default: the example CT)")
    ap.add_argument("--weights", default=None, help="weights folder (default: the test models)")
    ap.add_argument("--realistic", action="store_true",
                    help="test model with the network size of a real TotalSegmentator model (total --fast only)")
    args = ap.parse_args()

    source = Path(args.input) if args.input else example_path("example_ct_sm.nii.gz")
    if args.weights:
        weights = args.weights
    else:
        from testmodels import build_test_weights

        weights = str(build_test_weights(size="realistic", datasets=(297,)) if args.realistic else build_test_weights())
    env = {"TOTALSEG_WEIGHTS_PATH": weights, "nnUNet_def_n_proc": os.environ.get("nnUNet_def_n_proc", "1")}
    print(f"input {source.name}, task {args.task} --{args.quality}, device {args.device}, weights {weights}")

    rows = []
    with tempfile.TemporaryDirectory(prefix="ts-bench-") as tmp:
        for i in (1, 2):
            out = Path(tmp) / f"oneshot{i}.nii.gz"
            one_shot = WorkerEngine(env=env, keep_alive=False)
            rows.append((f"one-shot #{i}", timed(one_shot.submit("segment", request=request(
                source, out, args.task, args.quality, args.device), tmpdir=tmp))))
        worker = WorkerEngine(env=env)
        try:
            started = time.perf_counter()
            worker.start()
            for i in (1, 2, 3):
                out = Path(tmp) / f"worker{i}.nii.gz"
                run = worker.submit("segment", request=request(source, out, args.task, args.quality, args.device),
                                    tmpdir=tmp)
                seconds = timed(run)
                if i == 1:
                    seconds = time.perf_counter() - started  # includes the worker's start-up, as the user sees it
                rows.append((f"worker #{i} ({'cold' if i == 1 else 'warm'})", seconds))
        finally:
            worker.shutdown()

    reference = rows[0][1]
    print(f"\n{'run':<20} {'seconds':>8} {'vs one-shot #1':>15}")
    for name, seconds in rows:
        print(f"{name:<20} {seconds:8.2f} {seconds / reference:14.2f}x")
    warm = min(s for n, s in rows if "warm" in n)
    print(f"\nsecond Apply with the worker: {reference / warm:.1f}x faster than a new process "
          f"({reference - warm:.1f} s saved per run)")


if __name__ == "__main__":
    main()
