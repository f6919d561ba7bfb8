"""The vessel-review edits as engine worker commands (files in, files out).

    python -m SegmentationLogic worker --plugin SegmentationLogic.vessels.worker_commands

The Slicer module starts its worker this way, so building the skeleton graph (seconds on
a large liver) never runs on Slicer's GUI thread:
    {"id": "4", "command": "vessels.reassign", "labels", "output", "point_ras", "scope", "to", "qc"}
    {"id": "5", "command": "vessels.resplit", "labels", "output", "masks", "portal_points_ras",
     "hepatic_points_ras", "qc"}
each answered with progress events (stage "review") and {"labels": output, "qc": ...}.
"""
from ..worker import register_command
from .review import reassign_command, resplit_command

register_command("vessels.reassign", lambda message, context: reassign_command(message, context.progress))
register_command("vessels.resplit", lambda message, context: resplit_command(message, context.progress))
