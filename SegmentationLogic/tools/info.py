"""The task registry as tables or JSON (`list-tasks`, `classes`, `info`; the official `totalseg_info`).

`info` without flags: the task table; `--json`: the whole registry (engine version, every
task's modality, licence flag, qualities and classes); `--list-tasks [--json]`;
`--classes -ta TASK [--json]`. `segment -lt` / `-lc` print the same tables.
"""
import json

from ..version import __version__
from ..catalogue import load_catalogue
from ..errors import SegmentationError


def task_summary(task):
    return {"name": task.name, "modality": task.modality, "license_required": task.licensed,
            "num_classes": len(task.classes)}


def registry():
    """Every task: modality, licence flag and classes (JSON-ready; class values as strings)."""
    cat = load_catalogue()
    return {"engine_version": __version__, "totalsegmentator_version": cat.official_version,
            "tasks": {t.name: {"modality": t.modality, "license_required": t.licensed, "description": t.description,
                               "qualities": list(t.qualities),
                               "classes": {str(k): v for k, v in sorted(t.classes.items())}}
                      for t in cat.tasks()}}


def task_rows():
    return [{"name": t.name, "modality": t.modality, "licensed": t.licensed, "classes": len(t.classes),
             "qualities": list(t.qualities), "description": t.description} for t in load_catalogue().tasks()]


def tasks_table(rows=None):
    """The task table: every column as wide as its widest cell, class counts right-aligned."""
    rows = task_rows() if rows is None else rows
    table = [["TASK", "MOD", "LICENCE", "CLASSES", "QUALITIES", "DESCRIPTION"]] + [
        [r["name"], r["modality"], "yes" if r["licensed"] else "no", str(r["classes"]), ",".join(r["qualities"]),
         r["description"]] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    lines = ["  ".join([c.rjust(w) if i == 3 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))] + [row[-1]])
             for row in table]
    return "\n".join(lines) + (f"\n\n{len(rows)} tasks. Licensed tasks need a licence key (free for non-commercial "
                               f"use): {load_catalogue().license_info_url}")


def classes_table(task_name):
    task = load_catalogue().task(task_name)
    lines = [f"Task '{task.name}' [{task.modality}, {'licence required' if task.licensed else 'open'}, "
             f"{len(task.classes)} classes]"]
    lines += [f"{value:>4}  {task.classes[value]}" for value in sorted(task.classes)]
    return "\n".join(lines)


def class_json(task_name):
    return {str(k): v for k, v in sorted(load_catalogue().task(task_name).classes.items())}


def info(list_tasks=False, classes=False, task=None, as_json=False):
    """The text `info` prints for these flags."""
    if classes:
        if task is None:
            raise SegmentationError("--classes needs a task.", "Add -ta TASK, e.g. info --classes -ta total.")
        return json.dumps(class_json(task), indent=1) if as_json else classes_table(task)
    if as_json:
        return json.dumps([task_summary(t) for t in load_catalogue().tasks()] if list_tasks else registry(), indent=2)
    return tasks_table()
