"""What the panel offers: tasks, qualities, structures (ROI subset), devices.

Plain data built from the engine's task catalogue and the detected devices, so the
widget only copies it into Qt widgets and tests can check it without Qt.
"""
from dataclasses import dataclass

from SegmentationLogic.catalogue import load_catalogue
from SegmentationLogic.errors import SegmentationError
from SegmentationLogic.imaging.modality import modality_warning as engine_modality_warning

PRIMARY_TASKS = ("total", "total_mr")  # listed first: what most users run
QUALITY_LABELS = {"normal": "Normal (1.5 mm)", "fast": "Fast (3 mm)", "fastest": "Fastest (6 mm)"}


@dataclass(frozen=True)
class TaskItem:
    name: str
    text: str
    tooltip: str
    modality: str
    licensed: bool
    qualities: tuple
    roi_subset: bool


def task_items(catalogue=None):
    """Every task, CT and MR: the main tasks first, then by modality and name; licensed ones marked."""
    cat = catalogue or load_catalogue()
    tasks = sorted(cat.tasks(), key=lambda t: (t.name not in PRIMARY_TASKS, PRIMARY_TASKS.index(t.name)
                                               if t.name in PRIMARY_TASKS else 0, t.modality, t.name))
    items = []
    for t in tasks:
        text = f"{t.name} ({t.modality}, {len(t.classes)} structure{'s' if len(t.classes) != 1 else ''})"
        tooltip = t.description
        if t.licensed:
            text += " [licence required]"
            tooltip += ("\nThis task needs a licence key (free for non-commercial use): enter it under Advanced. "
                        f"{cat.license_info_url}")
        if t.note:
            tooltip += f"\n{t.note}"
        items.append(TaskItem(t.name, text, tooltip, t.modality, t.licensed, t.qualities, t.roi_subset))
    return items


def qualities_for(task_name, catalogue=None):
    """The qualities a task really has (a task with one model offers no choice)."""
    return tuple((catalogue or load_catalogue()).task(task_name).qualities) or ("normal",)


def best_quality(task_name, wanted, catalogue=None):
    """The quality that runs when `wanted` is asked for: the engine's one rule (TaskSpec.run_quality);
    where the engine would refuse it (e.g. --fast for a task without a fast model), 'normal'."""
    try:
        return (catalogue or load_catalogue()).task(task_name).run_quality(wanted)
    except SegmentationError:
        return "normal"


@dataclass(frozen=True)
class StructureItem:
    label: int
    name: str  # the official class name (what --roi_subset takes)
    text: str  # shown in the list


def structure_items(task_name, catalogue=None):
    """Classes a user can pick for an ROI subset (empty list if the task cannot run a subset)."""
    task = (catalogue or load_catalogue()).task(task_name)
    if not task.roi_subset:
        return []
    return [StructureItem(v, task.classes[v], task.classes[v].replace("_", " ")) for v in sorted(task.classes)]


def selection_text(selected, total):
    """What the structure list's label says about the selection."""
    if not total:
        return ""
    if selected:
        return f"{selected} of {total} selected: only these are segmented"
    return f"None selected: all {total} structures are segmented"


def filter_structures(items, text):
    """Items whose name contains every word of `text` (case-insensitive; '_' and ' ' alike)."""
    words = text.lower().replace("_", " ").split()
    return [i for i in items if all(w in i.text.lower() for w in words)]


def validate_roi_subset(task_name, roi_subset, catalogue=None):
    """The structure selection as a list ([] = all), or a clear error (see TaskSpec.check_roi_subset)."""
    return (catalogue or load_catalogue()).task(task_name).check_roi_subset(roi_subset) or []


@dataclass(frozen=True)
class DeviceItem:
    id: str  # what --device takes, or REMOTE
    text: str


REMOTE = "remote"  # the device choice that runs on a segmentation server (`serve`), not on this computer
REMOTE_TEXT = "Remote server"


def _device_text(d):
    memory = f", {d['memory_gb']:.0f} GB" if d.get("memory_gb") else ""
    if d["id"].startswith("cuda"):
        index = d["id"].split(":")[1] if ":" in d["id"] else "0"
        return f"GPU {index}: {d.get('name') or 'CUDA GPU'}{memory}"
    if d["id"] == "mps":
        return "Apple GPU (MPS)"
    return f"{d.get('name') or 'CPU'}{memory}"


def device_items(detected=None):
    """Auto, CPU, each CUDA GPU by name, the Apple GPU where present, and the remote server.
    `detected`: devices.available_devices().

    'Auto' says what it will use, as the engine picks it: the first CUDA GPU, else the
    Apple GPU, else the CPU. 'Remote server' is always offered: it needs nothing installed here.
    """
    detected = list(detected or [])
    gpus = [d for d in detected if d["id"].startswith("cuda")]
    mps = [d for d in detected if d["id"] == "mps"]
    cpu = next((d for d in detected if d["id"] == "cpu"), {"id": "cpu", "name": "CPU"})
    if not detected:
        auto = "Auto (detecting devices...)"
    elif gpus or mps:
        auto = f"Auto: {_device_text((gpus or mps)[0])}"
    else:
        auto = "Auto: CPU (no GPU found)"
    items = [DeviceItem("auto", auto), DeviceItem("cpu", _device_text(cpu))]
    items += [DeviceItem(d["id"] if ":" in d["id"] else f"{d['id']}:0", _device_text(d)) for d in gpus]
    items += [DeviceItem("mps", _device_text(d)) for d in mps]
    return items + [DeviceItem(REMOTE, REMOTE_TEXT)]


def modality_warning(task_name, guess, catalogue=None):
    """Panel text when the volume looks like another modality than the task expects, else None.

    `guess`: ("CT" | "MR", confidence, reason) from the engine's `guess_modality`; the text and
    the confidence it needs are the engine's own (imaging/modality.py, numpy only).
    """
    if not guess:
        return None
    task = (catalogue or load_catalogue()).task(task_name)
    return engine_modality_warning(task_name, task.modality, tuple(guess))
