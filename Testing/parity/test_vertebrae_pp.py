"""vertebrae_pp and its refinement give the official tool's labels, voxel for voxel.

The official postprocessing functions run in a subprocess (the product never imports the
official package) on synthetic vertebra labelmaps that reach every branch: labels that do
not touch (grow only), touching labels renumbered from the bottom and, for a head scan,
from C1 down, bodies too small to keep, more bodies than labels, nothing left, growth with
fractional voxel radii (anisotropic spacing), and the refinement with a vertebral-body
mask. End-to-end parity with the models is in test_parity.py.
"""
import json
import subprocess
import sys

import numpy as np
import pytest

from SegmentationLogic.catalogue import load_catalogue
from SegmentationLogic.pipeline.postprocessing import grow_labels, refine_vertebrae, vertebrae_pp

OFFICIAL = r"""
import json, sys, traceback
import numpy as np
from totalsegmentator.map_to_binary import class_map
from totalsegmentator.postprocessing import (dilate_vertebrae_labels, postprocess_vertebrae_pp,
                                             refine_vertebrae_pp_with_body_mask)
cases = json.loads(open(sys.argv[1]).read())
arrays = np.load(sys.argv[2])
out, errors = {}, {}
labels = class_map["vertebrae_pp"]
for name, c in cases.items():
    seg = arrays[name]
    spacing = tuple(np.float32(s) for s in c["spacing"])
    try:
        if c["kind"] == "pp":
            out[name] = postprocess_vertebrae_pp(seg, labels, voxel_volume=np.prod(spacing), voxel_spacing=spacing)
        elif c["kind"] == "grow":
            out[name] = dilate_vertebrae_labels(seg, labels, spacing, c["mm"])
        else:
            out[name] = refine_vertebrae_pp_with_body_mask(seg, arrays[name + "_body"], labels, spacing, 2)
    except Exception as e:
        errors[name] = type(e).__name__
np.savez_compressed(sys.argv[3], **out)
print(json.dumps(errors))
"""

CLASSES = load_catalogue().task("vertebrae_pp").classes
C1, C2, L5 = 1, 2, 24


def _body(shape, centre, radii):
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1


def _spine(labels, shape=(40, 36, 90), noise=0.0, gap=2, seed=0, radii=(9, 8, 4)):
    """A column of vertebral bodies along z, bottom first, optionally with label noise
    (a voxel of a body takes its neighbour's label) and gap slices between bodies."""
    rng = np.random.default_rng(seed)
    seg = np.zeros(shape, np.uint8)
    z = radii[2] + 1
    for i, label in enumerate(labels):
        body = _body(shape, (shape[0] // 2, shape[1] // 2, z), radii)
        seg[body] = label
        if noise and i + 1 < len(labels):
            flip = body & (rng.random(shape) < noise)
            seg[flip] = labels[i + 1]
        z += 2 * radii[2] + 1 + gap
    return seg


def _cases():
    """name -> (kind, spacing, seg[, body])."""
    cases = {}
    # labels do not touch: only the 3 mm growth (gap 3 slices > growth at 2.5 mm is 1 voxel)
    cases["separate"] = ("pp", (1.5, 1.5, 1.5), _spine([20, 21, 22, 23], gap=5))
    # touching labels (noise), counted from the bottom; fractional radii (3 / 0.8 = 3.75 voxels)
    cases["mixed_bottom"] = ("pp", (0.8, 0.8, 2.5), _spine([22, 23, 24, 23], noise=0.2, gap=1, seed=1))
    # a head scan: C1 present, L5 absent -> counted from C1 downwards
    cases["mixed_head"] = ("pp", (1.5, 1.5, 1.5), _spine([3, 2, 1], noise=0.3, gap=1, seed=2))
    # a tiny body (< 100 mm3) is dropped; more bodies than labels from the top label (3) down
    seg = _spine([3, 2, 3, 2, 3], noise=0.1, gap=1, seed=3, shape=(40, 36, 100))
    seg[2:4, 2:4, 2:4] = 2
    cases["small_and_surplus"] = ("pp", (1.5, 1.5, 1.5), seg)
    # every body below 100 mm3 -> nothing left
    seg = np.zeros((20, 20, 20), np.uint8)
    seg[5:7, 5:7, 5:7] = 5
    seg[5:7, 5:7, 7:9] = 6
    cases["all_small"] = ("pp", (1.5, 1.5, 1.5), seg)
    # growth alone, at radii that are not whole voxels
    cases["grow_3mm"] = ("grow", (0.7, 0.9, 2.2), _spine([7, 8, 9], gap=4, seed=4), 3)
    cases["grow_2mm"] = ("grow", (1.5, 1.5, 1.5), _spine([10, 11], gap=0, seed=5), 2)
    # refinement: grown 2 mm, then only where the body model says vertebral body (1)
    seg = _spine([18, 19, 20], gap=2, seed=6)
    body = np.zeros_like(seg)
    body[_body(seg.shape, (20, 18, 45), (14, 12, 40))] = 1
    body[:, :, 40:44] = 2  # a disc: removed
    cases["refine"] = ("refine", (0.8, 0.75, 1.25), seg, body)
    return cases


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vertebrae_pp")
    spec, arrays = {}, {}
    for name, (kind, spacing, seg, *extra) in _cases().items():
        spec[name] = {"kind": kind, "spacing": spacing}
        arrays[name] = seg
        if kind == "grow":
            spec[name]["mm"] = extra[0]
        if kind == "refine":
            arrays[name + "_body"] = extra[0]
    (tmp / "cases.json").write_text(json.dumps(spec))
    np.savez_compressed(tmp / "in.npz", **arrays)
    run = subprocess.run([sys.executable, "-c", OFFICIAL, str(tmp / "cases.json"), str(tmp / "in.npz"),
                          str(tmp / "out.npz")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return dict(np.load(tmp / "out.npz")), json.loads(run.stdout.strip().splitlines()[-1])


def _ours(kind, spacing, seg, *extra):
    zooms = tuple(np.float32(s) for s in spacing)
    if kind == "pp":
        return vertebrae_pp(seg, CLASSES, zooms)
    if kind == "grow":
        return grow_labels(seg, sorted(CLASSES), zooms, extra[0])
    return refine_vertebrae(seg, extra[0], CLASSES, zooms)


@pytest.mark.parametrize("name", list(_cases()))
def test_identical_to_official_postprocessing(name, official):
    theirs, errors = official
    assert name not in errors, f"the official function failed: {errors[name]}"
    case = _cases()[name]
    ours = _ours(*case)
    assert ours.dtype == np.uint8 and ours.shape == case[2].shape
    differing = int(np.count_nonzero(ours != theirs[name]))
    assert differing == 0, f"{differing} voxels differ from the official result"
    if name != "all_small":
        assert ours.any()


def test_the_cases_reach_each_branch():
    cases = _cases()
    pp = {n: vertebrae_pp(c[2], CLASSES, tuple(np.float32(s) for s in c[1])) for n, c in cases.items()
          if c[0] == "pp"}
    separate = cases["separate"][2]
    assert set(np.unique(pp["separate"])) == set(np.unique(separate))  # labels kept, only grown
    assert np.count_nonzero(pp["separate"]) > np.count_nonzero(separate)
    assert set(np.unique(pp["mixed_bottom"])) == {0, 21, 22, 23, 24}  # 4 bodies: 24 at the bottom, then up
    assert set(np.unique(pp["mixed_head"])) == {0, C1, C2, 3}  # C1 on top, counted downwards
    head = pp["mixed_head"]
    assert np.argwhere(head == C1)[:, 2].mean() > np.argwhere(head == 3)[:, 2].mean()
    # 5 bodies + a tiny one, top label 3: the tiny one goes, the two highest bodies get no label
    surplus = pp["small_and_surplus"]
    assert set(np.unique(surplus)) == {0, 1, 2, 3} and not surplus[:, :, 60:].any()
    assert not pp["all_small"].any()


def test_one_mixed_body_is_labelled_where_the_official_tool_fails():
    # two labels in one connected body: the official code raises IndexError here;
    # the rule it implements gives the body the highest label present, grown by 3 mm
    seg = np.zeros((12, 12, 24), np.uint8)
    seg[3:8, 3:8, 4:10] = 20
    seg[3:8, 3:8, 10:16] = 21
    out = vertebrae_pp(seg, CLASSES, (np.float32(1.5),) * 3)
    assert set(np.unique(out)) == {0, 21}
    assert np.count_nonzero(out) > np.count_nonzero(seg)


def test_refinement_needs_matching_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        refine_vertebrae(np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 5), np.uint8), CLASSES, (1.0, 1.0, 1.0))
