"""The official tool's extra commands as `python -m SegmentationLogic <command>`: behaviour and errors.

Parity with the official functions is in Testing/parity/test_tools_parity.py; here: what a
user sees when things are right and when they are not (missing masks, no licence, a
tampered classifier file, a classifier download with the wrong checksum).
"""
import json
import pickle

import nibabel as nib
import numpy as np
import pytest

from SegmentationLogic.cli import main
from SegmentationLogic.outputs.labelmap import read_label_table


def _multilabel(tmp_path, example):
    seg = nib.load(example("example_seg.nii.gz"))
    assert read_label_table(seg), "the example reference segmentation carries its label table"
    return example("example_seg.nii.gz"), seg


def test_combine_masks_whole_lung_from_a_multilabel_file(tmp_path, example, capsys):
    path, seg = _multilabel(tmp_path, example)
    table = {v: k for k, v in read_label_table(seg).items()}
    out = tmp_path / "lung.nii.gz"
    assert main(["combine-masks", "-i", str(path), "-o", str(out), "-m", "lung", "--multilabel"]) == 0
    lung = nib.load(out)
    lobes = [table[n] for n in ("lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right",
                                "lung_middle_lobe_right", "lung_lower_lobe_right")]
    assert np.array_equal(np.asanyarray(lung.dataobj), np.isin(np.asanyarray(seg.dataobj), lobes).astype(np.uint8))
    assert read_label_table(lung) == {1: "lung"}
    assert str(out) in capsys.readouterr().out


def test_combine_masks_from_a_folder_and_by_class_names(tmp_path, example):
    path, seg = _multilabel(tmp_path, example)
    data = np.asanyarray(seg.dataobj)
    table = {v: k for k, v in read_label_table(seg).items()}
    masks = tmp_path / "masks"
    masks.mkdir()
    for name in ("liver", "spleen"):
        nib.save(nib.Nifti1Image((data == table[name]).astype(np.uint8), seg.affine), masks / f"{name}.nii.gz")
    out = tmp_path / "ls.nii.gz"
    assert main(["combine-masks", "-i", str(masks), "-o", str(out), "-m", "liver,spleen"]) == 0
    want = np.isin(data, [table["liver"], table["spleen"]])
    assert np.array_equal(np.asanyarray(nib.load(out).dataobj) > 0, want)


def test_combine_masks_names_what_is_missing(tmp_path, example, capsys):
    masks = tmp_path / "masks"
    masks.mkdir()
    path, seg = _multilabel(tmp_path, example)
    nib.save(nib.Nifti1Image(np.zeros(seg.shape, np.uint8), seg.affine), masks / "femur_left.nii.gz")
    assert main(["combine-masks", "-i", str(masks), "-o", str(tmp_path / "p.nii.gz"), "-m", "pelvis"]) == 1
    err = capsys.readouterr().err
    assert "femur_right.nii.gz" in err and "hip_left.nii.gz" in err and "Fix:" in err
    assert not (tmp_path / "p.nii.gz").exists()
    plain = tmp_path / "plain.nii.gz"  # a labelmap without label table: its values mean nothing
    nib.save(nib.Nifti1Image(np.asanyarray(seg.dataobj), seg.affine), plain)
    assert main(["combine-masks", "-i", str(plain), "-o", str(tmp_path / "q.nii.gz"), "-m", "lung"]) == 1
    assert "no label table" in capsys.readouterr().err


def test_info_lists_the_registry(capsys):
    assert main(["info", "--json"]) == 0
    reg = json.loads(capsys.readouterr().out)
    assert reg["tasks"]["total"]["classes"]["5"] == "liver" and reg["tasks"]["total_mr"]["modality"] == "MR"
    assert reg["tasks"]["heartchambers_highres"]["license_required"] is True
    assert main(["info", "--classes", "-ta", "liver_vessels", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"1": "liver_vessels", "2": "liver_tumor"}
    assert main(["info", "--list-tasks", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {"name": "total", "modality": "CT", "license_required": False, "num_classes": 117} in rows
    assert main(["info", "--classes"]) == 1 and "-ta" in capsys.readouterr().err


def test_get_body_stats_without_a_licence_says_where_to_get_one(tmp_path, monkeypatch, capsys, example):
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "home"))
    assert main(["get-body-stats", "-i", str(example("example_ct_sm.nii.gz")), "-o", str(tmp_path / "b.json"),
                 "-m", "ct"]) == 1
    err = capsys.readouterr().err
    assert "licen" in err and "license-academic" in err
    assert not (tmp_path / "b.json").exists()


def test_reports_not_yet_available_say_so(capsys):
    for command in ("evans-index", "spine-report", "aorta-report", "pulmonary-report"):
        assert main([command]) == 1
        err = capsys.readouterr().err
        assert "not available" in err and "totalseg_" in err


def test_phase_bands():
    from SegmentationLogic.tools.phase import pi_time_to_phase

    assert pi_time_to_phase(3) == ("native", 1.0) and pi_time_to_phase(9.99) == ("native", 0.7)
    assert pi_time_to_phase(25) == ("arterial_early", 1.0) and pi_time_to_phase(55) == ("arterial_late", 0.7)
    assert pi_time_to_phase(75) == ("portal_venous", 1.0) and pi_time_to_phase(150) == ("portal_venous", 0.3)


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /dev/null",))


def test_a_tampered_phase_classifier_cannot_run_code(tmp_path):
    pytest.importorskip("xgboost")
    from SegmentationLogic.tools.classifiers import ClassifierError
    from SegmentationLogic.tools.phase import load_models

    bad = tmp_path / "phase.pkl"
    bad.write_bytes(pickle.dumps({0: _Evil()}))
    with pytest.raises(ClassifierError) as e:
        load_models(bad)
    assert "posix.system" in e.value.cause or "os.system" in e.value.cause


def test_classifier_download_is_checked(tmp_path, monkeypatch):
    from http_server import WeightsServer

    from SegmentationLogic.tools import classifiers

    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "home"))
    name = "contrast_phase_classifiers_2024_07_19.pkl"
    with pytest.raises(classifiers.ClassifierError) as e:
        classifiers.locate(name, download=False)
    assert "copy the file" in e.value.fix
    with WeightsServer({f"/{name}": b"not the classifier"}) as srv:
        monkeypatch.setenv("TOTALSEG_CLASSIFIERS_URL", srv.url("/"))
        with pytest.raises(classifiers.ClassifierError) as e:
            classifiers.locate(name)
    assert "checksum" in e.value.cause
    assert not list((tmp_path / "home" / "classifiers").glob("*")), "a bad download must not stay"
    official = _official_resource(name)  # the real file (from the reference package) passes the check
    with WeightsServer({f"/{name}": official.read_bytes()}) as srv:
        monkeypatch.setenv("TOTALSEG_CLASSIFIERS_URL", srv.url("/"))
        path = classifiers.locate(name)
    assert path.read_bytes() == official.read_bytes() and path.parent == tmp_path / "home" / "classifiers"


def _official_resource(name):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("totalsegmentator")
    if spec is None:
        pytest.skip("the official package (test reference) is not installed")
    return Path(spec.origin).parent / "resources" / name
