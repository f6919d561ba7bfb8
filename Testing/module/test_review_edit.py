"""Vessel-review edits run in the engine worker, never on the GUI thread: the result equals the
in-process edit, the panel's poll never waits, Cancel and a removed node leave the node as it was."""
import json
import time

import numpy as np
import pytest

from SegmentationLogic.mrml import scene as mrml_scene
from SegmentationLogic.mrml import vessel_review
from SegmentationLogic.vessels import review
from SegmentationLogic.vessels.io import OUTPUT_FILES
from SegmentationLogic.vessels.workflow import split_vessel_files
from TotalSegmentatorLib.logic import TotalSegmentatorLogic
from vessel_phantoms import PORTAL, make_phantom


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    folder = tmp_path_factory.mktemp("review-edit")
    ph = make_phantom("touching", seed=3)
    files = ph.save(folder)
    out = folder / "out"
    split_vessel_files(files["liver_vessels"], out, liver=files["liver"],
                       portal_trunk=files["portal_vein_and_splenic_vein"], ivc=files["inferior_vena_cava"])
    return ph, files, out, json.loads((out / OUTPUT_FILES["metadata"]).read_text())


@pytest.fixture(scope="module")
def logic():
    logic = TotalSegmentatorLogic()
    yield logic
    logic.cleanup()


@pytest.fixture
def loaded(case):
    ph, files, out, meta = case
    scene = mrml_scene.new_scene()
    ct = mrml_scene.load_volume(scene, files["liver"], name="ct")
    node = vessel_review.load_split(scene, out / OUTPUT_FILES["labeled"], ct, qc=meta)
    yield scene, node
    mrml_scene.release_scene(scene)


def follow(operation, timeout=300):
    slowest, events = 0.0, []
    deadline = time.monotonic() + timeout
    while not operation.done:
        assert time.monotonic() < deadline, "timed out"
        started = time.perf_counter()
        events += operation.poll()
        slowest = max(slowest, time.perf_counter() - started)
        time.sleep(0.02)
    return slowest, events


def test_reassign_in_the_worker_equals_the_edit_in_process(loaded, case, logic, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    ph = case[0]
    scene, node = loaded
    before, affine = vessel_review.current_labels(node)
    segment = next(s for s in ph.segments if s.cls == PORTAL and s.generation >= 1)
    point = list((segment.p0 + segment.p1) / 2)
    expected, expected_qc = review.reassign(before, affine, point, scope="subtree", qc=vessel_review.get_qc(node))
    operation = logic.reassignBranchAsync(node, point, scope="subtree")
    slowest, events = follow(operation)
    assert operation.outcome == "succeeded", operation.error
    assert slowest < 0.5, "the GUI never waits for the skeleton graph"
    assert any(e.get("stage") == "review" for e in events), "progress from the worker"
    assert np.array_equal(vessel_review.current_labels(node)[0], expected)
    assert operation.result["qc"] == vessel_review.get_qc(node)
    assert operation.result["qc"]["manual_edits"] == expected_qc["manual_edits"] == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("TotalSegmentator-review-edit")] == []


def test_cancel_or_a_removed_node_leaves_the_node_as_it_was(loaded, case, logic):
    ph = case[0]
    scene, node = loaded
    before, _ = vessel_review.current_labels(node)
    qc = vessel_review.get_qc(node)
    roots = [list((s.p0 + s.p1) / 2) for s in ph.segments if s.parent == -1]
    operation = logic.rerunSplitAsync(node, hepaticPointsRas=roots)
    operation.cancel()
    follow(operation, timeout=60)
    assert operation.outcome == "cancelled"
    assert np.array_equal(vessel_review.current_labels(node)[0], before) and vessel_review.get_qc(node) == qc
    assert logic.worker.alive, "a cooperative cancel keeps the worker"

    operation = logic.rerunSplitAsync(node, hepaticPointsRas=roots)
    scene.RemoveNode(node)
    follow(operation, timeout=60)
    assert operation.outcome == "cancelled" and "removed" in operation.error["cause"]
