"""The family-C vessel phantom generator keeps its own promises (truth, levels, contacts).

These tests check the generator only, never the portal/hepatic split."""
from functools import lru_cache

import numpy as np
import pytest
from scipy import ndimage

from vessel_phantoms_c import HEPATIC, LEVELS_C, PORTAL, make_phantom_c

N26 = np.ones((3, 3, 3), bool)


@lru_cache(maxsize=None)
def phantom(level, seed=0):
    return make_phantom_c(level, shape=(96, 96, 80), spacing=(1.5, 1.5, 1.5), seed=seed)


def contact_voxels(ph):
    return ndimage.binary_dilation(ph.truth == PORTAL, N26) & (ph.truth == HEPATIC)


@pytest.mark.parametrize("level", LEVELS_C)
def test_truth_covers_the_vessels_with_both_classes(level):
    ph = phantom(level)
    v = ph.vessels > 0
    assert ph.vessels.shape == ph.truth.shape == ph.liver.shape == ph.portal_trunk.shape == ph.ivc.shape
    assert ((ph.truth > 0) <= v).all() and np.array_equal(ph.branch_ids > 0, ph.truth > 0)
    unscored = v & (ph.truth == 0)                  # spurious blobs, noisy level only
    assert unscored.sum() == 0 if level != "noisy" else 0 < unscored.sum() < 0.02 * v.sum()
    for c in (PORTAL, HEPATIC):
        assert (ph.truth == c).sum() > 0.2 * v.sum()
    for b in np.unique(ph.branch_ids[ph.branch_ids > 0]):   # a branch is one class
        assert len(np.unique(ph.truth[ph.branch_ids == b])) == 1
    if level != "noisy":                          # noisy: the IVC mask is shifted into them
        assert not (ph.ivc.astype(bool) & v).any()


def test_trees_touch_only_where_contacts_are_drawn():
    for level in ("clean", "gaps"):
        assert contact_voxels(phantom(level)).sum() == 0, level
    for level in ("touching", "noisy"):
        ph = phantom(level)
        _, places = ndimage.label(ndimage.binary_dilation(contact_voxels(ph), iterations=2), N26)
        assert places >= 4, (level, places)
        assert {"parallel", "crossing", "ladder", "hilum"} <= set(ph.info["contact_kinds"])


def test_degraded_levels_cut_vessels_and_damage_the_support_masks():
    clean, gaps, noisy = phantom("clean"), phantom("gaps"), phantom("noisy")
    for c in (PORTAL, HEPATIC):
        n = [ndimage.label(ph.truth == c, N26)[1] for ph in (clean, gaps)]
        assert n[1] > n[0], (c, n)
    assert noisy.info["support"]["ivc"] in ("slab", "above", "below")
    assert not np.array_equal(noisy.ivc, phantom("touching").ivc)


def test_same_seed_same_case():
    a, b = make_phantom_c("noisy", shape=(96, 96, 80), spacing=(1.5, 1.5, 1.5), seed=0), phantom("noisy")
    for name in ("vessels", "truth", "branch_ids", "portal_trunk", "ivc"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert not np.array_equal(phantom("noisy", 1).vessels, b.vessels)
