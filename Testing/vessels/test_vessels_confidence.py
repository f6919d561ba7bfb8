"""The split's confidence map: in memory, on disk beside the split, and low where it should be."""
import json

import nibabel as nib
import numpy as np
import pytest

from SegmentationLogic.cli import main
from SegmentationLogic.vessels.io import OUTPUT_FILES
from SegmentationLogic.vessels.split import split_vessels
from SegmentationLogic.vessels.workflow import split_vessel_files
from vessel_phantoms import make_phantom

UNSURE = 0.75
SHAPE, SPACING = (60, 60, 48), (1.0, 1.0, 1.0)
CROSSING = np.array([30.0, 30.0, 24.0])


def _tube(mask, p0, p1, r):
    """Paint a straight tube of radius r (mm = voxels here) from p0 to p1."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in mask.shape], indexing="ij"), -1).astype(float)
    d = np.asarray(p1, float) - p0
    t = np.clip(((grid - p0) @ d) / (d @ d), 0, 1)
    mask |= np.linalg.norm(grid - (p0 + t[..., None] * d), axis=-1) <= r


@pytest.fixture(scope="module")
def crossing(tmp_path_factory):
    """A portal vein and a hepatic vein of equal width crossing each other (an X where their
    walls merge): the one place where the split cannot be sure. Support masks sit at the
    portal vein's entry and at the hepatic vein's end, as the trunk and the IVC would."""
    vessels = np.zeros(SHAPE, bool)
    _tube(vessels, np.array([4.0, 30.0, 22.0]), np.array([56.0, 30.0, 22.0]), 2.6)    # portal
    _tube(vessels, np.array([30.0, 4.0, 26.0]), np.array([30.0, 56.0, 26.0]), 2.6)    # hepatic
    trunk = np.zeros(SHAPE, bool)
    _tube(trunk, np.array([0.0, 30.0, 22.0]), np.array([5.0, 30.0, 22.0]), 3.0)
    ivc = np.zeros(SHAPE, bool)
    ivc[24:37, 55:, :] = True
    folder = tmp_path_factory.mktemp("crossing")
    affine = np.diag([*SPACING, 1.0])
    paths = {}
    for name, arr in (("vessels", vessels), ("portal_trunk", trunk), ("ivc", ivc)):
        paths[name] = folder / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(arr.astype(np.uint8), affine), str(paths[name]))
    return vessels, trunk, ivc & ~vessels, paths


def _distance_to_crossing(mask):
    idx = np.argwhere(mask)
    return idx, np.linalg.norm(idx * SPACING - CROSSING, axis=1)


def test_split_returns_a_map_on_the_vessels_grid_between_half_and_one(crossing):
    vessels, trunk, ivc, _ = crossing
    res = split_vessels(vessels, SPACING, None, trunk, ivc)
    conf = res.confidence
    assert conf.shape == vessels.shape and conf.dtype == np.float32
    assert conf[vessels].min() >= 0.5 and conf[vessels].max() <= 1.0
    assert (conf[~vessels] == 0).all()                                 # no claim off the vessels
    # both veins are there, each on its own side of the crossing
    assert res.labels[10, 30, 22] == 1 and res.labels[50, 30, 22] == 1
    assert res.labels[30, 10, 26] == 2 and res.labels[30, 50, 26] == 2


def test_the_crossing_is_flagged_and_the_rest_is_not(crossing):
    vessels, trunk, ivc, _ = crossing
    res = split_vessels(vessels, SPACING, None, trunk, ivc)
    idx, dist = _distance_to_crossing(vessels)
    conf = res.confidence[tuple(idx.T)]
    near, far = dist <= 3.0, dist >= 12.0
    assert (conf[near] < UNSURE).mean() > 0.8, "the voxels the two veins share are not flagged"
    assert (conf[far] >= UNSURE).mean() > 0.95, "the map flags vessels far from the crossing"
    flagged = (conf < UNSURE).mean()
    assert 0 < flagged < 0.25
    assert res.qc["ambiguous_voxels"] == int((conf < UNSURE).sum())
    assert res.qc["unsure_fraction"] == pytest.approx(flagged, abs=1e-3) and res.qc["unsure_below"] == UNSURE


def test_split_vessels_writes_the_map_beside_the_split(crossing, tmp_path):
    _, _, _, paths = crossing
    rc = main(["split-vessels", "-q", "--vessels", str(paths["vessels"]), "--portal_trunk", str(paths["portal_trunk"]),
               "--ivc", str(paths["ivc"]), "-o", str(tmp_path)])
    assert rc == 0
    labeled = nib.load(str(tmp_path / OUTPUT_FILES["labeled"]))
    conf_img = nib.load(str(tmp_path / OUTPUT_FILES["confidence"]))
    assert conf_img.shape == labeled.shape and np.allclose(conf_img.affine, labeled.affine)
    conf = np.asanyarray(conf_img.dataobj)
    labels = np.asanyarray(labeled.dataobj)
    assert np.issubdtype(conf.dtype, np.floating)
    assert conf[labels > 0].min() >= 0.5 and conf[labels > 0].max() <= 1.0 and (conf[labels == 0] == 0).all()
    qc = json.loads((tmp_path / OUTPUT_FILES["metadata"]).read_text())["portal_hepatic_split_qc"]
    assert qc["ambiguous_voxels"] == int((conf[labels > 0] < UNSURE).sum()) > 0
    assert 0 < qc["unsure_fraction"] < 0.25


def test_map_follows_the_vessel_file_orientation(tmp_path):
    """An LPS-stored mask set gets its map in LPS too, voxel for voxel the RAS twin's."""
    ph = make_phantom("touching", seed=2)
    files = ph.save(tmp_path / "ras_in")
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    lps = {}
    for key in ("liver_vessels", "portal_vein_and_splenic_vein", "inferior_vena_cava"):
        img = nib.load(str(files[key]))
        data = np.asanyarray(img.dataobj)[::-1, ::-1, :]
        shift = np.eye(4)
        shift[:2, 3] = [(data.shape[0] - 1) * 1.5, (data.shape[1] - 1) * 1.5]
        lps[key] = tmp_path / f"{key}.nii.gz"
        nib.save(nib.Nifti1Image(data, shift @ flip @ img.affine), str(lps[key]))
    split_vessel_files(files["liver_vessels"], tmp_path / "ras", portal_trunk=files["portal_vein_and_splenic_vein"],
                       ivc=files["inferior_vena_cava"])
    split_vessel_files(lps["liver_vessels"], tmp_path / "lps", portal_trunk=lps["portal_vein_and_splenic_vein"],
                       ivc=lps["inferior_vena_cava"])
    a = np.asanyarray(nib.load(str(tmp_path / "ras" / OUTPUT_FILES["confidence"])).dataobj)
    b_img = nib.load(str(tmp_path / "lps" / OUTPUT_FILES["confidence"]))
    assert np.allclose(b_img.affine, nib.load(str(lps["liver_vessels"])).affine)
    b = np.asanyarray(b_img.dataobj)[::-1, ::-1, :]
    assert ((a > 0) == (b > 0)).all() and (np.abs(a - b) < 1e-6).mean() > 0.99


def test_without_skeleton_the_map_is_still_written(crossing, tmp_path):
    _, _, _, paths = crossing
    assert main(["split-vessels", "-q", "--vessels", str(paths["vessels"]), "--portal_trunk",
                 str(paths["portal_trunk"]), "--ivc", str(paths["ivc"]), "-o", str(tmp_path), "--no_skeleton"]) == 0
    conf = np.asanyarray(nib.load(str(tmp_path / OUTPUT_FILES["confidence"])).dataobj)
    vessels = np.asanyarray(nib.load(str(paths["vessels"])).dataobj) > 0
    assert conf[vessels].min() >= 0.5 and (conf[~vessels] == 0).all()
