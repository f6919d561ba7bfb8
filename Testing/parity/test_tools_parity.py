"""The extra commands against the official functions, on the same inputs and model files.

One official subprocess (Testing/support/official_tools.py) runs every case in the background
while the tests compute ours (the costly ones, get-phase and crop-to-body, first):
- combine-masks: lung / vertebrae / ribs / ... from the reference segmentation's
  multilabel file and from a folder of its per-class masks: identical files (data,
  affine, header, label table);
- crop-to-body: whole body and trunk only, on the example CT (test body model): identical files;
- info: for every task both know, the same modality, licence flag and classes;
- get-modality: the official classifier files (from the reference package) and five
  classifiers trained here in the same format, on the example CT, MR and an MR shifted to
  non-negative values (so the test classifiers disagree between images): identical results;
- get-phase: a phase classifier trained here in the official pickle format, on statistics
  given as a file and on a full run (total --fast on the test models): identical results.
"""
import importlib.util
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from official_tools import OfficialTools

pytestmark = [pytest.mark.parity, pytest.mark.slow]

GROUPS = ("lung", "vertebrae", "ribs", "vertebrae_ribs", "lung_right")  # the example holds no pelvis


def _official_resources():
    spec = importlib.util.find_spec("totalsegmentator")
    return Path(spec.origin).parent / "resources"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, example, test_weights):
    pytest.importorskip("xgboost")
    from classifier_models import build_modality_classifiers, build_phase_classifier

    from SegmentationLogic.outputs.labelmap import read_label_table

    tmp = tmp_path_factory.mktemp("tools_parity")
    seg_path = example("example_seg.nii.gz")
    seg = nib.load(seg_path)
    masks = tmp / "masks"
    masks.mkdir()
    for value, name in read_label_table(seg).items():  # a per-class output folder, as `segment` without --ml
        nib.save(nib.Nifti1Image((np.asanyarray(seg.dataobj) == value).astype(np.uint8), seg.affine),
                 masks / f"{name}.nii.gz")
    mr = nib.load(example("example_mr_sm.nii.gz"))
    shifted = tmp / "mr_shifted.nii.gz"
    nib.save(nib.Nifti1Image(np.asanyarray(mr.dataobj).astype(np.int16) + 47, mr.affine, mr.header), shifted)
    images = {"ct": str(example("example_ct_sm.nii.gz")), "mr": str(example("example_mr_sm.nii.gz")),
              "mr_shifted": str(shifted)}
    test_clf = build_modality_classifiers(tmp / "test_classifiers" / "resources").parent.parent
    phase_pkl = build_phase_classifier(tmp / "phase.pkl")
    stats_file = tmp / "stats.json"
    rng = np.random.default_rng(1)
    from SegmentationLogic.tools.phase import ORGANS

    stats_file.write_text(json.dumps({o: {"volume": 0.0, "intensity": float(rng.uniform(-50, 350))} for o in ORGANS}))

    cases = []
    for group in GROUPS:
        for kind, source in (("file", seg_path), ("folder", masks)):
            cases.append({"tool": "combine_masks", "input": str(source), "masks": group, "multilabel": kind == "file",
                          "output": str(tmp / f"official_{group}_{kind}.nii.gz"), "kind": kind})
    cases.append({"tool": "registry"})
    for trunc in (False, True):
        cases.append({"tool": "crop_to_body", "input": images["ct"], "only_trunc": trunc,
                      "output": str(tmp / f"official_crop_{trunc}.nii.gz")})
    for name, path in images.items():
        cases.append({"tool": "get_modality", "input": path, "image": name, "classifier": "official"})
        cases.append({"tool": "get_modality", "input": path, "image": name, "classifier": "test",
                      "classifier_dir": str(test_clf)})
    cases.append({"tool": "get_phase", "input": images["ct"], "model_file": str(phase_pkl),
                  "existing_stats": str(stats_file), "run": "stats"})
    cases.append({"tool": "get_phase", "input": images["ct"], "model_file": str(phase_pkl), "run": "full"})
    official = OfficialTools(cases, test_weights, tmp / "work")
    yield {"tmp": tmp, "cases": cases, "official": official, "images": images, "test_clf": test_clf,
           "phase_pkl": phase_pkl, "stats_file": stats_file, "weights": test_weights}
    official.close()


def _cases(setup, tool):
    return [c for c in setup["cases"] if c["tool"] == tool]


def _by(setup, tool):
    """(case, official result) of one tool: waits for the official runner."""
    return [(c, r) for c, r in zip(setup["cases"], setup["official"].results()) if c["tool"] == tool]


def _ours_crop(setup, case):
    return setup["tmp"] / f"ours_crop_{case['only_trunc']}.nii.gz"


def test_get_phase_identical_to_official(setup):
    from SegmentationLogic.pipeline import Segmenter
    from SegmentationLogic.tools.phase import contrast_phase, load_models

    models = load_models(setup["phase_pkl"])
    segmenter = Segmenter(device="cpu", weights_dir=setup["weights"], download=False)
    ours = []
    for case in _cases(setup, "get_phase"):
        stats = json.loads(Path(case["existing_stats"]).read_text()) if case.get("existing_stats") else None
        ours.append(contrast_phase(case["input"], models, segmenter, stats))
    for mine, (case, official) in zip(ours, _by(setup, "get_phase")):
        assert mine == official, case


def test_crop_to_body_identical_to_official(setup):
    from SegmentationLogic.pipeline import Segmenter
    from SegmentationLogic.tools.crop_to_body import crop_to_body

    segmenter = Segmenter(device="cpu", weights_dir=setup["weights"], download=False)
    for case in _cases(setup, "crop_to_body"):
        nib.save(crop_to_body(case["input"], segmenter, case["only_trunc"])[0], _ours_crop(setup, case))
    for case, official_path in _by(setup, "crop_to_body"):
        a, b = nib.load(_ours_crop(setup, case)), nib.load(official_path)
        assert a.shape == b.shape, case
        assert np.array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj)), case
        assert np.array_equal(a.affine, b.affine) and a.header.binaryblock == b.header.binaryblock, case


def test_combine_masks_identical_to_official(setup):
    from SegmentationLogic.tools.combine_masks import combine_masks

    from SegmentationLogic.outputs.labelmap import read_label_table

    for case, official_path in _by(setup, "combine_masks"):
        ours_path = setup["tmp"] / f"ours_{case['masks']}_{case['kind']}.nii.gz"
        nib.save(combine_masks(case["input"], case["masks"], multilabel=case["multilabel"]), ours_path)
        ours, theirs = nib.load(ours_path), nib.load(official_path)
        a, b = np.asanyarray(ours.dataobj), np.asanyarray(theirs.dataobj)
        assert a.dtype == b.dtype and np.array_equal(a, b), case
        assert a.any(), f"{case['masks']}: an empty combination proves nothing"
        assert np.array_equal(ours.affine, theirs.affine)
        assert ours.header.binaryblock == theirs.header.binaryblock, case
        assert read_label_table(ours) == read_label_table(theirs)


def test_info_agrees_with_the_official_registry(setup):
    from SegmentationLogic.tools.info import registry

    (_, official), = _by(setup, "registry")
    ours = registry()["tasks"]
    common = set(ours) & set(official["tasks"])
    assert len(common) == len(ours), f"tasks the official registry lacks: {sorted(set(ours) - common)}"
    for task in sorted(common):
        o, t = ours[task], official["tasks"][task]
        assert (o["modality"], o["license_required"], o["classes"]) == \
            (t["modality"], t["license_required"], t["classes"]), task
    print("official tasks this engine does not run:", sorted(set(official["tasks"]) - common))


def test_get_modality_identical_to_official(setup):
    from SegmentationLogic.imaging.read import load_image
    from SegmentationLogic.tools.modality import MODEL_PREFIX, load_models, predict_modality

    prefixes = {"official": _official_resources() / MODEL_PREFIX, "test": setup["test_clf"] / "resources" / MODEL_PREFIX}
    seen = set()
    for case, official in _by(setup, "get_modality"):
        ours = predict_modality(load_image(case["input"]), load_models(str(prefixes[case["classifier"]])))
        assert ours == official, case
        seen.add((case["classifier"], ours["modality"]))
    assert ("test", "mr") in seen and ("test", "ct") in seen, "the test classifiers should tell the images apart"
