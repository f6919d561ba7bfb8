"""Every class of every task gets a standard name, colour and terminology Slicer understands."""
import os
import subprocess
import sys
from collections import Counter

import pytest

from SegmentationLogic import terminology as T
from SegmentationLogic.catalogue import load_catalogue

ALL_CLASSES = sorted({n for task in load_catalogue().tasks() for n in task.class_names()})


@pytest.fixture(scope="session")
def slicer_terminology():
    """Slicer's real Terminologies logic with our contexts loaded (as the module does at start-up)."""
    slicer = pytest.importorskip("slicer")
    from SegmentationLogic.mrml import compat
    from SegmentationLogic.mrml.terminology import register_with_slicer

    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    assert register_with_slicer(logic) == (T.CONTEXT_NAME, T.REGION_CONTEXT_NAME)
    register_with_slicer(logic)  # idempotent: each context is there once
    assert compat.is_terminology_context_loaded(logic, T.CONTEXT_NAME)
    assert compat.loaded_region_context_names(logic).count(T.REGION_CONTEXT_NAME) == 1
    return logic


def _slicer_generated_name(entry):
    """What Slicer's terminology selector names a segment (qSlicerTerminologyNavigatorWidget::
    nameFromTerminology), from the entry as Slicer's logic resolved it against the loaded contexts."""
    t, m, r, rm = (entry.GetTypeObject(), entry.GetTypeModifierObject(), entry.GetRegionObject(),
                   entry.GetRegionModifierObject())
    name = None
    if t.GetSlicerLabel() and (not t.GetHasModifiers() or not m.GetCodeValue()):
        name = t.GetSlicerLabel()
    elif m.GetSlicerLabel():
        name = m.GetSlicerLabel()
    if not name:
        name = f"{t.GetCodeMeaning()}, {m.GetCodeMeaning()}" if t.GetHasModifiers() and m.GetCodeValue() \
            else t.GetCodeMeaning()
    if r.GetCodeValue():
        name += f" in {r.GetCodeMeaning()}" + (f", {rm.GetCodeMeaning()}" if rm.GetCodeValue() else "")
    return name


def _resolved(logic, class_name):
    import slicer

    entry = slicer.vtkSlicerTerminologyEntry()
    string = T.terminology_string(class_name)
    assert logic.DeserializeTerminologyEntry(string, entry), string
    assert logic.UpdateEntryFromLoadedTerminologies(entry, [], []), f"{class_name}: not in the loaded contexts"
    return entry


def test_every_class_of_every_task_resolves_in_slicer(slicer_terminology):
    for name in ALL_CLASSES:
        entry = _resolved(slicer_terminology, name)
        assert entry.GetTerminologyContextName() == T.CONTEXT_NAME
        # Slicer re-serialises the same string (format of the installed Slicer) ...
        assert slicer_terminology.SerializeTerminologyEntry(entry) == T.terminology_string(name)
        # ... and would name the segment exactly as our import does.
        assert _slicer_generated_name(entry) == T.standard_name(name), name
        color = T.recommended_color(name)
        assert len(color) == 3 and all(0.0 <= c <= 1.0 for c in color)


def test_slicer_context_recommends_our_colours(slicer_terminology):
    # Where several classes share a type (and modifier) Slicer holds one colour for it;
    # every other class must get its own colour from the context.
    mapped = list(T._data()["classes"])
    keys = Counter((T.entry(n).category, T.entry(n).type, T.entry(n).modifier) for n in set(mapped + ALL_CLASSES))
    shared = []
    for name in ALL_CLASSES:
        e = T.entry(name)
        if keys[(e.category, e.type, e.modifier)] > 1:
            shared.append((e.type, e.modifier, e.region, e.region_modifier))
            continue
        resolved = _resolved(slicer_terminology, name)
        source = resolved.GetTypeModifierObject() if e.modifier is not None else resolved.GetTypeObject()
        assert [round(c * 255) for c in e.color] == list(source.GetRecommendedDisplayRGBValue()), name
    # Slicer colours a concept per type/modifier; the region tells lung and liver vessels
    # (and both cysts, both effusions) apart. Only the phalanges pair is one full concept.
    assert len(shared) - len(set(shared)) == 1


def test_standard_names_and_codes_from_the_mapping():
    assert T.standard_name("kidney_left") == "Left kidney"
    assert T.entry("kidney_left").type.value == "64033007" and T.entry("kidney_left").modifier.meaning == "Left"
    assert T.standard_name("liver") == "Liver"
    assert T.standard_name("kidney_cyst_right") == "Cyst in Kidney, Right"
    assert T.standard_name("vertebrae_L1") == "L1 vertebra"
    assert T.recommended_color("spleen") == pytest.approx((50 / 255, 170 / 255, 60 / 255))
    # upstream copy error corrected: gluteus_minimus carried gluteus medius' code
    assert T.entry("gluteus_minimus").type.value == T.entry("gluteus_minimus_left").type.value == "75297007"
    assert T.entry("gluteus_minimus").type.meaning == "Gluteus minimus muscle"


def test_coverage_of_the_mapping_per_task():
    """Which classes the official SNOMED mapping covers; the rest get the fallback."""
    catalogue = load_catalogue()
    covered = {t.name: T.coverage(t.class_names()) for t in catalogue.tasks()}
    assert covered["total"][:2] == (117, 117)
    assert covered["total_mr"][2] == ["lung_left", "lung_right", "vertebrae", "intervertebral_discs"]
    assert covered["total_v3"][2] == ["vertebrae_L6"]
    assert covered["liver_vessels"][:2] == (2, 2)
    assert covered["teeth"][0] == 0 and covered["liver_segments"][0] == 0
    standard, total, missing = T.coverage(ALL_CLASSES)
    assert (standard, total) == (151, 425), f"coverage changed: {standard}/{total}"
    fully = sorted(name for name, (s, n, _) in covered.items() if s == n)
    assert {"total", "body", "appendicular_bones", "tissue_types", "kidney_cysts"} <= set(fully)


def test_fallback_for_classes_the_mapping_lacks():
    e = T.entry("eye_lens_left")
    assert not e.standard and e.name == "Left eye lens"
    assert e.type.scheme == T.PRIVATE_SCHEME and len(e.type.value) <= 16
    assert e.category.meaning == "Anatomical Structure"
    assert T.entry("liver_lesions").category.meaning == "Morphologically Altered Structure"
    assert T.entry("implant").category.meaning == "Physical object"
    assert T.standard_name("vertebrae_L6") == "L6 vertebra"
    assert T.standard_name("upper_right_canine_fdi13") == "Upper right canine (FDI 13)"
    long_code = T.entry("left_mandibular_incisive_canal_fdi103").type.value
    assert len(long_code) == 16 and long_code != T.entry("right_mandibular_incisive_canal_fdi104").type.value
    never_seen = T.entry("some_new_structure_right")  # a future class: still no crash
    assert never_seen.name == "Right some new structure" and len(never_seen.color) == 3


def test_fallback_colours_are_stable_across_processes():
    code = "from SegmentationLogic.terminology import recommended_color as c; print(c('eye_lens_left'), c('teeth'))"
    outputs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        outputs.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                   check=True).stdout)
    assert len(outputs) == 1
    colors = {T.recommended_color(n) for n in ALL_CLASSES if not T.is_standard(n)}
    assert len(colors) > 0.95 * (len(ALL_CLASSES) - 151)  # distinct, not one grey for all


def test_segment_names_are_unique_within_every_task():
    for task in load_catalogue().tasks():
        names = T.segment_names(task.classes)
        assert len(set(names.values())) == len(names), task.name
    names = T.segment_names(load_catalogue().task("appendicular_bones").classes)
    assert "Phalanx structure (phalanges hand)" in names.values()
    assert T.segment_names({3: "kidney_left"}, use_standard_names=False) == {3: "kidney_left"}


def test_generated_resources_match_the_mapping_csv(tmp_path):
    """Resources/Terminology is what the tool makes from the CSV (no hand edits, not stale)."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools"))
    import make_terminology

    csv = make_terminology.default_csv()
    if csv is None:
        pytest.skip("totalsegmentator_snomed_mapping.csv not available (../shared/data)")
    make_terminology.main(["--csv", str(csv), "--out", str(tmp_path)])
    shipped = T.slicer_context_files()[0].parent
    for name in (T.DATA_FILE, T.SLICER_CONTEXT_FILE, T.SLICER_REGION_CONTEXT_FILE):
        assert (tmp_path / name).read_text() == (shipped / name).read_text(), f"{name} is stale: rerun the tool"
