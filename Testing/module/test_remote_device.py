"""Device "Remote server" through the module's logic, against the session's real segmentation server
(https on 127.0.0.1, a test CA, a token; Testing/support/server_fixtures.py): what a laptop Slicer with
none of the engine's packages does. The server's own behaviour is tested in Testing/server."""
import os
import stat
import subprocess
import sys
import time

import pytest

from serve_process import laptop_environment
from scene_fixtures import scene_and_ct  # noqa: F401 (fixture)
from TotalSegmentatorLib import dependencies as deps
from TotalSegmentatorLib.logic import TotalSegmentatorLogic
from TotalSegmentatorLib.runner import WorkerEngine


@pytest.fixture(scope="module")
def laptop_env(tmp_path_factory):
    """The engine worker's environment on a laptop: torch, nnU-Net, nibabel, numpy... cannot be imported."""
    env = laptop_environment(tmp_path_factory.mktemp("laptop"))
    blocked = subprocess.run([sys.executable, "-c", "import nibabel"], env={**os.environ, **env}, capture_output=True)
    assert blocked.returncode != 0, "the stand-in laptop must not have nibabel"
    return env


def segmentation_nodes(scene):
    return scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")


def test_a_fresh_slicer_needs_nothing_installed_for_a_remote_run():
    release = deps.load_bundled_releases()[-1]
    laptop = dict(release["packages"])  # what Slicer ships: no torch, no nnU-Net, no nibabel
    local = deps.plan_install(installed=laptop, slicer_version=release["slicer"], imported_modules={})
    remote = deps.plan_install(installed=laptop, slicer_version=release["slicer"], imported_modules={}, remote=True)
    assert not local.nothing_to_do and local.needs_torch
    assert remote.nothing_to_do and not remote.needs_torch and not remote.pip_packages


def test_remote_run_end_to_end_on_a_laptop_without_the_engine(remote_server, test_ca, scene_and_ct, laptop_env,
                                                             tmp_path, monkeypatch):
    scene, ct = scene_and_ct
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "home"))  # where the token is kept by default
    monkeypatch.delenv("TOTALSEG_SERVER_TOKEN", raising=False)
    logic = TotalSegmentatorLogic(serverUrl=remote_server.url, serverCaCert=str(test_ca.cert_path))
    logic.worker = WorkerEngine(env=laptop_env)
    nodes = segmentation_nodes(scene)
    try:
        assert not logic.hasServerToken()
        stored = logic.setServerToken(remote_server.token)  # what the masked field does
        assert stat.S_IMODE(stored.stat().st_mode) == 0o600 and logic.hasServerToken()
        info = logic.checkServer()
        assert info["url"] == remote_server.url and info.get("version")

        stages, log = [], []

        def follow(event):
            if event["event"] == "progress" and event.get("stage") not in stages:
                stages.append(event["stage"])
            log.append(str(event))

        operation = logic.processAsync(ct, task="total", quality="fastest", device="remote")
        operation.wait(timeout=300, on_event=follow)
        assert operation.outcome == "succeeded", operation.error
        assert {"upload", "fetch"} <= set(stages) and stages[-1] == "import", stages  # the client's stages, then ours
        node = operation.segmentation_node
        assert segmentation_nodes(scene) == nodes + 1 and node.GetSegmentation().GetNumberOfSegments() > 0
        assert remote_server.token not in "".join(log)
        scene.RemoveNode(node)

        # a token the server does not know: refused, the panel's fix, nothing added to the scene
        wrong = tmp_path / "wrong_token"
        wrong.write_text("not-the-token-" + "y" * 24)
        wrong.chmod(0o600)
        logic.serverTokenFile = str(wrong)
        refused = logic.processAsync(ct, task="total", quality="fastest", device="remote").wait(timeout=120)
        assert refused.outcome == "failed" and refused.error["kind"] == "auth", refused.error
        assert "Access token" in refused.error["fix"] and "--token" not in refused.error["fix"]
        assert segmentation_nodes(scene) == nodes
        assert logic.worker.process.pid and logic.worker.runs_served >= 2, "one relaying worker served all"
    finally:
        logic.cleanup()


def test_cancel_of_a_remote_run_cancels_the_job_on_the_server(remote_server, test_ca, scene_and_ct, laptop_env):
    """Even a one-shot worker (models not kept loaded: killed on Cancel for a local run) is asked to stop
    first, so the job on the server goes too."""
    scene, ct = scene_and_ct
    logic = TotalSegmentatorLogic(serverUrl=remote_server.url, serverCaCert=str(test_ca.cert_path),
                                  serverTokenFile=str(remote_server.token_file))
    logic.worker = WorkerEngine(env=laptop_env, keep_alive=False)
    nodes = segmentation_nodes(scene)
    try:
        operation = logic.processAsync(ct, task="total", quality="fast", device="remote")
        while not operation.done:
            operation.poll()
            if operation.stage == "predict":
                operation.cancel()
            time.sleep(0.05)
        assert operation.outcome == "cancelled"
        assert segmentation_nodes(scene) == nodes
        assert not remote_server.wait_no_jobs(), "the job on the server was cancelled and removed"
    finally:
        logic.cleanup()
