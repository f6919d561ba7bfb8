"""`list-tasks` and `classes`: what the catalogue offers."""
import json

from ..catalogue import load_catalogue


def cmd_list_tasks(args):
    cat = load_catalogue()
    rows = [{"name": t.name, "modality": t.modality, "licensed": t.licensed, "classes": len(t.classes),
             "qualities": list(t.qualities), "description": t.description} for t in cat.tasks()]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    width = max(len(r["name"]) for r in rows)
    print(f"{'TASK'.ljust(width)}  MOD  LICENCE  CLASSES  QUALITIES          DESCRIPTION")
    for r in rows:
        print(f"{r['name'].ljust(width)}  {r['modality']:<3}  {'yes' if r['licensed'] else 'no':<7}  "
              f"{r['classes']:>7}  {','.join(r['qualities']):<17}  {r['description']}")
    print(f"\n{len(rows)} tasks. Licensed tasks need a licence key (free for non-commercial use): "
          f"{cat.license_info_url}")
    return 0


def cmd_classes(args):
    task = load_catalogue().task(args.task)
    if args.json:
        print(json.dumps({str(k): v for k, v in sorted(task.classes.items())}, indent=1))
        return 0
    print(f"Task '{task.name}' [{task.modality}, {'licence required' if task.licensed else 'open'}, "
          f"{len(task.classes)} classes]")
    for value in sorted(task.classes):
        print(f"{value:>4}  {task.classes[value]}")
    return 0


def add_parsers(sub):
    p = sub.add_parser("list-tasks", help="list every task")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list_tasks)

    p = sub.add_parser("classes", help="list the classes of a task with their label values")
    p.add_argument("task")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_classes)
