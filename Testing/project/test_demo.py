"""`make demo` end to end, where the real weights cannot be had: the TEST model runs and
everything it writes says so."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from SegmentationLogic.errors import WeightsDownloadError

REPO = Path(__file__).resolve().parents[2]
HAS_PIPELINE = importlib.util.find_spec("SegmentationLogic.pipeline") is not None


def test_download_failure_is_one_plain_paragraph():
    from demo import download_failure_paragraph

    text = download_failure_paragraph(
        WeightsDownloadError("Could not download https://github.com/wasserth/TotalSegmentator/releases/x.zip: "
                             "connection refused.", "Check the internet connection."),
        "Dataset297_TotalSegmentator_total_3mm_1559subj")
    assert "\n" not in text and "Traceback" not in text
    assert "https://github.com/wasserth/TotalSegmentator/releases/x.zip: connection refused" in text
    assert "TEST model" in text and "NOT a real TotalSegmentator segmentation" in text
    assert "import-weights Dataset297_TotalSegmentator_total_3mm_1559subj.zip" in text
    offline = download_failure_paragraph(WeightsDownloadError("x"), "D", tried_download=False)
    assert "downloading is switched off (--no-download)" in offline


@pytest.mark.slow
@pytest.mark.skipif(not HAS_PIPELINE, reason="SegmentationLogic.pipeline (engine) is not in this checkout yet")
def test_demo_end_to_end_with_test_model(test_weights, example, tmp_path):
    env = dict(os.environ, TOTALSEG_WEIGHTS_PATH=str(tmp_path / "no_real_weights"),
               TOTALSEG_HOME_DIR=str(tmp_path / "home"),
               TOTALSEG_EXAMPLES_DIR=str(Path(example("example_ct_sm.nii.gz")).parent))
    run = subprocess.run([sys.executable, str(REPO / "Testing" / "demo.py"), "--output", str(tmp_path / "out"),
                          "--no-download", "--test-weights", str(test_weights), "--device", "cpu"],
                         capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = " ".join(run.stdout.split())  # paragraphs are wrapped
    assert "Traceback" not in out + run.stderr
    assert "are not installed and downloading is switched off" in out and "TEST model" in out
    assert "*** TEST MODEL" in out and "largest structures" in out

    folder = tmp_path / "out" / "total_fast_TEST_MODEL"
    summary = json.loads((folder / "demo_summary.json").read_text())
    assert summary["test_model"] is True and "TEST MODEL" in summary["weights"]
    assert summary["classes_found"] > 0 and summary["largest_structures_ml"]

    labelmap = nib.load(summary["labelmap"])
    ct = nib.load(summary["input"])
    assert labelmap.shape == ct.shape and np.allclose(labelmap.affine, ct.affine)
    values = np.unique(np.asanyarray(labelmap.dataobj))
    assert values.max() <= 117 and len(values) - 1 == summary["classes_found"]
    assert summary["statistics"] and json.loads(Path(summary["statistics"]).read_text())

    from png_pixels import read_png
    from SegmentationLogic.outputs.preview import NOTE_BANNER_RGB

    pixels = read_png(summary["preview"])
    banner = np.round(np.array(NOTE_BANNER_RGB) * 255).astype(int)
    assert np.sum(np.all(np.abs(pixels - banner) <= 2, axis=-1)) > 2000  # the TEST MODEL note is drawn
