"""The module's Slicer self-test (TotalSegmentatorTest), run here on slicer-core with the
PythonQt stand-ins: it must pass without network and on a CPU, as on Slicer's build machines."""
import importlib
import os
import socket
import tempfile
import time

import pytest

from SegmentationLogic.mrml import scene as mrml_scene

import pythonqt  # noqa: E402


@pytest.fixture
def self_test(monkeypatch, tmp_path):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    scene = mrml_scene.new_scene()
    pythonqt.install(monkeypatch, scene, tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # what the self-test leaves behind shows up here

    def no_network(*args, **kwargs):
        raise AssertionError("the self-test used the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    module = importlib.import_module("TotalSegmentator")
    yield module.TotalSegmentatorTest(), tmp_path
    module._shutdownSharedLogic()
    mrml_scene.release_scene(scene)


def test_the_self_test_passes_offline_on_a_cpu_and_cleans_up(self_test):
    import resource

    test, tmp = self_test
    started = time.monotonic()
    cpu = [sum(resource.getrusage(who)[:2]) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    test.runTest()
    assert "Segmentation with the self-test model passed" in test.messages, test.messages
    assert "Import of a labelmap passed" in test.messages
    cpu = sum(sum(resource.getrusage(who)[:2]) - before
              for who, before in zip((resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN), cpu))
    print(f"self-test: {time.monotonic() - started:.0f} s on this machine, {cpu:.0f} CPU seconds")
    assert [p.name for p in tmp.iterdir() if p.name.startswith("TotalSegmentator")] == []
