"""The vessel-review edits as engine worker commands (files in, files out).

    python -m SegmentationLogic worker --plugin SegmentationLogic.vessels.worker_commands

The Slicer module starts its worker this way, so building the skeleton graph (seconds on
a large liver) never runs on Slicer's GUI thread:
    {"id": "4", "command": "vessels.reassign", "labels", "output", "point_ras", "scope", "to", "qc"}
    {"id": "5", "command": "vessels.resplit", "labels", "output", "confidence_output", "masks",
     "portal_points_ras", "hepatic_points_ras", "qc"}
each answered with progress events (stage "review") and {"labels": output, "qc": ...}
(a re-split also {"confidence": confidence_output}: the new split's confidence map).
The edits are imported when they run: the same worker relays runs to a segmentation
server on a computer without nibabel and scipy, and must start there.
"""
from ..worker import register_command


def _reassign(message, context):
    from .review import reassign_command  # nibabel and scipy: a remote-only client's worker starts without them

    return reassign_command(message, context.progress)


def _resplit(message, context):
    from .review import resplit_command  # nibabel and scipy: a remote-only client's worker starts without them

    return resplit_command(message, context.progress)


register_command("vessels.reassign", _reassign)
register_command("vessels.resplit", _resplit)
