"""Rules the product code keeps: no reference-tool imports, no torchvision, TLS always verified."""
import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PRODUCT = [REPO / "SegmentationLogic", REPO / "TotalSegmentatorModule"]
FORBIDDEN_IMPORTS = {"totalsegmentator", "torchvision", "timm", "dicom2nifti"}


def _product_files():
    for root in PRODUCT:
        yield from sorted(root.rglob("*.py"))


def test_product_never_imports_the_reference_tool_or_torchvision():
    offenders = []
    for path in _product_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.relative_to(REPO)}:{node.lineno} {n}" for n in names
                          if n.split(".")[0] in FORBIDDEN_IMPORTS]
    assert not offenders, offenders


def test_tls_verification_is_never_switched_off():
    for path in _product_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.keyword) and node.arg == "verify":
                assert not (isinstance(node.value, ast.Constant) and node.value.value is False), \
                    f"{path.relative_to(REPO)}:{node.value.lineno} verify=False"


def test_a_segmentation_run_loads_no_torchvision(weights_env, example):
    code = ("import sys; from SegmentationLogic import segment; "
            f"segment({str(example('example_ct_sm.nii.gz'))!r}, None, task='total', quality='fastest', download=False); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torchvision', 'timm', 'totalsegmentator'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
