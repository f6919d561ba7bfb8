"""The persistent worker's protocol, spoken over a real process's stdin/stdout: SegmentRequest
JSON in, the progress protocol's events out, commands added by plugins."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from SegmentationLogic.errors import Cancelled, InputImageError, error_event
from SegmentationLogic.request import SegmentRequest

REPO = Path(__file__).resolve().parents[2]


class Worker:
    def __init__(self, *args, env=None):
        path = os.pathsep.join([str(REPO), str(REPO / "Testing" / "support"), os.environ.get("PYTHONPATH", "")])
        self.proc = subprocess.Popen([sys.executable, "-m", "SegmentationLogic", "worker", *args], cwd=REPO,
                                     env={**os.environ, **(env or {}), "PYTHONPATH": path}, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.next()["event"] == "ready"

    def next(self):
        line = self.proc.stdout.readline()
        assert line, "the worker ended"
        return json.loads(line)  # every stdout line is one protocol event

    def ask(self, message):
        """Send one message; return (its events before the answer, the result or error event)."""
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()
        events = []
        while True:
            event = self.next()
            assert event.get("id") == message.get("id"), event
            if event["event"] in ("result", "error"):
                return events, event
            events.append(event)

    def close(self):
        self.proc.stdin.write('{"command": "shutdown"}\n')
        self.proc.stdin.flush()
        assert self.proc.wait(timeout=60) == 0


@pytest.fixture
def worker():
    w = Worker("--plugin", "worker_plugin_echo")
    yield w
    w.close()


def test_plugin_commands_and_bad_messages(worker):
    events, answer = worker.ask({"id": "1", "command": "echo", "text": "hello"})
    assert answer == {"event": "result", "echo": "hello", "id_seen": "1", "id": "1"}
    assert events and events[0]["stage"] == "echo" and events[0]["message"] == "half way"
    _, failed = worker.ask({"id": "2", "command": "echo", "fail": True})
    assert failed["event"] == "error" and failed["cause"] == "Asked to fail." and failed["fix"] == "Do not ask."
    _, unknown = worker.ask({"id": "3", "command": "explode"})
    assert unknown["kind"] == "request" and "Unknown worker command" in unknown["cause"] and "echo" in unknown["fix"]
    for bad in ({"task": "total"}, {"input": "ct.nii.gz", "colour": "red"}, {"input": "ct.nii.gz", "ml": "yes"}, None):
        _, answer = worker.ask({"id": "4", "command": "segment", "request": bad})
        assert answer["event"] == "error" and answer["kind"] == "request"
        assert answer["cause"].startswith("Invalid segment request")
    _, pong = worker.ask({"id": "5", "command": "ping"})
    assert pong["pid"] == worker.proc.pid  # one process served them all


def test_segment_request_gives_the_typed_result(weights_env, example, tmp_path):
    worker = Worker()
    try:
        request = SegmentRequest(input=str(example("example_ct_sm.nii.gz")), output=str(tmp_path / "seg.nii.gz"),
                                 quality="fastest", device="cpu", roi_subset=["liver", "spleen"])
        events, first = worker.ask({"id": "a", "command": "segment", "request": request.to_json(),
                                    "tmpdir": str(tmp_path)})
        assert first["event"] == "result", first
        assert {"progress"} <= {e["event"] for e in events}
        assert first["class_map"] == {"1": "spleen", "5": "liver"} and first["classes"] == 2
        assert str(tmp_path / "seg.nii.gz") in first["files"] and first["warm"] is False and first["seconds"] > 0
        _, again = worker.ask({"id": "b", "command": "segment", "request": request.to_json()})
        assert again["warm"] is True and again["class_map"] == first["class_map"]
        missing = SegmentRequest(input=str(tmp_path / "nope.nii.gz"), output=str(tmp_path / "x.nii.gz"))
        _, error = worker.ask({"id": "c", "command": "segment", "request": missing.to_json()})
        assert error["kind"] == "input" and "nope.nii.gz" in error["cause"]
    finally:
        worker.close()


def test_error_events_have_one_shape():
    assert error_event(InputImageError("Bad.", "Fix it.")) == {
        "event": "error", "kind": "input", "type": "InputImageError", "cause": "Bad.", "fix": "Fix it."}
    assert error_event(Cancelled())["kind"] == "cancelled"
    assert error_event(KeyboardInterrupt())["kind"] == "cancelled"
    bug = error_event(ZeroDivisionError("division by zero"))
    assert bug["kind"] == "internal" and "division by zero" in bug["cause"] and bug["fix"]
    crash = error_event({"kind": "crash", "cause": "The engine stopped."}, details="exit code -9")
    assert crash == {"event": "error", "kind": "crash", "type": "Error", "cause": "The engine stopped.", "fix": "",
                     "details": "exit code -9"}
