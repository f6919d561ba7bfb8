"""The module's engine worker (`python -m SegmentationLogic worker` with the vessel-review plugin) and
its client, WorkerEngine."""
import sys
import time

import pytest

from TotalSegmentatorLib.process import pid_alive
from TotalSegmentatorLib.runner import WorkerEngine


@pytest.fixture
def worker():
    engine = WorkerEngine(python=sys.executable)
    yield engine
    engine.shutdown()


def test_worker_answers_requests_in_one_process(worker):
    first = worker.submit("ping").wait(timeout=120)
    second = worker.submit("ping").wait(timeout=30)
    assert first.outcome == second.outcome == "succeeded"
    assert first.result["pid"] == second.result["pid"] == worker.process.pid
    assert worker.ready and worker.runs_served == 2


def test_bad_requests_get_an_error_and_the_worker_stays(worker):
    bad = worker.submit("segment", request={"task": "total"}).wait(timeout=120)  # no input
    assert bad.outcome == "failed" and bad.error["kind"] == "request" and "needs an 'input'" in bad.error["cause"]
    typo = worker.submit("segment", request={"input": "ct.nii.gz", "taks": "total"}).wait(timeout=30)
    assert typo.outcome == "failed" and "taks" in typo.error["cause"]
    unknown = worker.submit("explode").wait(timeout=30)
    assert unknown.outcome == "failed" and "Unknown worker command" in unknown.error["cause"]
    assert worker.submit("ping").wait(timeout=30).outcome == "succeeded"


def test_worker_exits_when_its_client_goes_away(worker):
    worker.submit("ping").wait(timeout=120)
    proc = worker.process
    proc.close_stdin()  # what happens when Slicer quits or crashes
    deadline = time.monotonic() + 20
    while proc.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not proc.running and proc.returncode == 0
    assert not pid_alive(proc.pid)


def test_shutdown_removes_the_worker_and_its_temp_folder(worker):
    worker.submit("ping").wait(timeout=120)
    pid, tmp = worker.process.pid, worker._tmpdir
    worker.shutdown()
    assert not pid_alive(pid)
    import os

    assert not os.path.exists(tmp)


def test_worker_lists_devices_for_the_panel(worker):
    from TotalSegmentatorLib.choices import device_items

    run = worker.submit("devices").wait(timeout=300)
    assert run.outcome == "succeeded", run.error
    devices = run.result["devices"]
    assert any(d["id"] == "cpu" for d in devices)
    items = device_items(devices)
    assert items[0].id == "auto" and items[1].id == "cpu" and "CPU" in items[1].text


def test_one_shot_worker_ends_when_its_request_is_answered():
    engine = WorkerEngine(python=sys.executable, keep_alive=False)
    run = engine.submit("ping").wait(timeout=120)
    assert run.outcome == "succeeded"
    pid = run.result["pid"]
    assert engine.process is None and not pid_alive(pid), "nothing keeps running once the answer is in"
