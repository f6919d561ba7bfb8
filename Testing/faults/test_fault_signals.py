"""Class 3, signals: SIGTERM and SIGHUP (what `timeout`, `kill`, schedulers, systemd and a
closed terminal send) end a run like Ctrl+C: exit code 128 + signal, one line saying so,
partial outputs and temporary folders (an unpacked DICOM zip is patient data) removed,
no child process left - in the CLI, the worker and the batch script.

A process is caught at a known point by reading its JSON progress; where the point
matters (temp folder present, partial files on disk) it is frozen with SIGSTOP, the
state is checked, and the signal is delivered as it continues (SIGCONT).
"""
import json
import os
import shutil
import signal
import sys
import time
import zipfile
from pathlib import Path

import pytest

from faultkit import (BATCH, FASTEST_MODEL, assert_nothing_left, digest, finish, listing, stage_event, start_cli, wait_for_line,
                      write_dicom_stack)
from http_server import WeightsServer
from model_zips import assert_nothing_half_installed


def _end(proc, env, started, sig, pause=False, timeout=120):
    """Deliver `sig` (to a stopped process: then continue it) and collect the Run."""
    os.kill(proc.pid, sig)
    if pause:
        os.kill(proc.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=timeout)
    return finish(proc, env, started, out, err)


def _stopped_event(run):
    errors = [json.loads(line) for line in run.stdout.splitlines() if '"error"' in line]
    assert errors, run.stdout[-2000:] + run.stderr[-2000:]
    return errors[-1]


def test_sigterm_during_inference(ct, engine, tmp_path):
    out = tmp_path / "out"
    before = digest(ct)
    proc, env = start_cli(["segment", "-i", ct, "-o", out, "--fastest", "--progress", "json", *engine], tmp_path)
    started = time.monotonic()
    wait_for_line(proc, stage_event("predict"))
    run = _end(proc, env, started, signal.SIGTERM)
    assert run.rc == 143, run.stderr[-3000:]
    event = _stopped_event(run)
    assert event["kind"] == "cancelled" and "SIGTERM" in event["cause"] and "removed" in event["cause"]
    assert "Traceback" not in run.stderr
    assert not out.exists() and digest(ct) == before
    assert_nothing_left(run, ct.parent)


def test_sighup_while_writing_per_class_files(ct, engine, tmp_path):
    out = tmp_path / "out"
    proc, env = start_cli(["segment", "-i", ct, "-o", out, "--fastest", "--progress", "json", *engine], tmp_path)
    started = time.monotonic()
    wait_for_line(proc, stage_event("save"))
    seen = []
    while proc.poll() is None and not seen:  # catch the writer with hidden partial files on disk
        seen = [p.name for p in out.glob(".*.part*")] if out.exists() else []
    assert seen, "the run ended before a partial file was seen"
    os.kill(proc.pid, signal.SIGSTOP)
    run = _end(proc, env, started, signal.SIGHUP, pause=True)
    assert run.rc == 129, run.stderr[-3000:]
    assert "SIGHUP" in _stopped_event(run)["cause"]
    assert listing(out) in (None, []), listing(out)  # no partial file, no half result, no folder it made
    assert_nothing_left(run)


def test_sigterm_while_a_dicom_zip_is_unpacked(engine, tmp_path):
    series = write_dicom_stack(tmp_path / "series", n=120, rows=64, cols=64)
    zipped = tmp_path / "series.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        for f in sorted(series.iterdir()):
            zf.write(f, f"study/{f.name}")
    proc, env = start_cli(["segment", "-i", zipped, "-o", tmp_path / "seg.nii.gz", "--ml", "--fastest",
                           "--progress", "json", *engine], tmp_path)
    started = time.monotonic()
    wait_for_line(proc, lambda line: "DICOM" in line and '"load"' in line)
    os.kill(proc.pid, signal.SIGSTOP)
    unpacked = [p.name for p in Path(env["TMPDIR"]).iterdir()]
    assert any(name.startswith("totalseg_dicom_") for name in unpacked), unpacked  # patient data in temp now
    run = _end(proc, env, started, signal.SIGTERM, pause=True)
    assert run.rc == 143 and "SIGTERM" in _stopped_event(run)["cause"], run.stderr[-3000:]
    assert_nothing_left(run, tmp_path)  # the unpacked series is gone
    assert not (tmp_path / "seg.nii.gz").exists()


def test_sigint_and_sigterm_during_weights_download_and_import(model_zip, tmp_path):
    data, wdir = model_zip, tmp_path / "weights"
    with WeightsServer({f"/{FASTEST_MODEL}.zip": data.read_bytes()}) as srv:
        srv.fault = "trickle"
        for sig, rc in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
            proc, env = start_cli(["download-weights", "--fastest", "--mirror", srv.url(), "--weights_dir", wdir,
                                   "--progress", "json"], tmp_path)
            started = time.monotonic()
            wait_for_line(proc, lambda line: '"bytes"' in line)  # bytes are arriving
            run = _end(proc, env, started, sig)
            assert run.rc == rc, run.stderr[-3000:]
            assert signal.Signals(sig).name in _stopped_event(run)["cause"] or sig == signal.SIGINT
            assert_nothing_left(run)
            assert_nothing_half_installed(wdir)  # a partial download may stay, to be resumed; nothing installed
    proc, env = start_cli(["import-weights", data, "--weights_dir", tmp_path / "imported", "--progress", "json"],
                          tmp_path)
    started = time.monotonic()
    wait_for_line(proc, lambda line: "unpacking" in line)
    os.kill(proc.pid, signal.SIGSTOP)
    staging = [p.name for p in (tmp_path / "imported").glob(".install-*")]
    assert staging, listing(tmp_path / "imported")
    run = _end(proc, env, started, signal.SIGTERM, pause=True)
    assert run.rc == 143, run.stderr[-3000:]
    assert listing(tmp_path / "imported") == [], listing(tmp_path / "imported")
    assert_nothing_left(run)


def test_split_vessels_stops_cleanly(tmp_path):
    import nibabel as nib
    import numpy as np

    mask = np.zeros((60, 60, 60), np.uint8)
    mask[10:50, 28:32, 28:32] = 1
    mask[28:32, 10:50, 30:34] = 1
    vessels = tmp_path / "liver_vessels.nii.gz"
    nib.save(nib.Nifti1Image(mask, np.eye(4) * [1.5, 1.5, 1.5, 1]), str(vessels))
    out = tmp_path / "split"
    proc, env = start_cli(["split-vessels", "--vessels", vessels, "-o", out, "--progress", "json"], tmp_path)
    started = time.monotonic()
    wait_for_line(proc, stage_event("load"))
    os.kill(proc.pid, signal.SIGSTOP)
    run = _end(proc, env, started, signal.SIGTERM, pause=True)
    assert run.rc == 143 and "SIGTERM" in _stopped_event(run)["cause"], run.stderr[-3000:]
    assert listing(out) in (None, [])
    assert_nothing_left(run)


def test_worker_stops_on_sigterm_and_cleans_its_request_temp(ct, test_weights, tmp_path):
    request_tmp = tmp_path / "request-tmp"
    request_tmp.mkdir()
    (request_tmp / "belongs-to-the-caller.txt").write_text("keep me")
    proc, env = start_cli(["worker"], tmp_path)
    started = time.monotonic()
    wait_for_line(proc, lambda line: '"ready"' in line)
    request = {"input": str(ct), "output": str(tmp_path / "out"), "task": "total", "quality": "fastest",
               "ml": False, "device": "cpu", "weights_dir": str(test_weights), "download": False}
    proc.stdin.write(json.dumps({"id": "7", "command": "segment", "request": request,
                                 "tmpdir": str(request_tmp)}) + "\n")
    proc.stdin.flush()
    wait_for_line(proc, stage_event("predict"))
    (request_tmp / "made-by-the-run").mkdir()  # stands for a file of the run in its temp folder
    os.kill(proc.pid, signal.SIGSTOP)
    run = _end(proc, env, started, signal.SIGTERM, pause=True)
    assert run.rc == 143, run.stderr[-3000:]
    event = _stopped_event(run)
    assert event["id"] == "7" and event["kind"] == "cancelled" and "SIGTERM" in event["cause"]
    assert "Worker stopped by SIGTERM" in run.stderr and "Traceback" not in run.stderr
    assert listing(request_tmp) == ["belongs-to-the-caller.txt"]
    assert not (tmp_path / "out").exists()
    assert_nothing_left(run)


@pytest.mark.parametrize("sig", [signal.SIGTERM])
def test_batch_script_records_the_stopped_case(ct, test_weights, tmp_path, sig):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for name in ("case1", "case2"):
        shutil.copy(ct, inputs / f"{name}.nii.gz")
    proc, env = start_cli(None, tmp_path, command=[sys.executable, str(BATCH), "--input-dir", str(inputs),
                                                   "--output-dir", str(outputs), "--quality", "fastest",
                                                   "--device", "cpu", "--weights-dir", str(test_weights)])
    started = time.monotonic()
    wait_for_line(proc, lambda line: line.startswith("[predict"), timeout=180)
    os.kill(proc.pid, signal.SIGSTOP)
    run = _end(proc, env, started, sig, pause=True)
    assert run.rc == 128 + sig, run.stdout[-2000:] + run.stderr[-3000:]
    assert "Stopped by SIGTERM" in run.stdout and "Traceback" not in run.stderr
    rows = (outputs / "summary.csv").read_text().splitlines()
    assert rows[1].startswith("case1,cancelled,") and "SIGTERM" in rows[1] and len(rows) == 2
    assert listing(outputs) == ["summary.csv"]
    assert_nothing_left(run)


def test_signals_ignored_by_the_caller_stay_ignored(model_zip, tmp_path):
    """nohup ignores SIGHUP for its child: the engine must not start honouring it."""
    with WeightsServer({f"/{FASTEST_MODEL}.zip": model_zip.read_bytes()}) as srv:
        srv.fault = "trickle"
        proc, env = start_cli(None, tmp_path, command=["nohup", sys.executable, "-m", "SegmentationLogic",
                                                       "download-weights", "--fastest", "--mirror", srv.url(),
                                                       "--weights_dir", str(tmp_path / "w"), "--progress", "json"])
        started = time.monotonic()
        wait_for_line(proc, lambda line: '"bytes"' in line)
        os.kill(proc.pid, signal.SIGHUP)
        time.sleep(0.5)
        assert proc.poll() is None  # still downloading
        run = _end(proc, env, started, signal.SIGTERM)
    assert run.rc == 143 and "SIGTERM" in _stopped_event(run)["cause"], run.stderr[-3000:]
    assert_nothing_left(run)


def test_the_orphan_scan_catches_a_child_left_behind(tmp_path):
    """The check every test above relies on: a process that leaves a child running is caught."""
    proc, env = start_cli(None, tmp_path, command=[sys.executable, "-c",
                                                   "import subprocess, sys; subprocess.Popen([sys.executable, '-c', "
                                                   "'import time; time.sleep(30)'], stdout=subprocess.DEVNULL, "
                                                   "stderr=subprocess.DEVNULL); print('started', flush=True)"])
    started = time.monotonic()
    out, err = proc.communicate(timeout=30)
    run = finish(proc, env, started, out, err)
    assert len(run.orphans) == 1  # (and finish() killed it)
