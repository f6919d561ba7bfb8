"""Which inputs make a cohort: the cases of a folder, or the rows of a CSV manifest.

Folder: every NIfTI / NRRD / MetaImage file, zip of a DICOM series and sub-folder (one
DICOM series) directly inside it is a case, named after the file without its suffix
(`ct.nii.gz` -> `ct`; a second `ct.nrrd` -> `ct_2`). Hidden entries are ignored; other
files are returned as skipped. The Slicer batch script uses the same function.

Manifest (`.csv`, UTF-8, header row): `input` (required; relative paths are relative to
the manifest's folder), `case` (optional unique id; default: the input's name as above),
and optional per-case options, empty meaning the command line's value:
`task`, `quality` (normal | fast | fastest), `roi_subset` (class names separated by
spaces or commas), and the yes/no columns `body_seg`, `force_split`,
`remove_small_blobs`, `robust_crop`, `ignore_modality`. A row whose input is missing or
whose options are invalid becomes a case with a `problem` (reported as failed, with
cause and fix); the other rows still run. A manifest that cannot be read as a whole
(no `input` column, an unknown column, two rows with one case id) is refused.
"""
import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..request import QUALITIES
from .errors import CohortError

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".zip")
BOOLEAN_COLUMNS = ("body_seg", "force_split", "remove_small_blobs", "robust_crop", "ignore_modality")
OPTION_COLUMNS = ("task", "quality", "roi_subset") + BOOLEAN_COLUMNS
_TRUE, _FALSE = ("1", "true", "yes", "y"), ("0", "false", "no", "n")
_BAD_ID = re.compile(r"[/\\\x00-\x1f]")


@dataclass
class Case:
    """One scan to segment: its id (the output's name), input path and per-case request fields."""

    case: str
    input: Path
    options: dict = field(default_factory=dict)  # SegmentRequest field -> value, overriding the defaults
    where: str = ""  # for messages: "manifest.csv line 7" or "folder entry ct.nii.gz"
    problem: Optional[dict] = None  # an error found before running: {"kind", "type", "cause", "fix"}


def _image_suffix(name):
    return next((s for s in IMAGE_SUFFIXES if name.lower().endswith(s)), None)


def _without_suffix(name):
    suffix = _image_suffix(name)
    return name[: -len(suffix)] if suffix else name


def case_name(path):
    """The case id a file or folder gives: its name without an image suffix (None: not an image)."""
    path = Path(path)
    if path.is_dir():
        return path.name
    return _without_suffix(path.name) if _image_suffix(path.name) else None


def find_cases(folder, exclude=()):
    """[(case id, path)] in name order, and the files that are not images (skipped).

    Ids stay unique, also on case-insensitive file systems (`ct.nii.gz` and `CT.nrrd`
    give `ct` and `CT_2`); `exclude` names entries to leave out (an output folder inside
    the input folder)."""
    excluded = {Path(p).resolve() for p in exclude}
    cases, skipped, used = [], [], set()
    for path in sorted(Path(folder).iterdir()):
        if path.name.startswith(".") or path.resolve() in excluded:
            continue
        name = case_name(path)
        if name is None:
            skipped.append(path)
            continue
        unique, n = name, 2
        while unique.lower() in used:
            unique, n = f"{name}_{n}", n + 1
        used.add(unique.lower())
        cases.append((unique, path))
    return cases, skipped


def folder_cases(folder, exclude=()):
    """The cases of a folder as `Case`s, and the skipped files."""
    found, skipped = find_cases(folder, exclude)
    return [Case(name, path, where=f"folder entry {path.name}") for name, path in found], skipped


def check_case_id(case_id):
    """A case id names output files: no path separators, control characters or leading dot."""
    if not case_id or case_id.startswith(".") or _BAD_ID.search(case_id) or len(case_id) > 200:
        raise ValueError(f"{case_id!r} cannot name an output file")
    return case_id


def _problem(kind, type_name, cause, fix):
    return {"kind": kind, "type": type_name, "cause": cause, "fix": fix}


def _parse_options(row, where):
    """Per-case request fields from a manifest row; ValueError names the bad cell."""
    options = {}
    for column in OPTION_COLUMNS:
        value = (row.get(column) or "").strip()
        if not value:
            continue
        if column == "quality":
            if value not in QUALITIES:
                raise ValueError(f"quality {value!r} (use one of {', '.join(QUALITIES)})")
            options["quality"] = value
        elif column == "roi_subset":
            options["roi_subset"] = [c for c in re.split(r"[\s,]+", value) if c]
        elif column in BOOLEAN_COLUMNS:
            if value.lower() not in _TRUE + _FALSE:
                raise ValueError(f"{column} {value!r} (use yes/no, true/false or 1/0)")
            flag = value.lower() in _TRUE
            if column == "ignore_modality":
                options["check_modality"] = not flag
            else:
                options[column] = flag
        else:
            options[column] = value
    return options


def read_manifest(path):
    """The cases a CSV manifest names (see the module docstring)."""
    path = Path(path)
    try:
        handle = open(path, newline="", encoding="utf-8-sig")  # -sig: Excel writes a byte-order mark
    except OSError as e:
        raise CohortError(f"Cannot read the manifest {path}: {e.strerror or e}.", "Check the path.") from e
    with handle:
        reader = csv.reader(handle)
        try:
            header = [h.strip().lower() for h in next(reader)]
        except StopIteration:
            raise CohortError(f"The manifest {path} is empty.",
                              "Write a header row (input[,case,...]) and one row per case.") from None
        except (csv.Error, UnicodeDecodeError) as e:
            raise CohortError(f"The manifest {path} is not a readable CSV file ({e}).",
                              "Save it as CSV (UTF-8, comma-separated).") from e
        known = ("case", "input") + OPTION_COLUMNS
        unknown = [h for h in header if h not in known]
        if "input" not in header or unknown or len(set(header)) != len(header):
            what = ("no 'input' column" if "input" not in header else
                    f"unknown column(s) {', '.join(map(repr, unknown))}" if unknown else "a column named twice")
            raise CohortError(f"The manifest {path} has {what}.", f"Use the columns: {', '.join(known)} "
                              "('input' is required; empty option cells take the command line's value).")
        cases, lines = [], {}
        try:
            for row_values in reader:
                line = reader.line_num
                if not any(v.strip() for v in row_values) or row_values[0].lstrip().startswith("#"):
                    continue
                row = dict(zip(header, row_values))
                cases.append(_manifest_case(path, row, line, lines))
        except (csv.Error, UnicodeDecodeError) as e:
            raise CohortError(f"The manifest {path} cannot be read after line {reader.line_num} ({e}).",
                              "Save it as CSV (UTF-8, comma-separated).") from e
    return cases


def _manifest_case(manifest, row, line, lines):
    where = f"{manifest.name} line {line}"
    raw = (row.get("input") or "").strip()
    explicit = (row.get("case") or "").strip()
    source = Path(raw).expanduser() if raw else None
    if source is not None and not source.is_absolute():
        source = manifest.parent / source
    case_id = explicit or (_without_suffix(source.name) if source is not None else "")
    try:
        check_case_id(case_id)
    except ValueError as e:
        raise CohortError(f"{where}: {'the case id' if explicit else 'the input name'} {e}.",
                          "Give the row a 'case' id made of letters, digits, '-', '_' or '.'.") from None
    if case_id.lower() in lines:
        raise CohortError(f"{where}: case id {case_id!r} is also used on line {lines[case_id.lower()]}.",
                          "Give every row its own 'case' id (ids name the output files)." if explicit else
                          "Add a 'case' column with a unique id per row (these inputs have the same file name).")
    lines[case_id.lower()] = line
    case = Case(case_id, source or Path(""), where=where)
    if source is None:
        case.problem = _problem("input", "InputNotFound", f"{where}: the 'input' cell is empty.",
                                "Write the path of the case's image, DICOM folder or zip.")
    elif not source.exists():
        case.problem = _problem("input", "InputNotFound", f"Input not found: {source} ({where}).",
                                "Correct the path in the manifest (relative paths are relative to the manifest's "
                                "folder) or remove the row; a rerun tries the case again.")
    try:
        case.options = _parse_options(row, where)
    except ValueError as e:
        case.problem = case.problem or _problem("request", "BadManifestValue", f"{where}: invalid {e}.",
                                                "Correct the cell, or leave it empty for the command line's value.")
    return case


def load_cases(source, exclude=()):
    """Cases from a folder or a `.csv` manifest: ([Case], skipped files), with absolute paths
    (the manifest of outputs compares inputs by path, from whichever folder a rerun starts)."""
    source = Path(source).expanduser().absolute()
    if source.is_dir():
        return folder_cases(source, exclude)
    if source.is_file() and source.suffix.lower() == ".csv":
        return read_manifest(source), []
    if not source.exists():
        raise CohortError(f"Input not found: {source}.", "Give a folder of cases or a .csv manifest.")
    raise CohortError(f"{source} is neither a folder nor a .csv manifest.",
                      "Give a folder of cases (images, DICOM folders, zips) or a CSV manifest with an 'input' column.")
