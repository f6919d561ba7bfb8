"""The engine's behaviour a user notices, beyond parity: errors, cancel, outputs, reuse.

Exactness against the official tool is in test_parity.py; here the engine runs alone on
the real example CT with the test models (6 mm model: about a second per run).
"""
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from SegmentationLogic.pipeline import geometry, postprocessing
from SegmentationLogic.imaging.orientation import to_canonical
from SegmentationLogic.errors import (Cancelled, DeviceError, InputImageError, OutOfMemoryError, SegmentationError,
                                      UnknownTaskError, WeightsMissingError)
from SegmentationLogic.catalogue import load_catalogue
from SegmentationLogic.outputs.labelmap import read_label_table
from SegmentationLogic.outputs.writer import TEST_MODEL_DESCRIPTION
from SegmentationLogic.pipeline import Segmenter
from SegmentationLogic.pipeline.plan import plan_run, required_models
from SegmentationLogic.progress import CancelToken, Progress

CT = "example_ct_sm.nii.gz"


@pytest.fixture(scope="module")
def segmenter(test_weights):
    return Segmenter(device="cpu", weights_dir=test_weights, download=False)


@pytest.fixture(scope="module")
def fastest(segmenter, example, tmp_path_factory):
    """One 6 mm run written as a multilabel file, shared by several tests."""
    out = tmp_path_factory.mktemp("fastest") / "seg.nii.gz"
    events = []
    result = segmenter.segment(example(CT), out, quality="fastest", statistics=True, progress=events.append)
    return result, out, events


def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


# -- results -------------------------------------------------------------------------------

def test_multilabel_output_has_input_geometry_names_and_sidecars(fastest, example):
    result, out, _ = fastest
    ct = nib.load(example(CT))
    seg = nib.load(out)
    assert seg.shape == ct.shape and np.array_equal(seg.affine, ct.affine)
    assert seg.get_data_dtype() == np.uint8
    assert seg.header["sform_code"] == ct.header["sform_code"] and seg.header["qform_code"] == ct.header["qform_code"]
    labels = np.asanyarray(seg.dataobj)
    present = set(np.unique(labels)) - {0}
    table = read_label_table(seg)
    assert len(table) == 117 and table[5] == "liver" and table[117] == "costal_cartilages"
    assert present and present <= set(table)
    sidecar = json.loads((out.parent / "seg.labels.json").read_text())
    assert sidecar["task"] == "total" and sidecar["labels"]["5"] == "liver"
    assert "TEST MODEL" in sidecar["note"] and "TEST MODEL" in result.model_note
    # made with test models: every file says so (the labelmap in its description field)
    assert seg.header["descrip"].tobytes().rstrip(b"\0").decode() == TEST_MODEL_DESCRIPTION
    stats = json.loads((out.parent / "statistics.json").read_text())
    assert list(stats) == ["note"] + [table[k] for k in sorted(table)] and "TEST MODEL" in stats["note"]
    assert {"volume", "intensity"} <= set(stats["liver"]) <= {"volume", "intensity", "excluded"}
    assert all(v["volume"] == 0.0 for k, v in stats.items() if k != "note" and "excluded" in v)  # cut off: why
    assert result.statistics == {k: v for k, v in stats.items() if k != "note"}  # in memory: no file note
    assert 5 in present  # the known test model: the liver class answers soft tissue, which this CT has
    assert {p.name for p in out.parent.iterdir()} == {"seg.nii.gz", "seg.labels.json", "statistics.json"}


def test_progress_events_cover_the_stages_and_end_complete(fastest):
    _, _, events = fastest
    stages = [e["stage"] for e in events if e["event"] == "progress"]
    assert {"load", "predict", "save"} <= set(stages)
    tiles = [e for e in events if e["event"] == "progress" and "tile" in e["message"]]
    assert tiles and tiles[-1]["fraction"] == 1.0
    overall = [e["overall"] for e in events if e["event"] == "progress"]
    assert overall == sorted(overall) and overall[-1] == 1.0


def test_per_class_output_matches_multilabel(segmenter, fastest, example, tmp_path):
    result, out, _ = fastest
    folder = tmp_path / "masks"
    segmenter.segment(example(CT), folder, quality="fastest", ml=False)
    multilabel = np.asanyarray(nib.load(out).dataobj)
    names = json.loads((folder / "labels.json").read_text())["labels"]
    assert len(names) == 117
    for value, name in names.items():
        mask = nib.load(folder / f"{name}.nii.gz")
        assert mask.get_data_dtype() == np.uint8
        assert mask.header["descrip"].tobytes().rstrip(b"\0").decode() == TEST_MODEL_DESCRIPTION
        assert np.array_equal(np.asanyarray(mask.dataobj), (multilabel == int(value)).astype(np.uint8)), name


def test_image_in_array_out_writes_nothing(segmenter, fastest, example, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = segmenter.segment(nib.load(example(CT)), None, quality="fastest")
    assert result.files == [] and _files(tmp_path) == []
    assert np.array_equal(result.array, np.asanyarray(nib.load(fastest[1]).dataobj))


def test_second_run_reuses_loaded_models(segmenter, fastest, example):
    before = len(segmenter.models)
    result = segmenter.segment(example(CT), None, quality="fastest")
    assert len(segmenter.models) == before
    assert result.timings.get("load", 0.0) < 0.5


def test_deterministic_mode_changes_nothing_on_the_cpu(segmenter, fastest, example):
    """--deterministic (for GPUs) is accepted on the CPU, gives the same labels (the CPU is
    reproducible anyway) and leaves torch's global settings as they were."""
    import torch

    before = (torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled())
    result = segmenter.segment(example(CT), None, quality="fastest", deterministic=True)
    assert np.array_equal(result.array, fastest[0].array)
    assert (torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled()) == before


def test_timings_split_the_run_around_the_network(fastest):
    timings = fastest[0].timings
    assert timings["forward"] > 0 and timings["sliding_window"] > 0
    parts = sum(timings.get(k, 0.0) for k in ("imports", "read", "load", "preprocess", "forward", "sliding_window",
                                               "merge", "postprocess", "save"))
    assert parts <= timings["total"] * 1.05 + 0.01


# -- bad requests: clear errors, nothing written ------------------------------------------------

@pytest.mark.parametrize("kwargs, error, words", [
    (dict(task="totl"), UnknownTaskError, ["Unknown task 'totl'", "total"]),
    (dict(task="liver_vessels", roi_subset=["liver"]), UnknownTaskError, ["roi_subset", "liver_vessels"]),
    (dict(roi_subset=["livr"]), UnknownTaskError, ["livr", "liver"]),
    (dict(task="liver_vessels", quality="fast"), UnknownTaskError, ["no fast mode", "normal"]),
    (dict(quality="turbo"), UnknownTaskError, ["turbo", "fastest"]),
    (dict(device="quantum"), DeviceError, ["quantum", "cpu"]),
])
def test_bad_request_gives_cause_and_fix(segmenter, example, tmp_path, kwargs, error, words):
    with pytest.raises(error) as info:
        segmenter.segment(example(CT), tmp_path / "out" / "seg.nii.gz", **kwargs)
    text = str(info.value)
    for w in words:
        assert w in text
    assert info.value.fix
    assert _files(tmp_path) == []


def test_missing_device_says_what_exists(segmenter, example, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(DeviceError) as info:
        segmenter.segment(example(CT), tmp_path / "seg.nii.gz", quality="fastest", device="cuda:0")
    assert "no CUDA GPU" in info.value.cause and "cpu" in info.value.fix


def test_missing_weights_without_download(example, tmp_path):
    empty = tmp_path / "weights"
    empty.mkdir()
    with pytest.raises(WeightsMissingError) as info:
        Segmenter(device="cpu", weights_dir=empty).segment(example(CT), tmp_path / "out" / "seg.nii.gz",
                                                            quality="fastest", download=False)
    assert "Dataset298_TotalSegmentator_total_6mm_1559subj" in info.value.cause
    assert "import-weights" in info.value.fix
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("task", [t.name for t in load_catalogue().tasks()])
def test_every_task_plans_its_run_and_names_the_weights_it_lacks(task, example, tmp_path):
    """All tasks the panel offers: the run plan holds exactly the models a download fetches,
    and without weights the error names each missing model folder (nothing written)."""
    cat = load_catalogue()
    spec = cat.task(task)
    empty = tmp_path / "weights"
    empty.mkdir()
    engine = Segmenter(device="cpu", weights_dir=empty, download=False)
    for quality in spec.qualities:
        ran = plan_run(task, quality).all_models()
        assert ran and sorted(m.folder for m in ran) == sorted(m.folder for m in required_models(task, quality))
    with pytest.raises(WeightsMissingError) as info:
        engine.segment(example(CT), tmp_path / "out" / "seg.nii.gz", task=task, quality=spec.qualities[0])
    for model in required_models(task, spec.qualities[0]):
        assert model.folder in info.value.cause
    assert not (tmp_path / "out").exists()


def test_output_that_is_the_input_is_refused_and_the_input_kept(segmenter, example, tmp_path):
    ct = tmp_path / "ct.nii.gz"
    ct.write_bytes(Path(example(CT)).read_bytes())
    before = ct.read_bytes()
    with pytest.raises(SegmentationError) as info:
        segmenter.segment(ct, ct, quality="fastest")
    assert "the input image" in info.value.cause and info.value.fix
    assert ct.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz"]


def test_missing_input_and_4d_input(segmenter, example, tmp_path):
    with pytest.raises(InputImageError):
        segmenter.segment(tmp_path / "nope.nii.gz", tmp_path / "seg.nii.gz", quality="fastest")
    ct = nib.load(example(CT))
    four_d = nib.Nifti1Image(np.stack([np.asanyarray(ct.dataobj)] * 2, axis=-1), ct.affine)
    with pytest.raises(InputImageError) as info:
        segmenter.segment(four_d, tmp_path / "seg.nii.gz", quality="fastest")
    assert "4" in info.value.cause
    assert _files(tmp_path) == []


def test_ct_task_on_an_mr_volume_is_refused_unless_the_user_insists(segmenter, example, tmp_path):
    out = tmp_path / "out" / "seg.nii.gz"
    with pytest.raises(InputImageError) as info:
        segmenter.segment(example("example_mr_sm.nii.gz"), out, quality="fastest")
    error = info.value
    assert "does not look like a CT" in error.cause and "'total' is made for CT" in error.cause
    assert "total_mr" in error.fix and "--ignore_modality" in error.fix and "check_modality=False" in error.fix
    assert _files(tmp_path) == []

    events = []
    result = segmenter.segment(example("example_mr_sm.nii.gz"), out, quality="fastest", check_modality=False,
                               progress=events.append)
    assert out.is_file() and result.class_map[5] == "liver"
    assert not any("look" in e.get("message", "") for e in events if e.get("event") == "log")


def test_mr_task_on_a_ct_volume_runs_with_a_warning(example):
    from SegmentationLogic.imaging import check_modality, load_image

    ct = load_image(example(CT))
    warning = check_modality(ct, "total_mr", "MR")
    assert "looks like CT" in warning and "'total_mr' is for MR" in warning  # the one modality-warning text
    assert check_modality(ct, "total", "CT") is None
    assert check_modality(load_image(example("example_mr_sm.nii.gz")), "total_mr", "MR") is None


def test_force_split_on_a_short_image_explains(segmenter, example, tmp_path):
    # 30 slices at 3 mm: the official split crashes on this; we say why instead
    with pytest.raises(InputImageError) as info:
        segmenter.segment(example(CT), tmp_path / "seg.nii.gz", quality="fast", force_split=True)
    assert "58" in info.value.cause and "force_split" in info.value.fix
    assert _files(tmp_path) == []


def test_out_of_memory_is_refused_before_running(segmenter, example, tmp_path, monkeypatch):
    monkeypatch.setenv("TOTALSEG_MEMORY_LIMIT_GB", "0.001")
    events = []
    with pytest.raises(OutOfMemoryError) as info:
        segmenter.segment(example(CT), tmp_path / "seg.nii.gz", quality="fastest", progress=events.append)
    assert "GB" in info.value.cause and "--fast" in info.value.fix
    assert not [e for e in events if "tile" in e.get("message", "")]  # no prediction was started
    assert _files(tmp_path) == []


def test_cancel_mid_prediction_leaves_nothing_and_engine_stays_usable(segmenter, example, tmp_path):
    token = CancelToken()
    seen = []

    def on_event(event):
        seen.append(event)
        if "tile 1/" in event.get("message", ""):
            token.cancel()

    with pytest.raises(Cancelled):
        segmenter.segment(example(CT), tmp_path / "out" / "seg.nii.gz", quality="fastest",
                          progress=Progress(on_event, token))
    tiles = [e for e in seen if "tile" in e.get("message", "")]
    assert len(tiles) == 1  # stopped at the first tile
    assert _files(tmp_path) == []
    again = segmenter.segment(example(CT), tmp_path / "out" / "seg.nii.gz", quality="fastest")
    assert again.files and again.array.any()


def test_preview_png_is_written_with_the_result(segmenter, example, tmp_path):
    events = []
    result = segmenter.segment(example(CT), tmp_path / "seg.nii.gz", quality="fastest", preview=True,
                               progress=events.append)
    png = tmp_path / "preview_total.png"
    assert png in [type(png)(f) for f in result.files]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


# -- the official numerics, unit by unit ------------------------------------------------------

def test_resampled_shape_rounds_half_to_even():
    affine = np.diag([6.0, 6.0, 6.0, 1.0])
    data = np.zeros((61, 63, 15), np.int16)
    out, new_affine, resampled = geometry.resample_to_spacing(data, np.diag([3.0, 3.0, 3.0, 1.0]), (6.0, 6.0, 6.0))
    assert resampled and out.shape == (30, 32, 8) and out.dtype == np.int32  # 30.5 -> 30, 31.5 -> 32, 7.5 -> 8
    assert np.array_equal(new_affine, affine)
    same, _, resampled = geometry.resample_to_spacing(data, np.diag([3.0, 3.0, 3.0, 1.0]), (3.0, 3.0, 3.0))
    assert not resampled and same is data  # equal spacing: no resampling, no cast


def test_crop_margin_is_truncated_in_voxels_and_values_to_int32():
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    assert list(geometry.addon_voxels((20, 20, 20), affine)) == [6, 6, 6]  # 6.67 voxels -> 6
    mask = np.zeros((40, 40, 40), bool)
    mask[20, 10:12, 39] = True
    bbox = geometry.bbox_from_mask(mask, [6, 6, 6])
    assert bbox == [[14, 27], [4, 18], [33, 40]]
    values = np.full((40, 40, 40), -2.7)
    data, new_affine = geometry.crop(values, affine, bbox)
    assert data.dtype == np.int32 and data.shape == (13, 14, 7) and data[0, 0, 0] == -2
    assert list(new_affine[:3, 3]) == [42.0, 12.0, 99.0]


def _naive_remove_small_blobs(seg, label, threshold):
    from scipy import ndimage

    comp, _ = ndimage.label(seg == label)
    counts = np.bincount(comp.ravel())
    out = seg.copy()
    small = np.flatnonzero(counts <= threshold)
    out[np.isin(comp, small[small > 0])] = 0
    return out


def test_blob_cleanup_equals_full_volume_labelling():
    rng = np.random.default_rng(3)
    seg = (rng.random((30, 28, 26)) < 0.3).astype(np.uint8) * rng.integers(1, 4, (30, 28, 26)).astype(np.uint8)
    ours = postprocessing.remove_small_blobs(seg.copy(), [1, 2, 3], 3.5)
    expected = seg.copy()
    for label in (1, 2, 3):
        expected = np.where(seg == label, _naive_remove_small_blobs(seg, label, 3.5), expected)
    assert np.array_equal(ours, expected)
    largest = postprocessing.keep_largest_blob(seg.copy(), [2])
    from scipy import ndimage

    comp, _ = ndimage.label(seg == 2)
    keep = np.argmax(np.bincount(comp.ravel())[1:]) + 1
    assert np.array_equal(largest == 2, comp == keep)
    assert np.array_equal(largest[seg != 2], seg[seg != 2])


def test_statistics_skip_classes_touching_the_border():
    from SegmentationLogic.outputs.statistics import basic_statistics

    seg = np.zeros((20, 20, 20), np.uint8)
    seg[8:12, 8:12, 8:12] = 1  # inside
    seg[0:4, 8:12, 8:12] = 2  # touches the border
    ct = np.arange(8000, dtype=np.int16).reshape(20, 20, 20)
    zooms = (np.float32(1.5), np.float32(1.5), np.float32(2.0))
    stats = basic_statistics(seg, ct, zooms, {1: "a", 2: "b", 3: "c"})
    assert stats["a"]["volume"] == 64 * 4.5 and stats["a"]["intensity"] == pytest.approx(ct[seg == 1].mean())
    assert stats["b"] == {"volume": 0.0, "intensity": 0.0}
    assert stats["c"] == {"volume": 0.0, "intensity": 0.0}


def test_in_memory_reader_equals_nnunet_reading_the_file(test_weights, example):
    """The array handed to nnU-Net in memory is what its NibabelIOWithReorient reads from the
    file the official tool writes, on an oblique, resampled image that nnU-Net resamples again."""
    import torch

    from SegmentationLogic.pipeline import inference
    from SegmentationLogic.catalogue import load_catalogue
    from SegmentationLogic.weights import model_dir

    spec = load_catalogue().task("total").mode("fast").models[0]
    model = inference.LoadedModel(model_dir(spec, test_weights), torch.device("cpu"), [0])
    assert model.reader_name == "NibabelIOWithReorient"
    img = nib.load(example(CT))
    angle = np.deg2rad(7.0)
    rot = np.eye(4)
    rot[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    data, affine = to_canonical(geometry.exact_values(img), rot @ img.affine)
    data, affine, _ = geometry.resample_to_spacing(data, affine, (3.7, 3.3, 4.1))
    zooms = geometry.header_zooms(affine)
    in_memory = inference.preprocess(model, data, zooms, affine)
    with __import__("tempfile").TemporaryDirectory() as tmp:
        from_file = inference.preprocess(model, data, zooms, affine, workdir=tmp)
    assert torch.equal(in_memory[0], from_file[0])
    assert in_memory[1]["spacing"] == from_file[1]["spacing"]
    a = inference.predict(model, data, zooms, affine, 0.8, via_files=False)
    b = inference.predict(model, data, zooms, affine, 0.8, via_files=True)
    assert a.shape == data.shape and a.any()
    assert np.array_equal(a, b)


def test_device_list_has_the_cpu():
    from SegmentationLogic.system.devices import available_devices

    devices = available_devices()
    assert devices[-1]["id"] == "cpu" and devices[-1]["name"].startswith("CPU")
    assert all({"id", "name", "memory_gb"} <= set(d) for d in devices)


def test_files_from_real_weights_keep_the_input_description_and_the_official_statistics(tmp_path):
    """The TEST MODEL labels appear only with a test-model note: with real weights the labelmap
    keeps the input's description and statistics.json is the official dictionary."""
    from SegmentationLogic.outputs.labelmap import multilabel_image
    from SegmentationLogic.outputs.writer import AtomicWriter, statistics_document

    ref = nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4))
    ref.header["descrip"] = b"scanner protocol X"
    stats = {"liver": {"volume": 1.5, "intensity": 40.0}}
    for note in (None, "TEST MODEL built by ..."):
        writer = AtomicWriter(note=note)
        writer.nifti(multilabel_image(np.zeros((4, 4, 4), np.uint8), ref, {5: "liver"}),
                     tmp_path / f"{bool(note)}.nii.gz")
        writer.json(statistics_document(stats, note), tmp_path / f"{bool(note)}.json")
        writer.commit()
    assert nib.load(tmp_path / "False.nii.gz").header["descrip"].tobytes().rstrip(b"\0") == b"scanner protocol X"
    assert json.loads((tmp_path / "False.json").read_text()) == stats
    assert nib.load(tmp_path / "True.nii.gz").header["descrip"].tobytes().rstrip(b"\0").decode() == \
        TEST_MODEL_DESCRIPTION
    assert json.loads((tmp_path / "True.json").read_text()) == {"note": "TEST MODEL built by ...", **stats}


def test_preview_draws_a_label_enclosed_by_another(tmp_path):
    """--preview on a result where one structure lies inside another (its faces all border
    that structure): the renderer must not fail on the inner label (it did: IndexError)."""
    from SegmentationLogic.outputs.preview import render_preview

    seg = np.zeros((40, 40, 40), np.uint8)
    seg[8:32, 8:32, 8:32] = 3
    seg[16:24, 16:24, 16:24] = 79
    png = render_preview(nib.Nifti1Image(seg, np.diag([2.0, 2.0, 2.0, 1.0])), {3: "liver", 79: "spinal_cord"},
                         tmp_path / "p.png")
    assert Path(png).read_bytes()[:4] == b"\x89PNG"
