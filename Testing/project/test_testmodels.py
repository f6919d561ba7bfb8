"""The test models themselves: known-output models give exactly what their bands say, fitted
models come out the same bit for bit when built again, and every kind is built once into one
shared cache (the demo and the tests use the same folder)."""
import json

import nibabel as nib
import numpy as np
import pytest

import testmodels
from known_models import KNOWN_BANDS_HU
from SegmentationLogic.catalogue import load_catalogue
from SegmentationLogic.pipeline import Segmenter


def test_known_models_answer_their_intensity_bands_exactly(known_weights, tmp_path):
    """Stripes of known Hounsfield values, at the 6 mm model's spacing (nothing resampled):
    every voxel gets the class whose band holds its value, to within 5 HU of the band edges."""
    values = [-1000, -100, -5, 5, 60, 190, 235, 245, 290, 335, 345, 390, 435, 445, 900]
    ct = np.repeat(np.array(values, np.int16), 3)[:, None, None] * np.ones((1, 24, 20), np.int16)
    img = nib.Nifti1Image(ct, np.diag([6.0, 6.0, 6.0, 1.0]))
    result = Segmenter(device="cpu", weights_dir=known_weights, download=False).segment(img, None, quality="fastest")
    classes = load_catalogue().task("total").classes
    expected = np.zeros(ct.shape, np.uint8)
    for value, name in classes.items():
        if name in KNOWN_BANDS_HU:
            low, high = KNOWN_BANDS_HU[name]
            expected[(ct >= low) & (ct < (high if high is not None else 10**6))] = value
    assert np.array_equal(np.asanyarray(result.labelmap.dataobj), expected)


def test_fitted_models_are_the_same_when_built_again(tmp_path):
    """Two builds in fresh processes (one thread, deterministic, pinned CPU kernels) give the
    same weights bit for bit (a short fit keeps this test quick)."""
    prints = []
    for n in range(2):
        folder = testmodels.build_test_weights(tmp_path / f"cache{n}", size="fitted", datasets=(300,), iterations=3,
                                               log=lambda line: None)
        prints.append(json.loads((folder / "fingerprints.json").read_text()))
    assert prints[0] == prints[1] and set(prints[0]) == {"300"}


def test_each_kind_is_built_once_into_one_shared_folder(known_weights, tmp_path):
    lines = []
    again = testmodels.build_test_weights(size="known", datasets=(297, 298), log=lines.append)
    assert again == known_weights and lines == [], "nothing is built twice"
    # the demo asks for two fitted models: the same folder as the tests', built dataset by dataset
    cache = tmp_path / "cache"
    first = testmodels.build_test_weights(cache, size="known", datasets=(298,), log=lines.append)
    second = testmodels.build_test_weights(cache, size="known", datasets=(297, 298), log=lines.append)
    assert first == second and len(lines) == 2 and "[1/1]" in lines[1] and "Dataset297" in lines[1]
    assert not testmodels.missing_datasets(second, (297, 298))
    from demo import TEST_DATASETS

    assert testmodels.weights_folder(size="fitted").parent == testmodels.weights_folder(size="known").parent
    assert set(TEST_DATASETS) <= set(testmodels.DEFAULT_DATASETS)


def test_fingerprint_differences_are_said_plainly(tmp_path, monkeypatch):
    folder = tmp_path / "fitted"
    folder.mkdir()
    (folder / "fingerprints.json").write_text(json.dumps({"298": "aaaa", "297": "bbbb"}))
    recorded = tmp_path / "recorded.json"
    monkeypatch.setattr(testmodels, "FINGERPRINTS", recorded)
    assert "no fingerprints are recorded" in testmodels.fingerprint_differences(folder)[0]
    testmodels.record_fingerprints(folder)
    assert testmodels.fingerprint_differences(folder) == []
    data = json.loads(recorded.read_text())
    data["models"]["298"] = "cccc"
    recorded.write_text(json.dumps(data))
    (difference,) = testmodels.fingerprint_differences(folder)
    assert "Dataset298_TotalSegmentator_total_6mm_1559subj: weights aaaa, recorded cccc" == difference
    data["recipe"] = "0123"
    recorded.write_text(json.dumps(data))
    assert "another version of testmodels.py" in testmodels.fingerprint_differences(folder)[0]


@pytest.mark.parametrize("size", ["tiny", "fitted", "known", "realistic"])
def test_kinds_have_their_own_folders(size):
    folder = testmodels.weights_folder(size=size)
    assert folder.name.startswith(testmodels._kind(size) + "-")
