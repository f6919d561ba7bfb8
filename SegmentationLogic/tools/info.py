"""`info`: the task registry as JSON or tables (the official `totalseg_info`).

Without flags: the task table; `--json`: the whole registry (engine version, every task's
modality, licence flag and classes); `--list-tasks [--json]`; `--classes -ta TASK [--json]`.
"""
import json

from ..catalogue import load_catalogue

OFFICIAL_VERSION = "2.18.0"  # the TotalSegmentator release whose tasks, classes and results this engine matches


def task_summary(task):
    return {"name": task.name, "modality": task.modality, "license_required": task.licensed,
            "num_classes": len(task.classes)}


def registry():
    """Every task: modality, licence flag and classes (JSON-ready; class values as strings)."""
    from .. import __version__

    return {"engine_version": __version__, "totalsegmentator_version": OFFICIAL_VERSION,
            "tasks": {t.name: {"modality": t.modality, "license_required": t.licensed, "description": t.description,
                               "qualities": list(t.qualities),
                               "classes": {str(k): v for k, v in sorted(t.classes.items())}}
                      for t in load_catalogue().tasks()}}


def cmd_info(args):
    from ..cli import cmd_classes, cmd_list_tasks

    cat = load_catalogue()
    if args.classes:
        if args.task is None:
            from ..errors import SegmentationError

            raise SegmentationError("--classes needs a task.", "Add -ta TASK, e.g. info --classes -ta total.")
        args.task = cat.task(args.task).name
        return cmd_classes(args)
    if args.list_tasks and args.json:
        print(json.dumps([task_summary(t) for t in cat.tasks()], indent=2))
        return 0
    if args.json:
        print(json.dumps(registry(), indent=2))
        return 0
    return cmd_list_tasks(args)


def add_command(sub, common, progress_from_args, emit_result):
    p = sub.add_parser("info", help="the tasks and their classes (tables, or JSON with --json)",
                       description="Tasks, modalities, licence flags and classes, as the official totalseg_info.")
    group = p.add_mutually_exclusive_group()
    group.add_argument("-lt", "--list-tasks", dest="list_tasks", action="store_true", help="the task table")
    group.add_argument("-cl", "--classes", action="store_true", help="the classes of the task given with -ta")
    p.add_argument("-ta", "--task", default=None, help="task for --classes")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_info)
