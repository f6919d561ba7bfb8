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


def test_multi_word_flags_take_both_spellings():
    """--roi_subset (the official spelling, shown in the help) and --roi-subset, for every
    multi-word flag of every command."""
    import argparse

    from SegmentationLogic.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    checked = 0
    for name, sub in commands.items():
        for action in sub._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and "_" in flag:
                    hyphens = "--" + flag[2:].replace("_", "-")
                    assert sub._official(hyphens) == flag and sub._official(hyphens + "=x") == flag + "=x"
                    checked += 1
    assert checked > 20
    official = parser.parse_args(["segment", "-i", "ct.nii.gz", "-o", "out", "--roi_subset", "liver", "spleen",
                                  "--weights_dir", "w", "--no_download", "--ignore_modality"])
    hyphens = parser.parse_args(["segment", "-i", "ct.nii.gz", "-o", "out", "--roi-subset", "liver", "spleen",
                                 "--weights-dir=w", "--no-download", "--ignore-modality"])
    assert vars(official) == vars(hyphens)
    assert parser.parse_args(["liver-vessels", "-i", "a", "-o", "b", "--liver-mask", "m", "--split-portal-hepatic"]
                             ).liver_mask == "m"
    assert "--roi_subset" in commands["segment"].format_help()  # the help shows the official spelling only
    assert "--roi-subset" not in commands["segment"].format_help() and "--roi-subset" in parser.format_help()


def test_quiet_still_says_a_test_model_ran(test_weights, example, tmp_path):
    r = _cli("segment", "-q", "-i", example(CT), "-o", tmp_path / "seg.nii.gz", "--fastest", "--ml", "--device", "cpu",
             "--weights-dir", test_weights, "--no-download")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and "NOTE: TEST MODEL" in r.stderr
