"""First-run dependency planning, the constraints that protect Slicer's packages, and a real pip install."""
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from TotalSegmentatorLib import dependencies as deps
from wheels import make_wheel  # noqa: F401 (test_widget imports it from here)

REPO = Path(__file__).resolve().parents[2]


RELEASES = deps.load_bundled_releases()


def release(version):
    return next(r for r in RELEASES if r["slicer"] == version)


def slicer(version, **extra):
    """Distributions of a Slicer release as it ships, plus the PyTorch extension's torch and `extra`."""
    return {**release(version)["packages"], "torch": "2.13.0+cu128", **extra}


def plan(version="5.12.3", imported=(), **kw):
    installed = kw.pop("installed", None) or slicer(version, **kw.pop("extra", {}))
    return deps.plan_install(installed=installed, slicer_version=version, imported_modules=dict.fromkeys(imported),
                             **kw)


def actions(p):
    return {a.name: a.action for a in p.actions if a.action != "keep"}


def test_pins_are_the_versions_the_test_suite_runs_with():
    pinned = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().split() if "==" in line)
    for need in deps.REQUIREMENTS:
        if need.tested:
            assert pinned.get(need.name) == need.tested, f"{need.name}: {need.tested} here, {pinned.get(need.name)} in constraints.txt"
            assert SpecifierSet(deps.Need.parse(need.requirement).accepted) == SpecifierSet(need.accepted)
    assert pinned["torch"] == deps.TORCH_TESTED


def test_this_environment_needs_nothing():
    p = deps.plan_install()
    assert p.nothing_to_do, p.summary()
    assert p.summary() == "All Python packages the segmentation engine needs are installed."
    assert p.constraints["numpy"] == f"numpy=={__import__('numpy').__version__}"


def test_the_running_slicer_is_detected_and_its_release_found(monkeypatch):
    assert deps.running_slicer_version() is None  # outside Slicer
    monkeypatch.setitem(sys.modules, "slicer", types.SimpleNamespace(app=types.SimpleNamespace(
        applicationVersion="5.13.0-2026-08-21", majorVersion=5, minorVersion=13)))
    assert deps.running_slicer_version() == "5.13.0"
    monkeypatch.setitem(sys.modules, "slicer", types.SimpleNamespace(app=types.SimpleNamespace(majorVersion=5,
                                                                                              minorVersion=10)))
    assert deps.running_slicer_version() == "5.10"
    found = {v: deps.bundled_release(v)["slicer"] for v in ("5.10.0", "5.10", "5.12.1", "5.12.9", "5.13.0", "5.14.2")}
    newest_512 = [r["slicer"] for r in RELEASES if r["line"] == "5.12"][-1]
    assert found == {"5.10.0": "5.10.0", "5.10": "5.10.0", "5.12.1": "5.12.1", "5.12.9": newest_512,
                     "5.13.0": "5.13.0", "5.14.2": "5.13.0"}
    assert deps.bundled_release(None) is None


def test_fresh_slicer_gets_the_tested_versions_and_keeps_its_own_packages():
    p = plan("5.10.0", imported=("numpy", "vtk"))
    assert actions(p) == {"nnunetv2": "install", "nibabel": "install", "scikit-image": "install"}
    assert set(p.pip_packages) >= {"nnunetv2==2.8.1", "nibabel==5.4.2", "scikit-image==0.26.0", "numpy>=1.24"}
    assert p.slicer_release == "5.10.0" and not p.needs_torch
    assert p.constraints["numpy"] == "numpy==2.0.2" and p.constraints["simpleitk"] == "simpleitk==2.5.2"
    assert p.constraints["vtk"] == "vtk==9.5.2" and p.constraints["torch"] == "torch==2.13.0+cu128"
    assert not p.restart_required, "new packages are not loaded yet: no restart"
    text = p.summary()
    assert "install nnunetv2==2.8.1" in text and "numpy 2.0.2" in text and "not replaced or downgraded" in text
    assert "restart" not in text.lower()


def test_what_slicer_ships_depends_on_the_release():
    """highdicom ships with 5.12, not 5.10: there it is another extension's package (never downgraded)."""
    assert plan("5.12.3").constraints["highdicom"] == "highdicom==0.27.0"
    assert plan("5.10.0", extra={"highdicom": "0.27.0"}).constraints["highdicom"] == "highdicom>=0.27.0"


def test_another_extensions_nnunetv2_inside_our_range_is_used_as_it_is():
    p = plan(extra={"nnunetv2": "2.7.0"})
    assert "nnunetv2" not in actions(p) and "nnunetv2>=2.6.2,<2.9" in p.pip_packages
    assert "nnunetv2 2.7.0" in p.summary() and "used as they are" in p.summary()
    assert plan(extra={"nnunetv2": "2.7.0", "nibabel": "5.4.2", "scikit-image": "0.25.2"}).nothing_to_do


def test_a_newer_package_from_another_extension_is_kept_and_the_user_told_why():
    p = plan(extra={"nnunetv2": "3.0.0", "nibabel": "5.4.2", "scikit-image": "0.26.0"})
    conflict = p.conflicts[0]
    assert conflict.name == "nnunetv2" and not conflict.blocking and p.nothing_to_do, "runs with what is there"
    assert "another extension" in conflict.reason and "could break" in conflict.reason
    assert p.warnings() == [conflict.describe()] and "nnunetv2 3.0.0" in p.warnings()[0]
    assert p.constraints["nnunetv2"] == "nnunetv2>=3.0.0", "nor may pip downgrade it as a dependency"
    p = plan(extra={"nnunetv2": "3.0.0"})  # with something to install, the confirmation says it
    assert "NOT changed" in p.summary() and "nnunetv2 3.0.0" in p.summary()
    assert "nnunetv2==3.0.0" in p.pip_packages
    allowed = plan(extra={"nnunetv2": "3.0.0"}, allow_downgrades=True)
    assert actions(allowed)["nnunetv2"] == "downgrade" and "nnunetv2==2.8.1" in allowed.pip_packages
    assert "downgrade nnunetv2 3.0.0 -> nnunetv2==2.8.1" in allowed.summary()
    assert not any(">=" in c for c in allowed.constraints.values())


def test_older_versions_are_upgraded_and_loaded_ones_need_a_restart():
    p = plan(extra={"nibabel": "5.0.0", "nnunetv2": "2.8.1", "scikit-image": "0.26.0"}, imported=("nibabel",))
    assert actions(p) == {"nibabel": "upgrade"}
    assert p.restart_required and p.restart_packages == ["nibabel"]
    assert "restarted" in p.summary() and "upgrade nibabel 5.0.0 -> nibabel==5.4.2" in p.summary()


def test_slicer_package_that_does_not_fit_is_a_blocking_conflict_not_a_replacement():
    p = plan(installed={**slicer("5.12.3"), "numpy": "1.21.0"})
    conflict = p.blocking_conflicts[0]
    assert conflict.name == "numpy" and "Slicer provides 1.21.0" in conflict.reason and not p.nothing_to_do
    assert [r for r in p.pip_packages if r.startswith("numpy")] == ["numpy==1.21.0"], "stays as it is"
    assert p.constraints["numpy"] == "numpy==1.21.0"
    assert "do not fit" in p.summary()


def test_vtk_without_metadata_never_gets_a_pip_copy():
    p = plan(installed={**slicer("5.12.3"), "vtk": deps.BUILTIN})
    assert p.constraints["vtk"] == "vtk<0" and not any(r.startswith("vtk") for r in p.pip_packages)


def test_torch_outside_the_range_goes_through_the_pytorch_extension():
    p = plan(extra={"torch": "2.9.1"}, imported=("torch",))
    assert p.needs_torch and Requirement(p.torch_requirement).specifier == Requirement(deps.TORCH_REQUIREMENT).specifier
    assert p.restart_required and p.restart_packages == ["torch"]
    assert not any(r.startswith("torch") for r in p.pip_packages), "torch is never installed by our pip pass"
    assert not plan(extra={"torch": "2.10.0+cu128"}).needs_torch


def test_reinstall_forces_our_packages_only():
    p = plan(extra={"nnunetv2": "2.8.1", "nibabel": "5.4.2", "scikit-image": "0.26.0"}, reinstall=True)
    assert set(p.reinstall_packages) == {"nnunetv2==2.8.1", "nibabel==5.4.2", "scikit-image==0.26.0"}
    cmds = deps.pip_commands(p, "py", "c.txt")
    assert len(cmds) == 1 and cmds[0][-4:] == ["--no-deps", "nnunetv2==2.8.1", "nibabel==5.4.2", "scikit-image==0.26.0"]
    assert "--force-reinstall" in cmds[0] and "-c" in cmds[0] and "c.txt" in cmds[0]


def test_pip_failures_are_explained():
    err = deps.diagnose_pip(1, ["ERROR: Cannot install toolpkg==2.0 because these package versions have "
                                "conflicting dependencies.", "The conflict is caused by:",
                                "    toolpkg 2.0 depends on slicerlib>=2", "ERROR: ResolutionImpossible"])
    assert err["kind"] == "conflict" and "toolpkg 2.0 depends on slicerlib>=2" in err["cause"]
    assert "Nothing was changed" in err["fix"]
    err = deps.diagnose_pip(1, ["ERROR: No matching distribution found for nnunetv2==2.8.1"])
    assert err["kind"] == "download" and "nnunetv2==2.8.1" in err["cause"]


# -- a real pip install into a throw-away environment ----------------------------------

@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A venv standing in for Slicer's Python: `slicerlib` 1.0 plays the package Slicer ships, `extpkg` 2.0
    one that another extension installed."""
    root = tmp_path_factory.mktemp("pip-sandbox")
    wheels = root / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "slicerlib", "1.0")
    make_wheel(wheels, "slicerlib", "2.0")
    make_wheel(wheels, "toolpkg", "1.0", ["slicerlib>=1"])
    make_wheel(wheels, "toolpkg", "2.0", ["slicerlib>=2"])
    make_wheel(wheels, "toolpkg", "3.0", ["extpkg<2"])
    make_wheel(wheels, "extpkg", "1.0")
    make_wheel(wheels, "extpkg", "2.0")
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True)
    python = str(root / "venv" / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python"))
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheels),
                    "slicerlib==1.0", "extpkg==2.0"], check=True)
    return python, wheels, root


def venv_versions(python):
    code = "import importlib.metadata as m, json; print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"
    return json.loads(subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout)


SANDBOX_SLICER = [{"slicer": "5.12.3", "line": "5.12", "packages": {"slicerlib": "1.0"}}]


def sandbox_plan(python, requirement, reinstall=False):
    have = {**venv_versions(python), "torch": "1.0"}
    return deps.plan_install(requirements=(requirement,), torch_requirement="torch>=0", installed=have,
                             slicer_version="5.12.3", releases=SANDBOX_SLICER, imported_modules={},
                             reinstall=reinstall)


def test_real_install_keeps_the_shipped_package(sandbox, tmp_path):
    python, wheels, _ = sandbox
    plan = sandbox_plan(python, "toolpkg==1.0")
    assert [a.action for a in plan.actions] == ["install"]
    assert plan.constraints["slicerlib"] == "slicerlib==1.0" and plan.constraints["extpkg"] == "extpkg>=2.0"
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


def test_real_install_never_downgrades_another_extensions_package(sandbox, tmp_path):
    python, wheels, _ = sandbox
    plan = sandbox_plan(python, "toolpkg==3.0")  # needs extpkg<2; another extension installed extpkg 2.0
    run = deps.install(plan, tmp_path, python=python, pip_args=["--no-index", "--find-links", str(wheels)])
    run.wait(timeout=300)
    assert run.outcome == "failed" and run.error["kind"] == "conflict"
    assert "extpkg" in run.error["cause"] and "never replaced or downgraded" in run.error["fix"]
    assert venv_versions(python)["extpkg"] == "2.0"
