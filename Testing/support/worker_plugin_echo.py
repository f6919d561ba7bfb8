"""A worker plugin for the tests: `python -m SegmentationLogic worker --plugin worker_plugin_echo`."""
from SegmentationLogic.errors import SegmentationError
from SegmentationLogic.worker import register_command


def _echo(message, context):
    if message.get("fail"):
        raise SegmentationError("Asked to fail.", "Do not ask.")
    context.progress("echo", 0.5, "half way")
    return {"echo": message.get("text"), "id_seen": context.request_id}


register_command("echo", _echo)
