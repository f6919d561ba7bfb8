"""Which existing files are results of ours: a new run replaces them without --overwrite.

Any other existing file where a run would write is refused before the run starts
(system/output_checks.py), so a user's own mask that happens to carry a class's name,
another tool's statistics.json or a file the user put there is never lost silently.

A file counts as ours when
- it is one of our sidecars: `labels.json` (per-class folder) or `NAME.labels.json`
  (beside a multilabel NAME.nii.gz), a JSON object with "task" and "labels";
- a sidecar of ours in the same folder lists it under "files" (every file that run
  wrote); sidecars of earlier versions have no such list, and then `<class>.nii.gz` of
  each listed class, `statistics.json` and `preview_<task>.png` count;
- it is a NIfTI labelmap whose header carries TotalSegmentator's label table (ours and
  the official tool's multilabel results: re-running into the same file is expected).
Sidecars cost a JSON parse and labelmaps a read of their header and extensions (no
voxel data, no nibabel: the remote client checks with these rules in Slicer's Python).
"""
import gzip
import json
import struct
import zlib
from pathlib import Path

HEADER_LIMIT = 1 << 20  # header and extensions of a labelmap; the label table of all 117 classes is ~12 kB


def read_sidecar(path):
    """The sidecar at `path` as a dict if it is one of ours, else None."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if isinstance(data, dict) and isinstance(data.get("task"), str) and isinstance(data.get("labels"), dict):
        return data
    return None


def _listed(sidecar):
    if isinstance(sidecar.get("files"), list):
        return {str(f) for f in sidecar["files"]}
    names = {f"{name}.nii.gz" for name in sidecar["labels"].values()}  # earlier versions: per-class files
    return names | {"statistics.json", f"preview_{sidecar['task']}.png"}


def _is_labelmap(path):
    """A NIfTI-1 file whose header extensions hold the label table (labelmap.label_table_xml)."""
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return False
    try:
        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "rb") as f:
            head = f.read(HEADER_LIMIT)
    except (OSError, EOFError, zlib.error):
        return False
    order = next((o for o in ("<", ">") if len(head) >= 352 and struct.unpack(o + "i", head[:4])[0] == 348), None)
    if order is None:
        return False
    vox_offset = struct.unpack(order + "f", head[108:112])[0]  # the extensions lie between 352 and here
    extensions = head[352:int(vox_offset)] if 352 < vox_offset <= HEADER_LIMIT else b""
    return b"<CaretExtension>" in extensions and b"<LabelTable>" in extensions


def is_ours(path):
    """True if the existing file `path` is a result this engine (or the official tool) wrote."""
    path = Path(path)
    if path.name == "labels.json" or path.name.endswith(".labels.json"):
        if read_sidecar(path) is not None:
            return True
    for sidecar_path in path.parent.glob("*labels.json"):
        sidecar = read_sidecar(sidecar_path) if sidecar_path != path else None
        if sidecar is not None and path.name in _listed(sidecar):
            return True
    return _is_labelmap(path)
