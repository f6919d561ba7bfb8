"""A segmentation job from volume node to segmentation node, with real MRML (slicer-core),
the real engine in a background process, and the test models.

Covers what the user sees in the module: progress while it runs, named segments at the
end, Cancel that kills the process tree and leaves nothing behind, a crashing or failing
engine that gives a clear error and no partial node, the persistent worker's warm re-run.
"""
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import pytest
from scene_fixtures import scene_and_ct  # noqa: F401 (fixture)

from SegmentationLogic.errors import SegmentationError
from SegmentationLogic.mrml.scene import export_volume
from TotalSegmentatorLib.job import SegmentationJob
from TotalSegmentatorLib.process import descendants, pid_alive
from TotalSegmentatorLib.runner import WorkerEngine

from SegmentationLogic.mrml import scene as mrml_scene  # noqa: E402

POSIX = os.name != "nt"


def temp_leftovers():
    return {p.name for p in Path(tempfile.gettempdir()).glob("TotalSegmentator-*")}




def segmentation_nodes(scene):
    return scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")


@pytest.fixture
def clean_tmp(monkeypatch, tmp_path):
    """Every temp file of the job and of the engine goes under this folder, so leftovers are visible."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setenv("TMPDIR", str(root))
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def names(node):
    seg = node.GetSegmentation()
    return sorted(seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments()))


def run_until_stage(job, stages, timeout=300):
    deadline = time.monotonic() + timeout
    while job.stage not in stages and not job.done and time.monotonic() < deadline:
        job.poll()
        time.sleep(0.02)
    assert job.stage in stages and not job.done, f"never reached {stages}: {job.state} {job.stage} {job.error}"


def test_bad_requests_fail_before_anything_is_written(scene_and_ct, clean_tmp):
    scene, ct = scene_and_ct
    for kwargs, words in (({"task": "totl"}, "Unknown task 'totl'"),
                          ({"roi_subset": ["livre"]}, "'livre'"),
                          ({"task": "lung_vessels", "roi_subset": ["liver"]}, "cannot segment a subset"),
                          ({"quality": "ultra"}, "Unknown quality 'ultra'"),
                          ({"split_liver_vessels": True}, "liver_vessels")):
        with pytest.raises(SegmentationError) as e:
            SegmentationJob(ct, **kwargs).start()
        assert words in e.value.cause and e.value.fix is not None
    with pytest.raises(SegmentationError, match="No input volume"):
        SegmentationJob(None).start()
    assert list(clean_tmp.iterdir()) == [] and segmentation_nodes(scene) == 0


def test_volume_export_keeps_geometry_and_values(scene_and_ct, tmp_path, example):
    import nibabel as nib
    import numpy as np

    _, ct = scene_and_ct
    written = nib.load(export_volume(ct, tmp_path / "x.nii"))
    original = nib.load(example("example_ct_sm.nii.gz"))
    assert np.allclose(written.affine, original.affine, atol=1e-4)
    assert np.array_equal(np.asarray(written.dataobj), np.asarray(original.dataobj))


def test_run_streams_progress_and_imports_named_segments(scene_and_ct, weights_env, clean_tmp):
    scene, ct = scene_and_ct
    events = []
    job = SegmentationJob(ct, task="total", quality="fast", roi_subset=["liver", "spleen", "kidney_left"],
                          device="cpu").start()
    polls = []
    while not job.done:
        t = time.perf_counter()
        events += job.poll()
        polls.append(time.perf_counter() - t)
        time.sleep(0.02)
    assert job.state == "succeeded", job.error
    node = job.segmentation_node
    assert node.GetName() == "CT segmentation" and node.GetScene() is scene
    assert set(names(node)) <= {"Liver", "Spleen", "Left kidney"} and names(node)
    progress = [e for e in events if e["event"] == "progress"]
    stages = [e["stage"] for e in progress]
    assert stages[0] == "export" and stages[-1] == "import" and "predict" in stages
    overall = [e["overall"] for e in progress]
    assert overall == sorted(overall) and overall[-1] == 1.0, "one monotone bar"
    assert max(polls[:-1] or [0]) < 0.25, "poll() must never wait for the engine"
    assert list(clean_tmp.iterdir()) == [], "temp files left behind"
    scene.RemoveNode(node)


@pytest.fixture
def launcher(tmp_path):
    """A stand-in for Slicer's PythonSlicer: a launcher process that runs the real Python as its child
    (killing only the launcher would leave the engine running)."""
    path = tmp_path / "PythonSlicer"
    path.write_text(f'#!/bin/sh\n"{sys.executable}" "$@"\nexit $?\n')
    path.chmod(0o755)
    return str(path)


@pytest.mark.skipif(not POSIX, reason="process-tree inspection uses /proc or ps")
def test_cancel_mid_run_kills_the_tree_and_leaves_nothing(scene_and_ct, weights_env, clean_tmp, launcher):
    scene, ct = scene_and_ct
    before = segmentation_nodes(scene)
    job = SegmentationJob(ct, task="total", quality="normal", device="cpu", python=launcher).start()
    run_until_stage(job, ("predict",))
    tree = [job.run.process.pid] + descendants(job.run.process.pid)
    assert len(tree) >= 2, "launcher and engine"
    job.cancel()
    assert job.state == "cancelled" and job.error["kind"] == "cancelled"
    deadline = time.monotonic() + 10
    while any(pid_alive(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in tree if pid_alive(p)], "engine processes survived Cancel"
    assert segmentation_nodes(scene) == before, "a node was added on cancel"
    assert list(clean_tmp.iterdir()) == [], "temp files left behind"


@pytest.mark.skipif(not POSIX, reason="SIGKILL")
def test_engine_killed_by_the_system_gives_a_clear_error_and_no_node(scene_and_ct, weights_env, clean_tmp):
    scene, ct = scene_and_ct
    before = segmentation_nodes(scene)
    job = SegmentationJob(ct, task="total", quality="normal", device="cpu").start()
    run_until_stage(job, ("predict",))
    os.kill(job.run.process.pid, signal.SIGKILL)  # what the out-of-memory killer does
    job.wait(timeout=60)
    assert job.state == "failed" and job.error["kind"] == "memory"
    assert "out of memory" in job.error["cause"] and "fast" in job.error["fix"]
    assert segmentation_nodes(scene) == before
    assert list(clean_tmp.iterdir()) == []


def test_failing_engine_reports_cause_and_fix_and_adds_nothing(scene_and_ct, tmp_path, clean_tmp):
    scene, ct = scene_and_ct
    before = segmentation_nodes(scene)
    empty = tmp_path / "no-weights"
    empty.mkdir()
    job = SegmentationJob(ct, task="total", quality="fast", device="cpu", weights_dir=str(empty),
                          download=False).start().wait(timeout=300)
    assert job.state == "failed" and job.error["kind"] == "weights"
    assert "not installed" in job.error["cause"] and "import" in job.error["fix"].lower()
    assert segmentation_nodes(scene) == before
    assert list(clean_tmp.iterdir()) == []


def test_worker_reruns_warm_replaces_segments_and_cancels_cooperatively(scene_and_ct, weights_env, clean_tmp):
    scene, ct = scene_and_ct
    worker = WorkerEngine()
    try:
        first = SegmentationJob(ct, task="total", quality="fast", device="cpu", worker=worker).start().wait(timeout=600)
        assert first.state == "succeeded", first.error
        node = first.segmentation_node
        assert "Liver" in names(node) and len(names(node)) > 1
        assert first.run.result["warm"] is False
        second = SegmentationJob(ct, node, task="total", quality="fast", roi_subset=["liver"], device="cpu",
                                 worker=worker).start().wait(timeout=600)
        assert second.state == "succeeded" and second.segmentation_node is node
        assert second.run.result["warm"] is True, "the second run must reuse the loaded models"
        assert names(node) == ["Liver"], "a re-run replaces the segments"
        pid = worker.process.pid

        count = segmentation_nodes(scene)
        third = SegmentationJob(ct, task="total", quality="normal", device="cpu", worker=worker).start()
        run_until_stage(third, ("predict",))
        third.cancel()
        third.wait(timeout=30)
        assert third.state == "cancelled"
        assert worker.alive and worker.process.pid == pid, "a cooperative cancel keeps the worker and its models"
        assert segmentation_nodes(scene) == count
        assert [p.name for p in clean_tmp.iterdir()] == [Path(worker._tmpdir).name], "only the worker's own folder"
        scene.RemoveNode(node)
    finally:
        worker.shutdown()
    assert list(clean_tmp.iterdir()) == [], "the worker's folder goes with it"


@pytest.mark.skipif(not POSIX, reason="SIGKILL")
def test_worker_that_dies_mid_run_is_explained_and_replaced(scene_and_ct, weights_env, clean_tmp):
    scene, ct = scene_and_ct
    before = segmentation_nodes(scene)
    worker = WorkerEngine()
    try:
        job = SegmentationJob(ct, task="total", quality="normal", device="cpu", worker=worker).start()
        run_until_stage(job, ("predict",))
        dead = worker.process.pid
        os.kill(dead, signal.SIGKILL)
        job.wait(timeout=60)
        assert job.state == "failed" and job.error["kind"] == "memory" and job.error["fix"]
        assert segmentation_nodes(scene) == before
        again = SegmentationJob(ct, task="total", quality="fast", roi_subset=["liver"], device="cpu",
                                worker=worker).start().wait(timeout=600)
        assert again.state == "succeeded", again.error
        assert worker.process.pid != dead, "a new worker took over"
        scene.RemoveNode(again.segmentation_node)
    finally:
        worker.shutdown()
    assert list(clean_tmp.iterdir()) == []


def test_wrong_modality_is_noticed_from_the_volume_node(scene_and_ct, example):
    from TotalSegmentatorLib.choices import modality_warning
    from TotalSegmentatorLib.logic import TotalSegmentatorLogic

    volume_modality = TotalSegmentatorLogic.volumeModality

    scene, ct = scene_and_ct
    assert volume_modality(ct)[0] == "CT" and modality_warning("total", volume_modality(ct)) is None
    mr = mrml_scene.load_volume(scene, example("example_mr_sm.nii.gz"), name="MR")
    guess = volume_modality(mr)
    assert guess[0] == "MR"
    assert "looks like MR" in modality_warning("total", guess)
    assert modality_warning("total_mr", guess) is None
    scene.RemoveNode(mr)


def test_liver_vessel_split_keeps_its_outputs_for_review_and_drops_them_on_cancel(scene_and_ct, weights_env,
                                                                                 clean_tmp, tmp_path):
    scene, ct = scene_and_ct
    root = tmp_path / "review"
    job = SegmentationJob(ct, task="liver_vessels", device="cpu", split_liver_vessels=True,
                          review_root=str(root)).start().wait(timeout=900)
    assert job.state == "succeeded", job.error
    assert names(job.segmentation_node) == ["Hepatic veins", "Portal vein branches"]
    assert {"portal_fraction", "warnings"} <= set(job.vessel_qc)
    kept = {p.name for p in job.review_dir.iterdir()}
    assert {"liver_vessels_labeled.nii.gz", "enhanced_liver_vessels_metadata.json", "liver.nii.gz"} <= kept
    scene.RemoveNode(job.segmentation_node)

    count = segmentation_nodes(scene)
    cancelled = SegmentationJob(ct, task="liver_vessels", device="cpu", split_liver_vessels=True,
                                review_root=str(root)).start()
    run_until_stage(cancelled, ("predict",))
    cancelled.cancel()
    assert cancelled.state == "cancelled" and segmentation_nodes(scene) == count
    assert [p for p in root.iterdir()] == [job.review_dir], "the cancelled run's folder is gone"
    assert list(clean_tmp.iterdir()) == []


def test_closing_the_scene_or_removing_the_volume_stops_the_run_and_cleans_up(example, weights_env, clean_tmp):
    scene = mrml_scene.new_scene()
    try:
        for close in (lambda volume: scene.Clear(0), lambda volume: scene.RemoveNode(volume)):
            ct = mrml_scene.load_volume(scene, example("example_ct_sm.nii.gz"), name="CT")
            job = SegmentationJob(ct, task="total", quality="normal", device="cpu").start()
            run_until_stage(job, ("predict", "load"))
            engine = job.run.process.pid
            close(ct)
            job.wait(timeout=60)
            assert job.state == "cancelled" and "stopped" in job.error["cause"], job.error
            assert segmentation_nodes(scene) == 0
            deadline = time.monotonic() + 10
            while pid_alive(engine) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not pid_alive(engine), "the engine kept running"
            assert list(clean_tmp.iterdir()) == [], "temp files left behind"
    finally:
        mrml_scene.release_scene(scene)
