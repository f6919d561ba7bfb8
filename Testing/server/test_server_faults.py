"""When things go wrong between client and server: a server that dies or stops, a client that
goes away. The user gets a clear error and no partial segmentation; the server keeps no
trace of the patient's images.
"""
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from SegmentationLogic.errors import SegmentationError
from SegmentationLogic.request import SegmentRequest
from SegmentationLogic.server.client import RemoteSegmenter, ServerConnectionError
from SegmentationLogic.server.protocol import FORMAT_HEADER
from serve_process import REPO, ServeProcess, blocked_python

CT = "example_ct_sm.nii.gz"


def _run_until_predicting(client, request):
    """Start `client.run(request)` in a thread; return (thread, outcome) once the server is predicting."""
    predicting, outcome = threading.Event(), {}

    def progress(event):
        if event.get("stage") == "predict" and event.get("fraction", 0) > 0:
            predicting.set()

    def run():
        try:
            outcome["result"] = client.run(request, progress=progress)
        except BaseException as e:  # noqa: BLE001 - inspected by the test
            outcome["error"] = e
        finally:
            predicting.set()

    thread = threading.Thread(target=run)
    thread.start()
    assert predicting.wait(120)
    return thread, outcome


def test_server_killed_or_stopped_mid_run_gives_a_clear_error_and_no_output(test_weights, example, tmp_path):
    srv = ServeProcess(tmp_path / "srv", test_weights, timeout=30).start()
    out = tmp_path / "out" / "seg.nii.gz"
    try:
        client = RemoteSegmenter(srv.url, token_file=srv.token_file)
        thread, outcome = _run_until_predicting(client, SegmentRequest(input=str(example(CT)), output=str(out),
                                                                       quality="fast"))
        srv.kill()  # a crash: no goodbye
        thread.join(60)
    finally:
        srv.stop()
    error = outcome.get("error")
    assert isinstance(error, ServerConnectionError), outcome
    assert "lost before the run finished" in error.cause and "Nothing was written" in error.cause and error.fix
    assert not out.parent.exists() or list(out.parent.iterdir()) == []  # no labelmap, no partial file
    assert srv.jobs()  # what the crashed server left ...

    srv2 = ServeProcess(tmp_path / "srv2", test_weights, jobs_dir=srv.jobs_dir, timeout=30).start()
    try:
        assert srv2.jobs() == []  # ... is deleted when the server starts again
        assert "did not stop cleanly" in srv2.log_text()
        client = RemoteSegmenter(srv2.url, token_file=srv2.token_file)
        thread, outcome = _run_until_predicting(client, SegmentRequest(input=str(example(CT)), output=str(out),
                                                                       quality="fast"))
        srv2.stop()  # SIGTERM: an orderly stop tells the client why
        thread.join(60)
    finally:
        srv2.stop()
    error = outcome.get("error")
    assert isinstance(error, SegmentationError) and error.kind == "server", outcome
    assert "shutting down" in error.cause
    assert not out.parent.exists() or list(out.parent.iterdir()) == []
    assert srv2.jobs() == [] and "Application shutdown complete" in srv2.log_text()
    assert str(example(CT).name) not in srv.log_text() + srv2.log_text()  # no file names in the log


def _upload(remote_server, test_ca, example):
    r = requests.post(remote_server.url + "/v1/jobs", data=example(CT).read_bytes(),
                      headers={"Authorization": f"Bearer {remote_server.token}", FORMAT_HEADER: "nii.gz",
                               "X-TotalSeg-Request": json.dumps({"quality": "fastest"})},
                      verify=str(test_ca.cert_path), timeout=30)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_a_client_that_goes_away_leaves_nothing_on_the_server(remote_server, test_ca, example):
    auth = {"Authorization": f"Bearer {remote_server.token}"}
    # 1. gone while its job runs: the job is cancelled and deleted
    job = _upload(remote_server, test_ca, example)
    events = requests.get(f"{remote_server.url}/v1/jobs/{job}/events", headers=auth, stream=True,
                          verify=str(test_ca.cert_path), timeout=30)
    lines = events.iter_lines()
    assert json.loads(next(lines))["event"] == "progress"
    events.close()
    assert remote_server.wait_no_jobs() == []

    # 2. gone in the middle of its upload
    context = ssl.create_default_context(cafile=str(test_ca.cert_path))
    with socket.create_connection(("127.0.0.1", remote_server.port)) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            s.sendall((f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {remote_server.token}\r\n"
                       f"{FORMAT_HEADER}: nii.gz\r\nContent-Length: 400000\r\n\r\n").encode() + b"\x1f\x8b" * 50000)
            deadline = time.monotonic() + 10
            while not remote_server.jobs() and time.monotonic() < deadline:  # the upload has begun
                time.sleep(0.05)
            assert remote_server.jobs()
    assert remote_server.wait_no_jobs() == []

    # 3. never came back for its result, or never listened at all: deleted after the time-out
    job = _upload(remote_server, test_ca, example)
    with requests.get(f"{remote_server.url}/v1/jobs/{job}/events", headers=auth, stream=True,
                      verify=str(test_ca.cert_path), timeout=60) as events:
        last = [json.loads(line) for line in events.iter_lines() if line.strip()][-1]
    assert last["event"] == "result"
    _upload(remote_server, test_ca, example)
    assert remote_server.jobs()
    assert remote_server.wait_no_jobs(timeout=30) == []
    r = requests.get(f"{remote_server.url}/v1/jobs/{job}/result", headers=auth, verify=str(test_ca.cert_path),
                     timeout=30)
    assert r.status_code == 404 and "timed out" in r.json()["cause"]


def test_the_worker_runs_requests_remotely_without_the_engine_libraries(remote_server, test_ca, example, tmp_path):
    """The Slicer module's worker: a `segment` request with "remote" runs its SegmentRequest on the server (an
    argv message, the retired protocol, is refused with a clear error); cancel works as for a local run."""
    code = blocked_python("from SegmentationLogic.worker import serve\nsys.exit(serve())")
    worker = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    remote = {"url": remote_server.url, "token_file": str(remote_server.token_file), "ca_cert": str(test_ca.cert_path)}
    base = {"command": "segment", "remote": remote, "tmpdir": str(tmp_path)}
    requests_ = [
        {**base, "id": "old", "argv": ["-i", str(example(CT)), "-o", str(tmp_path / "x" / "seg.nii.gz"), "--ml"]},
        {**base, "id": "argv", "request": {"input": str(example(CT)), "output": str(tmp_path / "a" / "seg.nii.gz"),
                                           "quality": "fastest"}},
        {**base, "id": "request", "request": {"input": str(example(CT)), "output": str(tmp_path / "b" / "seg.nii.gz"),
                                              "quality": "fastest", "statistics": True}},
        {**base, "id": "cancel", "request": {"input": str(example(CT)), "output": str(tmp_path / "c" / "seg.nii.gz"),
                                             "quality": "fast"}},
    ]

    def send(obj):
        worker.stdin.write(json.dumps(obj) + "\n")
        worker.stdin.flush()

    try:
        assert json.loads(worker.stdout.readline())["event"] == "ready"
        for r in requests_:
            send(r)
        ends, cancelled_sent = {}, False
        while len(ends) < len(requests_):
            line = worker.stdout.readline()
            assert line, worker.stderr.read()[-3000:]
            event = json.loads(line)
            if event["event"] in ("result", "error"):
                ends[event["id"]] = event
            elif event.get("id") == "cancel" and event.get("stage") == "predict" and not cancelled_sent:
                send({"command": "cancel", "id": "cancel"})  # what the module's Cancel button sends
                cancelled_sent = True
        send({"command": "shutdown"})
        assert worker.wait(30) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
    assert ends["old"]["event"] == "error" and ends["old"]["kind"] == "request" and not (tmp_path / "x").exists()
    assert ends["argv"]["event"] == "result" and ends["argv"]["remote"] is True
    assert {Path(f).name for f in ends["argv"]["files"]} == {"seg.nii.gz", "seg.labels.json"}
    assert ends["argv"]["class_map"]["5"] == "liver"
    assert ends["request"]["event"] == "result" and ends["request"]["statistics"]["liver"]["volume"] >= 0
    assert all(Path(f).is_file() for f in ends["argv"]["files"] + ends["request"]["files"])
    assert ends["cancel"]["event"] == "error" and ends["cancel"]["kind"] == "cancelled"
    assert not (tmp_path / "c").exists() or list((tmp_path / "c").iterdir()) == []
    assert remote_server.wait_no_jobs() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"] + (["c"] if (tmp_path / "c").exists() else [])
