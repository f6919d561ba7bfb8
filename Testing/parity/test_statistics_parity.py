"""Statistics options: the same numbers as the official `get_basic_statistics` on the same labelmaps.

Real labelmaps (the official reference segmentations of the example CT and MR, and a crop
of the CT in which more classes touch the border), every combination of aggregation
(mean / median), extra metrics and the border rule, plus roi_subset. The official function
runs in one subprocess and writes its statistics.json; ours must equal it value for value
and, without our "excluded" notes, text for text. The notes themselves: present exactly on
the classes the official file zeroes because they touch the border.
"""
import itertools
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from SegmentationLogic.catalogue import load_catalogue
from SegmentationLogic.outputs.statistics import EXCLUDED_KEY, border_labels, segment_statistics, without_notes

pytestmark = [pytest.mark.parity]

RUNNER = Path(__file__).resolve().parents[1] / "support" / "official_statistics.py"
OPTIONS = list(itertools.product(["mean", "median"], [False, True], [True, False]))  # metric, extra, exclude border


def _inputs(example, tmp):
    ct, seg = nib.load(example("example_ct_sm.nii.gz")), nib.load(example("example_seg.nii.gz"))
    crop = (slice(10, 100), slice(20, 90), slice(4, 22))  # cuts organs: more border classes, other boxes
    nib.save(nib.Nifti1Image(np.asanyarray(ct.dataobj)[crop], ct.affine, ct.header), tmp / "ct_crop.nii.gz")
    nib.save(nib.Nifti1Image(np.asanyarray(seg.dataobj)[crop], seg.affine, seg.header), tmp / "seg_crop.nii.gz")
    return {"ct": (example("example_ct_sm.nii.gz"), example("example_seg.nii.gz"), "total"),
            "ct_crop": (tmp / "ct_crop.nii.gz", tmp / "seg_crop.nii.gz", "total"),
            "mr": (example("example_mr_sm.nii.gz"), example("example_seg_mr.nii.gz"), "total_mr")}


@pytest.fixture(scope="module")
def official(tmp_path_factory, example):
    tmp = tmp_path_factory.mktemp("stats_parity")
    inputs = _inputs(example, tmp)
    cases = []
    for name, (ct, seg, task) in inputs.items():
        for metric, extra, exclude in OPTIONS:
            cases.append({"name": name, "seg": str(seg), "ct": str(ct), "task": task, "roi_subset": None,
                          "metric": metric, "exclude_masks_at_border": exclude, "extra_metrics": extra})
    cases.append({**cases[0], "roi_subset": ["liver", "spleen", "kidney_left", "vertebrae_L1"], "metric": "median",
                  "extra_metrics": True})
    for i, c in enumerate(cases):
        c["out"] = str(tmp / f"official_{i}.json")
    (tmp / "cases.json").write_text(json.dumps(cases))
    subprocess.run([sys.executable, str(RUNNER), str(tmp / "cases.json")], check=True, timeout=600)
    return cases


def test_statistics_options_match_the_official_function(official):
    cat = load_catalogue()
    for case in official:
        seg_img, ct_img = nib.load(case["seg"]), nib.load(case["ct"])
        seg = np.asanyarray(seg_img.dataobj)
        ours = segment_statistics(seg, np.asanyarray(ct_img.dataobj), ct_img.header.get_zooms(),
                                  cat.task(case["task"]).classes, case["roi_subset"], case["metric"],
                                  case["extra_metrics"], not case["exclude_masks_at_border"])
        theirs_text = Path(case["out"]).read_text()
        what = {k: case[k] for k in ("name", "metric", "extra_metrics", "exclude_masks_at_border", "roi_subset")}
        assert without_notes(ours) == json.loads(theirs_text), what
        assert json.dumps(without_notes(ours), indent=4) == theirs_text, what
        classes = cat.task(case["task"]).classes
        border = {classes[v] for v in border_labels(seg) if v in classes}
        noted = {k for k, v in ours.items() if EXCLUDED_KEY in v}
        assert noted == (border & set(ours) if case["exclude_masks_at_border"] else set()), what


def test_the_border_rule_is_visible_where_it_applies(official):
    """The example CT: the liver touches the border, so it has no volume, and the file says why."""
    case = official[0]
    seg_img, ct_img = nib.load(case["seg"]), nib.load(case["ct"])
    stats = segment_statistics(np.asanyarray(seg_img.dataobj), np.asanyarray(ct_img.dataobj),
                               ct_img.header.get_zooms(), load_catalogue().task("total").classes)
    assert stats["liver"]["volume"] == 0.0 and "border" in stats["liver"][EXCLUDED_KEY]
    assert "--stats_include_incomplete" in stats["liver"][EXCLUDED_KEY]
    counted = [k for k, v in stats.items() if v["volume"] > 0]
    assert counted and all(EXCLUDED_KEY not in stats[k] for k in counted)
