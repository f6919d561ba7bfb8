"""Which slicer-core build a test run uses, and which tests use it.

`make test` runs the tests that touch real MRML twice: on the preview build pinned in
constraints.txt (in the venv) and on the stable release's build, installed with `pip
--target` into a folder that is put first on PYTHONPATH (see the Makefile). The session
header names the build that ran, read from package metadata without importing it.
"""
import ast
import functools
import importlib.metadata
import importlib.util
import os
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def build():
    """(version, folder) of the slicer-core that `import slicer_core` would load; (None, None) if absent."""
    spec = importlib.util.find_spec("slicer_core")
    if spec is None or not spec.origin:
        return None, None
    folder = Path(spec.origin).resolve().parents[1]
    for dist in importlib.metadata.distributions(path=[str(folder)]):
        if dist.metadata["Name"] and dist.metadata["Name"].lower().replace("_", "-") == "slicer-core":
            return dist.version, folder
    return None, folder


def header():
    """One line for pytest's session header: the MRML build this run tests."""
    version, folder = build()
    if folder is None:
        return "slicer-core: not installed (MRML tests cannot run)"
    vtk = next((d.version for d in importlib.metadata.distributions(path=[str(folder)])
                if (d.metadata["Name"] or "").lower() == "vtk"), None) or _version("vtk")
    where = "venv" if _in_site_packages(folder) else str(folder)
    return f"slicer-core: {version} (vtk {vtk}) from {where}"


def override_folder():
    """The folder that shadows the venv's slicer-core (None when the venv's own build runs)."""
    _, folder = build()
    return None if folder is None or _in_site_packages(folder) else folder


def subprocess_pythonpath(*extra):
    """PYTHONPATH for a child Python that must load the same slicer-core build as this run."""
    folder = override_folder()
    return os.pathsep.join([str(p) for p in extra] + ([str(folder)] if folder else []))


def _version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _in_site_packages(folder):
    site = {Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib")}
    return Path(folder).resolve() in site


# -- which tests touch MRML ------------------------------------------------------------
# A test uses real MRML when it lives in Testing/mrml, or imports `slicer` or this project's
# MRML code (the engine's mrml package), in the test file itself or through the shared
# fixtures in Testing/support.
MRML_MODULES = ("slicer", "SegmentationLogic.mrml")
SUPPORT = REPO / "Testing" / "support"


def _is_mrml(name):
    return any(name == m or name.startswith(m + ".") for m in MRML_MODULES)


def _imported_names(path):
    names = set()
    for node in ast.walk(ast.parse(Path(path).read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@functools.lru_cache(maxsize=None)
def uses_mrml(path):
    """True for Testing/mrml/ and for a test file that imports `slicer` or the MRML code, itself or
    through Testing/support."""
    if (REPO / "Testing" / "mrml") in Path(path).resolve().parents:
        return True
    seen, todo = set(), [Path(path).resolve()]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for name in _imported_names(current):
            if _is_mrml(name):
                return True
            helper = SUPPORT / f"{name}.py"
            if "." not in name and helper.is_file():
                todo.append(helper.resolve())
    return False


if __name__ == "__main__":  # list the test files that the second slicer-core run covers
    print(header())
    for test in sorted((REPO / "Testing").rglob("test_*.py")):
        if uses_mrml(test):
            print(test.relative_to(REPO))
    sys.exit(0)
