"""Benchmark: this engine against the official TotalSegmentator, same run, same weights, same input.

Not a test (pytest does not collect it). Machines are noisy, so both tools run
alternately in the same invocation and the report gives ratios (engine / official):

  (a) example_ct_sm (122x101x30, 3 mm) with the tiny test models:
      total --fast (one 3 mm model) and total (five 1.5 mm model parts)
  (b) the 512x512x20 DICOM series, total --fast, with a test model of realistic size
      (6 stages, 32..320 features, 128^3 patch, untrained)

Each tool runs as a fresh process (python start-up, imports and model loading included,
as a user running either command line sees it). Wall time, CPU time of the process tree
(user + system: less sensitive than wall time to other load on a shared machine), and
peak memory two ways:
the largest single process (getrusage of the children) and the whole process tree
(sampled from /proc every 20 ms; the official tool spawns worker processes). The engine
is also timed warm: a second run in a process that has its models loaded (the Slicer
module's persistent worker).

    python Testing/benchmarks/bench_engine.py [--repeat N] [--cases a_fast a_total b_dicom_fast]
"""
import argparse
import atexit
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parents[2]
sys.path.insert(0, str(REPO))
sys.path[:0] = [str(REPO / "Testing"), str(REPO / "Testing" / "support")]

from reference import make_home, official_kwargs, oracle_env  # noqa: E402
from sample_data import example_path  # noqa: E402
from testmodels import build_test_weights  # noqa: E402

CASES = {
    "a_fast": ("tiny", "example_ct_sm.nii.gz", dict(quality="fast")),
    "a_total": ("tiny", "example_ct_sm.nii.gz", dict()),
    "b_dicom_fast": ("realistic", "example_ct_dicom", dict(quality="fast")),
}
DATASETS = {"a_fast": (297,), "a_total": (291, 292, 293, 294, 295), "b_dicom_fast": (297,)}


# -- measuring a process tree ---------------------------------------------------------

def _children_map():
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    return kids


def _rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_kb(root):
    kids = _children_map()
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += _rss_kb(pid)
        stack.extend(kids.get(pid, []))
    return total


def measure(cmd, env, cwd):
    """Run cmd; return wall seconds, CPU seconds of the whole tree, peak tree RSS (MB) and
    peak single-process RSS (MB)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss_kb(proc.pid))
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{output[-3000:]}")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "tree_mb": peak[0] / 1024,
            "proc_mb": usage.ru_maxrss / 1024}


# -- the two tools ------------------------------------------------------------------------

def official_cmd(workdir, input_path, output, options):
    spec = [{"name": "bench", "input": str(input_path), "output": str(output), "kwargs": official_kwargs(**options)}]
    cases = Path(workdir) / "cases.json"
    cases.write_text(json.dumps(spec))
    return [sys.executable, str(REPO / "Testing" / "support" / "reference.py"), str(cases), str(Path(workdir) / "results.jsonl")]


def engine_cmd(input_path, output, weights, options, device="cpu"):
    cmd = [sys.executable, "-m", "SegmentationLogic", "segment", "-i", str(input_path), "-o", str(output), "--ml",
           "--device", device, "--weights_dir", str(weights), "--no_download", "-q"]
    quality = options.get("quality", "normal")
    if quality != "normal":
        cmd.append(f"--{quality}")
    return cmd


def engine_warm(input_path, weights, options, device="cpu"):
    """Seconds of a second run in a process whose models are loaded."""
    code = (
        "import sys, time, json\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from SegmentationLogic.pipeline import Segmenter\n"
        f"s = Segmenter(device={device!r}, weights_dir={str(weights)!r}, download=False)\n"
        f"opts = json.loads({json.dumps(json.dumps(options))})\n"
        f"s.segment({str(input_path)!r}, None, **opts)\n"
        "t = time.perf_counter()\n"
        f"s.segment({str(input_path)!r}, None, **opts)\n"
        "print('WARM', time.perf_counter() - t)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    return float(out.stdout.split("WARM")[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1, help="runs per tool and case (median reported)")
    ap.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    ap.add_argument("--no-warm", action="store_true", help="skip the warm (models loaded) engine timing")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="both tools on this device (the official tool's 'gpu' for cuda)")
    args = ap.parse_args()

    tiny = tuple(sorted({d for c in args.cases if CASES[c][0] == "tiny" for d in DATASETS[c]}))
    weights = {"tiny": build_test_weights(datasets=tiny) if tiny else None,
               "realistic": build_test_weights(size="realistic", datasets=(297,))}
    work = Path(tempfile.mkdtemp(prefix="bench_engine_"))
    atexit.register(shutil.rmtree, work, True)  # its outputs hold the example's labels
    home = make_home(work)
    rows = []
    for name in args.cases:
        size, example, options = CASES[name]
        w = weights[size]
        official_input = engine_input = example_path(example)
        note = ""
        official_env = oracle_env(w, home)  # same torch thread settings as the engine's
        official_env["TOTALSEG_ORACLE_DEVICE"] = "gpu" if args.device == "cuda" else "cpu"
        engine_env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO),
                                                                             os.environ.get("PYTHONPATH")])))
        assert official_env.get("nnUNet_def_n_proc") == engine_env.get("nnUNet_def_n_proc")
        res = {"official": [], "engine": []}
        for i in range(args.repeat):
            odir = work / f"{name}_official_{i}"
            odir.mkdir()
            res["official"].append(measure(official_cmd(odir, official_input, odir / "seg.nii.gz", options),
                                           official_env, odir))
            edir = work / f"{name}_engine_{i}"
            edir.mkdir()
            res["engine"].append(measure(engine_cmd(engine_input, edir / "seg.nii.gz", w, options, args.device),
                                         engine_env, edir))
            same = _same_labels(odir / "seg.nii.gz", edir / "seg.nii.gz")
        if args.repeat > 1:  # is either tool reproducible run to run? (GPU kernels need not be)
            first = {t: work / f"{name}_{t}_0" / "seg.nii.gz" for t in ("official", "engine")}
            last = {t: work / f"{name}_{t}_{args.repeat - 1}" / "seg.nii.gz" for t in ("official", "engine")}
            print(f"  {name}: voxels differing official run 1 vs {args.repeat}: "
                  f"{_differing(first['official'], last['official'])}, engine run 1 vs {args.repeat}: "
                  f"{_differing(first['engine'], last['engine'])}, engine vs official (last runs): "
                  f"{_differing(last['engine'], last['official'])}")
        warm = None if args.no_warm else engine_warm(engine_input, w, dict(options), args.device)
        med = {tool: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for tool, runs in res.items()}
        rows.append((name, med, warm, same, note))
        _print_row(name, med, warm, same, note)
    print("\nSummary (ratio engine/official; target wall <= 0.50):")
    for name, med, warm, same, note in rows:
        o, e = med["official"], med["engine"]
        print(f"  {name:<13} wall {e['wall'] / o['wall']:.2f}   cpu {e['cpu'] / o['cpu']:.2f}   "
              f"tree-RSS {e['tree_mb'] / o['tree_mb']:.2f}   "
              f"max-process-RSS {e['proc_mb'] / o['proc_mb']:.2f}   identical labels: {same}")


def _differing(a, b):
    import nibabel as nib
    import numpy as np

    x, y = np.asanyarray(nib.load(a).dataobj), np.asanyarray(nib.load(b).dataobj)
    return f"{int(np.count_nonzero(x != y))} of {x.size}"


def _same_labels(a, b):
    import nibabel as nib
    import numpy as np

    return bool(np.array_equal(np.asanyarray(nib.load(a).dataobj), np.asanyarray(nib.load(b).dataobj)))


def _print_row(name, med, warm, same, note):
    o, e = med["official"], med["engine"]
    print(f"\n{name}")
    for label, m in (("official", o), ("engine", e)):
        print(f"  {label:<9} wall {m['wall']:7.1f} s   cpu {m['cpu']:7.1f} s   peak tree RSS {m['tree_mb']:7.0f} MB"
              f"   largest process {m['proc_mb']:7.0f} MB")
    if warm is not None:
        print(f"  engine, models already loaded (persistent worker): {warm:.1f} s")
    print(f"  ratio     wall {e['wall'] / o['wall']:.2f}   cpu {e['cpu'] / o['cpu']:.2f}   "
          f"tree RSS {e['tree_mb'] / o['tree_mb']:.2f}   largest process {e['proc_mb'] / o['proc_mb']:.2f}   "
          f"identical labels: {same}")
    if note:
        print(f"  note: {note}")


if __name__ == "__main__":
    main()
