"""`evaluate`: Dice per class of a result against a reference."""
import json


def cmd_evaluate(args):
    from ..outputs.evaluation import dice_per_class_files  # the engine (numpy, nibabel, torch): imported when the command runs

    print(json.dumps(dice_per_class_files(args.prediction, args.reference, task=args.task), indent=1))
    return 0


def add_parser(sub):
    p = sub.add_parser("evaluate", help="Dice per class of a result against a reference")
    p.add_argument("prediction")
    p.add_argument("reference")
    p.add_argument("-ta", "--task", default=None, help="names the classes in the report")
    p.set_defaults(func=cmd_evaluate)
