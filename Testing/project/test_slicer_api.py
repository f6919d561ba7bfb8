"""Every Slicer / MRML / CTK / Qt name the module and the MRML code use exists in every supported Slicer.

The names come from an AST scan of the code and the .ui (Testing/support/slicer_api_use.py);
the API table from Slicer's and CTK's sources at 5.10, the newest 5.12 tag and the preview
(Testing/data/slicer_api.json, made by Testing/tools/make_slicer_api_table.py). A name
missing in a supported version may be used only in SegmentationLogic/mrml/compat.py, which
detects the feature at run time. The failure message says which name, where, and in
which versions it is missing.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import slicer_api_use as scan
from slicer_api import SlicerApi

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "Testing" / "tools"

# Names the scan flags that exist after all, each with the reason. (None today: the scan's
# own rules already cover PythonQt's connect() and Slicer's dynamic .ui properties; see
# scan.PYTHONQT_QOBJECT and scan.DYNAMIC_PROPERTIES.)
ALLOWED = {}


@pytest.fixture(scope="module")
def api():
    return SlicerApi.load()


def test_the_table_holds_the_supported_versions_from_their_sources(api):
    versions = api.table["versions"]
    assert list(versions) == ["5.10", "5.12", "preview"]
    assert versions["5.10"]["ref"] == "v5.10.0" and versions["5.12"]["ref"].startswith("v5.12.")
    assert versions["preview"]["slicer"].startswith("5.13")
    for key in versions:
        vtk = [c for c in api.table["classes"] if c.startswith("vtk") and api.has_class(c, key)]
        assert len(vtk) > 300 and api.has_class("qMRMLNodeComboBox", key) and api.has_class("ctkPathLineEdit", key)
        assert {"GetSegmentation", "SetTerminology", "IsTerminologyContextLoaded"} <= api.all_vtk_methods(key)
        assert {"arrayFromVolume", "loadUI"} <= api.python_names("slicer.util", key)


def test_every_name_used_exists_in_every_supported_slicer_or_goes_through_compat(api):
    uses = scan.scan()
    assert len(uses) > 300 and any(u.kind == "ui_property" for u in uses), "the scan found the code and the .ui"
    problems = []
    for use, missing in scan.report(api, uses).items():
        if use.path == scan.COMPAT or use.label() in ALLOWED:
            continue
        problems.append(f"{use.where()}: {use.label()} ({use.kind}) is missing in "
                        + ", ".join(api.describe(k) for k in missing)
                        + f" - call it only in {scan.COMPAT}, behind a feature check")
    assert not problems, "\n".join(problems)


def only_in_newer(api):
    """A VTK method that Slicer 5.12 and the preview have and 5.10 (and VTK itself) does not."""
    older = api.all_vtk_methods("5.10") | scan.live_vtk_methods()
    return sorted((api.all_vtk_methods("5.12") & api.all_vtk_methods("preview")) - older)[0]


def test_a_missing_name_is_reported_with_file_line_and_versions(api, tmp_path):
    newer = only_in_newer(api)
    (tmp_path / "Resources" / "UI").mkdir(parents=True)
    (tmp_path / "Resources" / "UI" / "Panel.ui").write_text(
        '<ui version="4.0"><widget class="qMRMLWidget" name="Panel"><widget class="ctkPathLineEdit" name="pathEdit">'
        '<property name="noSuchProperty"><bool>true</bool></property></widget></widget></ui>', encoding="utf-8")
    module = tmp_path / "TotalSegmentatorModule"
    (tmp_path / "SegmentationLogic" / "mrml").mkdir(parents=True)
    module.mkdir()
    (module / "Panel.py").write_text(
        "import slicer\n"
        "def run(node, segment):\n"
        "    slicer.util.noSuchFunction()\n"
        f"    node.{newer}()\n"
        "    segment.SetTerminology('x')\n", encoding="utf-8")
    (tmp_path / "SegmentationLogic" / "mrml" / "compat.py").write_text(
        "import slicer\n"
        "def feature(node):\n"
        f"    return node.{newer}() if hasattr(node, '{newer}') else None\n", encoding="utf-8")
    found = {(u.path, u.line, u.label()): missing for u, missing in scan.report(api, scan.scan(tmp_path)).items()}
    assert found[("TotalSegmentatorModule/Panel.py", 3, "slicer.util.noSuchFunction")] == ["5.10", "5.12", "preview"]
    assert found[("TotalSegmentatorModule/Panel.py", 4, newer)] == ["5.10"]
    assert found[("SegmentationLogic/mrml/compat.py", 3, newer)] == ["5.10"]  # reported, and allowed there
    assert found[("Resources/UI/Panel.ui", 1, "ctkPathLineEdit.noSuchProperty")] == ["5.10", "5.12", "preview"]
    assert not any("SetTerminology" in key[2] for key in found)


def regenerate(tool, output):
    proc = subprocess.run([sys.executable, str(TOOLS / tool), "--output", str(output)], capture_output=True, text=True,
                          timeout=300)
    if proc.returncode != 0 and "No git mirror" in proc.stderr + proc.stdout:
        pytest.skip("Slicer's sources are not on this machine (fetch github:Slicer/Slicer and github:commontk/CTK)")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(output.read_text(encoding="utf-8"))


@pytest.mark.parametrize("tool, data", [("make_slicer_api_table.py", "Testing/data/slicer_api.json"),
                                        ("make_slicer_bundled_packages.py", "Resources/slicer_bundled_packages.json")])
def test_checked_in_tables_match_the_sources(tool, data, tmp_path):
    """Regenerated from the mirror of Slicer's repository, the checked-in table is the same (the tools are
    deterministic and nobody edited the data by hand)."""
    fresh = regenerate(tool, tmp_path / "fresh.json")
    stored = json.loads((REPO / data).read_text(encoding="utf-8"))

    def commits(table):
        entries = table["versions"].values() if "versions" in table else table["releases"]
        return sorted((e.get("ref"), e["commit"]) for e in entries)

    if commits(fresh) != commits(stored):
        pytest.skip(f"the mirror has other Slicer commits than {data} (a new tag or preview commit): "
                    f"regenerate it with python Testing/tools/{tool}")
    assert fresh == stored, f"{data} differs from what the tool makes: run python Testing/tools/{tool}"
