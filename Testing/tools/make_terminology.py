"""Regenerate Resources/Terminology/ from TotalSegmentator's SNOMED mapping CSV.

Developer tool, not part of the product: the product reads only the generated files.

    python Testing/tools/make_terminology.py [--csv PATH]

Input: `totalsegmentator/resources/totalsegmentator_snomed_mapping.csv` of the official
TotalSegmentator repository (Apache-2.0; a copy is in ../shared/data). Outputs, in
Resources/Terminology/:
- totalsegmentator_terminology.json: class name -> SNOMED category/type/modifier/region
  codes and the recommended colour (what SegmentationLogic.terminology reads);
- SegmentationCategoryTypeModifier-TotalSegmentator.term.json and
  AnatomicRegionAndModifier-TotalSegmentator.term.json: the same codes as Slicer
  terminology contexts (plus fallback entries for catalogue classes the CSV lacks), with
  `3dSlicerLabel`s, so Slicer's terminology selector names segments as our import does.
"""
import argparse
import csv
import json
import sys
from collections import OrderedDict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from SegmentationLogic import terminology as T  # noqa: E402
from SegmentationLogic.catalogue import load_catalogue  # noqa: E402

SOURCE = ("wasserth/TotalSegmentator", "0e65a448d557382b1e925276212b3bec7f5aff83",
          "totalsegmentator/resources/totalsegmentator_snomed_mapping.csv")
P = "SegmentedProperty"
COLUMNS = {
    "category": P + "CategoryCodeSequence",
    "type": P + "TypeCodeSequence",
    "modifier": P + "TypeModifierCodeSequence",
    "region": "AnatomicRegionSequence",
    "region_modifier": "AnatomicRegionModifierSequence",
}
# Evident errors in the upstream CSV, corrected here (and listed in the output):
CORRECTIONS = {
    # The combined gluteus_minimus row carries gluteus medius' code; its left/right rows use 75297007.
    "gluteus_minimus": {"type": ["SCT", "75297007", "Gluteus minimus muscle"]},
}
MEANING_FIXES = {("SCT", "75297007"): "Gluteus minimus muscle"}  # CSV spells it "Gluteus minius muscle"


def default_csv():
    for parent in Path(__file__).resolve().parents:
        cand = parent / "shared" / "data" / "totalsegmentator_snomed_mapping.csv"
        if cand.is_file():
            return cand
    return None


def read_csv(path):
    classes = OrderedDict()
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            record = {}
            for key, prefix in COLUMNS.items():
                triple = [row[f"{prefix}.{part}"].strip() for part in ("CodingSchemeDesignator", "CodeValue", "CodeMeaning")]
                if triple[1]:
                    triple[2] = MEANING_FIXES.get((triple[0], triple[1]), triple[2])
                    record[key] = triple
            record.update(CORRECTIONS.get(row["Structure"], {}))
            record["color"] = [int(c) for c in row["DicomRGBColor"].split(",")]
            classes[row["Structure"].strip()] = record
    check_consistent(classes)
    return classes


def check_consistent(classes):
    """One meaning per code, and no separator characters Slicer's serialisation would split on."""
    meanings = {}
    for name, record in classes.items():
        for key in COLUMNS:
            if key in record:
                scheme, value, meaning = record[key]
                if meanings.setdefault((scheme, value), meaning) != meaning:
                    raise SystemExit(f"{name}: code {scheme} {value} means both {meanings[(scheme, value)]!r} and {meaning!r}")
                if any(c in "~^|" for c in scheme + value + meaning):
                    raise SystemExit(f"{name}: separator character in {record[key]}")


def _code_json(code):
    return {"CodingSchemeDesignator": code.scheme, "CodeValue": code.value, "CodeMeaning": code.meaning}


def _rgb(color):
    return [int(round(c * 255)) for c in color]


def slicer_contexts(entries):
    """Slicer type and region context documents for a list of terminology entries."""
    categories = OrderedDict()
    regions = OrderedDict()
    own_color = set()
    for e in entries:
        cat = categories.setdefault(e.category, OrderedDict())
        t = cat.get(e.type)
        if t is None:
            t = cat[e.type] = {**_code_json(e.type), "3dSlicerLabel": e.type.meaning,
                               "recommendedDisplayRGBValue": _rgb(e.color)}
            own_color.discard((e.category, e.type))
        if e.modifier is None and (e.category, e.type) not in own_color:
            # the type's own colour is that of the class without a modifier ("femur", not "femur_left")
            t["recommendedDisplayRGBValue"] = _rgb(e.color)
            own_color.add((e.category, e.type))
        if e.modifier is not None:
            mods = t.setdefault("Modifier", [])
            if all(m["CodeValue"] != e.modifier.value for m in mods):
                mods.append({**_code_json(e.modifier), "3dSlicerLabel": e.slicer_label,
                             "recommendedDisplayRGBValue": _rgb(e.color)})
        if e.region is not None:
            r = regions.setdefault(e.region, _code_json(e.region))
            if e.region_modifier is not None:
                mods = r.setdefault("Modifier", [])
                if all(m["CodeValue"] != e.region_modifier.value for m in mods):
                    mods.append(_code_json(e.region_modifier))
    type_context = {
        "SegmentationCategoryTypeContextName": T.CONTEXT_NAME,
        "@schema": "https://raw.githubusercontent.com/qiicr/dcmqi/master/doc/segment-context-schema.json#",
        "SegmentationCodes": {"Category": [
            {**_code_json(cat), "showAnatomy": True, "Type": list(types.values())} for cat, types in categories.items()]},
    }
    region_context = {
        "AnatomicContextName": T.REGION_CONTEXT_NAME,
        "@schema": "https://raw.githubusercontent.com/qiicr/dcmqi/master/doc/anatomic-context-schema.json#",
        "AnatomicCodes": {"AnatomicRegion": list(regions.values())},
    }
    return type_context, region_context


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", type=Path, default=default_csv(), help="totalsegmentator_snomed_mapping.csv")
    parser.add_argument("--out", type=Path, default=REPO / "Resources" / T.TERMINOLOGY_DIR)
    args = parser.parse_args(argv)
    if args.csv is None or not args.csv.is_file():
        parser.error("give --csv PATH (totalsegmentator_snomed_mapping.csv)")
    classes = read_csv(args.csv)
    args.out.mkdir(parents=True, exist_ok=True)
    data = {
        "about": "Standard terminology of TotalSegmentator classes. Generated by Testing/tools/make_terminology.py "
                 f"from {SOURCE[2]} of https://github.com/{SOURCE[0]} at commit {SOURCE[1]} (Apache-2.0). "
                 "Colours are the CSV's DicomRGBColor (0-255).",
        "source": {"repository": SOURCE[0], "commit": SOURCE[1], "path": SOURCE[2], "license": "Apache-2.0"},
        "corrections": {name: {"type": c["type"], "why": "combined row had gluteus medius' code"}
                        for name, c in CORRECTIONS.items()},
        "classes": classes,
    }
    (args.out / T.DATA_FILE).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")

    # Slicer contexts: every mapped class, plus every catalogue class the mapping lacks.
    entries = [T.entry_from_record(name, record) for name, record in classes.items()]
    for task in load_catalogue().tasks():
        entries += [T.fallback_entry(n) for n in task.class_names() if n not in classes and
                    all(e.class_name != n for e in entries)]
    type_context, region_context = slicer_contexts(entries)
    (args.out / T.SLICER_CONTEXT_FILE).write_text(json.dumps(type_context, indent=1) + "\n", encoding="utf-8")
    (args.out / T.SLICER_REGION_CONTEXT_FILE).write_text(json.dumps(region_context, indent=1) + "\n", encoding="utf-8")
    print(f"{len(classes)} mapped classes; Slicer context with {len(entries)} classes "
          f"({len(entries) - len(classes)} fallback) written to {args.out}")


if __name__ == "__main__":
    main()
