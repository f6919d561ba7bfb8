"""Persistent engine process for the Slicer module: `python -m SegmentationLogic worker`.

Starting Python, importing torch and nnU-Net and loading a model's checkpoints takes
longer than a fast run itself; the worker pays that once and keeps the loaded models
(the engine's `Segmenter`) between requests, so a second Apply on the same task starts
predicting at once.

Protocol: one JSON request per stdin line, answered with the CLI's JSON-lines events
(`python -m SegmentationLogic segment --progress json`), each tagged with the request id:
    {"id": "1", "command": "segment", "argv": ["-i", IN, "-o", OUT, "--task", "total", "--ml"],
     "tmpdir": DIR}                                        -> progress/log events, then result or error
    {"id": "4", "command": "segment", "argv": [...], "remote": {"url": URL, "token_file": F, "ca_cert": F}}
                                                           -> the same, run on a segmentation server (server/client.py)
    {"id": "2", "command": "devices"}                      -> result {"devices": [...]}
    {"id": "3", "command": "ping"}                         -> result {"pid": ...}
    {"command": "cancel", "id": "1"}   stops request 1 at its next progress report, or drops it if it is
                                       still queued (error kind "cancelled")
    {"command": "shutdown"}            (or closing stdin) ends the worker
On start it sends {"event": "ready", "pid": ...}. Requests run one at a time, in order.
Anything a library prints goes to stderr, so stdout carries only protocol lines.
"""
import json
import os
import queue
import sys
import tempfile
import threading
import time
import traceback

from .errors import Cancelled, SegmentationError
from .progress import CancelToken, Progress


class Worker:
    def __init__(self, out):
        self._out = out
        self._lock = threading.Lock()
        self._requests = queue.Queue()
        self._current = None  # (id, CancelToken) of the request being run
        self._cancelled = set()  # ids cancelled while still queued
        self._state_lock = threading.Lock()
        self._segmenters = {}

    # -- wire --------------------------------------------------------------------------
    def send(self, event, request_id=None):
        if request_id is not None:
            event = {**event, "id": request_id}
        with self._lock:
            self._out.write(json.dumps(event, default=str) + "\n")
            self._out.flush()

    def _read_stdin(self, stream):
        """Reader thread: cancels act at once, everything else queues for the main loop."""
        for line in stream:
            line = line.strip()
            if not line:
                continue
            try:
                request = json.loads(line)
                if not isinstance(request, dict):
                    raise ValueError("not an object")
            except ValueError as e:
                self.send({"event": "error", "kind": "request", "type": "BadRequest",
                           "cause": f"Unreadable worker request ({e}): {line[:200]}", "fix": ""})
                continue
            if request.get("command") == "cancel":
                with self._state_lock:
                    current = self._current
                    if current and request.get("id") in (None, current[0]):
                        current[1].cancel()
                    elif request.get("id") is not None:  # still queued: answer now, skip it later
                        self._cancelled.add(request["id"])
                        self.send({"event": "error", **Cancelled().to_dict()}, request["id"])
                continue
            self._requests.put(request)
            if request.get("command") == "shutdown":
                return
        self._requests.put({"command": "shutdown"})  # stdin closed: the module (or Slicer) is gone

    # -- requests ----------------------------------------------------------------------
    def serve(self, stdin):
        threading.Thread(target=self._read_stdin, args=(stdin,), daemon=True, name="worker-stdin").start()
        self.send({"event": "ready", "pid": os.getpid()})
        self._warm_up()
        while True:
            request = self._requests.get()
            command = request.get("command")
            if command == "shutdown":
                return 0
            request_id = request.get("id")
            handler = {"segment": self._segment, "devices": self._devices, "ping": self._ping}.get(command)
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
                payload = handler(request, token)
                self.send({"event": "result", **payload}, request_id)
            except SegmentationError as e:
                self.send({"event": "error", **e.to_dict()}, request_id)
            except Exception as e:  # keep serving: one bad request must not cost the loaded models
                traceback.print_exc(file=sys.stderr)
                self.send({"event": "error", "kind": "internal", "type": type(e).__name__,
                           "cause": f"Internal error in the segmentation engine: {e}",
                           "fix": "See the log for details and report it with the log."}, request_id)
            finally:
                self._current = None

    def _warm_up(self):
        """Import torch and nnU-Net now, while the user is still choosing options."""
        import importlib.util

        if importlib.util.find_spec("torch") is None:  # a client of a remote server only: nothing to warm up
            return
        try:
            from . import pipeline  # noqa: F401
        except Exception:  # reported properly by the first request that needs it
            traceback.print_exc(file=sys.stderr)

    def _ping(self, request, token):
        return {"pid": os.getpid()}

    def _devices(self, request, token):
        from .devices import available_devices

        return {"devices": available_devices()}

    def _segment(self, request, token):
        if request.get("remote"):  # run on a segmentation server (server/client.py): no torch needed here
            from .server.client import run_worker_request

            return run_worker_request(request, lambda event: self.send(event, request.get("id")), token)
        from .cli import build_parser, result_payload, segment_options

        try:
            args = build_parser().parse_args(["segment", *[str(a) for a in request.get("argv", [])]])
        except SystemExit:
            raise SegmentationError(f"Invalid segment request: {request.get('argv')}",
                                    "This is a bug in the caller; see the log for the argument error.") from None
        request_id = request.get("id")
        progress = Progress(lambda event: self.send(event, request_id), cancel=token)
        options = segment_options(args)
        started = time.perf_counter()
        with _temporary_dir(request.get("tmpdir")):
            segmenter, warm = self._segmenter(options)
            if segmenter is None:
                from .pipeline import segment

                result = segment(args.input, args.output, progress=progress, **options)
            else:
                result = segmenter.segment(args.input, args.output, progress=progress, **options)
        token.check()
        return {**result_payload(result), "seconds": round(time.perf_counter() - started, 3), "warm": warm}

    def _segmenter(self, options):
        """The engine's model-keeping Segmenter for this device and weights folder (None if the engine has none)."""
        from . import pipeline

        factory = getattr(pipeline, "Segmenter", None)
        if factory is None:
            return None, False
        key = (options["device"], str(options["weights_dir"]))
        if key in self._segmenters:
            return self._segmenters[key], True
        self._segmenters.clear()  # another device or weights folder: free the old models first
        self._segmenters[key] = factory(device=options["device"], weights_dir=options["weights_dir"],
                                        download=options["download"])
        return self._segmenters[key], False


class _temporary_dir:
    """Point tempfile (and child processes) at the request's temp folder, which the caller removes."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        if self.path:
            self._saved = (tempfile.tempdir, os.environ.get("TMPDIR"))
            tempfile.tempdir = str(self.path)
            os.environ["TMPDIR"] = str(self.path)

    def __exit__(self, *exc):
        if self.path:
            tempfile.tempdir = self._saved[0]
            if self._saved[1] is None:
                os.environ.pop("TMPDIR", None)
            else:
                os.environ["TMPDIR"] = self._saved[1]


def serve():
    """Run the worker on this process's stdin/stdout until shutdown or end of input."""
    # Protocol lines go to a private copy of stdout; fd 1 itself is pointed at stderr so
    # that whatever torch, nnU-Net or a C library prints can never corrupt the stream.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8", buffering=1)
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    stdin = open(sys.stdin.fileno(), encoding="utf-8", errors="replace", closefd=False)
    try:
        return Worker(out).serve(stdin)
    finally:
        out.flush()
