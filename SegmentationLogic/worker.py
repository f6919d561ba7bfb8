"""Persistent engine process for the Slicer module: `python -m SegmentationLogic worker`.

Starting Python, importing torch and nnU-Net and loading a model's checkpoints takes
longer than a fast run itself; the worker pays that once and keeps the loaded models
(the engine's `Segmenter`) between requests, so a second Apply on the same task starts
predicting at once.

Protocol: one JSON message per stdin line, answered with the progress protocol's events
(progress.py), each tagged with the message's id:
    {"id": "1", "command": "segment", "request": <SegmentRequest.to_json()>, "tmpdir": DIR}
                                       -> progress/log events, then result (SegmentResult.to_json()
                                          plus "seconds" and "warm") or error
    {"id": "2", "command": "devices"}  -> result {"devices": [...]}
    {"id": "3", "command": "ping"}     -> result {"pid": ...}
    {"id": "4", "command": "server.info", "remote": {"url", "token_file", "ca_cert"}}
                                       -> result: the segmentation server's /info (a connection check)
    {"command": "cancel", "id": "1"}   stops message 1 at its next progress report, or drops it if
                                       it is still queued (error kind "cancelled")
    {"command": "shutdown"}            (or closing stdin) ends the worker
On start it sends {"event": "ready", "pid": ...}. Messages run one at a time, in order;
"tmpdir" (any command) is where that command's temporary files go.

SIGTERM, SIGHUP and SIGINT stop the worker like a cancel (system/signals.py): the
running message gets an error event (kind "cancelled"), its partial outputs and the
files it created in its "tmpdir" are removed, and the worker exits with 128 + the
signal number (143 for SIGTERM).

More commands: `register_command(name, handler)` from any module; the worker imports the
modules named with `worker --plugin MODULE` before it serves. A handler is called as
`handler(message, context)` and returns the result payload (a dict); it reports progress
through `context.progress` and raises SegmentationError for what the user must fix.
Anything a library prints goes to stderr, so stdout carries only protocol lines.
"""
import importlib
import importlib.util
import json
import os
import queue
import sys
import threading
import time
import traceback
from dataclasses import dataclass

from .errors import Cancelled, SegmentationError, error_event
from .progress import CancelToken, Progress
from .request import BadRequestError, SegmentRequest
from .server.client import run_worker_request, worker_server_info
from .system import files
from .system.devices import available_devices
from .system.signals import exit_code, stop_on_signals

CORE_COMMANDS = ("cancel", "shutdown")  # handled by the worker itself, never by a handler
_COMMANDS = {}


def register_command(name, handler):
    """Make `name` a worker command: `handler(message, context) -> dict` (see the module docstring)."""
    if name in CORE_COMMANDS:
        raise ValueError(f"'{name}' is a core worker command")
    _COMMANDS[name] = handler


@dataclass
class CommandContext:
    """What a command handler gets besides its message."""

    request_id: object
    cancel: CancelToken
    progress: Progress  # events go to the client tagged with the request id; checks `cancel`
    worker: "Worker"

    def segmenter(self, device="auto", weights_dir=None):
        """The worker's model-keeping Segmenter for this device and weights folder, and whether it was warm."""
        return self.worker.segmenter(device, weights_dir)


class Worker:
    def __init__(self, out):
        self._out = out
        self._lock = threading.Lock()
        self._requests = queue.Queue()
        self._current = None  # (id, CancelToken) of the message being run
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
                message = json.loads(line)
                if not isinstance(message, dict):
                    raise ValueError("not an object")
            except ValueError as e:
                self.send(error_event(BadRequestError(f"Unreadable worker request ({e}): {line[:200]}")))
                continue
            if message.get("command") == "cancel":
                with self._state_lock:
                    current = self._current
                    if current and message.get("id") in (None, current[0]):
                        current[1].cancel()
                    elif message.get("id") is not None:  # still queued: answer now, skip it later
                        self._cancelled.add(message["id"])
                        self.send(error_event(Cancelled()), message["id"])
                continue
            self._requests.put(message)
            if message.get("command") == "shutdown":
                return
        self._requests.put({"command": "shutdown"})  # stdin closed: the module (or Slicer) is gone

    # -- messages ----------------------------------------------------------------------
    def serve(self, stdin):
        threading.Thread(target=self._read_stdin, args=(stdin,), daemon=True, name="worker-stdin").start()
        self.send({"event": "ready", "pid": os.getpid()})
        self._warm_up()
        while True:
            message = self._requests.get()
            command = message.get("command")
            if command == "shutdown":
                return 0
            request_id = message.get("id")
            handler = _COMMANDS.get(command)
            if handler is None:
                self.send(error_event(BadRequestError(f"Unknown worker command {command!r}.",
                                                      f"Known commands: {', '.join(sorted(_COMMANDS))}.")),
                          request_id)
                continue
            token = CancelToken()
            with self._state_lock:
                if request_id in self._cancelled:
                    self._cancelled.discard(request_id)
                    continue
                self._current = (request_id, token)
            context = CommandContext(request_id, token, Progress(lambda e: self.send(e, request_id), cancel=token),
                                     self)
            try:
                with files.temporary_dir(message.get("tmpdir")):
                    payload = handler(message, context)
                token.check()
                self.send({"event": "result", **payload}, request_id)
            except SegmentationError as e:
                self.send(error_event(e), request_id)
            except KeyboardInterrupt as e:  # SIGTERM/SIGHUP/SIGINT: this message ends, then the worker
                self._send_quietly(error_event(e), request_id)
                raise
            except Exception as e:  # keep serving: one bad request must not cost the loaded models
                traceback.print_exc(file=sys.stderr)
                self.send(error_event(e), request_id)
            finally:
                self._current = None

    def _send_quietly(self, event, request_id):
        try:
            self.send(event, request_id)
        except (OSError, ValueError):  # the client is gone (closed pipe)
            pass

    def _warm_up(self):
        """Import torch and nnU-Net now, while the user is still choosing options."""
        if importlib.util.find_spec("torch") is None:  # a client of a remote server only: nothing to warm up
            return
        try:
            from .pipeline import inference  # torch and nnU-Net: seconds; not needed to relay to a server

            inference.warm_up()  # after "ready" on purpose: torch and nnU-Net take seconds to import
        except Exception:  # reported properly by the first request that needs it
            traceback.print_exc(file=sys.stderr)

    def segmenter(self, device, weights_dir):
        """(the model-keeping Segmenter for this device and weights folder, whether it was warm).

        It may download; each request says whether it allows that."""
        key = (device, str(weights_dir))
        if key in self._segmenters:
            return self._segmenters[key], True
        from .pipeline import Segmenter  # the engine (numpy, nibabel, torch): not needed to relay to a server

        self._segmenters.clear()  # another device or weights folder: free the old models first
        self._segmenters[key] = Segmenter(device=device, weights_dir=weights_dir)
        return self._segmenters[key], False


# -- the built-in commands ---------------------------------------------------------------

def _ping(message, context):
    return {"pid": os.getpid()}


def _devices(message, context):
    return {"devices": available_devices()}


def _segment(message, context):
    if message.get("remote"):  # run on a segmentation server (server/client.py): no torch needed here
        return run_worker_request(message, context.progress)
    if not isinstance(message.get("request"), dict):
        raise BadRequestError("Invalid segment request: the message has no 'request' object.",
                              'Send {"command": "segment", "request": SegmentRequest.to_json(), "id": ...}.')
    try:
        request = SegmentRequest.from_json(message.get("request"))
    except BadRequestError as e:
        raise BadRequestError(f"Invalid segment request: {e.cause}", e.fix) from None
    started = time.perf_counter()
    segmenter, warm = context.segmenter(request.device, request.weights_dir)
    result = segmenter.run(request, context.progress, context.cancel)
    return {**result.to_json(), "seconds": round(time.perf_counter() - started, 3), "warm": warm}


register_command("ping", _ping)
register_command("devices", _devices)
register_command("segment", _segment)
register_command("server.info", lambda message, context: worker_server_info(message, context.progress))


def serve(plugins=()):
    """Run the worker on this process's stdin/stdout until shutdown or end of input.

    `plugins`: modules to import first; they register their commands (register_command)."""
    for name in plugins:
        importlib.import_module(name)
    # Protocol lines go to a private copy of stdout; fd 1 itself is pointed at stderr so
    # that whatever torch, nnU-Net or a C library prints can never corrupt the stream.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8", buffering=1)
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    stdin = open(sys.stdin.fileno(), encoding="utf-8", errors="replace", closefd=False)
    try:
        with stop_on_signals():
            return Worker(out).serve(stdin)
    except KeyboardInterrupt as e:  # SIGTERM, SIGHUP or SIGINT
        print(error_event(e)["cause"].replace("Stopped", "Worker stopped", 1), file=sys.stderr)
        return exit_code(e)
    finally:
        try:
            out.flush()
        except (OSError, ValueError):
            pass
