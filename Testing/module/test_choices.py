"""What the panel offers: every task, the qualities each really has, structures, devices."""
import pytest

from SegmentationLogic.catalogue import load_catalogue
from SegmentationLogic.errors import UnknownTaskError
from TotalSegmentatorLib import choices


def test_every_task_is_offered_main_ones_first_licensed_marked():
    items = choices.task_items()
    cat = load_catalogue()
    assert {i.name for i in items} == set(cat.task_names())
    assert [i.name for i in items[:2]] == ["total", "total_mr"]
    assert {i.modality for i in items} == {"CT", "MR"}
    for item in items:
        task = cat.task(item.name)
        assert task.description in item.tooltip
        assert ("[licence required]" in item.text) == task.licensed
        assert ("licence key" in item.tooltip) == task.licensed
    total = next(i for i in items if i.name == "total")
    assert total.text == "total (CT, 117 structures)"


def test_qualities_only_where_the_task_has_them():
    assert choices.qualities_for("total") == ("normal", "fast", "fastest")
    assert choices.qualities_for("body") == ("normal", "fast")
    assert choices.qualities_for("liver_vessels") == ("normal",)
    assert choices.best_quality("body", "fastest") == "fast"
    assert choices.best_quality("liver_vessels", "fast") == "normal"
    assert choices.best_quality("total", "fastest") == "fastest"


def test_structures_searchable_and_only_for_roi_subset_tasks():
    items = choices.structure_items("total")
    assert len(items) == 117 and items[0].label == 1
    kidneys = choices.filter_structures(items, "KIDNEY left")
    assert [i.name for i in kidneys] == ["kidney_left", "kidney_cyst_left"]
    assert {i.name for i in choices.filter_structures(items, "lung_upper")} == {"lung_upper_lobe_left",
                                                                                 "lung_upper_lobe_right"}
    assert choices.structure_items("liver_vessels") == []
    assert len(choices.structure_items("total_mr")) == 50


def test_roi_subset_errors_say_what_to_do():
    assert choices.validate_roi_subset("total", ["liver", "spleen"]) == ["liver", "spleen"]
    with pytest.raises(UnknownTaskError) as e:
        choices.validate_roi_subset("total", ["livre"])
    assert "'livre'" in e.value.cause and "Did you mean liver?" in e.value.fix
    with pytest.raises(UnknownTaskError) as e:
        choices.validate_roi_subset("lung_vessels", ["lung_trachea_bronchia"])
    assert "cannot segment a subset" in e.value.cause and "total" in e.value.fix


def test_devices_list_auto_cpu_each_gpu_by_name_and_apple_gpu():
    detected = [{"id": "cuda:0", "name": "NVIDIA RTX A6000", "memory_gb": 47.5},
                {"id": "cuda:1", "name": "NVIDIA T4", "memory_gb": 15.0},
                {"id": "cpu", "name": "CPU (16 cores)", "memory_gb": 62.7}]
    items = choices.device_items(detected)
    assert [(i.id, i.text) for i in items] == [
        ("auto", "Auto: GPU 0: NVIDIA RTX A6000, 48 GB"), ("cpu", "CPU (16 cores), 63 GB"),
        ("cuda:0", "GPU 0: NVIDIA RTX A6000, 48 GB"), ("cuda:1", "GPU 1: NVIDIA T4, 15 GB"),
        ("remote", "Remote server")]
    mac = choices.device_items([{"id": "mps", "name": "Apple GPU (Metal)", "memory_gb": None},
                                {"id": "cpu", "name": "CPU (10 cores)", "memory_gb": 32}])
    assert [i.id for i in mac] == ["auto", "cpu", "mps", "remote"] and mac[0].text == "Auto: Apple GPU (MPS)"
    assert choices.device_items([{"id": "cpu", "name": "CPU (2 cores)"}])[0].text == "Auto: CPU (no GPU found)"
    # before the engine ran (or where it is not installed): the remote server is offered all the same
    assert [(i.id, i.text) for i in choices.device_items(None)] == [
        ("auto", "Auto (detecting devices...)"), ("cpu", "CPU"), ("remote", "Remote server")]


def test_wrong_modality_warning():
    assert choices.modality_warning("total", ("CT", 0.99, "air")) is None
    text = choices.modality_warning("total", ("MR", 0.85, "no voxel below -100"))
    assert "looks like MR" in text and "'total' is for CT" in text and "total_mr" in text and "-100" in text
    assert choices.modality_warning("total", ("MR", 0.5, "unsure")) is None, "no warning on a weak guess"
    assert "looks like CT" in choices.modality_warning("total_mr", ("CT", 0.9, ""))
