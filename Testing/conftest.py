"""Shared fixtures: example data, test models built once per session."""
import os
from pathlib import Path

import pytest

import slicer_core_build
from sample_data import example_path
from server_fixtures import remote_server, test_ca  # noqa: F401 (session fixtures: one server for all folders)

REPO = Path(__file__).resolve().parents[1]

# Keep torch/nnU-Net from oversubscribing the 2 CI cores and from spawning many workers.
os.environ.setdefault("nnUNet_def_n_proc", "1")


def pytest_report_header(config):
    return slicer_core_build.header()  # which MRML build this run tests (make test runs two)


def pytest_sessionstart(session):
    """`make test` names the build its second run must test; a wrong one fails instead of passing unseen."""
    expected = os.environ.get("SLICER_CORE_EXPECTED")
    version, _ = slicer_core_build.build()
    if expected and version != expected:
        pytest.exit(f"slicer-core {expected} was expected on PYTHONPATH, but {version} would be tested", returncode=3)


def pytest_collection_modifyitems(config, items):
    """Mark the tests that use real MRML: `make test` runs them again on the stable slicer-core."""
    for item in items:
        if slicer_core_build.uses_mrml(item.path):
            item.add_marker(pytest.mark.mrml)


@pytest.fixture(scope="session")
def example():
    """example("example_ct_sm.nii.gz") -> Path of a TotalSegmentator example file."""
    return example_path


@pytest.fixture(scope="session")
def test_weights():
    """Weights folder with small fitted test models in the official layout (built once, cached)."""
    from testmodels import build_test_weights

    return build_test_weights()


@pytest.fixture
def weights_env(test_weights, monkeypatch, tmp_path):
    """Point the official environment variables at the test weights (as a user's setup would)."""
    monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(test_weights))
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "totalseg_home"))
    return test_weights
