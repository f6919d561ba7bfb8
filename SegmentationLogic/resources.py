"""Locate the data files in `Resources/` (task catalogue, terminology, UI, icons).

The same code runs from the source tree, from a Slicer extension install (where
`SegmentationLogic/` and `Resources/` sit side by side in qt-scripted-modules) and from
a wheel (where `Resources/` is packaged inside `SegmentationLogic/`).
"""
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_CANDIDATES = (_HERE / "Resources", _HERE.parent / "Resources")


def resources_dir():
    for candidate in _CANDIDATES:
        if (candidate / "tasks.json").is_file():
            return candidate
    raise FileNotFoundError(
        "Resources/tasks.json not found next to SegmentationLogic; the installation is incomplete "
        f"(looked in {', '.join(str(c) for c in _CANDIDATES)}). Reinstall the extension or package.")


def resource_path(*parts):
    return resources_dir().joinpath(*parts)
