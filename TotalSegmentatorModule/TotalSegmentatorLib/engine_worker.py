"""The module's engine worker: the engine's persistent worker plus the liver-vessel review commands.

    PythonSlicer -m TotalSegmentatorLib.engine_worker      (runner.WorkerEngine starts it)

One JSON request per stdin line; every event it answers carries the request's id:
    {"id": "1", "command": "segment", "request": SegmentRequest(...).to_json(), "tmpdir": DIR}
        -> progress / log events, then {"event": "result", **SegmentResult.to_json(), "seconds", "warm"}
           (with the class map) or an error event
    {"id": "2", "command": "devices"}          -> result {"devices": [...]}
    {"id": "3", "command": "ping"}             -> result {"pid": ...}
    {"id": "4", "command": "vessels.reassign", ...} / "vessels.resplit"  (SegmentationLogic.vessels.review)
    {"command": "cancel", "id": "1"}           stops request 1 at its next progress report
    {"command": "shutdown"}                    (or closing stdin) ends the worker

Runs in the engine's Python (no Slicer, no Qt): skeletonisation and splitting never run
on Slicer's GUI thread.

TEMPORARY ADAPTER (branch i8m): the engine's worker on this branch speaks the older argv
protocol and has no `register_command`. `_Worker` adds both on top of it. When the
engine's worker offers them (branch i8e), this file shrinks to: create the engine's
worker, `review.register_worker_commands(worker.register_command)`, serve.
"""
import os
import sys
import time
import traceback

from SegmentationLogic import worker as engine_worker
from SegmentationLogic.errors import SegmentationError
from SegmentationLogic.progress import CancelToken, Progress
from SegmentationLogic.vessels import review


class _Worker(engine_worker.Worker):
    def __init__(self, out):
        super().__init__(out)
        self._commands = {"segment": self._segment_request, "devices": self._devices, "ping": self._ping}

    def register_command(self, name, handler):
        """handler(request, progress) -> result dict; `progress` raises Cancelled once the request is cancelled."""
        def run(request, token):
            return handler(request, Progress(lambda event: self.send(event, request.get("id")), cancel=token))
        self._commands[name] = run

    def serve(self, stdin):
        import threading

        threading.Thread(target=self._read_stdin, args=(stdin,), daemon=True, name="worker-stdin").start()
        self.send({"event": "ready", "pid": os.getpid()})
        self._warm_up()
        while True:
            request = self._requests.get()
            command = request.get("command")
            if command == "shutdown":
                return 0
            request_id = request.get("id")
            handler = self._commands.get(command)
            if handler is None:
                self.send({"event": "error", "kind": "request", "type": "BadRequest",
                           "cause": f"Unknown worker command {command!r}.", "fix": ""}, request_id)
                continue
            token = CancelToken()
            with self._state_lock:
                if request_id in self._cancelled:
                    self._cancelled.discard(request_id)
                    continue
                self._current = (request_id, token)
            try:
                self.send({"event": "result", **handler(request, token)}, request_id)
            except SegmentationError as e:
                self.send({"event": "error", **e.to_dict()}, request_id)
            except Exception as e:  # keep serving: one bad request must not cost the loaded models
                traceback.print_exc(file=sys.stderr)
                self.send({"event": "error", "kind": "internal", "type": type(e).__name__,
                           "cause": f"Internal error in the segmentation engine: {e}",
                           "fix": "See the log for details and report it with the log."}, request_id)
            finally:
                self._current = None

    def _segment_request(self, request, token):
        from SegmentationLogic.request import SegmentRequest

        segment_request = SegmentRequest.from_json(request.get("request"))
        progress = Progress(lambda event: self.send(event, request.get("id")), cancel=token)
        started = time.perf_counter()
        with engine_worker._temporary_dir(request.get("tmpdir")):
            segmenter, warm = self._segmenter({"device": segment_request.device,
                                               "weights_dir": segment_request.weights_dir,
                                               "download": segment_request.download})
            result = segmenter.run(segment_request, progress=progress)
        token.check()
        return {**result.to_json(), "seconds": round(time.perf_counter() - started, 3), "warm": warm}


def main():
    # Protocol lines go to a private copy of stdout; fd 1 itself is pointed at stderr so
    # that whatever torch, nnU-Net or a C library prints can never corrupt the stream.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8", buffering=1)
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    stdin = open(sys.stdin.fileno(), encoding="utf-8", errors="replace", closefd=False)
    worker = _Worker(out)
    review.register_worker_commands(worker.register_command)
    try:
        return worker.serve(stdin)
    finally:
        out.flush()


if __name__ == "__main__":
    sys.exit(main())
