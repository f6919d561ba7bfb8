"""Official run options without an official run: what they write and how they refuse.

-rp (the run manifest, with the official report's keys), -ss (no segmentation files, the
statistics and report still), -sp (nnU-Net's probabilities and properties, as the official
tool copies them), -ndm (no body/skin masks), -r without pyradiomics (a clear error), and
the CLI's -lt/-lc/--version (no -i/-o needed). The labelmaps of the resampling flags are
compared with the official tool in Testing/parity.
"""
import importlib.util
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from SegmentationLogic.errors import SegmentationError

CT = "example_ct_sm.nii.gz"
REPO = Path(__file__).resolve().parents[2]
# the keys of the official 2.18 report (python_api.build_run_report); ours adds its own version and the test-model note
OFFICIAL_REPORT_KEYS = {"totalsegmentator_version", "nnunetv2_version", "torch_version", "task", "modality",
                        "license_required", "device", "fast", "fastest", "save_lowres", "multilabel", "output_type",
                        "roi_subset", "input", "output", "num_classes", "classes", "runtime_seconds", "output_files"}


@pytest.fixture(scope="module")
def engine(test_weights):
    from SegmentationLogic.pipeline import Segmenter

    return Segmenter(device="cpu", weights_dir=test_weights, download=False)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "SegmentationLogic", *map(str, args)], capture_output=True,
                           text=True, timeout=300, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))


def test_report_has_the_official_keys_and_lists_the_files_written(engine, example, tmp_path):
    out, report = tmp_path / "masks", tmp_path / "run.json"
    result = engine.segment(example(CT), out, quality="fastest", ml=False, report=str(report))
    data = json.loads(report.read_text())
    assert set(data) == OFFICIAL_REPORT_KEYS | {"engine_version", "note"}
    assert "TEST MODEL" in data["note"]
    assert data["task"] == "total" and data["fastest"] is True and data["fast"] is False and data["multilabel"] is False
    assert data["classes"] == {str(k): v for k, v in result.class_map.items()}
    assert data["num_classes"] == len(data["classes"])
    assert data["output_files"] == sorted(p.name for p in out.glob("*.nii.gz")) and data["output_files"]
    assert data["output_type"] == "nifti" and data["device"] == "cpu"


def test_skip_saving_writes_statistics_and_report_but_no_segmentation(engine, example, tmp_path):
    out, report = tmp_path / "out" / "seg.nii.gz", tmp_path / "run.json"
    result = engine.segment(example(CT), out, quality="fastest", skip_saving=True, statistics=True,
                            report=str(report))
    assert not out.exists() and not out.with_name("seg.labels.json").exists()
    assert (out.parent / "statistics.json").is_file() and report.is_file()
    assert np.asanyarray(result.labelmap.dataobj).any()  # the caller still gets the result


def test_save_probabilities_writes_nnunets_npz_and_pkl(engine, example, tmp_path):
    target = tmp_path / "probs.npz"
    result = engine.segment(example(CT), tmp_path / "seg.nii.gz", quality="fastest", save_probabilities=str(target))
    with np.load(target) as npz:
        assert list(npz.keys()) == ["probabilities"]  # nnU-Net's save_probabilities file, copied as official
        probs = npz["probabilities"]
    assert probs.ndim == 4 and probs.shape[0] == max(result.class_map) + 1  # background + every class
    assert np.allclose(probs.sum(0), 1.0, atol=1e-2)  # softmax per voxel
    with open(target.with_suffix(".pkl"), "rb") as f:
        props = pickle.load(f)
    assert {"spacing", "shape_before_cropping", "bbox_used_for_cropping"} <= set(props)
    assert tuple(props["shape_before_cropping"]) == probs.shape[1:]  # the model input's grid, nnU-Net's axis order


def test_no_derived_masks_leaves_out_body_and_skin(engine, example, tmp_path):
    names = {}
    for ndm in (False, True):
        out = tmp_path / f"masks_{ndm}"
        engine.segment(example(CT), out, task="body", quality="fast", ml=False, no_derived_masks=ndm)
        names[ndm] = {p.name for p in out.glob("*.nii.gz")}
    assert {"body.nii.gz", "skin.nii.gz"} <= names[False]
    assert names[True] == names[False] - {"body.nii.gz", "skin.nii.gz"}


@pytest.mark.skipif(importlib.util.find_spec("radiomics") is not None, reason="pyradiomics is installed")
def test_radiomics_without_pyradiomics_is_a_clear_error_before_any_work(engine, example, tmp_path):
    out = tmp_path / "masks"
    with pytest.raises(SegmentationError) as e:
        engine.segment(example(CT), out, quality="fastest", ml=False, radiomics=True)
    assert "pyradiomics" in str(e.value) and "--radiomics out" in e.value.fix
    assert not out.exists()


def test_list_tasks_classes_and_version_need_no_input():
    tasks = _cli("segment", "-lt")
    assert tasks.returncode == 0, tasks.stderr
    assert "total_mr" in tasks.stdout and "liver_vessels" in tasks.stdout
    classes = _cli("segment", "-lc", "total_mr")
    assert classes.returncode == 0, classes.stderr
    assert "liver" in classes.stdout and "vertebrae" in classes.stdout
    version = _cli("segment", "--version")
    assert version.returncode == 0 and "TotalSegmentator 2.18" in version.stdout
