"""The task catalogue holds every official task with the official facts."""
import json
import subprocess
import sys

import pytest

from SegmentationLogic.catalogue import load_catalogue
from SegmentationLogic.cli import main
from SegmentationLogic.errors import UnknownTaskError

REFERENCE_DUMP = r"""
import json
from totalsegmentator.python_api import get_task_config
from totalsegmentator.registry import TASKS, requires_license, task_modality
from totalsegmentator.map_to_binary import class_map
from totalsegmentator.map_tasks_config import TASK_CONFIGS, TASK_ID_WEIGHTS_CONFIGS
out = {}
for t in TASKS:
    if t in ("test", "total_highres_test"):
        continue
    modes = {}
    for q, kw in (("normal", {}), ("fast", {"fast": True}), ("fastest", {"fastest": True})):
        if requires_license(t):  # get_task_config exits without a licence: read the raw entry
            if q != "normal":
                continue
            cfg = dict(TASK_CONFIGS[t])
        else:
            try:
                cfg = get_task_config(t, quiet=True, **kw)
            except ValueError:
                continue
        ids = cfg["task_id"] if isinstance(cfg["task_id"], list) else [cfg["task_id"]]
        modes[q] = {"ids": ids, "folders": [TASK_ID_WEIGHTS_CONFIGS[i]["foldername"] for i in ids],
                    "trainer": cfg["trainer"], "resample": cfg.get("resample"),
                    "configuration": cfg.get("model", "3d_fullres"), "crop": cfg.get("crop")}
    out[t] = {"modality": task_modality(t), "licensed": requires_license(t),
              "classes": {str(k): v for k, v in class_map[t].items()}, "modes": modes}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def reference():
    out = subprocess.run([sys.executable, "-c", REFERENCE_DUMP], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def _xyz(v):
    if v is None:
        return None
    return tuple([float(v)] * 3) if isinstance(v, (int, float)) else tuple(float(x) for x in v)


def test_every_official_task_with_its_facts(reference):
    cat = load_catalogue()
    assert set(cat.task_names()) == set(reference)
    for name, ref in reference.items():
        task = cat.task(name)
        assert task.modality == ref["modality"], name
        assert task.licensed == ref["licensed"], name
        assert {str(k): v for k, v in task.classes.items()} == ref["classes"], name
        for quality, rm in ref["modes"].items():
            mode = task.mode(quality)
            assert [m.dataset for m in mode.models] == rm["ids"], (name, quality)
            assert [m.folder for m in mode.models] == rm["folders"], (name, quality)
            assert all(m.trainer == rm["trainer"] for m in mode.models), (name, quality)
            assert all(m.configuration == rm["configuration"] for m in mode.models), (name, quality)
            assert mode.resample == _xyz(rm["resample"]), (name, quality)
            assert (list(mode.crop) if mode.crop else None) == rm["crop"], (name, quality)


def test_multi_part_tasks_cover_all_classes_once():
    cat = load_catalogue()
    for name in ("total", "total_mr", "headneck_muscles", "total_v3"):
        task = cat.task(name)
        names = [c for m in task.mode("normal").models for c in m.classes.values()]
        assert sorted(names) == sorted(task.classes.values()), name


def test_crop_rules_follow_the_official_tool():
    cat = load_catalogue()
    lv = cat.task("liver_vessels").mode("normal")
    assert lv.crop == ("liver",) and lv.crop_model == ("total", "fastest") and lv.crop_addon_mm == (20, 20, 20)
    assert cat.task("lung_vessels").mode("normal").crop_model == ("total", "fast")  # robust crop: 3 mm
    assert cat.task("liver_segments_mr").mode("normal").crop_model == ("total_mr", "fast")
    assert cat.task("abdominal_muscles").mode("normal").crop_model == ("body", "fast")
    teeth = cat.task("teeth").mode("normal")
    assert teeth.crop_model == ("craniofacial_structures", "normal") and teeth.crop_addon_mm == (10, 10, 10)
    assert cat.task("body").mode("fastest").quality == "fast"  # no 6 mm body model beyond 'fast'
    with pytest.raises(UnknownTaskError, match="no fast mode"):
        cat.task("liver_vessels").mode("fast")


def test_models_for_roi_subset_runs_only_needed_parts():
    from SegmentationLogic.pipeline.plan import required_models

    models = required_models("total", "normal", roi_subset=["liver", "brain"])
    assert [m.dataset for m in models] == [298, 291, 294]  # crop model, organs, muscles (brain)
    assert [m.dataset for m in required_models("total_mr", "normal", roi_subset=["liver"])] == [852, 850]
    assert [m.dataset for m in required_models("liver_vessels")] == [298, 8]


def test_weights_urls_are_the_official_release_urls():
    cat = load_catalogue()
    assert cat.weights_url(298) == ("https://github.com/wasserth/TotalSegmentator/releases/download/"
                                    "v2.0.0-weights/Dataset298_TotalSegmentator_total_6mm_1559subj.zip")
    assert cat.weights_url(301) is None  # licensed: licence server


def test_unknown_task_suggests_close_names(capsys):
    with pytest.raises(UnknownTaskError, match="Unknown task 'totl'") as e:
        load_catalogue().task("totl")
    assert "total" in e.value.fix
    assert main(["classes", "totl"]) == 1
    assert "Unknown task 'totl'" in capsys.readouterr().err


def test_cli_lists_tasks_and_classes(capsys):
    assert main(["list-tasks"]) == 0
    out = capsys.readouterr().out
    assert "liver_vessels" in out and "heartchambers_highres" in out and "51 tasks" in out
    header, *rows = out.split("\n\n")[0].splitlines()
    for column in ("MOD", "LICENCE", "QUALITIES", "DESCRIPTION"):  # every cell starts under its header
        start = header.index(column)
        assert all(row[start - 2:start] == "  " and row[start] != " " for row in rows), column
    end = header.index("CLASSES") + len("CLASSES")  # counts are right-aligned under theirs
    assert all(row[end - 1].isdigit() and row[end] == " " for row in rows)
    assert main(["classes", "total", "--json"]) == 0
    classes = json.loads(capsys.readouterr().out)
    assert classes["1"] == "spleen" and classes["117"] == "costal_cartilages" and len(classes) == 117
