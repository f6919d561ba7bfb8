"""The HTTP application of `serve` (FastAPI): routes of protocol.py over a JobQueue.

Every request passes the token check first (a plain ASGI layer in front of everything,
unknown paths included), so nobody without the token learns more than "401". Every
refusal is a JSON object with the keys of an `error` event (kind, type, cause, fix).
"""
import asyncio
import json
import logging
import os
import shutil
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .. import __version__
from ..catalogue import load_catalogue
from ..errors import SegmentationError
from ..request import BadRequestError, SegmentRequest
from . import jobs as jobstates
from .jobs import QueueFullError, _scrub
from .protocol import (API, API_VERSION, FORMAT_HEADER, HEARTBEAT_SECONDS, INPUT_FORMATS, LABELMAP_NAME,
                       OUTPUT_FORMATS, OUTPUT_HEADER, REQUEST_HEADER, SERVER_FIELDS, TERMINAL_EVENTS)
from .uploads import probe

log = logging.getLogger("SegmentationLogic.server")

FAILED_AUTH_DELAY = 0.25  # seconds: slows guessing without holding a thread
CHUNK = 1 << 20


def error_response(status, kind, cause, fix="", type_=None, headers=None):
    return JSONResponse({"kind": kind, "type": type_ or kind, "cause": cause, "fix": fix}, status_code=status,
                        headers=headers)


def _error_of(status, err: SegmentationError, headers=None):
    d = err.to_dict()
    return error_response(status, d["kind"], d["cause"], d["fix"], d["type"], headers)


class TokenAuth:
    """ASGI layer: `Authorization: Bearer <token>` on every request, compared in constant time."""

    def __init__(self, app, checker):
        self.app, self.checker = app, checker

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.checker:  # lifespan; or --insecure without a token
            return await self.app(scope, receive, send)
        header = dict(scope.get("headers") or ()).get(b"authorization", b"").decode("latin-1")
        scheme, _, presented = header.partition(" ")
        if not header:
            response = error_response(401, "auth", "This server needs an access token, and the request had none.",
                                      "Give the token your server's admin gave you (--token_file FILE or the "
                                      "TOTALSEG_SERVER_TOKEN environment variable).", "MissingToken",
                                      {"WWW-Authenticate": "Bearer"})
        elif scheme.lower() != "bearer" or not self.checker.accepts(presented.strip()):
            await asyncio.sleep(FAILED_AUTH_DELAY)
            response = error_response(403, "auth", "The access token was not accepted by the server.",
                                      "Check that you use the current token of this server (ask its admin).",
                                      "WrongToken")
        else:
            return await self.app(scope, receive, send)
        await response(scope, receive, send)


def create_app(queue, checker, config):
    """`config`: max_upload_bytes, device, timeout (seconds a stalled upload may wait)."""

    async def reaper():
        while True:
            await asyncio.sleep(min(1.0, queue.timeout / 4))
            queue.reap()

    async def lifespan(app):
        task = asyncio.create_task(reaper())
        try:
            yield
        finally:
            task.cancel()
            await asyncio.to_thread(queue.close)

    app = FastAPI(title="TotalSegmentator server", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url=None, lifespan=lifespan)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):
        if exc.status_code == 404:
            return error_response(404, "request", f"No such address on this server: {request.url.path}",
                                  "Check the server URL (it ends at the host and port).", "NotFound")
        if exc.status_code == 405:
            return error_response(405, "request", f"{request.method} is not allowed on {request.url.path}.",
                                  "Use the client of the same version as the server.", "MethodNotAllowed")
        return error_response(exc.status_code, "request", str(exc.detail),
                              "Use the client of the same version as the server.", "HTTPError")

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc):
        return error_response(422, "request", f"Invalid request: {exc.errors()[:3]}",
                              "Use the client of the same version as the server.", "ValidationError")

    @app.exception_handler(Exception)
    async def internal_error(request, exc):
        log.error("internal error %s on %s %s", type(exc).__name__, request.method, request.url.path)
        return error_response(500, "internal", f"Internal server error ({type(exc).__name__}).",
                              "Ask the server's admin to look at its log.", "InternalError")

    @app.get(f"{API}/info")
    async def info():
        return {"api": API_VERSION, "version": __version__, "max_upload_bytes": config.max_upload_bytes,
                "device": config.device, "jobs": len(queue), "waiting": queue.waiting(),
                "input_formats": sorted(INPUT_FORMATS)}

    @app.post(f"{API}/jobs", status_code=201)
    async def create_job(request: Request):
        fmt = request.headers.get(FORMAT_HEADER, "").strip().lower()
        if fmt not in INPUT_FORMATS:
            return error_response(422, "input", f"Unsupported or missing upload format {fmt[:20]!r} "
                                                f"(header {FORMAT_HEADER}).",
                                  f"Send one of: {', '.join(sorted(INPUT_FORMATS))}.", "UnsupportedFormat")
        out_fmt = request.headers.get(OUTPUT_HEADER, "nii.gz").strip().lower()
        if out_fmt not in OUTPUT_FORMATS:
            return error_response(422, "request", f"Unsupported labelmap format {out_fmt[:20]!r} "
                                                  f"(header {OUTPUT_HEADER}).",
                                  f"Use one of: {', '.join(OUTPUT_FORMATS)}.", "UnsupportedFormat")
        try:
            options = _options(request.headers.get(REQUEST_HEADER, "{}"))
        except SegmentationError as e:
            return _error_of(422, e)
        except ValueError as e:
            return error_response(400, "request", f"The {REQUEST_HEADER} header is not valid JSON ({e}).",
                                  "Send the SegmentRequest fields as one JSON object.", "BadRequest")
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > config.max_upload_bytes):
            return _too_large(config.max_upload_bytes, length)
        need = 3 * int(length or config.max_upload_bytes) + (100 << 20)  # upload, unpacked DICOM, outputs
        if shutil.disk_usage(queue.root).free < need:
            return error_response(507, "server", "The server has not enough free disk space for this job now.",
                                  "Try again later, or ask the admin to free disk space.", "InsufficientStorage")
        try:
            job = queue.new_job()
        except QueueFullError as e:
            return _error_of(503, e, {"Retry-After": "30"})
        job.input = job.folder / INPUT_FORMATS[fmt]
        try:
            received = await _receive(request, job.input, config)
            if received is None:
                queue.discard(job, None)
                return _too_large(config.max_upload_bytes)
            await asyncio.to_thread(_probe, job.input, fmt)
            request_obj = SegmentRequest(input=str(job.input), output=str(job.output_dir / f"{LABELMAP_NAME}.{out_fmt}")
                                         if options.get("ml", True) else str(job.output_dir),
                                         device=config.device, download=config.download, **options)
        except ClientDisconnect:  # the client went away during the upload: nothing of it stays
            queue.discard(job, "upload abandoned")
            return error_response(400, "request", "The upload was not completed.", "Send it again.", "ClientDisconnect")
        except SegmentationError as e:
            queue.discard(job, None)
            err = _scrub(e.to_dict(), str(job.folder))
            return error_response(422, err["kind"], err["cause"], err["fix"], err["type"])
        except BaseException:
            queue.discard(job, None)
            raise
        log.info("job %s uploaded (%.1f MB)", job.id, received / 2**20)
        position = queue.submit(job, request_obj)
        return {"id": job.id, "position": position, "events": f"{API}/jobs/{job.id}/events",
                "result": f"{API}/jobs/{job.id}/result"}

    @app.get(f"{API}/jobs/{{job_id}}/events")
    async def events(job_id: str):
        job = queue.get(job_id)
        if job is None:
            return _unknown_job()
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()

        def wakeup():
            loop.call_soon_threadsafe(changed.set)

        async def stream():
            sent, saw_end = 0, False
            queue.attach(job, wakeup)  # here, not before: a stream that never starts never detaches
            try:
                while True:
                    changed.clear()
                    new = job.events[sent:]
                    if new:
                        sent += len(new)
                        saw_end = new[-1]["event"] in TERMINAL_EVENTS
                        yield "".join(json.dumps(e, default=str) + "\n" for e in new)
                        if saw_end:
                            return
                        continue
                    try:
                        await asyncio.wait_for(changed.wait(), HEARTBEAT_SECONDS)
                    except asyncio.TimeoutError:
                        yield "\n"
            finally:  # also when the client disconnects (the response task is cancelled)
                queue.detach(job, wakeup, saw_end)

        return StreamingResponse(stream(), media_type="application/x-ndjson",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.get(f"{API}/jobs/{{job_id}}/result")
    async def result(job_id: str):
        job = queue.get(job_id)
        if job is None:
            return _unknown_job()
        path = queue.finished_result(job)
        if path is None:
            state = job.state
            return error_response(409, "request", f"The job has no result ({state}).",
                                  "Read its events until the result event first." if state in (
                                      jobstates.QUEUED, jobstates.RUNNING, jobstates.UPLOADING)
                                  else "Its events say why; run it again.", "NoResult")
        size = path.stat().st_size

        async def send_and_delete():
            try:
                with open(path, "rb") as handle:
                    while chunk := handle.read(CHUNK):
                        job.touched = time.monotonic()  # a slow download is not an abandoned result
                        yield chunk
            finally:  # fetched (or the client gave up half way): either way it is gone now
                queue.discard(job, None)

        return StreamingResponse(send_and_delete(), media_type="application/zip",
                                 headers={"Content-Length": str(size), "Cache-Control": "no-store"})

    @app.delete(f"{API}/jobs/{{job_id}}")
    async def cancel(job_id: str):
        job = queue.get(job_id)
        if job is None:
            return _unknown_job()
        queue.discard(job, "cancelled by its client")
        return {"id": job_id, "state": "cancelled"}

    return TokenAuth(app, checker)


def _options(text):
    """The client's SegmentRequest fields, checked the way the engine would check them (422 before the upload)."""
    data = json.loads(text or "{}")
    if not isinstance(data, dict):
        raise BadRequestError("The request options must be a JSON object.", "Send the SegmentRequest fields.")
    server = sorted(set(data) & set(SERVER_FIELDS))
    if server:
        raise BadRequestError(f"The server decides {', '.join(server)}; a client may not send them.",
                              f"Leave out {', '.join(server)} (the upload is the input; the result comes back).")
    SegmentRequest.from_json({"input": "-", **data})  # unknown fields, wrong types, quality
    spec = load_catalogue().task(data.get("task", "total"))
    spec.mode(data.get("quality", "normal"))
    spec.check_roi_subset(data.get("roi_subset"))
    return data


async def _receive(request, path, config):
    """Stream the body to `path`; None (and nothing kept) when it grows past the limit."""
    received = 0
    stream = request.stream().__aiter__()
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
        while True:
            try:  # a client that stops sending mid-upload must not hold a job slot forever
                chunk = await asyncio.wait_for(stream.__anext__(), config.timeout)
            except StopAsyncIteration:
                break
            except asyncio.TimeoutError:
                raise ClientDisconnect() from None
            received += len(chunk)
            if received > config.max_upload_bytes:
                return None
            f.write(chunk)
    return received


def _probe(path, fmt):
    probe(path, fmt)


def _too_large(limit, length=None):
    size = f" ({int(length) / 2**20:.0f} MB)" if length and str(length).isdigit() else ""
    return error_response(413, "input", f"The upload{size} is larger than this server accepts "
                                        f"({limit / 2**20:.0f} MB).",
                          "Crop the image to the region you need, send it compressed (.nii.gz), or ask the "
                          "admin to raise --max_upload_mb.", "UploadTooLarge")


def _unknown_job():
    return error_response(404, "request", "No such job on this server (it finished, was cancelled, timed out, or "
                                          "the server was restarted).", "Run the segmentation again.", "UnknownJob")
