"""First-run dependency planning, the constraints that protect Slicer's packages, and a real pip install."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from TotalSegmentatorLib import dependencies as deps
from wheels import make_wheel  # noqa: F401 (test_widget imports it from here)

REPO = Path(__file__).resolve().parents[2]


def versions(**kw):
    table = {k.replace("_", "-"): v for k, v in kw.items()}
    return lambda name: table.get(name, table.get(name.lower()))


SLICER_LIKE = dict(numpy="2.4.6", SimpleITK="2.5.7", requests="2.34.2", scipy="1.17.1", vtk=deps.BUILTIN,
                   torch="2.13.0+cpu", nnunetv2="2.8.1", nibabel="5.4.2", scikit_image="0.26.0")


def test_pins_are_the_versions_the_test_suite_runs_with():
    pinned = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().split() if "==" in line)
    for text in deps.REQUIREMENTS:
        if "==" in text:
            name, version = text.split("==")
            assert pinned.get(name) == version, f"{name}: {version} here, {pinned.get(name)} in constraints.txt"


def test_this_environment_needs_nothing():
    plan = deps.plan_install()
    assert plan.nothing_to_do, plan.summary()
    assert plan.summary() == "All Python packages the segmentation engine needs are installed."
    assert plan.constraints["numpy"] == f"numpy=={__import__('numpy').__version__}"


def test_fresh_slicer_gets_engine_packages_and_torch_and_keeps_its_own():
    fresh = {k: v for k, v in SLICER_LIKE.items() if k not in ("torch", "nnunetv2", "nibabel", "scikit_image")}
    plan = deps.plan_install(version_of=versions(**fresh), imported_modules={"numpy": 1, "vtk": 1})
    assert {a.name: a.action for a in plan.actions if a.action != "keep"} == {
        "nnunetv2": "install", "nibabel": "install", "scikit-image": "install", "torch": "torch"}
    assert plan.needs_torch and plan.torch_requirement == deps.TORCH_REQUIREMENT
    assert set(plan.pip_packages) == {"nnunetv2==2.8.1", "nibabel==5.4.2", "scikit-image==0.26.0"}
    assert plan.constraints["numpy"] == "numpy==2.4.6" and plan.constraints["SimpleITK"] == "SimpleITK==2.5.7"
    assert plan.constraints["vtk"] == "vtk<0", "Slicer's built-in VTK must never get a pip copy"
    assert not plan.restart_required, "new packages are not loaded yet: no restart"
    text = plan.summary()
    assert "install nnunetv2==2.8.1" in text and "PyTorch extension" in text and "numpy" in text
    assert "restart" not in text.lower()


def test_wrong_versions_upgrade_or_downgrade_and_loaded_ones_need_a_restart():
    plan = deps.plan_install(version_of=versions(**{**SLICER_LIKE, "nibabel": "5.0.0", "scikit_image": "0.27.1"}),
                             imported_modules={"nibabel": 1})
    actions = {a.name: a.action for a in plan.actions}
    assert actions["nibabel"] == "upgrade" and actions["scikit-image"] == "downgrade"
    assert plan.restart_required and plan.restart_packages == ["nibabel"]
    assert "restarted" in plan.summary() and "nibabel" in plan.summary()


def test_slicer_package_too_old_is_a_conflict_not_a_replacement():
    plan = deps.plan_install(version_of=versions(**{**SLICER_LIKE, "numpy": "1.21.0"}))
    conflict = plan.conflicts[0]
    assert conflict.name == "numpy" and "Slicer has 1.21.0" in conflict.reason
    assert "numpy" not in " ".join(plan.pip_packages)
    assert plan.constraints["numpy"] == "numpy==1.21.0"
    assert "will NOT be changed" in plan.summary()


def test_old_torch_goes_through_the_pytorch_extension_and_needs_a_restart_if_loaded():
    plan = deps.plan_install(version_of=versions(**{**SLICER_LIKE, "torch": "1.13.1"}), imported_modules={"torch": 1})
    assert plan.needs_torch and plan.restart_required and plan.restart_packages == ["torch"]
    assert not plan.pip_packages, "torch is never installed by our pip pass"


def test_reinstall_forces_our_packages_only():
    plan = deps.plan_install(version_of=versions(**SLICER_LIKE), reinstall=True)
    assert set(plan.reinstall_packages) == {"nnunetv2==2.8.1", "nibabel==5.4.2", "scikit-image==0.26.0"}
    cmds = deps.pip_commands(plan, "py", "c.txt")
    assert cmds[0][-4:] == ["--no-deps", "nnunetv2==2.8.1", "nibabel==5.4.2", "scikit-image==0.26.0"]
    assert "--force-reinstall" in cmds[0] and "-c" in cmds[0] and "c.txt" in cmds[0]
    assert "--force-reinstall" not in cmds[1] and "nnunetv2==2.8.1" in cmds[1]


def test_pip_failures_are_explained():
    err = deps.diagnose_pip(1, ["ERROR: Cannot install toolpkg==2.0 because these package versions have "
                                "conflicting dependencies.", "The conflict is caused by:",
                                "    toolpkg 2.0 depends on slicerlib>=2", "ERROR: ResolutionImpossible"])
    assert err["kind"] == "conflict" and "toolpkg 2.0 depends on slicerlib>=2" in err["cause"]
    err = deps.diagnose_pip(1, ["ERROR: No matching distribution found for nnunetv2==2.8.1"])
    assert err["kind"] == "download" and "nnunetv2==2.8.1" in err["cause"]


# -- a real pip install into a throw-away environment ----------------------------------

@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A venv standing in for Slicer's Python: `slicerlib` 1.0 plays the package Slicer ships."""
    root = tmp_path_factory.mktemp("pip-sandbox")
    wheels = root / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "slicerlib", "1.0")
    make_wheel(wheels, "slicerlib", "2.0")
    make_wheel(wheels, "toolpkg", "1.0", ["slicerlib>=1"])
    make_wheel(wheels, "toolpkg", "2.0", ["slicerlib>=2"])
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True)
    python = str(root / "venv" / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python"))
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheels),
                    "slicerlib==1.0"], check=True)
    return python, wheels, root


def venv_versions(python):
    code = "import importlib.metadata as m, json; print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"
    return json.loads(subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout)


def sandbox_plan(python, requirement, reinstall=False):
    have = venv_versions(python)
    return deps.plan_install(requirements=(requirement,), torch_requirement="torch>=0", protected=("slicerlib",),
                             version_of=lambda n: "1.0" if n == "torch" else have.get(n), imported_modules={},
                             reinstall=reinstall)


def test_real_install_keeps_the_shipped_package(sandbox, tmp_path):
    python, wheels, _ = sandbox
    plan = sandbox_plan(python, "toolpkg==1.0")
    assert [a.action for a in plan.actions] == ["install"] and plan.constraints == {"slicerlib": "slicerlib==1.0"}
    events = []
    run = deps.install(plan, tmp_path, python=python, pip_args=["--no-index", "--find-links", str(wheels)])
    run.wait(timeout=300, on_event=events.append)
    assert run.outcome == "succeeded", run.error
    assert venv_versions(python)["toolpkg"] == "1.0" and venv_versions(python)["slicerlib"] == "1.0"
    assert any(e["event"] == "log" for e in events), "pip's output reaches the log"
    assert sandbox_plan(python, "toolpkg==1.0").nothing_to_do


def test_real_install_that_would_replace_a_shipped_package_fails_cleanly(sandbox, tmp_path):
    python, wheels, _ = sandbox
    plan = sandbox_plan(python, "toolpkg==2.0")  # needs slicerlib>=2, which pip could get from the index
    run = deps.install(plan, tmp_path, python=python, pip_args=["--no-index", "--find-links", str(wheels)])
    run.wait(timeout=300)
    assert run.outcome == "failed" and run.error["kind"] == "conflict"
    assert "slicerlib" in run.error["cause"] and "Nothing was changed" in run.error["fix"]
    assert venv_versions(python)["slicerlib"] == "1.0", "the shipped package was replaced"
    assert venv_versions(python).get("toolpkg") != "2.0"


def test_real_reinstall_repairs_a_broken_package(sandbox, tmp_path):
    python, wheels, root = sandbox
    run = deps.install(sandbox_plan(python, "toolpkg==1.0"), tmp_path, python=python,
                       pip_args=["--no-index", "--find-links", str(wheels)]).wait(timeout=300)
    site = subprocess.run([python, "-c", "import toolpkg; print(toolpkg.__file__)"], capture_output=True, text=True,
                          check=True).stdout.strip()
    Path(site).unlink()  # a half-deleted install, as users end up with
    plan = sandbox_plan(python, "toolpkg==1.0", reinstall=True)
    assert plan.reinstall_packages == ["toolpkg==1.0"]
    run = deps.install(plan, tmp_path, python=python, pip_args=["--no-index", "--find-links", str(wheels)])
    run.wait(timeout=300)
    assert run.outcome == "succeeded", run.error
    assert Path(site).is_file()
