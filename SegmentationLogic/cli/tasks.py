"""`list-tasks` and `classes`: what the catalogue offers (tables from tools/info.py)."""
import json

from ..tools.info import class_json, classes_table, task_rows, tasks_table


def cmd_list_tasks(args):
    if args.json:
        print(json.dumps(task_rows(), indent=1))
        return 0
    print(tasks_table())
    return 0


def cmd_classes(args):
    if args.json:
        print(json.dumps(class_json(args.task), indent=1))
        return 0
    print(classes_table(args.task))
    return 0


def add_parsers(sub):
    p = sub.add_parser("list-tasks", help="list every task")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list_tasks)

    p = sub.add_parser("classes", help="list the classes of a task with their label values")
    p.add_argument("task")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_classes)
