"""The official TotalSegmentator as a reference (oracle), run in a subprocess, offline.

The product never imports `totalsegmentator`; tests and benchmarks run it here, in a
separate Python process, because importing it patches nnU-Net process-wide, rewrites the
`nnUNet_*` environment variables and changes torch's thread settings.

The subprocess gets a throw-away TotalSegmentator home (`TOTALSEG_HOME_DIR`) whose
config.json turns usage statistics off and marks the disclaimer as shown, so nothing is
sent anywhere, and `TOTALSEG_WEIGHTS_PATH` pointing at the (test) weights, so nothing is
downloaded. nnU-Net's trainer-class search would import the Primus trainers, which import
timm -> torchvision (broken here); the runner replaces that one module with an empty one
before anything else is imported.

Several cases can run in one subprocess (`OfficialBatch`), which pays the start-up cost
once and runs in the background while the caller does other work. nnU-Net's preprocessing
and export run inside that subprocess instead of in worker processes it would spawn for
every model (`nnunet_in_process`: the same functions with the same arguments; labelmaps
checked identical both ways; `TOTALSEG_ORACLE_WORKERS=1` restores the workers): that halves
the CPU the official runs cost.

Usage as a script (what the subprocess runs):
    python Testing/support/reference.py CASES.json RESULTS.jsonl
where CASES.json is a list of {"name", "input", "output", "kwargs"} and every finished
case appends one JSON line {"name", "ok", "seconds", "error"} to RESULTS.jsonl.
"""
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve()
PRIMUS_MODULE = "nnunetv2.training.nnUNetTrainer.primus.primus_trainers"
ORACLE_CONFIG = {"totalseg_id": "totalseg_TEST0000", "send_usage_stats": False, "prediction_counter": 0,
                 "statistics_disclaimer_shown": True}
# Arguments every oracle call gets: CPU, quiet, no worker pools for saving (deterministic, faster).
# the parity tests run on the CPU; the engine benchmark sets TOTALSEG_ORACLE_DEVICE=gpu on a GPU machine
FIXED_KWARGS = {"device": os.environ.get("TOTALSEG_ORACLE_DEVICE", "cpu"), "quiet": True, "nr_thr_resamp": 1,
                "nr_thr_saving": 1}


def make_home(folder):
    """A TotalSegmentator home with telemetry off; returns its path."""
    home = Path(folder) / "totalseg_home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.json").write_text(json.dumps(ORACLE_CONFIG))
    return home


def oracle_env(weights_dir, home):
    env = dict(os.environ)
    env["TOTALSEG_HOME_DIR"] = str(home)
    env["TOTALSEG_WEIGHTS_PATH"] = str(weights_dir)
    # nnUNet_def_n_proc (torch threads of the prediction) is inherited: compare like with like
    # nothing may leave the machine: an accidental download or stats call fails at once
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        env[var] = "http://127.0.0.1:9"
    env["NO_PROXY"] = env["no_proxy"] = ""
    return env


def official_kwargs(task="total", quality="normal", roi_subset=None, ml=True, statistics=False, body_seg=False,
                    force_split=False, remove_small_blobs=False, robust_crop=False, output_types=None,
                    statistics_extra=False, stats_aggregation="mean", stats_include_incomplete=False,
                    higher_order_resampling_legacy=False, **same_name):
    """Our option names -> the official python_api arguments; options named alike in both (e.g.
    higher_order_resampling, save_lowres, v1_order) pass through unchanged."""
    kwargs = {"task": task, "fast": quality == "fast", "fastest": quality == "fastest", "roi_subset": roi_subset,
              "ml": ml, "statistics": statistics, "body_seg": body_seg, "force_split": force_split,
              "remove_small_blobs": remove_small_blobs, "robust_crop": robust_crop, **same_name}
    if higher_order_resampling_legacy:
        kwargs["higher_order_resampling_LEGACY"] = True
    if output_types:  # the official CLI passes one type as a string, several as a list
        kwargs["output_type"] = output_types[0] if len(output_types) == 1 else list(output_types)
    if statistics_extra or stats_aggregation != "mean" or stats_include_incomplete:
        kwargs.update(statistics_extra=statistics_extra, stats_aggregation=stats_aggregation,
                      statistics_exclude_masks_at_border=not stats_include_incomplete)
    return kwargs


class OfficialBatch:
    """Runs a list of cases through the official tool in background subprocesses.

    cases: [(name, input_path, output_path, our_options_dict)]. `wait(name)` blocks until
    that case is done and returns {"ok", "seconds", "error"}; the output is on disk then.
    With `workers` > 1 the cases are dealt to that many subprocesses (each keeps the
    given order), balanced by `costs` {name: rough seconds}, so the official tool's many
    idle moments (worker start-up, file I/O) overlap with other work.
    """

    def __init__(self, cases, weights_dir, workdir, timeout=1800, workers=1, costs=None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        home = make_home(self.workdir)
        spec = [{"name": n, "input": str(i), "output": str(o), "kwargs": official_kwargs(**opts)}
                for n, i, o, opts in cases]
        self.names = [c["name"] for c in spec]
        groups = _deal(spec, max(1, min(workers, len(spec))), costs or {})
        self.timeout = timeout
        self.started = time.time()
        self._workers = []  # (process, results file, log file, names)
        for k, group in enumerate(groups):
            cases_file = self.workdir / f"cases{k}.json"
            results_file = self.workdir / f"results{k}.jsonl"
            cases_file.write_text(json.dumps(group))
            results_file.write_text("")
            log = open(self.workdir / f"oracle{k}.log", "w")
            proc = subprocess.Popen([sys.executable, str(HERE), str(cases_file), str(results_file)],
                                    env=oracle_env(weights_dir, home), stdout=log, stderr=subprocess.STDOUT,
                                    cwd=self.workdir)
            self._workers.append((proc, results_file, log, [c["name"] for c in group]))

    def _worker_of(self, name):
        for w in self._workers:
            if name in w[3]:
                return w
        raise KeyError(f"oracle case {name!r} was not scheduled")

    @staticmethod
    def _results(results_file):
        out = {}
        for line in results_file.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                out[r["name"]] = r
        return out

    def wait(self, name):
        proc, results_file, log, _ = self._worker_of(name)
        deadline = self.started + self.timeout
        while True:
            res = self._results(results_file)
            if name in res:
                return res[name]
            if proc.poll() is not None:
                res = self._results(results_file)
                if name in res:
                    return res[name]
                raise RuntimeError(f"official TotalSegmentator runner exited ({proc.returncode}) before "
                                   f"case {name}; log:\n{self.tail_log(log)}")
            if time.time() > deadline:
                self.close()
                raise TimeoutError(f"official runner did not finish {name} in {self.timeout}s")
            time.sleep(0.2)

    @staticmethod
    def tail_log(log, n=4000):
        log.flush()
        return Path(log.name).read_text()[-n:]

    def close(self):
        for proc, _, log, _ in self._workers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()


def _deal(spec, n, costs):
    """Split cases into n groups of similar total cost (largest first), keeping their order."""
    load = [0.0] * n
    owner = {}
    for c in sorted(spec, key=lambda c: -costs.get(c["name"], 10.0)):
        k = load.index(min(load))
        owner[c["name"]] = k
        load[k] += costs.get(c["name"], 10.0)
    return [g for g in ([c for c in spec if owner[c["name"]] == k] for k in range(n)) if g]


def run_official(input_path, output_path, weights_dir, workdir=None, **options):
    """One case, blocking. Returns the seconds it took (including interpreter start-up)."""
    workdir = Path(workdir or tempfile.mkdtemp(prefix="oracle_"))
    batch = OfficialBatch([("case", input_path, output_path, options)], weights_dir, workdir)
    try:
        r = batch.wait("case")
    finally:
        batch.close()
    if not r["ok"]:
        raise RuntimeError(f"official TotalSegmentator failed: {r['error']}")
    return r["seconds"]


class _Done:
    """A finished `AsyncResult`, as nnU-Net's export loop polls it."""

    def __init__(self, value):
        self.value = value

    def ready(self):
        return True

    def get(self, timeout=None):
        return self.value


class _InlinePool:
    """nnU-Net's export pool, run in the calling process: `apply_async` calls the function now."""

    _pool = ()

    def __init__(self, processes=None):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def apply_async(self, func, args=(), kwds=None):
        return _Done(func(*args, **(kwds or {})))


def nnunet_in_process():
    """The official runs' nnU-Net without its worker processes.

    For every model nnU-Net spawns a preprocessing process and an export pool; each new
    process imports torch and nnU-Net again: seconds of CPU per model, most of a parity run
    on two cores. Here the same functions run with the same arguments in this process
    (preprocess_fromfiles_save_to_queue into a list, export_prediction_from_logits /
    convert_predicted_logits_... called at once), so the numbers are nnU-Net's own."""
    import multiprocessing
    import types

    import nnunetv2.inference.data_iterators as iterators
    import nnunetv2.inference.predict_from_raw_data as predict

    class Items(list):
        def put(self, item, timeout=None):
            self.append(item)

    class Flag:
        def set(self):
            pass

        def is_set(self):
            return False

    def preprocessing_iterator_fromfiles(list_of_lists, segs, ofiles, plans_manager, dataset_json,
                                         configuration_manager, num_processes, pin_memory=False, verbose=False):
        for i in range(len(list_of_lists)):
            items = Items()
            iterators.preprocess_fromfiles_save_to_queue(
                list_of_lists[i:i + 1], None if segs is None else segs[i:i + 1],
                None if ofiles is None else ofiles[i:i + 1], plans_manager, dataset_json, configuration_manager,
                items, Flag(), Flag(), verbose)
            yield from items

    spawn = types.SimpleNamespace(Pool=_InlinePool)
    predict.multiprocessing = types.SimpleNamespace(get_context=lambda method=None: spawn,
                                                    TimeoutError=multiprocessing.TimeoutError)
    predict.preprocessing_iterator_fromfiles = preprocessing_iterator_fromfiles


def _runner(cases_file, results_file):
    import traceback
    import types

    # Must precede any nnunetv2 import: the Primus trainers import timm -> torchvision.
    sys.modules[PRIMUS_MODULE] = types.ModuleType(PRIMUS_MODULE)
    from totalsegmentator.python_api import totalsegmentator

    if os.environ.get("TOTALSEG_ORACLE_WORKERS") != "1":  # TOTALSEG_ORACLE_WORKERS=1: nnU-Net's own processes
        nnunet_in_process()

    for case in json.loads(Path(cases_file).read_text()):
        t0 = time.time()
        kwargs = {**case["kwargs"], **FIXED_KWARGS}
        try:
            Path(case["output"]).parent.mkdir(parents=True, exist_ok=True)
            totalsegmentator(case["input"], case["output"], **kwargs)
            rec = {"name": case["name"], "ok": True, "error": None}
        except BaseException as e:  # noqa: BLE001 - report every failure (incl. sys.exit) to the caller
            rec = {"name": case["name"], "ok": False, "error": f"{type(e).__name__}: {e}\n{traceback.format_exc()}"}
        rec["seconds"] = round(time.time() - t0, 3)
        with open(results_file, "a") as f:
            f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    _runner(sys.argv[1], sys.argv[2])
