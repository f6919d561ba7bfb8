"""The first-run install plan resolves with real pip against what each supported Slicer ships.

For Slicer 5.10 and 5.12 (Python 3.12, Linux x86_64), the plan is made for a Slicer that
has exactly its bundled packages (Resources/slicer_bundled_packages.json, read from
Slicer's SuperBuild files) plus torch from the PyTorch extension, and the pip that Slicer
ships (its wheel, run from the file) resolves it for real against the package index
(`--dry-run --report` for that Python and platform, binary wheels only, the plan's
constraints): it must resolve, keep every package Slicer
ships at Slicer's version, and install our packages at the tested versions. A second
case has nnunetv2 already installed by another extension inside our range: it is kept.
torch is not in the pip plan: the PyTorch extension's torch and torchvision (builds with a
local version label, as its CUDA builds have) stand in as installed wheels without
dependencies; the torch range we ask the PyTorch extension for must only contain
releases that nnunetv2 accepts.

Needs the package index (CI reaches it): without it the test fails and says so.
"""
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from TotalSegmentatorLib import dependencies as deps
from wheels import make_wheel

# Slicer's Linux packages are built on a glibc 2.28 system (manylinux_2_28); wheels for
# older manylinux tags install there too.
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(28, 16, -1)] + ["manylinux2014_x86_64"]
TARGET = ["--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:"] + \
    [arg for p in PLATFORMS for arg in ("--platform", p)]
LINES = ("5.10", "5.12")
OFFLINE = r"NewConnectionError|Max retries exceeded|Network is unreachable|Temporary failure in name resolution|" \
    r"Connection refused|ConnectTimeout|ReadTimeout|Could not fetch URL|SSLError|ProxyError"
# What the PyTorch extension installed (torchvision 0.28 goes with torch 2.13).
PYTORCH_EXTENSION = {"torch": f"{deps.TORCH_TESTED}+pytorchext", "torchvision": "0.28.0+pytorchext"}
# Packages published only as source (acvl-utils, an nnunetv2 dependency) cannot be resolved
# for another Python with --only-binary; pip builds their (pure-Python) wheels here once,
# exactly as Slicer's pip builds them when it installs.
WHEELS = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "totalsegmentator-slicer" / "sdist-wheels"


def newest_release(line):
    return [r for r in deps.load_bundled_releases() if r["line"] == line][-1]


def slicer_pip(release):
    """Path to run the pip that this Slicer release ships (`python <wheel>/pip`), downloaded once."""
    version = release["packages"]["pip"]
    folder = WHEELS.parent / "pip"
    wheel = folder / f"pip-{version}-py3-none-any.whl"
    if not wheel.is_file():
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--quiet",
                               "--no-deps", "--only-binary=:all:", "-d", str(folder), f"pip=={version}"],
                              capture_output=True, text=True, timeout=120)
        if not wheel.is_file():
            pytest.fail(f"Could not download pip {version} (Slicer {release['slicer']}'s pip; is the package index "
                        f"reachable?):\n{proc.stderr[-2000:]}")
    return str(wheel / "pip")


def resolve(plan, workdir, find_links, pip):
    """Real pip resolution of `plan` for Slicer's Python on Linux; returns {name: version} it would install."""
    workdir.mkdir(parents=True, exist_ok=True)
    constraints = workdir / "constraints.txt"
    # Without the installed set (pip resolves for another Python), what the plan keeps is pinned at
    # the installed version, as pip (upgrade only if needed) keeps it in Slicer.
    lines = [line.replace(">=", "==", 1) if ">=" in line else line for line in plan.constraints.values()]
    constraints.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = workdir / "report.json"
    WHEELS.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, pip, "install", "--disable-pip-version-check", "--no-input", "--dry-run",
           "--progress-bar", "off", "--target", str(workdir / "never-written"), "--report", str(report), "-c", str(constraints),
           "--find-links", str(WHEELS), "--find-links", str(find_links), *TARGET, *plan.pip_packages]
    built = set()
    while True:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
        lines = (proc.stdout + proc.stderr).splitlines()
        if proc.returncode == 0:
            break
        error = deps.diagnose_pip(proc.returncode, lines)
        offline = [line for line in lines if re.search(OFFLINE, line)]
        if offline:
            pytest.fail("The package index could not be reached, so the plan could not be resolved (this test needs "
                        "it; CI has it):\n" + "\n".join(offline[:5]))
        # Published only as source for this platform (a package the plan keeps at its installed version, or a
        # dependency)? pip builds its wheel as it would when installing (fails below if it is not pure Python).
        text = "\n".join(lines)
        wanted = set(re.findall(r"No matching distribution found for (\S+)", text)) | \
            set(re.findall(r"The user requested \(constraint\) (\S+==\S+)", text))
        if not wanted or wanted <= built:
            pytest.fail(f"pip could not resolve the plan: {error['cause']}\n" + "\n".join(lines[-25:]))
        for requirement in sorted(wanted - built):
            built.add(requirement)
            subprocess.run([sys.executable, pip, "wheel", "--disable-pip-version-check", "--quiet", "--no-deps",
                            "-w", str(WHEELS), requirement], capture_output=True, text=True, timeout=240)
    items = json.loads(report.read_text(encoding="utf-8"))["install"]
    return {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"] for i in items}, \
        {canonicalize_name(i["metadata"]["name"]): i["metadata"].get("requires_dist", []) for i in items}


def slicer_with(release, **extra):
    """The distributions of a fresh Slicer of that release with the PyTorch extension's torch."""
    return {**release["packages"], **PYTORCH_EXTENSION, **extra}


def require_index():
    """Fail (not skip, not pass) when the package index is out of reach: the resolution means nothing then."""
    tested = next(n.tested for n in deps.REQUIREMENTS if n.name == "nnunetv2")
    proc = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "nnunetv2", "--disable-pip-version-check"],
                          capture_output=True, text=True, timeout=120)
    listed = next((x for x in proc.stdout.splitlines() if x.startswith("Available versions:")), "")
    if tested not in [v.strip() for v in listed.split(":", 1)[-1].split(",")]:
        pytest.fail(f"The package index could not be reached (pip index versions nnunetv2 does not list {tested}): "
                    "this test resolves the install plan with real pip and needs it (CI has it).\n"
                    + (proc.stdout + proc.stderr)[-1500:])


@pytest.fixture(scope="module")
def resolutions(tmp_path_factory):
    """Both Slicer lines, fresh and with another extension's nnunetv2, resolved in parallel (pip waits on the network)."""
    require_index()
    root = tmp_path_factory.mktemp("resolve")
    installed = root / "installed"
    installed.mkdir()
    for name, version in PYTORCH_EXTENSION.items():
        make_wheel(installed, name, version)
    cases, pips = {}, {}
    for line in LINES:
        release = newest_release(line)
        pips[line] = slicer_pip(release)
        cases[(line, "fresh")] = deps.plan_install(installed=slicer_with(release), slicer_version=release["slicer"],
                                                   imported_modules={})
    release = newest_release("5.10")  # the older numpy/scipy: where another nnunetv2 is likeliest to clash
    cases[("5.10", "nnunet-extension")] = deps.plan_install(
        installed=slicer_with(release, nnunetv2="2.7.0"), slicer_version=release["slicer"], imported_modules={})
    with ThreadPoolExecutor(len(cases)) as pool:
        futures = {key: pool.submit(resolve, plan, root / "-".join(key), installed, pips[key[0]])
                   for key, plan in cases.items()}
        for future in futures.values():
            future.exception()  # wait for all
    return lambda key: (cases[key], *futures[key].result())  # a failed resolution fails the tests that use it


@pytest.mark.parametrize("line", LINES)
def test_fresh_slicer_plan_resolves_and_keeps_every_bundled_package(resolutions, line):
    plan, versions, _ = resolutions((line, "fresh"))
    release = newest_release(line)
    assert plan.slicer_release == release["slicer"] and not plan.conflicts and not plan.needs_torch
    assert {a.name for a in plan.changes} == {"nnunetv2", "nibabel", "scikit-image"}, plan.summary()
    for name, version in release["packages"].items():
        if name in versions:
            assert versions[name] == version, f"Slicer {release['slicer']}: pip would replace {name} {version} " \
                                              f"with {versions[name]}"
    for need in deps.REQUIREMENTS:
        key = canonicalize_name(need.name)
        have = versions.get(key, release["packages"].get(key))
        assert have and SpecifierSet(need.accepted).contains(have), f"{need.name} {have} outside {need.accepted}"
        if need.tested:
            assert have == need.tested, f"{need.name}: a fresh install gets the tested version"
    for name, version in PYTORCH_EXTENSION.items():
        assert versions[name] == version, f"{name} stays what the PyTorch extension installed"


def test_nnunetv2_from_another_extension_in_our_range_is_kept(resolutions):
    line = "5.10"
    plan, versions, _ = resolutions((line, "nnunet-extension"))
    action = next(a for a in plan.actions if a.name == "nnunetv2")
    assert action.action == "keep" and "nnunetv2 2.7.0" in plan.summary()
    assert versions["nnunetv2"] == "2.7.0"
    for name, version in newest_release(line)["packages"].items():
        assert versions.get(name, version) == version


def test_torch_range_only_holds_releases_that_nnunetv2_accepts(resolutions):
    """The PyTorch extension installs a torch inside TORCH_REQUIREMENT: nnunetv2 must accept every such release."""
    _, versions, requires = resolutions(("5.12", "fresh"))
    torch_specs = [Requirement(r).specifier for r in requires["nnunetv2"]
                   if Requirement(r).name == "torch" and not Requirement(r).marker]
    assert torch_specs, requires["nnunetv2"]
    proc = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "torch", "--disable-pip-version-check",
                           *TARGET], capture_output=True, text=True, timeout=120)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("Available versions:")), None)
    if line is None:
        pytest.fail("pip could not list torch releases (is the package index reachable?):\n" + proc.stderr[-2000:])
    releases = [v.strip() for v in line.split(":", 1)[1].split(",")]
    ours = Requirement(deps.TORCH_REQUIREMENT).specifier
    inside = [v for v in releases if ours.contains(v)]
    assert deps.TORCH_TESTED in inside
    refused = [v for v in inside if not all(spec.contains(v) for spec in torch_specs)]
    assert not refused, f"torch {refused} fit {deps.TORCH_REQUIREMENT} but not nnunetv2 " \
                        f"{versions['nnunetv2']}'s {[str(s) for s in torch_specs]}"
