"""The family-B vessel phantom generator keeps its own promises (truth, levels, files).

These tests check the generator only, never the portal/hepatic split."""
from functools import lru_cache

import numpy as np
import pytest
from scipy import ndimage

from vessel_phantoms_b import (LEVELS_B, PORTAL, HEPATIC, make_phantom_b, read_case_b, read_labels_b,
                               score_split_b, write_case_b)

N26 = np.ones((3, 3, 3), bool)


@lru_cache(maxsize=None)
def phantom(level, seed=0, shape=(144, 144, 120), spacing=(1.0, 1.0, 1.0)):
    return make_phantom_b(level, shape=shape, spacing=spacing, seed=seed)


def contact_voxels(ph):
    """Hepatic voxels with a portal voxel in their 26-neighbourhood."""
    return ndimage.binary_dilation(ph.truth == PORTAL, N26) & (ph.truth == HEPATIC)


def components(mask, min_voxels=1):
    lab, n = ndimage.label(mask, N26)
    sizes = np.bincount(lab.ravel())[1:]
    return lab, int(np.sum(sizes >= min_voxels))


@pytest.mark.parametrize("level", LEVELS_B)
def test_truth_covers_exactly_the_vessels_with_both_classes(level):
    ph = phantom(level)
    v = ph.vessels > 0
    assert ph.vessels.dtype == np.uint8 and set(np.unique(ph.vessels)) <= {0, 1}
    assert np.array_equal(ph.truth > 0, v)
    assert np.array_equal(ph.branch_ids > 0, v)
    for c in (PORTAL, HEPATIC):
        assert (ph.truth == c).sum() > 0.15 * v.sum()
    lut = np.zeros(max(ph.branch_class) + 1, np.uint8)
    for k, c in ph.branch_class.items():
        lut[k] = c
    assert set(ph.branch_class.values()) == {PORTAL, HEPATIC}
    assert np.array_equal(lut[ph.branch_ids[v]], ph.truth[v])  # a branch is one class
    assert ph.vessels.shape == ph.liver.shape == ph.portal_trunk.shape == ph.ivc.shape == (144, 144, 120)
    assert np.allclose(np.diag(ph.affine)[:3], ph.spacing) and ph.level == level


def test_anisotropic_grid_and_large_field():
    ph = phantom("touching", 1, shape=(112, 112, 48), spacing=(1.3, 1.3, 2.5))
    assert np.array_equal(ph.truth > 0, ph.vessels > 0)
    assert contact_voxels(ph).sum() > 0
    assert np.allclose(np.linalg.norm(ph.affine[:3, :3], axis=0), (1.3, 1.3, 2.5))


def test_same_seed_same_case_other_seed_other_case():
    a = make_phantom_b("noisy", seed=3)
    b = phantom("noisy", 3)
    for name in ("vessels", "truth", "branch_ids", "liver", "portal_trunk", "ivc"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.branch_class == b.branch_class
    assert not np.array_equal(phantom("noisy", 0).vessels, b.vessels)


def test_easy_trees_are_apart_and_whole():
    ph = phantom("easy")
    assert contact_voxels(ph).sum() == 0
    _, n_portal = components(ph.truth == PORTAL)
    assert n_portal == 1
    # hepatic veins meet only in the IVC (not part of the vessel mask): one piece per root, each at the IVC
    lab, n = components(ph.truth == HEPATIC)
    near_ivc = ndimage.binary_dilation(ph.ivc, N26, iterations=2)
    assert 1 <= n <= 4
    assert set(np.unique(lab[near_ivc & (lab > 0)])) == set(range(1, n + 1))


def test_support_masks_meet_the_right_trees():
    ph = phantom("easy")
    p, h = ph.truth == PORTAL, ph.truth == HEPATIC
    assert (ph.portal_trunk & p).sum() > 50 and (ph.portal_trunk & h).sum() == 0
    ivc_rim = ndimage.binary_dilation(ph.ivc, N26)
    assert (ivc_rim & h).sum() > 20 and (ivc_rim & p).sum() == 0
    assert (ph.liver & (ph.vessels > 0)).sum() > 0.9 * ph.vessels.sum()
    assert ph.liver.sum() > 20 * ph.vessels.sum()


def test_gaps_break_each_tree_into_pieces():
    ph = phantom("gaps")
    easy = phantom("easy")
    for c in (PORTAL, HEPATIC):
        _, n = components(ph.truth == c, min_voxels=3)
        _, n_easy = components(easy.truth == c)
        assert n >= n_easy + 3, (c, n, n_easy)
    assert ph.info["n_gaps"] >= 6 and ph.info["n_fragments"] >= 1
    assert contact_voxels(ph).sum() == 0


@pytest.mark.parametrize("level", ["touching", "noisy"])
def test_touching_trees_touch_in_several_places(level):
    ph = phantom(level)
    touch = contact_voxels(ph)
    _, places = components(ndimage.binary_dilation(touch, iterations=2))
    assert places >= 5, places
    kinds = {c["kind"].split(" (")[0] for c in ph.info["contacts"]}
    assert {"parallel run", "equal-radius crossing", "near hilum", "near IVC"} <= kinds
    assert all(c["bridges"] >= 1 for c in ph.info["contacts"])
    assert any(c["kind"].startswith("parallel run") and c["bridges"] >= 2 and c["length_mm"] >= 15
               for c in ph.info["contacts"])


def test_noisy_has_rough_vessels_and_faulty_support_masks():
    ph, base = phantom("noisy"), phantom("touching")
    d = ph.info["support_defects"]
    assert "portal_trunk_shift_mm" in d and "ivc_shift_mm" in d
    assert any(k in d for k in ("portal_trunk_missing_within_mm_of_hilum", "ivc_missing_z_mm", "liver_missing_ball"))
    assert not np.array_equal(ph.portal_trunk, base.portal_trunk) and not np.array_equal(ph.ivc, base.ivc)
    for c in (PORTAL, HEPATIC):
        assert components(ph.truth == c, 3)[1] >= 3
    # partial volume + threshold: the mask is not the crisp tubes of the same anatomy
    same = (ph.vessels > 0) & (base.vessels > 0)
    assert same.sum() < 0.97 * max(ph.vessels.sum(), base.vessels.sum())


@pytest.mark.parametrize("orientation", ["RAS", "LPS"])
def test_files_round_trip_and_read_by_the_split_loader(tmp_path, orientation):
    import nibabel as nib

    from SegmentationLogic.vessels.io import load_masks

    ph = phantom("gaps")
    paths = write_case_b(ph, tmp_path / "case", orientation=orientation)
    for name in ("vessels", "liver", "portal_trunk", "ivc", "truth", "branch_ids"):
        img = nib.load(str(paths[name]))
        assert nib.aff2axcodes(img.affine) == tuple(orientation)
        assert np.allclose(nib.as_closest_canonical(img).affine, ph.affine)
        assert np.array_equal(read_labels_b(paths[name]), np.asarray(getattr(ph, name)).astype(img.get_data_dtype()))
    back = read_case_b(tmp_path / "case")
    assert np.array_equal(back.truth, ph.truth) and np.array_equal(back.branch_ids, ph.branch_ids)
    assert back.branch_class == ph.branch_class and (back.level, back.seed) == (ph.level, ph.seed)
    # the split's own loader sees the phantom's masks on the phantom's grid
    _, arrays, spacing, affine, _ = load_masks(paths["vessels"], paths["liver"], paths["portal_trunk"], paths["ivc"])
    assert np.allclose(spacing, ph.spacing) and np.allclose(affine, ph.affine)
    for name in ("vessels", "liver", "portal_trunk", "ivc"):
        assert np.array_equal(arrays[name], np.asarray(getattr(ph, name)) > 0), name


def test_scores_mean_what_they_say():
    ph = phantom("touching")
    v = ph.vessels > 0
    perfect = score_split_b(ph.truth, ph)
    assert perfect["accuracy"] == perfect["dice_portal"] == perfect["dice_hepatic"] == 1.0
    assert perfect["branch_consistency"] == 1.0 and perfect["unlabelled_fraction"] == 0.0
    all_portal = score_split_b(v.astype(np.uint8), ph)
    assert all_portal["accuracy"] == pytest.approx((ph.truth == PORTAL).sum() / v.sum())
    assert all_portal["dice_hepatic"] == 0.0
    none = score_split_b(np.zeros_like(ph.truth), ph)
    assert none["accuracy"] == 0.0 and none["unlabelled_fraction"] == 1.0
    # swap one branch: it fails consistency; a confidence map low exactly there recalls all errors
    ids, counts = np.unique(ph.branch_ids[v], return_counts=True)
    b = ids[np.argmax(counts)]
    labels = ph.truth.copy()
    labels[ph.branch_ids == b] = 3 - labels[ph.branch_ids == b]
    conf = np.where(ph.branch_ids == b, 0.6, 0.9)
    sc = score_split_b(labels, ph, confidence=conf)
    assert sc["accuracy"] == pytest.approx(1 - counts.max() / v.sum())
    assert sc["branch_consistency"] < 1.0
    assert sc["confidence_recall"] == 1.0 and sc["flagged_share"] == pytest.approx(counts.max() / v.sum())
    with pytest.raises(ValueError):
        score_split_b(ph.truth[:-1], ph)
