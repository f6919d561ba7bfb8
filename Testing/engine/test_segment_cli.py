"""`python -m SegmentationLogic segment`: the contract the Slicer module and batch scripts rely on.

With `--progress json` stdout carries nothing but JSON events, one per line, ending in a
`result` event (or an `error` event with cause and fix, exit code 1).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CT = "example_ct_sm.nii.gz"


def _cli(*args, timeout=600):
    env = dict(os.environ, PYTHONPATH=str(REPO), nnUNet_def_n_proc="1")
    return subprocess.run([sys.executable, "-m", "SegmentationLogic", *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=timeout)


def _events(stdout):
    return [json.loads(line) for line in stdout.splitlines()]  # every line must be JSON


def test_json_progress_ends_with_result(test_weights, example, tmp_path):
    out = tmp_path / "out" / "seg.nii.gz"
    r = _cli("segment", "-i", example(CT), "-o", out, "--fastest", "--ml", "--statistics", "--device", "cpu",
             "--progress", "json", "--weights_dir", test_weights, "--no_download")
    assert r.returncode == 0, r.stderr
    events = _events(r.stdout)
    assert {e["event"] for e in events} <= {"progress", "log", "result"}
    assert events[-1]["event"] == "result"
    files = {Path(f).name for f in events[-1]["files"]}
    assert files == {"seg.nii.gz", "seg.labels.json", "statistics.json"}
    assert all(Path(f).is_file() for f in events[-1]["files"])
    assert "TEST MODEL" in events[-1]["note"]
    progress = [e for e in events if e["event"] == "progress"]
    assert {"load", "predict", "save"} <= {e["stage"] for e in progress}
    assert all(0.0 <= e["overall"] <= 1.0 for e in progress) and progress[-1]["overall"] == 1.0
    timings = events[-1]["timings"]  # where the time went, start-up included
    assert {"startup", "read", "load", "forward", "sliding_window", "save", "total"} <= set(timings)


def test_errors_are_error_events_with_cause_and_fix(test_weights, example, tmp_path):
    r = _cli("segment", "-i", example(CT), "-o", tmp_path / "seg.nii.gz", "--task", "totl", "--progress", "json")
    assert r.returncode == 1
    error = _events(r.stdout)[-1]
    assert error["event"] == "error" and error["kind"] == "task"
    assert "totl" in error["cause"] and "list-tasks" in error["fix"]

    r = _cli("segment", "-i", example(CT), "-o", tmp_path / "seg.nii.gz", "--fastest", "--ml", "--progress", "json",
             "--weights_dir", tmp_path / "no_weights", "--no_download")
    assert r.returncode == 1
    error = _events(r.stdout)[-1]
    assert error["event"] == "error" and error["kind"] == "weights" and "Dataset298" in error["cause"]
    assert not (tmp_path / "seg.nii.gz").exists()


def test_text_mode_prints_cause_and_fix(example, tmp_path):
    r = _cli("segment", "-i", example(CT), "-o", tmp_path / "x", "--task", "liver_vessels", "--fast")
    assert r.returncode == 1
    assert "ERROR: Task 'liver_vessels' has no fast mode." in r.stderr and "Fix:" in r.stderr
    assert "Traceback" not in r.stderr


def test_wrong_modality_is_an_input_error_and_the_flag_overrides_it(test_weights, example, tmp_path):
    out = tmp_path / "out" / "seg.nii.gz"
    args = ("segment", "-i", example("example_mr_sm.nii.gz"), "-o", out, "--fastest", "--ml", "--device", "cpu",
            "--progress", "json", "--weights_dir", test_weights, "--no_download")
    r = _cli(*args)
    assert r.returncode == 1
    error = _events(r.stdout)[-1]
    assert error["event"] == "error" and error["kind"] == "input"
    assert "does not look like a CT" in error["cause"] and "--ignore_modality" in error["fix"]
    assert not out.parent.exists()

    r = _cli(*args, "--ignore_modality")
    assert r.returncode == 0, r.stderr
    assert _events(r.stdout)[-1]["event"] == "result" and out.is_file()
