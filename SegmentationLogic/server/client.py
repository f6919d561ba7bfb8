"""Segment on a segmentation server (`python -m SegmentationLogic serve`) from any machine.

    from SegmentationLogic.server.client import RemoteSegmenter
    remote = RemoteSegmenter("https://gpu.example.org:8470", token_file="~/.totalsegmentator/server_token",
                             ca_cert="hospital-ca.pem")     # the same interface as Segmenter
    result = remote.run(SegmentRequest(input="ct.nii.gz", output="out/seg.nii.gz", quality="fast"))

The labelmap (and its label table, statistics.json, the preview) are written where a
local run would write them, all at once and only when everything arrived: a run that
fails, is cancelled or loses its server leaves no file behind. Progress events from the
server come out of the local `progress` as if the engine ran here; cancelling (the
CancelToken, Ctrl+C, SIGTERM in the CLI) cancels the job on the server.

Needs the standard library and requests only (Slicer ships both): no torch, nnU-Net,
nibabel or numpy is imported here. TLS is always verified (`ca_cert` for a certificate
from the organisation's own authority); plain http is refused except to this machine.
"""
import gzip
import json
import os
import re
import tempfile
import threading
import time
import urllib.parse
import zipfile
from pathlib import Path

import requests  # Slicer ships it

from ..catalogue import load_catalogue
from ..errors import (Cancelled, DeviceError, InputImageError, LicenseError, OutOfMemoryError, SegmentationError,
                      UnknownTaskError, WeightsMissingError)
from ..outputs.layout import check_request_outputs, class_files, sidecar_path
from ..progress import CancelToken, Progress
from ..request import BadRequestError, SegmentRequest, SegmentResult
from .protocol import (API, API_VERSION, FORMAT_HEADER, INPUT_FORMATS, LABELMAP_NAME, OUTPUT_HEADER, REQUEST_HEADER,
                       SERVER_FIELDS, input_format, is_loopback)
from .tokens import token_from

CONNECT_TIMEOUT = 15.0
READ_TIMEOUT = 120.0  # the server sends a keep-alive line every 5 s while a job waits or runs
CHUNK = 1 << 20
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,200}$")


class ServerConnectionError(SegmentationError):
    """The server cannot be reached, stopped answering, or went away during a run."""

    kind = "connection"


class ServerTLSError(SegmentationError):
    """The server's certificate was not accepted."""

    kind = "tls"


class ServerAuthError(SegmentationError):
    kind = "auth"


class RemoteError(SegmentationError):
    """An error the server reported, of a kind this client has no class for."""

    def __init__(self, cause, fix="", kind="remote"):
        super().__init__(cause, fix)
        self.kind = kind


# the server's error kinds as the engine's own exceptions: `except InputImageError` works remotely too
_KINDS = {"input": InputImageError, "task": UnknownTaskError, "weights": WeightsMissingError,
          "memory": OutOfMemoryError, "license": LicenseError, "device": DeviceError, "request": BadRequestError,
          "auth": ServerAuthError}


def error_from(data):
    """An `error` event or error response from the server as an exception to raise here."""
    kind, cause, fix = data.get("kind") or "remote", data.get("cause") or "The server reported an error.", data.get(
        "fix") or ""
    if kind == "cancelled":
        return Cancelled(cause, fix)
    err = _KINDS[kind](cause, fix) if kind in _KINDS else RemoteError(cause, fix, kind)
    err.remote_type = data.get("type")
    return err


def check_url(url):
    """The server's base URL; refuses what would leak the token or the images (http off this machine)."""
    parts = urllib.parse.urlsplit(str(url).strip())
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ServerConnectionError(f"Not a server URL: {url!r}.", "Give it as https://HOST:PORT (from the admin).")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ServerConnectionError("The server URL may not carry a user name, password, query or fragment.",
                                    "Give it as https://HOST:PORT; the token goes in a token file.")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ServerConnectionError(
            f"Refusing plain http to {parts.hostname}: the images, the results and the token would cross the network "
            "unencrypted.", "Use the server's https:// URL (or an SSH tunnel to the server's port on this machine).")
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


class RemoteSegmenter:
    """The same interface as `Segmenter` (`run(request, progress, cancel) -> SegmentResult`), on a server."""

    def __init__(self, url, token=None, token_file=None, ca_cert=None, connect_timeout=CONNECT_TIMEOUT,
                 read_timeout=READ_TIMEOUT):
        self.url = check_url(url)
        self._token = token_from(token, token_file, use_default_file=True)
        if ca_cert is not None and not Path(ca_cert).expanduser().is_file():
            raise ServerTLSError(f"CA certificate not found: {ca_cert}", "Give the PEM file your admin gave you.")
        self.ca_cert = str(Path(ca_cert).expanduser()) if ca_cert else None
        self.timeouts = (connect_timeout, read_timeout)

    def __repr__(self):  # never the token
        return f"RemoteSegmenter({self.url!r})"

    # -- HTTP ------------------------------------------------------------------------------------
    def _session(self):
        token = self._token

        class Bearer(requests.auth.AuthBase):  # an auth object: requests then never swaps in ~/.netrc credentials
            def __call__(self, r):
                if token:
                    r.headers["Authorization"] = f"Bearer {token}"
                return r

        session = requests.Session()
        session.auth = Bearer()
        session.max_redirects = 0
        return session

    def _call(self, session, method, path, **kw):
        """One request; every failure becomes a SegmentationError with cause and fix."""
        kw.setdefault("timeout", self.timeouts)
        kw["verify"] = self.ca_cert or True  # per request: a session's verify loses to $REQUESTS_CA_BUNDLE
        try:
            response = session.request(method, self.url + path, allow_redirects=False, **kw)
        except requests.exceptions.SSLError as e:
            raise _tls_error(self.url, e) from None
        except requests.exceptions.Timeout:
            raise ServerConnectionError(f"The server at {self.url} did not answer in time.",
                                        "Check that it is running and reachable; try again later.") from None
        except requests.exceptions.ConnectionError as e:
            raise ServerConnectionError(f"Cannot reach the segmentation server at {self.url} ({_reason(e)}).",
                                        "Check the URL and that the server is running; a firewall or VPN may block "
                                        "the port.") from None
        if response.status_code >= 300:
            with response:  # closed now: a kept traceback must not keep the connection open
                _raise_for(response)
        return response

    def info(self):
        """The server's version, upload limit and queue (checks the URL, TLS and the token on the way)."""
        with self._session() as s, self._call(s, "GET", f"{API}/info") as response:
            return response.json()

    # -- a run -------------------------------------------------------------------------------------
    def run(self, request, progress=None, cancel=None):
        if isinstance(request, dict):
            request = SegmentRequest.from_json(request)
        progress = _as_progress(progress, cancel)
        token = progress.cancel or CancelToken()
        started = time.monotonic()
        source, output = _check_request(request)
        options = {k: v for k, v in request.to_json().items() if k not in SERVER_FIELDS}
        out_fmt = "nii.gz" if output is None or str(output).endswith(".nii.gz") else "nii"
        timings = {}
        with tempfile.TemporaryDirectory(prefix="totalseg-remote-") as tmp, self._session() as session:
            with self._call(session, "GET", f"{API}/info") as response:  # URL, TLS, token: before any packing
                info = response.json()
            if info.get("api") != API_VERSION:
                raise RemoteError(f"The server speaks protocol version {info.get('api')}, this client {API_VERSION}.",
                                  "Use the same version of the extension on both sides.", "server")
            upload, fmt = _upload_file(source, Path(tmp), progress)
            size = upload.stat().st_size
            limit = info.get("max_upload_bytes")
            if limit is not None and size > limit:
                raise InputImageError(f"The image ({size / 2**20:.0f} MB as sent) is larger than the server accepts "
                                      f"({limit / 2**20:.0f} MB).",
                                      "Crop it to the region you need, send it as .nii.gz, or ask the admin to raise "
                                      "the server's --max_upload_mb.")
            t = time.monotonic()
            job = self._submit(session, upload, size, fmt, out_fmt, options, progress, token)
            timings["upload"] = round(time.monotonic() - t, 3)
            try:
                payload = self._follow(session, job, progress, token)
                t = time.monotonic()
                zip_path = Path(tmp) / "result.zip"
                self._fetch(session, job, zip_path, progress, token)
                timings["fetch"] = round(time.monotonic() - t, 3)
            except BaseException:
                self._cancel(job)  # Cancel, Ctrl+C, SIGTERM, a lost connection: nothing stays on the server
                raise
            result = _result(payload, zip_path, output, request.ml)
        result.timings = {**result.timings, **timings, "remote_total": round(time.monotonic() - started, 3)}
        return result

    def _submit(self, session, upload, size, fmt, out_fmt, options, progress, token):
        headers = {FORMAT_HEADER: fmt, OUTPUT_HEADER: out_fmt, REQUEST_HEADER: json.dumps(options),
                   "Content-Type": "application/octet-stream"}
        with open(upload, "rb") as f:
            body = _Upload(f, size, progress, token)
            with self._call(session, "POST", f"{API}/jobs", data=body, headers=headers) as response:
                return response.json()["id"]

    def _follow(self, session, job, progress, token):
        """Relay the job's events until its result (returned) or error (raised)."""
        watcher = _CancelWatcher(token, lambda: self._cancel(job))
        watcher.start()
        try:
            response = self._call(session, "GET", f"{API}/jobs/{job}/events", stream=True)
            with response:
                try:
                    for line in response.iter_lines():
                        if not line.strip():
                            continue  # keep-alive
                        try:
                            event = json.loads(line)
                        except ValueError:
                            raise RemoteError("The server sent something that is not a progress event.",
                                              "Check that the URL is the segmentation server's.", "server") from None
                        kind = event.get("event") if isinstance(event, dict) else None
                        if kind == "result":
                            return event
                        if kind == "error":
                            raise error_from(event)
                        _relay(progress, event)
                except requests.exceptions.RequestException as e:
                    if token.cancelled:
                        raise Cancelled() from None
                    raise _lost(self.url, e) from None
            if token.cancelled:
                raise Cancelled()
            raise _lost(self.url, None)
        finally:
            watcher.stop()

    def _fetch(self, session, job, zip_path, progress, token):
        response = self._call(session, "GET", f"{API}/jobs/{job}/result", stream=True)
        total = int(response.headers.get("Content-Length") or 0)
        got = 0
        with response, open(zip_path, "wb") as f:
            try:
                for chunk in response.iter_content(CHUNK):
                    token.check()
                    f.write(chunk)
                    got += len(chunk)
                    progress("fetch", got / total if total else None, f"receiving the result ({got / 2**20:.1f} MB)")
            except requests.exceptions.RequestException as e:
                raise _lost(self.url, e) from None
        if total and got != total:
            raise _lost(self.url, None)

    def _cancel(self, job):
        """Best effort, quick: tell the server to drop the job (it also drops it when we disconnect)."""
        try:
            with self._session() as s:
                s.delete(f"{self.url}{API}/jobs/{job}", timeout=(5, 5), allow_redirects=False,
                         verify=self.ca_cert or True).close()
        except requests.exceptions.RequestException:
            pass


# -- helpers -------------------------------------------------------------------------------------------

def _as_progress(progress, cancel):
    if isinstance(progress, Progress):
        if cancel is not None and progress.cancel is None:
            progress.cancel = cancel
        return progress
    return Progress(progress, cancel)


def _check_request(request):
    if not isinstance(request.input, (str, os.PathLike)):
        raise BadRequestError("A remote run needs the input as a file or folder path.", "Save the image to a file first.")
    source = Path(request.input).expanduser()
    if not source.exists():
        raise InputImageError(f"Input not found: {request.input}", "Check the path.")
    output = request.output
    if output is None:
        if not request.ml:
            raise SegmentationError("One file per class needs an output folder.", "Give an output folder, or use --ml.")
        try:
            import nibabel  # noqa: F401 - only a run with no output file holds the labelmap in memory
        except ImportError:
            raise BadRequestError("A remote run without an output path returns the labelmap in memory, which needs "
                                  "nibabel, and it is not installed here.", "Give an output path.") from None
    else:  # before the upload: the result can be written here and replaces nothing that must survive
        spec = load_catalogue().task(request.task)
        check_request_outputs(request, *class_files(spec, request.roi_subset, request.ml))
    return source, (Path(output).expanduser() if output is not None else None)


def _upload_file(source, tmp, progress):
    """(file to send, format): the image file as it is, a DICOM folder zipped (into `tmp`, removed after)."""
    if source.is_dir():
        zip_path = tmp / "series.zip"
        files = sorted(p for p in source.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise InputImageError(f"The folder {source} holds no files.", "Give the folder of a DICOM series.")
        progress("upload", 0.0, f"packing {len(files)} DICOM files")
        with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            for i, p in enumerate(files):
                if progress.cancel is not None:
                    progress.cancel.check()
                zf.write(p, f"{i:06d}.dcm")  # the server needs no file names (they may name the patient)
        return zip_path, "zip"
    fmt = input_format(source.name)
    if fmt is None and zipfile.is_zipfile(source):
        fmt = "zip"
    if fmt is None:
        lower = source.name.lower()
        if lower.endswith((".nhdr", ".mhd")):
            raise InputImageError(f"{source.name} keeps its pixels in a separate file, which a server cannot read.",
                                  "Save the image as one .nrrd or .mha file (or .nii.gz) first.")
        raise InputImageError(f"A server cannot take {source.name}: a remote run sends "
                              f"{', '.join(sorted(INPUT_FORMATS))} files or a DICOM folder.",
                              "Give the DICOM folder (not one file of it), or save the image as .nii.gz or .nrrd.")
    return source, fmt


class _Upload:
    """The file as a request body with a length (so requests sends Content-Length), reporting progress."""

    def __init__(self, f, size, progress, token):
        self.f, self.size, self.progress, self.token = f, size, progress, token
        self.sent = 0
        self._reported = None  # (time, fraction) of the last progress event

    def __len__(self):
        return self.size

    def read(self, n=-1):
        self.token.check()  # cancelled: the connection drops and the server deletes the partial upload
        chunk = self.f.read(CHUNK if n is None or n < 0 else min(n, CHUNK))
        self.sent += len(chunk)
        fraction = self.sent / self.size if self.size else 1.0
        now = time.monotonic()
        last = self._reported
        if last is None or (fraction >= 1.0 and last[1] < 1.0) or (now - last[0] >= 0.25 and fraction > last[1]):
            self._reported = (now, fraction)
            self.progress("upload", fraction, f"sending the image ({self.sent / 2**20:.1f} of "
                                              f"{self.size / 2**20:.1f} MB)")
        return chunk


class _CancelWatcher(threading.Thread):
    """Sends the cancel as soon as the token is set, even while no event arrives."""

    def __init__(self, token, on_cancel):
        super().__init__(daemon=True, name="remote-cancel")
        self.token, self.on_cancel = token, on_cancel
        self._done = threading.Event()

    def run(self):
        while not self._done.wait(0.1):
            if self.token.cancelled:
                self.on_cancel()
                return

    def stop(self):
        self._done.set()


def _relay(progress, event):
    """A server event out of the local Progress, as if the engine ran here (cancel is checked on the way)."""
    kind = event.get("event")
    if kind == "progress":
        extra = {k: v for k, v in event.items() if k not in ("event", "stage", "fraction", "message", "time", "overall")}
        progress(str(event.get("stage", "remote")), event.get("fraction"), str(event.get("message", "")), **extra)
    elif kind == "log":
        progress.log(str(event.get("message", "")), str(event.get("level", "info")))


def _result(payload, zip_path, output, ml):
    """The SegmentResult of a run, its files written where a local run writes them (all or nothing)."""
    with zipfile.ZipFile(zip_path) as zf:
        names = payload.get("files") or zf.namelist()
        for name in names:
            if not _SAFE_NAME.match(name) or ".." in name:
                raise RemoteError(f"The server sent an unexpected file name {name[:80]!r}.",
                                  "Ask the server's admin to check the server (its version).", "server")
        result = SegmentResult.from_json(payload)
        try:
            if zf.testzip() is not None:
                raise zipfile.BadZipFile("CRC mismatch")
            if output is None:
                import nibabel as nib  # not shipped with Slicer: only a run that keeps the labelmap in memory

                data = zf.read(f"{LABELMAP_NAME}.nii.gz")
                result.labelmap = nib.Nifti1Image.from_bytes(gzip.decompress(data))
                result.files = []
                return result
            targets = [(name, _target(name, output, ml)) for name in names]
            result.files = _write_all(zf, targets)
        except (zipfile.BadZipFile, KeyError, EOFError) as e:
            raise ServerConnectionError(f"The result from the server is damaged ({e}); nothing was written.",
                                        "Run again.") from None
    return result


def _target(name, output, ml):
    """Where a file of the result goes: the labelmap at `output`, its label table beside it, the rest in its folder."""
    if not ml:
        return output / name
    if name in (f"{LABELMAP_NAME}.nii.gz", f"{LABELMAP_NAME}.nii"):
        return output
    if name == f"{LABELMAP_NAME}.labels.json":
        return sidecar_path(output, ml)
    return output.parent / name


def _write_all(zf, targets):
    """Every file under a temporary name first, then all renamed: no half-written result, ever."""
    pending = []
    try:
        for name, final in targets:
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = final.with_name(f".{final.name}.part{os.getpid()}")
            pending.append((tmp, final))
            with zf.open(name) as src, open(tmp, "wb") as dst:
                while True:
                    chunk = src.read(CHUNK)
                    if not chunk:
                        break
                    dst.write(chunk)
        for tmp, final in pending:
            os.replace(tmp, final)
    except BaseException:
        for tmp, _ in pending:
            Path(tmp).unlink(missing_ok=True)
        raise
    return [final for _, final in pending]


def _reason(e):
    text = str(e)
    for known in ("Connection refused", "Name or service not known", "No route to host", "timed out",
                  "Connection reset", "Temporary failure in name resolution", "Network is unreachable"):
        if known.lower() in text.lower():
            return known.lower()
    return type(e).__name__


def _tls_error(url, e):
    text = str(e)
    if "hostname" in text.lower() or "doesn't match" in text or "not valid for" in text.lower():
        why = "the certificate is not made out to this host name"
    elif "CERTIFICATE_VERIFY_FAILED" in text:
        why = "the certificate is not signed by an authority this computer trusts"
    elif "WRONG_VERSION_NUMBER" in text or "record layer failure" in text.lower():
        why = "the server does not speak TLS on this port"
    else:
        why = type(e).__name__
    return ServerTLSError(f"The TLS certificate of {url} was not accepted: {why}.",
                          "Give the certificate of the authority that signed the server's certificate with --ca_cert "
                          "(in Slicer: CA certificate, under Remote server; ask the admin), and use the host name the "
                          "certificate is made out to. Verification is "
                          "never switched off: a certificate that does not match may mean someone is listening in.")


def _lost(url, e):
    detail = f" ({_reason(e)})" if e is not None else ""
    return ServerConnectionError(
        f"The connection to the server {url} was lost before the run finished{detail}: the server stopped or "
        "restarted, or the network dropped. Nothing was written.",
        "Run again; if it happens again, ask the server's admin to look at the server's log.")


def _raise_for(response):
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict) or "cause" not in data:
        status = response.status_code
        fix = "Check the server URL." if 300 <= status < 500 else "Try again later, or ask the server's admin."
        raise RemoteError(f"The server answered HTTP {status} {response.reason or ''}".strip() + ".", fix, "server")
    raise error_from(data)


def _from_message(message):
    """The RemoteSegmenter a worker message's "remote": {"url", "token_file", "ca_cert"} (or "token") names."""
    remote = message.get("remote") or {}
    if not isinstance(remote, dict) or not remote.get("url"):
        raise BadRequestError("A remote request needs \"remote\": {\"url\": ...}.", "Give the server's URL.")
    return RemoteSegmenter(remote["url"], token=remote.get("token"), token_file=remote.get("token_file"),
                           ca_cert=remote.get("ca_cert"))


def worker_server_info(message, progress):
    """A `server.info` message of the worker: the server's /info (the URL, its certificate and the token
    checked on the way), for the module's connection check. Returns the result payload."""
    progress("connect", 0.0, "asking the server")
    remote_segmenter = _from_message(message)
    return {"url": remote_segmenter.url, **remote_segmenter.info()}


def run_worker_request(message, progress):
    """A `segment` message of the persistent worker (worker.py) that carries "remote": {"url", "token_file",
    "ca_cert"} (or "token") beside its "request" (SegmentRequest fields): run it on that server, with events
    and cancel through the worker's `progress`. Returns the result payload."""
    remote_segmenter = _from_message(message)
    segment_request = SegmentRequest.from_json(message.get("request"))
    started = time.perf_counter()
    result = remote_segmenter.run(segment_request, progress=progress)
    return {**result.to_json(), "seconds": round(time.perf_counter() - started, 3), "remote": True}
