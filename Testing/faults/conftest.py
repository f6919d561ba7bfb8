"""Fixtures of the fault-injection tests: a private copy of the example CT and the engine flags."""
import shutil

import pytest


@pytest.fixture
def ct(example, tmp_path):
    """A private copy of the small example CT (3 mm, 122x101x30)."""
    path = tmp_path / "data" / "ct.nii.gz"
    path.parent.mkdir()
    shutil.copy(example("example_ct_sm.nii.gz"), path)
    return path


@pytest.fixture
def engine(test_weights):
    """Flags that make a segment run use the test models, on the CPU, never downloading."""
    return ["--weights_dir", str(test_weights), "--no_download", "--device", "cpu"]
