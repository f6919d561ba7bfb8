"""Command line front door: flags -> SegmentRequest (or a weights / catalogue action).

    main      parser assembly, error reporting, exit codes
    common    shared flags, progress output, the result event
    segment   `segment`              tasks     `list-tasks`, `classes`
    weights   `download-weights`, `import-weights`, `set-license`
    evaluate  `evaluate`             worker    `worker`
    (SegmentationLogic/vessels/cli.py adds `liver-vessels` and `split-vessels`)
"""
from .main import build_parser, main

__all__ = ["build_parser", "main"]
