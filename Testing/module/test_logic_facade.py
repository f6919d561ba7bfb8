"""The documented Python entry point, `TotalSegmentatorLogic().process(...)`, with no stand-ins at all:
the logic imports no Qt and needs no Slicer application, so it runs here as it does in the console.
MRML is real (slicer-core), the engine is real (background worker, test models)."""
import os
import sys
from pathlib import Path

import pytest
from scene_fixtures import scene_and_ct  # noqa: F401 (fixture)

from SegmentationLogic.errors import SegmentationError
from TotalSegmentatorLib.logic import TotalSegmentatorLogic

REPO = Path(__file__).resolve().parents[2]


def test_the_logic_imports_no_qt():
    import subprocess

    from TotalSegmentatorLib.runner import engine_environment

    code = ("import sys, TotalSegmentatorLib.logic; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('qt', 'ctk', 'PythonQt', 'PySide6')))")
    env = engine_environment()
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "TotalSegmentatorModule"), env["PYTHONPATH"]])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "[]"


def test_process_blocks_returns_named_segments_and_replaces_on_rerun(scene_and_ct, weights_env):
    scene, ct = scene_and_ct
    logic = TotalSegmentatorLogic()
    try:
        node = logic.process(ct, task="total", quality="fast", roiSubset=["liver"], device="cpu")
        worker_pid = logic.worker.process.pid
        seg = node.GetSegmentation()
        assert node.GetName() == "CT segmentation" and seg.GetNumberOfSegments() == 1
        assert seg.GetNthSegment(0).GetName() == "Liver"
        again = logic.process(ct, node, task="total", quality="fast", roiSubset=["liver"], device="cpu",
                              useStandardNames=False)
        assert again is node and node.GetSegmentation().GetNthSegment(0).GetName() == "liver"
        assert logic.worker.process.pid == worker_pid and logic.worker.runs_served == 2, "one worker, reused"
    finally:
        logic.cleanup()
    scene.RemoveNode(node)


def test_process_raises_cause_and_fix_and_leaves_the_scene_alone(scene_and_ct, tmp_path):
    scene, ct = scene_and_ct
    logic = TotalSegmentatorLogic(keepModelsLoaded=False, weightsFolder=str(tmp_path))  # no weights there
    before = scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    with pytest.raises(SegmentationError) as e:
        logic.process(ct, task="total", roiSubset=["livre"])
    assert "Did you mean liver" in e.value.fix
    with pytest.raises(SegmentationError) as e:
        logic.process(ct, task="total", quality="fastest", device="cpu", timeout=300)
    assert "not installed" in e.value.cause or "download" in e.value.cause.lower()
    assert e.value.fix
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == before
    assert logic.worker is None, "no engine process stays behind"


def test_parameter_node_is_the_modules_singleton(scene_and_ct):
    scene, _ = scene_and_ct
    logic = TotalSegmentatorLogic()
    node = logic.getParameterNode(scene)
    assert node.IsA("vtkMRMLScriptedModuleNode") and node.GetAttribute("ModuleName") == "TotalSegmentator"
    assert logic.getParameterNode(scene) is node


def test_module_credits_the_papers():
    text = (REPO / "TotalSegmentatorModule" / "TotalSegmentator.py").read_text(encoding="utf-8")
    assert "10.1148/ryai.230024" in text and "Radiology: Artificial Intelligence 2023" in text
    assert "10.1038/s41592-020-01008-z" in text and "Nature Methods 2021" in text
    assert 'translate("qSlicerAbstractCoreModule", "Segmentation")' in text
