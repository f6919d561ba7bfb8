"""The engine's MRML package is the only engine code that imports `slicer`, and it never imports Qt."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ENGINE = REPO / "SegmentationLogic"
QT_MODULES = {"qt", "ctk", "PythonQt", "PySide6", "PyQt5", "PyQt6"}


def _imports(path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            yield from (a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module.split(".")[0]


def test_only_the_mrml_package_imports_slicer_and_nothing_imports_qt():
    importing_slicer, importing_qt = [], []
    for path in sorted(ENGINE.rglob("*.py")):
        names = set(_imports(path))
        relative = path.relative_to(ENGINE).as_posix()
        if "slicer" in names:
            importing_slicer.append(relative)
        if names & QT_MODULES:
            importing_qt.append(relative)
    assert importing_slicer and all(p.startswith("mrml/") for p in importing_slicer), importing_slicer
    assert not importing_qt
