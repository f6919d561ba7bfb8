"""The documented Python entry point, `TotalSegmentatorLogic().process(...)`, outside Slicer.

TotalSegmentator.py imports a few modules only the Slicer application has (qt, ctk,
ScriptedLoadableModule, parameterNodeWrapper). The logic itself needs none of them but
QSettings, so they are given minimal stand-ins here; MRML is real (slicer-core), the
engine is real (background process, test models).
"""
import importlib
import sys
import types
import unittest
from pathlib import Path

import pytest
from scene_fixtures import scene_and_ct  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parents[2]


class _Settings:
    store = {}

    def value(self, key, default=None):
        return self.store.get(key, default)

    def setValue(self, key, value):
        self.store[key] = value


class _Logic:
    def __init__(self):
        pass


@pytest.fixture(scope="module")
def module(example):
    import slicer

    saved = {k: sys.modules.get(k) for k in ("qt", "ctk", "slicer.ScriptedLoadableModule",
                                              "slicer.parameterNodeWrapper", "TotalSegmentator")}
    sys.modules["qt"] = types.SimpleNamespace(QSettings=_Settings)
    sys.modules["ctk"] = types.ModuleType("ctk")
    sys.modules["slicer.ScriptedLoadableModule"] = types.SimpleNamespace(
        ScriptedLoadableModule=type("ScriptedLoadableModule", (), {}),
        ScriptedLoadableModuleWidget=type("ScriptedLoadableModuleWidget", (), {}), ScriptedLoadableModuleLogic=_Logic,
        ScriptedLoadableModuleTest=unittest.TestCase)
    sys.modules["slicer.parameterNodeWrapper"] = types.SimpleNamespace(parameterNodeWrapper=lambda cls: cls)
    try:
        yield importlib.import_module("TotalSegmentator")
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
        assert not hasattr(slicer, "app")




def test_process_blocks_returns_named_segments_and_replaces_on_rerun(module, scene_and_ct, weights_env):
    scene, ct = scene_and_ct
    logic = module.TotalSegmentatorLogic()
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
        logic.shutdownWorker()
    scene.RemoveNode(node)


def test_process_raises_cause_and_fix_and_leaves_the_scene_alone(module, scene_and_ct, tmp_path):
    scene, ct = scene_and_ct
    logic = module.TotalSegmentatorLogic()
    logic.keepModelsLoaded = False
    logic.weightsFolder = str(tmp_path)  # no weights there
    before = scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    with pytest.raises(module.SegmentationError) as e:
        logic.process(ct, task="total", roiSubset=["livre"])
    assert "Did you mean liver" in e.value.fix
    with pytest.raises(module.SegmentationError) as e:
        logic.process(ct, task="total", quality="fastest", device="cpu", timeout=300)
    assert "not installed" in e.value.cause or "download" in e.value.cause.lower()
    assert e.value.fix
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == before


def test_module_credits_the_papers():
    text = (REPO / "TotalSegmentatorModule" / "TotalSegmentator.py").read_text(encoding="utf-8")
    assert "10.1148/ryai.230024" in text and "Radiology: Artificial Intelligence 2023" in text
    assert "10.1038/s41592-020-01008-z" in text and "Nature Methods 2021" in text
    assert 'translate("qSlicerAbstractCoreModule", "Segmentation")' in text
