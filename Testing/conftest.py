"""Shared fixtures: example data, test models built once per session."""
import os
from pathlib import Path

import pytest

from sample_data import example_path

REPO = Path(__file__).resolve().parents[1]

# Keep torch/nnU-Net from oversubscribing the 2 CI cores and from spawning many workers.
os.environ.setdefault("nnUNet_def_n_proc", "1")


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
