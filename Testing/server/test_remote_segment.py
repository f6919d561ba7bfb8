"""Segmenting on the server gives what a local run gives, with the same progress and cancel.

A real `serve` (uvicorn, TLS, token) runs the real engine on the test models; the client
is `RemoteSegmenter` and `segment --server`, on loopback.
"""
import gzip
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from SegmentationLogic.errors import Cancelled
from SegmentationLogic.progress import CancelToken
from SegmentationLogic.request import SegmentRequest
from serve_process import ENGINE_LIBRARIES, blocked_python

REPO = Path(__file__).resolve().parents[2]
CT = "example_ct_sm.nii.gz"


def _files(root):
    return {p.relative_to(root).as_posix(): p for p in sorted(Path(root).rglob("*")) if p.is_file()}


def _same_outputs(local_root, remote_root):
    local, remote = _files(local_root), _files(remote_root)
    assert sorted(local) == sorted(remote)
    for name, path in local.items():
        a, b = path.read_bytes(), remote[name].read_bytes()
        if name.endswith(".nii.gz"):  # the voxels, the affine and the whole header: the uncompressed bytes
            a, b = gzip.decompress(a), gzip.decompress(b)
        elif name.endswith(".json"):
            a, b = json.loads(a), json.loads(b)
        assert a == b, name


@pytest.mark.parametrize("source, options", [
    (CT, dict(task="total", quality="fast", roi_subset=["liver"], statistics=True)),  # crop + main model, statistics
    (CT, dict(task="total", quality="fastest", ml=False, roi_subset=["liver", "spleen", "kidney_left"])),  # per class
    ("example_ct_dicom", dict(task="total", quality="fastest")),  # a DICOM folder: zipped by the client
], ids=["multilabel+statistics", "per-class", "dicom-folder"])
def test_remote_result_is_identical_to_the_local_one(source, options, remote, remote_server, local_segmenter,
                                                     example, tmp_path):
    out = "seg.nii.gz" if options.get("ml", True) else "seg"
    local = local_segmenter.run(SegmentRequest(input=str(example(source)), output=str(tmp_path / "local" / out),
                                               device="cpu", **options))
    events = []
    result = remote.run(SegmentRequest(input=str(example(source)), output=str(tmp_path / "remote" / out), **options),
                        progress=events.append)
    _same_outputs(tmp_path / "local", tmp_path / "remote")
    assert result.class_map == local.class_map and result.statistics == local.statistics
    assert result.model_note == local.model_note and "TEST MODEL" in result.model_note
    assert [Path(f).relative_to(tmp_path / "remote") for f in result.files] == \
           [Path(f).relative_to(tmp_path / "local") for f in local.files]
    # the server's progress comes out of the local Progress: stages, one monotone overall bar
    stages = [e["stage"] for e in events if e["event"] == "progress"]
    assert {"upload", "queued", "load", "predict", "save", "fetch"} <= set(stages)
    overall = [e["overall"] for e in events if e["event"] == "progress"]
    assert overall == sorted(overall) and max(overall) == 1.0
    assert not any(str(remote_server.jobs_dir) in json.dumps(e) for e in events)  # no server paths
    assert remote_server.wait_no_jobs() == []  # fetched: nothing of the job stays on the server


def test_cli_segments_remotely_without_torch_nibabel_or_numpy(remote_server, test_ca, example, tmp_path):
    out = tmp_path / "out" / "seg.nii.gz"
    argv = ["segment", "-i", str(example(CT)), "-o", str(out), "--fastest", "--ml", "--statistics", "--progress",
            "json", "--server", remote_server.url, "--token_file", str(remote_server.token_file), "--ca_cert",
            str(test_ca.cert_path)]
    code = blocked_python(f"from SegmentationLogic.cli import main\nsys.exit(main({argv!r}))")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("TOTALSEG_SERVER_TOKEN", None)
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, env=env,
                       cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert events[-1]["event"] == "result"
    assert {Path(f).name for f in events[-1]["files"]} == {"seg.nii.gz", "seg.labels.json", "statistics.json"}
    assert all(Path(f).is_file() for f in events[-1]["files"])
    assert {"upload", "predict", "fetch"} <= {e.get("stage") for e in events}
    imported = {line.split("|")[-1].strip().split(".")[0] for line in r.stderr.splitlines() if "import time:" in line}
    assert not imported & set(ENGINE_LIBRARIES)
    assert remote_server.token not in r.stdout + r.stderr  # never printed


def test_two_clients_at_once_are_queued_and_both_succeed(remote, remote_server, example, tmp_path):
    results, events, errors = {}, {0: [], 1: []}, []

    def client(i):
        try:
            request = SegmentRequest(input=str(example(CT)), output=str(tmp_path / str(i) / "seg.nii.gz"),
                                     quality="fastest")
            results[i] = remote.run(request, progress=events[i].append)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in (0, 1)]
    threads[0].start()
    deadline = time.monotonic() + 120
    while not any(e.get("stage") == "load" for e in events[0]) and time.monotonic() < deadline:
        time.sleep(0.01)  # the first job runs on the server ...
    threads[1].start()  # ... when the second arrives
    for t in threads:
        t.join(300)
    assert not errors
    assert gzip.decompress((tmp_path / "0" / "seg.nii.gz").read_bytes()) == \
           gzip.decompress((tmp_path / "1" / "seg.nii.gz").read_bytes())
    # the second was told it waits behind the first, and it did
    positions = {i: [e["position"] for e in events[i] if e.get("stage") == "queued"] for i in (0, 1)}
    assert positions == {0: [0], 1: [1, 0]}
    assert results[1].timings["queued"] > 0
    assert remote_server.wait_no_jobs() == []


def test_cancel_mid_run_stops_the_job_and_frees_the_server(remote, remote_server, example, tmp_path):
    token = CancelToken()
    token.cancel()  # before or during the upload: nothing is sent (the server drops what it got)
    with pytest.raises(Cancelled):
        remote.run(SegmentRequest(input=str(example(CT)), output=str(tmp_path / "early" / "seg.nii.gz")), cancel=token)
    assert not (tmp_path / "early").exists() and remote_server.wait_no_jobs() == []

    token = CancelToken()
    seen = []

    def progress(event):
        seen.append(event)
        if event.get("stage") == "predict" and event.get("fraction", 0) > 0:
            token.cancel()  # as the Cancel button does, in the middle of the prediction

    out = tmp_path / "cancelled" / "seg.nii.gz"
    with pytest.raises(Cancelled):
        remote.run(SegmentRequest(input=str(example(CT)), output=str(out), quality="fast"), progress=progress,
                   cancel=token)
    assert not out.parent.exists() or not any(out.parent.iterdir())  # nothing written, no partial file
    assert not any(e.get("stage") == "save" for e in seen)
    assert remote_server.wait_no_jobs() == []
    # the engine stopped in the middle, and the worker takes the next job
    remote.run(SegmentRequest(input=str(example(CT)), output=str(tmp_path / "next" / "seg.nii.gz"), quality="fastest"))
    assert (tmp_path / "next" / "seg.nii.gz").is_file()
    log = remote_server.log_text()
    assert " cancelled after " in log and log.rindex(" cancelled after ") < log.rindex(" started")


def test_sigterm_to_the_cli_cancels_the_job_on_the_server(remote_server, test_ca, example, tmp_path):
    import signal

    out = tmp_path / "out" / "seg.nii.gz"
    argv = ["segment", "-i", str(example(CT)), "-o", str(out), "--fast", "--ml", "--progress", "json", "--server",
            remote_server.url, "--token_file", str(remote_server.token_file), "--ca_cert", str(test_ca.cert_path)]
    cli = subprocess.Popen([sys.executable, "-m", "SegmentationLogic", *argv], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        for line in cli.stdout:
            event = json.loads(line)
            if event.get("stage") == "predict":
                cli.send_signal(signal.SIGTERM)  # what a batch system or the Slicer module does to stop it
                break
        rest = [json.loads(line) for line in cli.stdout]
        assert cli.wait(60) == 130
    finally:
        if cli.poll() is None:
            cli.kill()
    assert rest[-1]["event"] == "error" and rest[-1]["kind"] == "cancelled"
    assert not out.parent.exists() or list(out.parent.iterdir()) == []
    assert remote_server.wait_no_jobs() == []
