"""`worker`: the persistent engine process the Slicer module talks to (see SegmentationLogic/worker.py)."""
def cmd_worker(args):
    from ..worker import serve  # the engine: imported when the worker starts

    return serve(plugins=args.plugin or ())


def add_parser(sub):
    p = sub.add_parser("worker", help="persistent worker for the Slicer module: one JSON request per stdin line, "
                                      "JSON events on stdout; keeps models loaded between requests")
    p.add_argument("--plugin", action="append", metavar="MODULE",
                   help="import this module first: it registers more worker commands (repeatable)")
    p.set_defaults(func=cmd_worker)
