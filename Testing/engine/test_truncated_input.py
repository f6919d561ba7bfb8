"""A NIfTI whose pixel data ends early (a copy or transfer that stopped) is an input error
with cause and fix, not an internal error, and nothing is written."""
from pathlib import Path

import pytest

from SegmentationLogic.errors import InputImageError
from SegmentationLogic.pipeline import Segmenter


@pytest.mark.parametrize("keep", [0.5, 0.98])
def test_a_truncated_image_is_an_input_error(example, test_weights, tmp_path, keep):
    data = Path(example("example_ct_sm.nii.gz")).read_bytes()
    broken = tmp_path / "ct.nii.gz"
    broken.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(InputImageError) as err:
        Segmenter(device="cpu", weights_dir=test_weights, download=False).segment(
            broken, tmp_path / "out" / "seg.nii.gz", quality="fastest")
    assert "truncated or corrupt" in err.value.cause and "transfer" in err.value.fix
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
