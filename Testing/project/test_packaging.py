"""Extension packaging: CMake lists every file, the install layout works, metadata agrees."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "TotalSegmentatorModule"
HOMEPAGE = "https://github.com/totalsegmentator-slicer/SlicerTotalSegmentator"


def cmake_sets(path):
    """{VAR: [values]} of every set(VAR ...) in a CMake file, ${MODULE_NAME} substituted."""
    text = re.sub(r"#[^\n]*", "", path.read_text(encoding="utf-8"))
    sets = {}
    for name, body in re.findall(r"set\(\s*(\w+)\s+(.*?)\)", text, flags=re.S):
        values = re.findall(r'"[^"]*"|\S+', body)
        sets[name] = [v.strip('"') for v in values]
    module = sets.get("MODULE_NAME", [""])[0]
    return {k: [v.replace("${MODULE_NAME}", module) for v in vals] for k, vals in sets.items()}


def files_under(root, pattern="*"):
    return sorted(str(p.relative_to(root.parent if root.name != "." else root)).replace(os.sep, "/")
                  for p in root.rglob(pattern)
                  if p.is_file() and "__pycache__" not in p.parts and not p.name.startswith("."))


@pytest.fixture(scope="module")
def module_lists():
    return cmake_sets(MODULE_DIR / "CMakeLists.txt")


def test_module_cmake_lists_every_module_script(module_lists):
    # command-line scripts are listed relative to their own folder (SOURCE_DIR)
    listed = module_lists["MODULE_PYTHON_SCRIPTS"] + [
        f"TotalSegmentatorScripts/{f}" for f in module_lists["SCRIPTS_PYTHON_SCRIPTS"]]
    on_disk = sorted(str(p.relative_to(MODULE_DIR)).replace(os.sep, "/") for p in MODULE_DIR.rglob("*.py")
                     if "__pycache__" not in p.parts)
    assert sorted(listed) == on_disk, "TotalSegmentatorModule/CMakeLists.txt MODULE_PYTHON_SCRIPTS is out of date"


def test_module_cmake_lists_every_engine_script_and_resource(module_lists):
    for var, found in (("ENGINE_PYTHON_SCRIPTS", files_under(REPO / "SegmentationLogic", "*.py")),
                       # Screenshots are for the README and the extension catalogue, not installed.
                       ("ENGINE_RESOURCES", [f for f in files_under(REPO / "Resources")
                                             if not f.startswith("Resources/Screenshots/")])):
        listed = set(module_lists[var])
        assert not set(found) - listed, f"add to {var} in TotalSegmentatorModule/CMakeLists.txt: {sorted(set(found) - listed)}"
        assert not listed - set(found), f"{var} lists files that do not exist: {sorted(listed - set(found))}"
    resources = module_lists["ENGINE_RESOURCES"]
    assert "Resources/UI/TotalSegmentator.ui" in resources and "Resources/Icons/TotalSegmentator.png" in resources


def test_module_cmake_builds_a_tested_scripted_module():
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(r"slicerMacroBuildScriptedModule\(\s*NAME \$\{MODULE_NAME\}.*WITH_GENERIC_TESTS\s*\)", text, re.S)
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    assert re.search(r"ctkMacroCompilePythonScript\(.*SOURCE_DIR \$\{PROJECT_SOURCE_DIR\}.*"
                     r"DESTINATION_DIR \$\{CMAKE_BINARY_DIR\}/\$\{Slicer_QTSCRIPTEDMODULES_LIB_DIR\}.*"
                     r"INSTALL_DIR \$\{Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR\}.*NO_INSTALL_SUBDIR", text, re.S)


def test_extension_metadata_agrees_everywhere():
    top = cmake_sets(REPO / "CMakeLists.txt")
    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(r"^project\(TotalSegmentator\)", text, re.M)
    assert "add_subdirectory(TotalSegmentatorModule)" in text
    for key in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS"):
        assert top.get(f"EXTENSION_{key}"), f"EXTENSION_{key} missing"
    assert top["EXTENSION_DEPENDS"] == ["PyTorch"] and top["EXTENSION_CATEGORY"] == ["Segmentation"]
    assert top["EXTENSION_HOMEPAGE"] == [HOMEPAGE]

    s4ext = {}
    for line in (REPO / "TotalSegmentator.s4ext").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            s4ext[key] = value.strip()
    assert s4ext["scm"] == "git" and s4ext["scmurl"].startswith(HOMEPAGE)
    assert s4ext["depends"] == "PyTorch" and s4ext["category"] == "Segmentation"
    assert s4ext["homepage"] == HOMEPAGE and s4ext["iconurl"] == top["EXTENSION_ICONURL"][0]
    assert s4ext["iconurl"].endswith("Resources/Icons/TotalSegmentator.png")
    screenshot = top["EXTENSION_SCREENSHOTURLS"][0]
    assert s4ext["screenshoturls"] == screenshot and screenshot.endswith("/main/Resources/Screenshots/TotalSegmentator3D.png")
    assert (REPO / "Resources" / "Screenshots" / "TotalSegmentator3D.png").is_file()


def test_extensions_index_entry_follows_the_catalog_schema():
    """Slicer/Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json, as the current index uses it."""
    entry = json.loads((REPO / "TotalSegmentator.json").read_text(encoding="utf-8"))
    allowed = {"$schema": str, "category": str, "scm_url": str, "scm_revision": str, "scm_type": str,
               "build_dependencies": list, "build_subdirectory": str, "enabled": bool, "tier": int}
    assert entry["$schema"] == ("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/"
                                "slicer-extension-catalog-entry-schema-v1.0.1.json#")
    assert {"$schema", "category", "scm_url"} <= set(entry)
    assert set(entry) <= set(allowed), "additionalProperties is false in the schema"
    for key, value in entry.items():
        assert isinstance(value, allowed[key]), key
    assert entry.get("scm_type", "git") in ("git", "local") and 1 <= entry.get("tier", 1) <= 5
    assert entry["build_dependencies"] == ["PyTorch"] and entry["category"] == "Segmentation"
    assert entry["scm_url"] == HOMEPAGE


def test_icon_and_licence():
    from PIL import Image

    icon = Image.open(REPO / "Resources" / "Icons" / "TotalSegmentator.png")
    assert icon.size == (128, 128) and icon.format == "PNG"
    licence = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence


@pytest.fixture(scope="module")
def cmake_install(tmp_path_factory):
    """Configure the extension with CMake against a stand-in of Slicer's build tree
    (Testing/support/cmake_slicer_stub) and lay the files out where the install puts them."""
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed")
    build = tmp_path_factory.mktemp("cmake-build")
    out = subprocess.run([cmake, "-S", str(REPO), "-B", str(build),
                          f"-DSlicer_DIR={REPO / 'Testing' / 'support' / 'cmake_slicer_stub'}"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    for line in (build / "install-manifest.txt").read_text().splitlines():
        src, dest = line.split("|")
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)
    return build


def test_cmake_configures_with_tests_and_metadata(cmake_install):
    assert (cmake_install / "tests.txt").read_text().split() == ["generic:TotalSegmentator",
                                                                 "unittest:TotalSegmentator.py"]
    assert (cmake_install / "extension.txt").read_text().strip() == "TotalSegmentator|PyTorch|Segmentation"


def test_installed_layout_runs(cmake_install, tmp_path):
    """The engine, the module library and the batch script work from where CMake installs them."""
    target = cmake_install / "lib" / "Slicer-5.10" / "qt-scripted-modules"
    # Slicer loads every .py file at the top of qt-scripted-modules as a module.
    assert sorted(p.name for p in target.glob("*.py")) == ["TotalSegmentator.py"]
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = ("import SegmentationLogic.resources as r, TotalSegmentatorLib.choices as c, TotalSegmentatorLib.runner as "
            "run; print(r.resources_dir()); print(len(c.task_items())); print(run.engine_package_root())")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    resources, tasks, root = out.stdout.split()
    assert Path(resources) == target / "Resources" and int(tasks) > 40 and Path(root) == target
    out = subprocess.run([sys.executable, "-m", "SegmentationLogic", "classes", "liver_vessels"], cwd=tmp_path,
                         env=env, capture_output=True, text=True)
    assert out.returncode == 0 and "liver_vessels" in out.stdout, out.stderr
    out = subprocess.run([sys.executable, str(target / "TotalSegmentatorScripts" / "batch.py"), "--help"],
                         cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0 and "--input-dir" in out.stdout, out.stderr
    # The module finds its .ui and icon where TotalSegmentator.py's resourcePath() looks first.
    assert (target / "Resources" / "UI" / "TotalSegmentator.ui").is_file()
    assert (target / "Resources" / "Icons" / "TotalSegmentator.png").is_file()


def test_supported_slicer_versions_are_declared_and_an_older_slicer_is_refused(tmp_path):
    """Slicer 5.10, 5.12 and the preview: said in the metadata, the module and the README;
    CMake refuses an older Slicer (find_package(Slicer 5.10) against Slicer's version file)."""
    from SegmentationLogic.mrml import compat

    supported = "Supported: Slicer 5.10, 5.12 and the preview."
    description = re.search(r'set\(EXTENSION_DESCRIPTION "([^"]*)"\)', (REPO / "CMakeLists.txt").read_text()).group(1)
    assert description.endswith(supported)
    assert supported in (REPO / "TotalSegmentator.s4ext").read_text(encoding="utf-8")
    assert compat.MINIMUM_VERSION == (5, 10) and compat.SUPPORTED == "Slicer 5.10, 5.12 and the current preview"
    assert "### Supported Slicer versions" in (REPO / "README.md").read_text(encoding="utf-8")
    assert re.search(r"^find_package\(Slicer 5\.10 REQUIRED\)", (REPO / "CMakeLists.txt").read_text(), re.M)
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed")
    old = tmp_path / "slicer-5.8"
    shutil.copytree(REPO / "Testing" / "support" / "cmake_slicer_stub", old)
    version_file = old / "SlicerConfigVersion.cmake"
    version_file.write_text(version_file.read_text().replace('"5.10.0"', '"5.8.1"'))
    out = subprocess.run([cmake, "-S", str(REPO), "-B", str(tmp_path / "build"), f"-DSlicer_DIR={old}"],
                         capture_output=True, text=True)
    assert out.returncode != 0 and "5.8.1" in out.stdout + out.stderr
