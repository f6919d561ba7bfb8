"""The first-run install flow (installation.py): PyTorch and the engine's packages in the
background with progress, a restart asked only when Slicer had already loaded what changed."""
import sys
import textwrap
import time

import pytest

from SegmentationLogic.errors import SegmentationError
from TotalSegmentatorLib import dependencies, installation


def plan_needing_torch(imported=None):
    return dependencies.plan_install(requirements=(), torch_requirement="torch>=2.1.2",
                                     installed={}, imported_modules=imported or {})


def test_pytorch_is_installed_as_the_pytorch_extension_does():
    commands = installation.torch_commands("torch>=2.1.2", python="PythonSlicer", have_light_the_torch=False)
    assert commands[0][-1] == installation.LIGHT_THE_TORCH and commands[0][1:4] == ["-m", "pip", "install"]
    assert commands[1] == ["PythonSlicer", "-m", "light_the_torch", "install", "torch>=2.1.2"]
    assert installation.torch_commands("torch>=2.1.2", python="PythonSlicer", have_light_the_torch=True) == \
        commands[1:]


def test_restart_only_for_what_this_session_had_loaded():
    plan = plan_needing_torch()
    assert installation.restart_packages(plan, imported_modules={}) == []
    assert installation.restart_packages(plan, imported_modules={"torch": object()}) == ["torch"]


def test_a_plan_of_conflicts_only_is_refused_before_anything_runs():
    plan = dependencies.plan_install(requirements=("numpy>=99",), torch_requirement="torch>=0",
                                     installed={"numpy": "2.0.2", "torch": "2.5.0"},
                                     imported_modules={})
    assert plan.conflicts and not plan.pip_packages
    with pytest.raises(SegmentationError, match="do not fit"):
        installation.check(plan)


@pytest.fixture
def fake_python(tmp_path):
    """An interpreter stand-in for the install commands (no network here): it records what it is
    asked to run and prints like pip does, slowly."""
    log = tmp_path / "calls.txt"
    script = tmp_path / "python"
    script.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import sys, time
        with open({str(log)!r}, "a") as f:
            f.write(" ".join(sys.argv[1:]) + "\\n")
        for line in ("Collecting torch", "Downloading torch-2.13.0.whl", "Installing collected packages: torch"):
            print(line, flush=True)
            time.sleep(0.3)
        """))
    script.chmod(0o755)
    return str(script), log


@pytest.mark.skipif(sys.platform == "win32", reason="a #! script as the interpreter")
def test_pytorch_installs_in_the_background_with_progress(fake_python, monkeypatch):
    python, log = fake_python
    monkeypatch.setattr(installation, "torch_commands",
                        lambda requirement, python=None: [[python, "-m", "light_the_torch", "install", requirement]])
    operation = installation.InstallOperation(plan_needing_torch(), python=python, imported_modules={"torch": 1})
    events, slowest = [], 0.0
    while not operation.done:
        started = time.perf_counter()
        events += operation.poll()
        slowest = max(slowest, time.perf_counter() - started)
        time.sleep(0.02)
    assert operation.outcome == "succeeded", operation.error
    assert slowest < 0.25, "the panel never waits for pip"
    assert "-m light_the_torch install torch>=2.1.2" in log.read_text()
    assert [e["message"] for e in events if e["event"] == "log"][:3] == [
        "Collecting torch", "Downloading torch-2.13.0.whl", "Installing collected packages: torch"]
    assert any(e["event"] == "progress" and "PyTorch" in e["message"] for e in events)
    assert operation.result["restart"] == ["torch"], "torch was already loaded: Slicer must restart"


@pytest.mark.skipif(sys.platform == "win32", reason="a #! script as the interpreter")
def test_cancel_stops_the_install_and_removes_its_files(fake_python, monkeypatch):
    python, _ = fake_python
    monkeypatch.setattr(installation, "torch_commands",
                        lambda requirement, python=None: [[python, "-m", "light_the_torch", "install", requirement]])
    operation = installation.InstallOperation(plan_needing_torch(), python=python)
    workdir = operation.workdir
    operation.poll()
    operation.cancel()
    assert operation.outcome == "cancelled" and not operation.current.process.running
    import os

    assert not os.path.exists(workdir)
