"""split-vessels and the enhancement on real files: outputs, metadata, QC, and bad inputs."""
import json

import nibabel as nib
import numpy as np
import pytest

from SegmentationLogic.cli import main
from SegmentationLogic.vessels.enhancement import enhance
from SegmentationLogic.vessels.io import OUTPUT_FILES, VesselInputError
from SegmentationLogic.vessels.workflow import split_vessel_files
from vessel_phantoms import make_phantom, score_split

QC_KEYS = {"portal_voxels", "hepatic_voxels", "total_vessel_voxels", "portal_fraction", "hepatic_fraction",
           "portal_seed_voxels", "hepatic_seed_voxels", "use_skeleton", "confidence", "ambiguous_voxels", "warnings"}


@pytest.fixture(scope="module")
def phantom():
    return make_phantom("touching", seed=2)


@pytest.fixture(scope="module")
def files(phantom, tmp_path_factory):
    return phantom.save(tmp_path_factory.mktemp("phantom"))


def _arr(path):
    return np.asanyarray(nib.load(str(path)).dataobj)


def _cli(*args):
    return main(["split-vessels", "-q", *map(str, args)])


def test_split_vessels_cli_writes_the_published_outputs(files, phantom, tmp_path, capsys):
    rc = _cli("--vessels", files["liver_vessels"], "--liver", files["liver"],
              "--portal_trunk", files["portal_vein_and_splenic_vein"], "--ivc", files["inferior_vena_cava"],
              "-o", tmp_path)
    assert rc == 0
    labeled = _arr(tmp_path / OUTPUT_FILES["labeled"])
    assert set(np.unique(labeled)) == {0, 1, 2}
    assert score_split(labeled, phantom)["accuracy"] >= 0.97
    assert np.array_equal(_arr(tmp_path / OUTPUT_FILES["portal"]) > 0, labeled == 1)
    assert np.array_equal(_arr(tmp_path / OUTPUT_FILES["hepatic"]) > 0, labeled == 2)
    skeleton = _arr(tmp_path / OUTPUT_FILES["skeleton"])
    assert 0 < (skeleton > 0).sum() < 0.5 * (labeled > 0).sum()
    meta = json.loads((tmp_path / OUTPUT_FILES["metadata"]).read_text())
    qc = meta["portal_hepatic_split_qc"]
    assert QC_KEYS <= set(qc)
    assert qc["portal_voxels"] == int((labeled == 1).sum()) and qc["hepatic_voxels"] == int((labeled == 2).sum())
    assert meta["voxels"] == int(phantom.vessels.sum()) and meta["volume_mm3"] == pytest.approx(
        meta["voxels"] * 1.5 ** 3)
    assert meta["inputs"]["ivc"].endswith("inferior_vena_cava.nii.gz")
    assert not list(tmp_path.glob(".tmp-*"))  # no temporary files left behind
    err = capsys.readouterr().err
    assert "Portal fraction" in err and "Confidence" in err


def test_labeled_only_and_no_skeleton(files, tmp_path):
    (tmp_path / OUTPUT_FILES["portal"]).write_bytes(b"stale")
    rc = _cli("--vessels", files["liver_vessels"], "--portal_trunk", files["portal_vein_and_splenic_vein"],
              "--ivc", files["inferior_vena_cava"], "-o", tmp_path, "--labeled_only", "--no_skeleton")
    assert rc == 0
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {OUTPUT_FILES["labeled"], OUTPUT_FILES["confidence"], OUTPUT_FILES["metadata"]}
    meta = json.loads((tmp_path / OUTPUT_FILES["metadata"]).read_text())
    assert meta["labeled_only"] is True and meta["portal_hepatic_split_qc"]["use_skeleton"] is False


def test_json_progress_streams_events_and_the_result(files, tmp_path, capsys):
    rc = main(["split-vessels", "--progress", "json", "--vessels", str(files["liver_vessels"]),
               "--ivc", str(files["inferior_vena_cava"]), "-o", str(tmp_path)])
    assert rc == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {e["event"] for e in events} >= {"progress", "result"}
    result = events[-1]
    assert result["event"] == "result" and QC_KEYS <= set(result["qc"])
    assert any("Portal trunk mask missing" in w for w in result["qc"]["warnings"])


def test_seed_points_on_the_command_line(files, phantom, tmp_path):
    roots = [(s.p0 + s.p1) / 2 for s in phantom.segments if s.parent == -1 and s.cls == 2]
    args = ["--vessels", files["liver_vessels"], "--portal_trunk", files["portal_vein_and_splenic_vein"], "-o", tmp_path]
    for r in roots:
        args += ["--hepatic_point", *[f"{v:.1f}" for v in r]]
    assert _cli(*args) == 0
    qc = json.loads((tmp_path / OUTPUT_FILES["metadata"]).read_text())["portal_hepatic_split_qc"]
    assert qc["seed_sources"]["hepatic"] == "user"  # the guess gave way to the points
    assert score_split(_arr(tmp_path / OUTPUT_FILES["labeled"]), phantom)["accuracy"] >= 0.95


def test_other_orientation_gives_the_same_split(files, phantom, tmp_path):
    """An LPS-stored mask set splits like its RAS twin and is written back in LPS."""
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    lps = {}
    for key in ("liver_vessels", "portal_vein_and_splenic_vein", "inferior_vena_cava"):
        img = nib.load(str(files[key]))
        data = np.asanyarray(img.dataobj)[::-1, ::-1, :]
        shift = np.diag([1.0, 1.0, 1.0, 1.0])
        shift[:2, 3] = [(data.shape[0] - 1) * 1.5, (data.shape[1] - 1) * 1.5]
        lps[key] = tmp_path / f"{key}.nii.gz"
        nib.save(nib.Nifti1Image(data, shift @ flip @ img.affine), str(lps[key]))
    ras_out, lps_out = tmp_path / "ras", tmp_path / "lps"
    split_vessel_files(files["liver_vessels"], ras_out, portal_trunk=files["portal_vein_and_splenic_vein"],
                       ivc=files["inferior_vena_cava"])
    split_vessel_files(lps["liver_vessels"], lps_out, portal_trunk=lps["portal_vein_and_splenic_vein"],
                       ivc=lps["inferior_vena_cava"])
    a = _arr(ras_out / OUTPUT_FILES["labeled"])
    b_img = nib.load(str(lps_out / OUTPUT_FILES["labeled"]))
    assert np.allclose(b_img.affine, nib.load(str(lps["liver_vessels"])).affine)
    assert (np.asanyarray(b_img.dataobj)[::-1, ::-1, :] == a).mean() > 0.99


def test_liver_vessels_multilabel_file_splits_only_the_vessels(phantom, tmp_path):
    data = phantom.vessels.astype(np.uint8)
    data[5:10, 5:10, 5:10] = 2  # a "tumour"
    path = tmp_path / "liver_vessels_multilabel.nii.gz"
    nib.save(nib.Nifti1Image(data, phantom.affine), str(path))
    res = split_vessel_files(path, tmp_path / "out")
    assert any("only label 1 is split" in w for w in res["qc"]["warnings"])
    assert (_arr(tmp_path / "out" / OUTPUT_FILES["labeled"])[5:10, 5:10, 5:10] == 0).all()


def test_empty_vessel_mask_is_refused_and_nothing_written(phantom, tmp_path, capsys):
    path = tmp_path / "empty.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 20), np.uint8), np.eye(4)), str(path))
    assert _cli("--vessels", path, "-o", tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "is empty: there is nothing to split" in err and "Fix:" in err
    assert not (tmp_path / "out").exists()


def test_missing_support_file_names_the_file(files, tmp_path, capsys):
    assert _cli("--vessels", files["liver_vessels"], "--ivc", tmp_path / "nothere.nii.gz", "-o", tmp_path / "o") == 1
    err = capsys.readouterr().err
    assert "The IVC mask file does not exist" in err and "nothere.nii.gz" in err


def test_mismatched_geometry_is_refused(files, phantom, tmp_path):
    img = nib.load(str(files["liver"]))
    other = tmp_path / "liver_other_grid.nii.gz"
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj)[::2, ::2, ::2], img.affine @ np.diag([2, 2, 2, 1])), str(other))
    with pytest.raises(VesselInputError, match="has another geometry than the vessel mask") as e:
        split_vessel_files(files["liver_vessels"], tmp_path / "out", liver=other)
    assert "(40, 40, 32) vs (80, 80, 64)" in str(e.value) and "resample" in e.value.fix
    shifted = tmp_path / "liver_shifted.nii.gz"
    moved = img.affine.copy()
    moved[0, 3] += 10
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), moved), str(shifted))
    with pytest.raises(VesselInputError, match="same shape but a different position"):
        split_vessel_files(files["liver_vessels"], tmp_path / "out", liver=shifted)
    assert not (tmp_path / "out").exists()


def test_four_d_and_unreadable_masks(files, tmp_path):
    four = tmp_path / "4d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((10, 10, 10, 3), np.uint8), np.eye(4)), str(four))
    with pytest.raises(VesselInputError, match="is 4D"):
        split_vessel_files(four, tmp_path / "o")
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"not an image")
    with pytest.raises(VesselInputError, match="cannot be read as an image"):
        split_vessel_files(files["liver_vessels"], tmp_path / "o", ivc=junk)


def test_vessels_outside_the_liver_are_flagged(files, phantom, tmp_path):
    small_liver = tmp_path / "small_liver.nii.gz"
    liver = np.zeros(phantom.shape, np.uint8)
    liver[:, :, :20] = 1
    nib.save(nib.Nifti1Image(liver, phantom.affine), str(small_liver))
    res = split_vessel_files(files["liver_vessels"], tmp_path / "out", liver=small_liver)
    assert any("lie outside the liver mask" in w for w in res["qc"]["warnings"])


def test_enhancement_restricts_to_the_liver_and_prunes():
    vessels = np.zeros((30, 30, 30), bool)
    vessels[5:25, 14:16, 14:16] = True      # a vessel (80 voxels)
    vessels[2:4, 2:4, 2:4] = True           # a speck (8 voxels)
    vessels[27:29, 10:20, 10:12] = True     # outside the liver
    liver = np.zeros_like(vessels)
    liver[:26] = True
    out, meta = enhance(vessels, liver, (1, 1, 1), min_component_size=40)
    assert out.sum() == 80 and out[5:25, 14:16, 14:16].all()
    assert meta["voxels"] == 80 and meta["volume_mm3"] == 80.0 and meta["components_removed"] == 1
    assert meta["voxels_outside_liver_removed"] == 40 and meta["liver_mask_source"] == "provided"
    out, meta = enhance(vessels, None, (1, 1, 1), min_component_size=5)
    assert out.sum() == 128 and meta["liver_mask_source"] == "fallback_full_volume" and meta["fallbacks"]
    with pytest.raises(VesselInputError, match="full-volume fallback is disabled"):
        enhance(vessels, None, (1, 1, 1), allow_full_volume=False)


def test_cancel_stops_before_anything_is_written(files, tmp_path):
    from SegmentationLogic.errors import Cancelled
    from SegmentationLogic.progress import CancelToken, Progress

    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        split_vessel_files(files["liver_vessels"], tmp_path / "out", ivc=files["inferior_vena_cava"],
                           progress=Progress(None, cancel=token))
    assert not (tmp_path / "out").exists()
