"""The background runner: non-blocking progress, cancel kills the whole tree, crashes explained.

These tests drive real processes. Where the behaviour under test is the runner's own
(process-tree kill, crash diagnosis, undecodable output), the process is a small Python
program built for it; where it is the engine's protocol, it is the real engine CLI.
"""
import os
import sys
import textwrap
import time

import pytest

from TotalSegmentatorLib import runner
from TotalSegmentatorLib.process import descendants, pid_alive
from TotalSegmentatorLib.runner import ProcessRun, engine_command, engine_environment

POSIX = os.name != "nt"


def script(code):
    return [sys.executable, "-c", textwrap.dedent(code)]


PROGRESS_SCRIPT = """
import json, sys, time
for i in range(5):
    print(json.dumps({"event": "progress", "stage": "predict", "fraction": i / 4, "overall": i / 5,
                      "message": f"step {i}"}), flush=True)
    time.sleep(0.3)
print(json.dumps({"event": "result", "files": ["out.nii.gz"]}), flush=True)
"""

# Starts a child that ignores SIGTERM and a grandchild below it, like nnU-Net's worker pool.
TREE_SCRIPT = """
import json, subprocess, sys, time
code = "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
code += "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); time.sleep(600)"
child = subprocess.Popen([sys.executable, "-c", code])
time.sleep(0.5)
print(json.dumps({"event": "log", "message": "child", "pid": child.pid}), flush=True)
i = 0
while True:
    print(json.dumps({"event": "progress", "stage": "predict", "fraction": min(i / 100, 1), "message": ""}), flush=True)
    i += 1
    time.sleep(0.1)
"""


def test_progress_streams_while_the_caller_never_blocks():
    run = ProcessRun(script(PROGRESS_SCRIPT))
    seen, slowest = [], 0.0
    while not run.done:
        t = time.perf_counter()
        seen += run.poll()
        slowest = max(slowest, time.perf_counter() - t)
        if len([e for e in seen if e["event"] == "progress"]) == 2:
            assert not run.done, "events must arrive while the process is still running"
        time.sleep(0.02)
    assert slowest < 0.1, f"poll() blocked for {slowest:.3f} s"
    assert [e["message"] for e in seen if e["event"] == "progress"] == [f"step {i}" for i in range(5)]
    assert run.outcome == "succeeded" and run.result["files"] == ["out.nii.gz"]
    assert run.stage == "predict" and run.fraction == 1.0


@pytest.mark.skipif(not POSIX, reason="process-tree inspection uses /proc or ps")
def test_cancel_kills_the_whole_process_tree():
    run = ProcessRun(script(TREE_SCRIPT))
    child = None
    deadline = time.monotonic() + 20
    while child is None and time.monotonic() < deadline:
        for e in run.poll():
            child = e.get("pid", child)
        time.sleep(0.05)
    assert child, "the test program did not start its child"
    tree = [run.process.pid] + descendants(run.process.pid)
    assert len(tree) >= 3, tree  # engine, child, grandchild
    run.cancel()
    assert run.outcome == "cancelled" and run.error["kind"] == "cancelled"
    deadline = time.monotonic() + 5
    while any(pid_alive(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in tree if pid_alive(p)], "processes survived Cancel"
    assert run.poll() == []


def test_sigkilled_engine_is_explained_as_out_of_memory():
    run = ProcessRun(script("""
        import json, os, signal
        print(json.dumps({"event": "progress", "stage": "predict", "fraction": 0.5}), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """) if POSIX else script("import os; os._exit(137)"))
    run.wait(timeout=30)
    assert run.outcome == "failed"
    assert run.error["kind"] == "memory"
    assert "out of memory" in run.error["cause"] and run.error["fix"]


@pytest.mark.parametrize("stderr, kind, words", [
    ("ModuleNotFoundError: No module named 'blosc2'", "dependency", "blosc2"),
    ("RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB", "memory", "GPU ran out of memory"),
    ("A module that was compiled using NumPy 1.x cannot be run in\n NumPy 2.0.0 as it may crash.", "numpy-abi",
     "NumPy"),
    ("RuntimeError: Found no NVIDIA driver on your system.", "cuda", "GPU"),
    ("requests.exceptions.SSLError: HTTPSConnectionPool(host='github.com'): Max retries exceeded", "download",
     "downloaded"),
])
def test_crash_output_is_mapped_to_a_cause_and_a_fix(stderr, kind, words):
    run = ProcessRun(script(f"import sys; sys.stderr.write({stderr!r} + '\\n'); sys.exit(1)"))
    run.wait(timeout=30)
    assert run.outcome == "failed" and run.error["kind"] == kind
    assert words in run.error["cause"] and run.error["fix"]
    assert run.error["details"], "the stderr tail is kept for the log"


def test_unknown_crash_names_the_exit_and_the_last_line():
    run = ProcessRun(script("import sys; sys.stderr.write('Segmentation fault in libfoo\\n'); sys.exit(3)"))
    run.wait(timeout=30)
    assert run.error["kind"] == "crash"
    assert "exit code 3" in run.error["cause"] and "libfoo" in run.error["cause"]


def test_engine_error_event_gives_cause_and_fix():
    """The real engine CLI, failing on purpose: its error event reaches the caller intact."""
    run = ProcessRun(engine_command("download-weights", "--task", "totl", "--progress", "json",
                                    python=sys.executable), env=engine_environment())
    run.wait(timeout=60)
    assert run.outcome == "failed"
    assert run.error["kind"] == "task" and "Unknown task 'totl'" in run.error["cause"]
    assert "total" in run.error["fix"]


def test_output_that_is_not_utf8_or_not_json_is_logged_not_lost():
    run = ProcessRun(script(r"""
        import sys
        sys.stdout.buffer.write(b"caf\xe9 cr\xe8me\n"); sys.stdout.flush()
        print("{not json")
        sys.stderr.write("a warning\n")
    """))
    events = []
    run.wait(timeout=30, on_event=events.append)
    messages = [e["message"] for e in events if e["event"] == "log"]
    assert "caf\ufffd cr\ufffdme" in messages and "{not json" in messages and "a warning" in messages
    assert run.outcome == "succeeded"


def test_process_hanging_after_its_result_is_ended(monkeypatch):
    monkeypatch.setattr(runner, "EXIT_GRACE_SECONDS", 0.5)
    run = ProcessRun(script("""
        import json, time
        print(json.dumps({"event": "result", "files": ["x"]}), flush=True)
        time.sleep(600)
    """))
    run.wait(timeout=30)
    assert run.outcome == "succeeded" and run.result["files"] == ["x"]
    assert not run.process.running


def test_wait_timeout_cancels():
    run = ProcessRun(script("import time; time.sleep(600)"))
    with pytest.raises(TimeoutError):
        run.wait(timeout=0.5)
    assert run.outcome == "cancelled" and not run.process.running


def test_engine_environment_makes_the_engine_importable_and_uses_the_temp_dir(tmp_path):
    env = engine_environment(tmp_path, {"TOTALSEG_WEIGHTS_PATH": "/w"})
    run = ProcessRun(
        [sys.executable, "-c", "import SegmentationLogic, tempfile, os, json; "
         "print(json.dumps({'event': 'result', 'tmp': tempfile.gettempdir(), 'w': os.environ['TOTALSEG_WEIGHTS_PATH'],"
         " 'pkg': SegmentationLogic.__file__}))"], env=env, cwd=str(tmp_path)).wait(timeout=30)
    assert run.outcome == "succeeded", run.error
    assert run.result["tmp"] == str(tmp_path) and run.result["w"] == "/w"
    assert run.result["pkg"].startswith(str(runner.engine_package_root()))


def test_internal_engine_error_with_a_known_cause_gets_its_fix():
    run = ProcessRun(script("""
        import json, sys
        sys.stderr.write("ModuleNotFoundError: No module named 'acvl_utils'\\n")
        print(json.dumps({"event": "error", "kind": "internal", "type": "ModuleNotFoundError",
                          "cause": "Internal error: No module named 'acvl_utils'", "fix": "Run again with --debug"}))
        sys.exit(1)
    """))
    run.wait(timeout=30)
    assert run.error["kind"] == "dependency" and "acvl_utils" in run.error["cause"]
    assert "Reinstall dependencies" in run.error["fix"] and run.error["type"] == "ModuleNotFoundError"


CHATTY_SCRIPT = """
import json, sys
for i in range(20000):
    print(json.dumps({"event": "progress", "stage": "predict", "fraction": i / 20000, "message": "x" * 40, "i": i}))
    sys.stderr.write(f"warning {i} " + "y" * 60 + "\\n")
print(json.dumps({"event": "result", "lines": 20000}))
"""


def test_a_chatty_process_never_waits_for_a_reader_and_a_qt_timer_alone_reads_it(monkeypatch):
    """Slicer's PythonQt keeps the GIL while Qt waits: no Python thread may be needed to move output.

    The process writes ~3 MB to stdout and stderr (a pipe holds 64 KB) while nobody reads
    (the timer is stopped); then only a Qt timer runs Python, as in Slicer, and each tick reads."""
    import threading

    from PySide6 import QtCore, QtWidgets

    def no_threads(*args, **kwargs):
        raise AssertionError("the runner started a Python thread")

    monkeypatch.setattr(threading.Thread, "start", no_threads)
    run = ProcessRun(script(CHATTY_SCRIPT))
    deadline = time.monotonic() + 120
    while run.process.proc.poll() is None:
        assert time.monotonic() < deadline, "the process is blocked: its output waits for a reader"
        time.sleep(0.05)
    assert run.process.proc.returncode == 0 and not run.done

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    events, ticks = [], []
    loop, timer = QtCore.QEventLoop(), QtCore.QTimer()

    def tick():
        events.extend(run.poll())
        ticks.append(len(events))
        if run.done:
            loop.quit()
    timer.timeout.connect(tick)
    timer.start(10)
    QtCore.QTimer.singleShot(60000, loop.quit)
    loop.exec()
    timer.stop()
    assert app is not None and run.outcome == "succeeded" and run.result["lines"] == 20000
    assert [e["i"] for e in events if e["event"] == "progress"] == list(range(20000)), "every line, in order"
    assert [e["message"] for e in events if e["event"] == "log"][-1].startswith("warning 19999 ")
    assert sum(e["event"] == "log" for e in events) == 20000
    assert len(ticks) > 2, "a tick reads a bounded amount, so each stays short"


def test_output_arrives_while_the_process_still_runs_and_nothing_is_left_behind(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    run = ProcessRun(script(PROGRESS_SCRIPT))
    assert [p.name for p in tmp_path.iterdir()][0].startswith("TotalSegmentator-output-")
    while not [e for e in run.poll() if e["event"] == "progress"]:
        time.sleep(0.02)
    assert run.process.running, "the first event came before the process ended"
    run.wait(timeout=30)
    assert list(tmp_path.iterdir()) == [], "the output files went with the process"
