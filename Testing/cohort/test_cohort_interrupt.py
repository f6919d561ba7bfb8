"""The cohort command as a user runs it: it starts its own local Ray, is interrupted (Ctrl+C
to its process group, later SIGTERM to the driver as a batch system sends it) and rerun.
Running cases finish and are recorded, done cases are skipped, no case runs twice, and no
Ray process outlives the command."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cohort_cases import make_cases, private_ray_tmpdir
from SegmentationLogic.cohort.manifest import MANIFEST_NAME

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _interrupted_run(cases, out, weights, case_to_interrupt, send, log):
    """Run the command; when `case_to_interrupt` has started, `send(process)`. Returns (exit code, events)."""
    with private_ray_tmpdir() as ray_tmpdir, open(log, "a") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "SegmentationLogic", "cohort", "-i", str(cases), "-o", str(out), "--fastest",
             "--actors", "1", "--cpus_per_actor", "2", "--device", "cpu", "--weights_dir", str(weights),
             "--no_download", "--progress", "json"],
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=stderr, text=True,
            start_new_session=True)  # its own process group, as a terminal gives a command
        events, sent = [], False
        try:
            for line in proc.stdout:
                events.append(json.loads(line))
                if not sent and events[-1]["event"] == "progress" and events[-1].get("case") == case_to_interrupt:
                    send(proc)
                    sent = True
            code = proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert not list(Path(ray_tmpdir).iterdir()), "Ray's session folder (logs naming the cases) was left behind"
    assert sent, f"{case_to_interrupt} never ran; log: {Path(log).read_text()[-2000:]}"
    return code, events


def _records(out):
    records = [json.loads(line) for line in (out / MANIFEST_NAME).read_text().splitlines()]
    assert len({r["case"] for r in records}) == len(records)
    return {r["case"]: r for r in records}


def test_interrupted_twice_every_case_is_done_once(test_weights, example, tmp_path):
    cases = make_cases(tmp_path / "in", example, names=("c1", "c2", "c3", "c4"))
    out, log = tmp_path / "out", tmp_path / "stderr.log"

    # Ctrl+C in a terminal: SIGINT to the whole process group (the driver and Ray's own processes).
    code, events = _interrupted_run(cases, out, test_weights, "c2", lambda p: os.killpg(p.pid, signal.SIGINT), log)
    records = _records(out)
    assert code == 130, log.read_text()[-2000:]
    assert {k: r["status"] for k, r in records.items()} == {"c1": "done", "c2": "done"}  # c2 ran on to the end
    assert any("stopping: no new cases" in e.get("message", "") for e in events)
    first = {name: (out / f"{name}.nii.gz").stat().st_mtime_ns for name in ("c1", "c2")}

    # The rerun skips c1 and c2; a batch system's SIGTERM (to the driver alone) stops it after c4.
    code, events = _interrupted_run(cases, out, test_weights, "c4", lambda p: p.send_signal(signal.SIGTERM), log)
    records = _records(out)
    assert code == 130, log.read_text()[-2000:]
    assert any("2 to run, 2 done earlier" in e.get("message", "") for e in events)
    assert sorted(e["case"] for e in events if e.get("status") == "done") == ["c3", "c4"]
    assert {k: (r["status"], r["runs"]) for k, r in records.items()} == {c: ("done", 1) for c in ("c1", "c2", "c3", "c4")}
    assert {name: (out / f"{name}.nii.gz").stat().st_mtime_ns for name in first} == first  # not written again
    result = events[-1]
    assert result["event"] == "result" and result["skipped_done"] == 2 and result["interrupted"] is True
