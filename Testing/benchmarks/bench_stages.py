"""Benchmark: where the time of a run goes, this engine beside the official TotalSegmentator.

Not a test (pytest does not collect it). Both tools run as fresh processes, alternately,
on the same weights and inputs in the same invocation; every figure is reported as the
median over the repeats with its spread (min-max), and as a ratio engine / official.

Each run happens in a child process that imports torch, installs global forward hooks
(torch.nn.modules.module.register_module_forward_{pre_,}hook) and then runs the tool
in-process: the hooks time every outermost module call, i.e. the network's forward
calls, for both tools alike (on a GPU with a synchronisation around each). The rest is
split as far as each tool lets it be seen:

  official  start-up (interpreter, torch, totalsegmentator/nnU-Net imports), model set-up
            (nnUNetPredictor.initialize_from_trained_model_folder), forwards, sliding
            window (predict_sliding_window_return_logits minus its forwards), other
            (TotalSegmentator's resampling and files, nnU-Net's preprocessing and export
            workers, writing): the official tool preprocesses and exports in worker
            processes, so those are only seen together.
  engine    start-up, then the engine's own stage timings (result event): imports still
            waited for, reading, model set-up, preprocessing, forwards (timed at the call),
            sliding window, merging model parts, postprocessing, writing.

Overhead = wall - forwards; the target is overhead < 10% of the engine's wall on the
realistic case. "First tile" is process start -> end of the first forward call. The
engine's cold start is also measured without any instrumentation: the plain CLI with
`--progress json`, process start -> the first tile event on its stdout, beside the import
floor (`python -c "import torch, nibabel, scipy.ndimage"`).

Cases (CPU; --device cuda runs both tools on the GPU):
  a_fast        example_ct_sm (3 mm), total --fast, tiny test model
  a_total       example_ct_sm, total (five 1.5 mm model parts), tiny test models
  b_realistic   the 512x512 DICOM series, total --fast, a test model of real TotalSegmentator
                size (6 stages, 32..320 features, 128^3 patch, untrained)

    python Testing/benchmarks/bench_stages.py [--repeat N] [--cases a_fast ...] [--device cuda]
"""
import argparse
import atexit
import contextlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parents[2]

CASES = {
    "a_fast": ("tiny", "example_ct_sm.nii.gz", {"quality": "fast"}, (297,)),
    "a_total": ("tiny", "example_ct_sm.nii.gz", {}, (291, 292, 293, 294, 295)),
    "b_realistic": ("realistic", "example_ct_dicom", {"quality": "fast"}, (297,)),
}
ENGINE_STAGES = ("imports", "read", "load", "preprocess", "forward", "sliding_window", "merge", "postprocess", "save")
PRIMUS_MODULE = "nnunetv2.training.nnUNetTrainer.primus.primus_trainers"


# -- the child: one instrumented run ------------------------------------------------------

class ForwardHooks:
    """Times the outermost module calls (the network's forward calls) of any tool."""

    def __init__(self, torch, cuda):
        self.torch, self.cuda = torch, cuda
        self.depth = 0
        self.seconds = 0.0
        self.calls = 0
        self.first_end = None
        self._start = None
        torch.nn.modules.module.register_module_forward_pre_hook(self.pre)
        torch.nn.modules.module.register_module_forward_hook(self.post)

    def pre(self, module, args):
        self.depth += 1
        if self.depth == 1:
            if self.cuda:
                self.torch.cuda.synchronize()
            self._start = time.perf_counter()

    def post(self, module, args, output):
        self.depth -= 1
        if self.depth == 0 and self._start is not None:
            if self.cuda:
                self.torch.cuda.synchronize()
            self.seconds += time.perf_counter() - self._start
            self.calls += 1
            if self.first_end is None:
                self.first_end = time.time()


def _timed_method(cls, name, totals, key, hooks):
    """Wrap cls.name to add its seconds (minus the forwards inside it) to totals[key]."""
    original = getattr(cls, name)

    def wrapper(self, *args, **kwargs):
        t, fwd = time.perf_counter(), hooks.seconds
        try:
            return original(self, *args, **kwargs)
        finally:
            totals[key] = totals.get(key, 0.0) + time.perf_counter() - t - (hooks.seconds - fwd)

    setattr(cls, name, wrapper)


def child(tool, spec_file, out_file):
    spec = json.loads(Path(spec_file).read_text())
    import torch

    hooks = ForwardHooks(torch, spec["device"] == "cuda")
    totals = {}
    if tool == "official":
        import types

        sys.modules[PRIMUS_MODULE] = types.ModuleType(PRIMUS_MODULE)  # its trainers import timm/torchvision
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        from totalsegmentator.python_api import totalsegmentator

        _timed_method(nnUNetPredictor, "initialize_from_trained_model_folder", totals, "load", hooks)
        _timed_method(nnUNetPredictor, "predict_sliding_window_return_logits", totals, "sliding_window", hooks)
        t_call = time.time()
        totalsegmentator(spec["input"], spec["output"], **spec["official_kwargs"])
    else:
        sys.path.insert(0, str(REPO))
        from SegmentationLogic.cli.main import main

        t_call = time.time()
        captured = io.StringIO()
        with contextlib.redirect_stdout(captured):
            rc = main(spec["engine_argv"] + ["--progress", "json"])
        if rc:
            raise SystemExit(f"engine failed ({rc}): {captured.getvalue()[-2000:]}")
        result = [json.loads(line) for line in captured.getvalue().splitlines() if '"result"' in line][-1]
        totals.update({k: v for k, v in result["timings"].items() if k in ENGINE_STAGES})
        totals["forward_engine"] = result["timings"].get("forward", float("nan"))
    Path(out_file).write_text(json.dumps({"t_call": t_call, "t_end": time.time(), "forward": hooks.seconds,
                                          "forward_calls": hooks.calls, "first_tile_end": hooks.first_end,
                                          "stages": totals}))


# -- the parent ---------------------------------------------------------------------------

def _cpu_seconds(pid):
    """User + system CPU seconds a running process has used so far (Linux), else NaN."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def _run(cmd, env, cwd):
    """Wall seconds, CPU seconds of the process tree, and the stdout lines with arrival times
    and the CPU seconds the process had used when each arrived."""
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stdout:
        lines.append((time.time(), line, _cpu_seconds(proc.pid)))
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.time() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{err[-3000:]}")
    return t0, wall, usage.ru_utime + usage.ru_stime, lines


def run_instrumented(tool, work, case, weights, device, env):
    import reference

    size, example, options, _ = CASES[case]
    from sample_data import example_path

    out = work / f"{tool}.nii.gz"
    kwargs = {**reference.official_kwargs(**options), "device": "gpu" if device == "cuda" else "cpu", "quiet": True,
              "nr_thr_resamp": 1, "nr_thr_saving": 1}
    argv = ["segment", "-i", str(example_path(example)), "-o", str(out), "--ml", "--device", device,
            "--weights_dir", str(weights), "--no_download", "-q"] + \
        ([f"--{options['quality']}"] if options.get("quality") else [])
    spec = work / f"{tool}.json"
    spec.write_text(json.dumps({"device": device, "input": str(example_path(example)), "output": str(out),
                                "official_kwargs": kwargs, "engine_argv": argv}))
    result_file = work / f"{tool}.result.json"
    t0, wall, cpu, _ = _run([sys.executable, str(HERE), "--child", tool, str(spec), str(result_file)], env, work)
    r = json.loads(result_file.read_text())
    stages = r["stages"]
    row = {"wall": wall, "cpu": cpu, "forward": r["forward"], "startup": r["t_call"] - t0,
           "first_tile": (r["first_tile_end"] - t0) if r["first_tile_end"] else float("nan")}
    if tool == "official":
        row["load"] = stages.get("load", 0.0)
        row["sliding_window"] = stages.get("sliding_window", 0.0)
        row["other"] = wall - row["startup"] - row["load"] - row["forward"] - row["sliding_window"]
    else:
        row.update({k: stages.get(k, 0.0) for k in ENGINE_STAGES if k != "forward"})
        row["forward_engine"] = stages["forward_engine"]
        row["other"] = wall - row["startup"] - row["forward"] - sum(row[k] for k in ENGINE_STAGES if k != "forward")
    row["overhead"] = wall - row["forward"]
    return row, out


def engine_cold_start(work, weights, device, env):
    """Plain CLI (no instrumentation): process start -> first tile event; and the import floor."""
    from sample_data import example_path

    cmd = [sys.executable, "-m", "SegmentationLogic", "segment", "-i", str(example_path("example_ct_sm.nii.gz")),
           "-o", str(work / "cold.nii.gz"), "--ml", "--fast", "--device", device, "--weights_dir", str(weights),
           "--no_download", "--progress", "json"]
    t0, wall, _, lines = _run(cmd, env, REPO)
    first, first_cpu = next((t, cpu) for t, line, cpu in lines if "tile 1/" in line)
    startup = next(json.loads(line)["timings"].get("startup", float("nan"))
                   for _, line, _ in lines if '"result"' in line)
    _, floor, floor_cpu, _ = _run([sys.executable, "-c", "import torch, nibabel, scipy.ndimage"], env, REPO)
    return {"first_tile": first - t0, "first_tile_cpu": first_cpu, "wall": wall, "startup": startup,
            "import_floor": floor, "import_floor_cpu": floor_cpu}


def _same(a, b):
    import nibabel as nib
    import numpy as np

    x, y = np.asanyarray(nib.load(a).dataobj), np.asanyarray(nib.load(b).dataobj)
    return int(np.count_nonzero(x != y))


def _stat(values):
    values = [v for v in values if v == v]
    if not values:
        return float("nan"), float("nan"), float("nan")
    return statistics.median(values), min(values), max(values)


def _fmt(values):
    med, lo, hi = _stat(values)
    return f"{med:7.2f} ({lo:.2f}-{hi:.2f})" if med == med else "      -          "


def report(case, runs, cold):
    off, eng = runs["official"], runs["engine"]
    names = [("startup", "start-up (process start -> run)"), ("imports", "imports waited for in the run"),
             ("read", "reading the image"), ("load", "model set-up"), ("preprocess", "preprocessing"),
             ("forward", "network forwards (hooks)"), ("sliding_window", "sliding window around them"),
             ("merge", "merging model parts"), ("postprocess", "postprocessing + export"), ("save", "writing"),
             ("other", "other (not split)"), ("wall", "wall"), ("cpu", "CPU time, process tree"),
             ("overhead", "overhead = wall - forwards"), ("first_tile", "first tile (start -> 1st forward end)")]
    print(f"\n{case}: median (min-max) seconds over {len(eng)} runs each, alternating")
    print(f"  {'stage':<40} {'official':>20} {'engine':>20}   engine/official")
    for key, label in names:
        o = [r.get(key, float("nan")) for r in off]
        e = [r.get(key, float("nan")) for r in eng]
        mo, me = _stat(o)[0], _stat(e)[0]
        ratio = f"{me / mo:6.2f}" if mo == mo and me == me and mo > 0 else ""
        print(f"  {label:<40} {_fmt(o):>20} {_fmt(e):>20}   {ratio}")
    shares = [r["overhead"] / r["wall"] for r in eng]
    per_fwd = [r["overhead"] / r["forward"] for r in eng]
    oshares = [r["overhead"] / r["wall"] for r in off]
    print(f"  engine overhead share of wall: {_fmt(shares)}   (official {_fmt(oshares).strip()});"
          f" overhead / forwards: {_fmt(per_fwd)}")
    check = [abs(r["forward"] - r["forward_engine"]) for r in eng]
    if all(c == c for c in check):
        print(f"  engine's own forward timing vs the hooks: largest difference {max(check):.3f} s")
    if cold:
        print(f"  engine cold start, plain CLI, process start -> first tile event: {_fmt([c['first_tile'] for c in cold])}"
              f" s wall, {_fmt([c['first_tile_cpu'] for c in cold])} s CPU; of which start-up (interpreter, imports)"
              f" {_fmt([c['startup'] for c in cold])} s")
        print(f"  import floor, python -c 'import torch, nibabel, scipy.ndimage': "
              f"{_fmt([c['import_floor'] for c in cold])} s wall, {_fmt([c['import_floor_cpu'] for c in cold])} s CPU")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--child", nargs=3, metavar=("TOOL", "SPEC", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return 0
    sys.path[:0] = [str(REPO), str(REPO / "Testing"), str(REPO / "Testing" / "support")]
    import reference
    from testmodels import build_test_weights

    work = Path(tempfile.mkdtemp(prefix="bench_stages_"))
    atexit.register(shutil.rmtree, work, True)  # its outputs hold the example's labels
    home = reference.make_home(work)
    summary = []
    for case in args.cases:
        size, _, _, datasets = CASES[case]
        # tiny: the test suite's set (usually built already); realistic: only the model the case runs
        weights = build_test_weights(size=size) if size == "tiny" else build_test_weights(size=size, datasets=datasets)
        env = reference.oracle_env(weights, home)  # no network; nnUNet_def_n_proc inherited by both
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        runs = {"official": [], "engine": []}
        differing = []
        for i in range(args.repeat):
            order = ("official", "engine") if i % 2 == 0 else ("engine", "official")
            outs = {}
            for tool in order:
                folder = work / f"{case}_{tool}_{i}"
                folder.mkdir()
                row, outs[tool] = run_instrumented(tool, folder, case, weights, args.device, env)
                runs[tool].append(row)
            differing.append(_same(outs["official"], outs["engine"]))
        cold = [engine_cold_start(work, weights, args.device, env) for _ in range(args.repeat)] \
            if case == "a_fast" else None
        report(case, runs, cold)
        print(f"  labels differing engine vs official: {differing} voxels per run")
        summary.append((case, runs, differing))
    print("\nSummary (engine / official, medians):")
    for case, runs, differing in summary:
        o, e = runs["official"], runs["engine"]
        med = {t: {k: _stat([r[k] for r in rs])[0] for k in ("wall", "cpu", "forward", "overhead")}
               for t, rs in (("official", o), ("engine", e))}
        share = _stat([r["overhead"] / r["wall"] for r in e])[0]
        print(f"  {case:<12} wall {med['engine']['wall'] / med['official']['wall']:.2f}   "
              f"cpu {med['engine']['cpu'] / med['official']['cpu']:.2f}   "
              f"overhead {med['engine']['overhead'] / med['official']['overhead']:.2f}   "
              f"forwards {med['engine']['forward'] / med['official']['forward']:.2f}   "
              f"engine overhead share {share:.1%}   identical labels: {all(d == 0 for d in differing)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
