"""The module loads in a Slicer that has only what Slicer ships: the engine's own packages
(nibabel, scikit-image, torch, nnU-Net) are installed on the first Apply, so nothing the
module imports when Slicer starts may need them (else the module would not even load to
offer the installation)."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NOT_IN_SLICER = ("nibabel", "skimage", "torch", "nnunetv2", "ray", "fastapi", "uvicorn", "xgboost")
LIBRARY = REPO / "TotalSegmentatorModule" / "TotalSegmentatorLib"
QT_FREE = sorted(p.stem for p in LIBRARY.glob("*.py") if p.stem not in ("__init__", "sections"))  # sections: Qt

BLOCKER = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {NOT_IN_SLICER!r}:
            raise ImportError(f'{{name}} is not shipped with Slicer')
sys.meta_path.insert(0, Block())
"""


def test_module_library_imports_without_the_engines_packages():
    code = BLOCKER + "".join(f"import TotalSegmentatorLib.{name}\n" for name in QT_FREE) + (
        "import SegmentationLogic.mrml.compat, SegmentationLogic.mrml.scene, SegmentationLogic.mrml.terminology\n"
        "import SegmentationLogic.mrml.segmentation_import\n"
        "print('loaded', len(sys.modules))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=str(REPO), env={"PYTHONPATH": f"{REPO}:{REPO / 'TotalSegmentatorModule'}",
                                             "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0 and "loaded" in run.stdout, run.stderr[-2000:]
