"""Cases per hour: the cohort runner on a local Ray against one case after another, same machine.

On N copies of the example CT (same task, quality and weights for every method), in one run:

  CLI loop       `python -m SegmentationLogic segment` once per case (a new process each time:
                 what a shell loop over the official CLI does)          <- the reference
  batch script   TotalSegmentatorScripts/batch.py in plain Python with slicer-core (one
                 process, models kept loaded; it also writes a .seg.nrrd per case)
  cohort x1      `python -m SegmentationLogic cohort`, 1 actor with every core (and the GPU)
  cohort x2      2 actors, half the cores each (with --device cuda: two actors on the one GPU)

Times are wall clock from command start to exit, start-up included (Ray's start, the
actors' imports and model loading), as a user waits for them; "steady" is the rate between
the first and the last finished case, which is what a long cohort converges to. Outputs of
the cohort runs are checked to be identical to the CLI's. Test models are used (real weights
cannot be downloaded here): per-case compute is small, so start-up and per-process costs weigh
more than with the real models; `--realistic` uses a real-size (untrained) 3 mm network.

    python Testing/benchmarks/bench_cohort.py [--cases 8] [--quality fast] [--realistic] [--device cpu]
"""
import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "Testing"), str(REPO / "Testing" / "support")]

from SegmentationLogic.request import flags_for_quality  # noqa: E402
from sample_data import example_path  # noqa: E402

BATCH = REPO / "TotalSegmentatorModule" / "TotalSegmentatorScripts" / "batch.py"


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO), "nnUNet_def_n_proc": os.environ.get("nnUNet_def_n_proc", "1")}


def cli_loop(cases, out, common):
    started = time.perf_counter()
    finished = []
    for case in sorted(cases.iterdir()):
        name = case.name[: -len(".nii.gz")]
        subprocess.run([sys.executable, "-m", "SegmentationLogic", "segment", "-i", str(case), "-o",
                        str(out / f"{name}.nii.gz"), "--ml", "-q", *common], env=_env(), cwd=REPO, check=True)
        finished.append(time.perf_counter())
    return time.perf_counter() - started, finished


def batch_script(cases, out, quality, device, weights):
    started = time.perf_counter()
    finished = []
    proc = subprocess.Popen([sys.executable, str(BATCH), "--input-dir", str(cases), "--output-dir", str(out),
                             "--quality", quality, "--device", device, "--weights-dir", str(weights)],
                            env=_env(), cwd=REPO, stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.strip().startswith("done:"):
            finished.append(time.perf_counter())
    if proc.wait() != 0:
        raise SystemExit("the batch script failed")
    return time.perf_counter() - started, finished


def cohort(cases, out, common, actors, cpus):
    started = time.perf_counter()
    finished = []
    gpus = ["--gpus_per_actor", f"{1 / actors:g}"] if "cuda" in common else []  # one GPU: 2 actors share it
    proc = subprocess.Popen([sys.executable, "-m", "SegmentationLogic", "cohort", "-i", str(cases), "-o", str(out),
                             "--actors", str(actors), "--cpus_per_actor", str(cpus), "--progress", "json", *gpus,
                             *common],
                            env=_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if json.loads(line).get("status") == "done":
            finished.append(time.perf_counter())
    if proc.wait() != 0:
        raise SystemExit(f"the cohort run failed (exit {proc.returncode})")
    records = [json.loads(line) for line in (out / "cohort_manifest.jsonl").read_text().splitlines()]
    engine = sum(r["seconds"] for r in records)
    return time.perf_counter() - started, finished, engine


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=8)
    ap.add_argument("--task", default="total")
    ap.add_argument("--quality", default="fast", choices=["normal", "fast", "fastest"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--realistic", action="store_true", help="real-size (untrained) 3 mm network (total --fast)")
    ap.add_argument("--no_batch", action="store_true", help="leave out the batch script (needs slicer-core)")
    args = ap.parse_args()

    from testmodels import build_test_weights  # builds (or reuses) the test models: minutes the first time

    weights = build_test_weights(size="realistic", datasets=(297,)) if args.realistic else build_test_weights()
    cpus = os.cpu_count() or 2
    common = ["--task", args.task, *flags_for_quality(args.quality), "--device", args.device, "--weights_dir",
              str(weights), "--no_download"]  # the same flags for `segment` and `cohort`
    print(f"{args.cases} copies of the example CT, task {args.task} --{args.quality}, device {args.device}, "
          f"{cpus} CPUs, weights {weights}", flush=True)

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-cohort-") as tmp:
        tmp = Path(tmp)
        cases = tmp / "in"
        cases.mkdir()
        for i in range(args.cases):
            shutil.copyfile(example_path("example_ct_sm.nii.gz"), cases / f"case{i:03d}.nii.gz")

        wall, finished = cli_loop(cases, tmp / "cli", common)
        rows.append(("CLI loop", wall, finished, None))
        print(f"CLI loop: {wall:.1f} s", flush=True)
        if not args.no_batch and importlib.util.find_spec("slicer") is not None:
            wall, finished = batch_script(cases, tmp / "batch", args.quality, args.device, weights)
            rows.append(("batch script", wall, finished, None))
            print(f"batch script: {wall:.1f} s", flush=True)
        for actors in (1, 2):
            out = tmp / f"cohort{actors}"
            wall, finished, engine = cohort(cases, out, common, actors, max(1, cpus // actors))
            rows.append((f"cohort x{actors} ({max(1, cpus // actors)} CPU each)", wall, finished, engine))
            print(f"cohort x{actors}: {wall:.1f} s", flush=True)
            same = all(_sha(out / p.name) == _sha(p) for p in (tmp / "cli").glob("*.nii.gz"))
            if not same:
                raise SystemExit(f"cohort x{actors} outputs differ from the CLI's")

    def steady(finished):
        return (len(finished) - 1) / (finished[-1] - finished[0]) * 3600 if len(finished) > 1 else float("nan")

    ref_rate, ref_steady = args.cases / rows[0][1] * 3600, steady(rows[0][2])
    batch = next((r for r in rows if r[0] == "batch script"), None)
    print(f"\n{'method':<26} {'wall s':>7} {'cases/h':>8} {'vs CLI':>7} {'vs batch':>9} {'steady/h':>9} "
          f"{'vs CLI':>7} {'vs batch':>9} {'engine s/case':>14}")
    for name, wall, finished, engine in rows:
        rate, rate_steady = args.cases / wall * 3600, steady(finished)
        vs_batch = f"{rate / (args.cases / batch[1] * 3600):8.2f}x" if batch else f"{'-':>9}"
        vs_batch_steady = f"{rate_steady / steady(batch[2]):8.2f}x" if batch else f"{'-':>9}"
        per_case = f"{engine / args.cases:14.1f}" if engine is not None else f"{'-':>14}"
        print(f"{name:<26} {wall:7.1f} {rate:8.0f} {rate / ref_rate:6.2f}x {vs_batch} {rate_steady:9.0f} "
              f"{rate_steady / ref_steady:6.2f}x {vs_batch_steady} {per_case}")
    print("wall: command start to exit, start-up included; steady: between the first and the last finished case")
    print("\ncohort outputs identical to the CLI's: yes")


if __name__ == "__main__":
    main()
