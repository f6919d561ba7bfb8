"""Downloading model weights from the official release URLs (or a mirror).

One dataset zip at a time, with `requests`:
- streamed to `<weights>/.downloads/<Dataset>.zip.part`, with progress events (bytes,
  total, speed, dataset) and the Cancel token checked on every chunk; a watcher closes
  the socket on Cancel, so even a stalled transfer stops at once;
- limits that fit a person waiting (`DownloadLimits`, each settable by an environment
  variable, and by a flag of `download-weights`):
      connect timeout     TOTALSEG_DOWNLOAD_CONNECT_TIMEOUT  (s, default 10)
      read timeout        TOTALSEG_DOWNLOAD_READ_TIMEOUT     (s without a byte, also for the
                                                              server's answer to begin; default 20)
      minimum speed       TOTALSEG_DOWNLOAD_MIN_SPEED        (KB/s averaged over the window,
                                                              default 10; 0 turns it off)
      speed window        TOTALSEG_DOWNLOAD_SPEED_WINDOW     (s, default 60)
      overall deadline    TOTALSEG_DOWNLOAD_DEADLINE         (s for the whole call, default 10800;
                                                              0 turns it off)
  A watchdog closes the connection the moment a limit is passed, so a server that
  trickles bytes fails at the end of its window and a stalled one at its timeout;
- retries with exponential backoff on transient failures (5xx, 429, reset or dropped
  connections, a stall in the middle of the body), each retry resuming the partial file
  with an HTTP Range request (a server that answers 200 instead of 206, or a file that
  changed on the server, restarts cleanly from zero); no connection at all, and a server
  that accepts but never answers, are retried once only; too slow and past the deadline
  are not retried. The partial file stays for a later run to resume;
- errors name the URL and, when one applies, the proxy (HTTPS_PROXY, HTTP_PROXY,
  ALL_PROXY, NO_PROXY as requests reads them) - without any user name or password a URL
  may hold;
- free disk space checked before writing;
- then unpacked, verified and atomically installed by `install` (no half-installed
  model, ever); a damaged archive is deleted, and downloaded once more from scratch if
  it came from a resumed transfer.
Licensed datasets are POSTed for from the licence server with the stored key, as the
official tool does. TLS is always verified; the standard proxy variables (HTTPS_PROXY,
NO_PROXY) and REQUESTS_CA_BUNDLE are honoured by requests.

A mirror (parameter or $TOTALSEG_WEIGHTS_MIRROR) replaces the official source for every
dataset: an http(s) base URL serving `<Dataset>.zip` (or a template with {folder} and
{release}), or a local / network folder holding the zips.
"""
import collections
import json
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import requests
import urllib3

from ..catalogue import load_catalogue
from ..errors import (Cancelled, InvalidWeightsError, LicenseError, WeightsDownloadError, WeightsFolderError,
                      WeightsMissingError)
from ..progress import Reporter
from ..system.files import file_lock
from .install import CorruptArchiveError, check_free_space, install_zip, prepare_weights_dir, remove_stale_staging
from .license import mask_license, require_license
from .locate import folds_of, is_installed, model_dir, resolve_weights_dir
from .verify import quick_check

MIRROR_ENV = "TOTALSEG_WEIGHTS_MIRROR"
DOWNLOADS = ".downloads"
# The licence server is asked for the weights of this official version (our catalogue's).
OFFICIAL_VERSION = "2.18.0"
DEFAULT_RETRIES = 4
DEFAULT_BACKOFF = 2.0  # seconds before the first retry, doubling
PARTIAL_MAX_AGE_S = 14 * 24 * 3600  # partial downloads nobody resumed for two weeks are dropped
MAX_ATTEMPTS = 100  # a link that keeps dropping but delivers bytes is resumed, up to this many times
CHUNK = 64 * 1024
USER_AGENT = "totalsegmentator-slicer-weights/0.1"
# Share of one dataset's progress taken by the transfer; unpacking and verifying take the rest.
_DOWNLOAD_SHARE = 0.85


@dataclass(frozen=True)
class DownloadLimits:
    """How long a download may take (see module docstring); every field has an environment variable."""

    connect_timeout: float = 10.0  # s to open the connection
    read_timeout: float = 20.0  # s without a byte (the answer's start included)
    min_speed_kbps: float = 10.0  # KB/s (1000 bytes) over speed_window; 0: no minimum
    speed_window: float = 60.0  # s
    deadline: float = 3 * 3600.0  # s for one download call; 0: none

    ENV = {"connect_timeout": "TOTALSEG_DOWNLOAD_CONNECT_TIMEOUT", "read_timeout": "TOTALSEG_DOWNLOAD_READ_TIMEOUT",
           "min_speed_kbps": "TOTALSEG_DOWNLOAD_MIN_SPEED", "speed_window": "TOTALSEG_DOWNLOAD_SPEED_WINDOW",
           "deadline": "TOTALSEG_DOWNLOAD_DEADLINE"}

    @classmethod
    def from_env(cls, **given):
        """Defaults, then the environment, then `given` (fields set to None are skipped)."""
        values = {}
        for f in fields(cls):
            raw = os.environ.get(cls.ENV[f.name])
            if raw not in (None, ""):
                try:
                    values[f.name] = float(raw)
                except ValueError:
                    raise WeightsDownloadError(f"{cls.ENV[f.name]}={raw!r} is not a number.",
                                               f"Set {cls.ENV[f.name]} to a number (see download-weights --help).") \
                        from None
        values.update({k: float(v) for k, v in given.items() if v is not None})
        limits = cls(**values)
        for f in fields(cls):
            value = getattr(limits, f.name)
            if value < 0 or (f.name in ("connect_timeout", "read_timeout", "speed_window") and value == 0):
                raise WeightsDownloadError(f"Download limit {f.name} = {value:g} is not allowed.",
                                           "Timeouts and the speed window must be positive; the minimum speed and "
                                           "the deadline may be 0 (off).")
        return limits


class _Transient(Exception):
    """A failure worth retrying (5xx, dropped connection, timeout)."""


class _Stopped(Exception):
    """The watchdog stopped the transfer: too slow, or past the deadline (not retried)."""


class _Restart(Exception):
    """The partial file cannot be resumed (server ignored Range, or the file changed): start over."""


def download_models(models, weights_dir=None, license_key=None, progress=None, mirror=None, timeout=None,
                    retries=None, backoff=None, license_url=None, limits=None):
    """Download, verify and install the datasets of `models` (catalogue ModelSpecs); return their folders.

    `limits`: DownloadLimits (default: DownloadLimits.from_env()); `timeout` (seconds, or
    (connect, read)) overrides its timeouts."""
    cat = load_catalogue()
    limits = limits or DownloadLimits.from_env()
    if timeout is not None:
        connect, read = (timeout, timeout) if isinstance(timeout, (int, float)) else timeout
        limits = replace(limits, connect_timeout=float(connect), read_timeout=float(read))
    weights_dir = prepare_weights_dir(resolve_weights_dir(weights_dir))
    remove_stale_staging(weights_dir)
    opts = {"limits": limits, "retries": DEFAULT_RETRIES if retries is None else retries,
            "backoff": DEFAULT_BACKOFF if backoff is None else backoff,
            "deadline_at": time.monotonic() + limits.deadline if limits.deadline else None}
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV) or None
    by_dataset = {}
    for m in models:
        by_dataset.setdefault(m.dataset, []).append(m)
    # Every source first: a missing licence key or mirror file fails before any download starts.
    sources = [_source(cat, dataset, specs[0].folder, mirror, license_key, license_url)
               for dataset, specs in by_dataset.items()]
    for source in sources:
        source["shown"] = redact(source["url"])  # the URL as messages show it: without credentials
    report = Reporter(progress, "download")
    installed = []
    downloads = weights_dir / DOWNLOADS
    downloads.mkdir(exist_ok=True)
    _remove_old_partials(downloads)
    for i, (specs, source) in enumerate(zip(by_dataset.values(), sources)):
        part = report.sub(i / len(by_dataset), (i + 1) / len(by_dataset))
        folder = specs[0].folder
        required = {folder: {m.subdir: m.folds for m in specs}}
        with file_lock(downloads / f"{folder}.lock", part, f"waiting for another download of {folder} to finish"):
            if all(is_installed(m, weights_dir) for m in specs):
                installed.append(weights_dir / folder)  # another process installed it meanwhile
                continue
            if source["kind"] == "folder":
                installed += _install_zip(source["path"], weights_dir, required, part, source, keep=True)
            else:
                installed += _download_and_install(source, downloads / f"{folder}.zip", weights_dir, required,
                                                   part, opts)
    report(1.0, "weights installed")
    return installed


def _remove_old_partials(downloads):
    now = time.time()
    for p in downloads.glob("*.zip*"):
        try:
            if now - p.stat().st_mtime > PARTIAL_MAX_AGE_S:
                p.unlink()
        except OSError:
            pass


def redact(url):
    """`url` without a user name or password (never shown in messages or logs); a proxy
    variable may omit the scheme ("user:pw@proxy:3128")."""
    text = str(url) if "://" in str(url) else "http://" + str(url)
    try:
        parts = urlparse(text)
    except ValueError:
        return "(an unreadable URL)"
    if "@" not in parts.netloc:
        return str(url)
    return urlunparse(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def proxy_for(url):
    """The proxy requests will use for `url` (from HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY), redacted; or None."""
    try:
        proxies = requests.utils.get_environ_proxies(url)
        proxy = requests.utils.select_proxy(url, proxies)
    except Exception:  # noqa: BLE001 - a malformed proxy variable: requests will say so itself
        return None
    return redact(proxy) if proxy else None


# -- where a dataset comes from --------------------------------------------------------------

def _source(cat, dataset, folder, mirror, license_key, license_url):
    ds = cat.datasets[dataset]
    official = cat.weights_url(dataset)
    base = {"folder": folder, "dataset": dataset, "licensed": ds["release"] is None, "official": official}
    if mirror:
        if not re.match(r"^https?://", mirror, re.I):
            path = Path(mirror[7:] if mirror.startswith("file://") else mirror).expanduser()
            zip_path = path / f"{folder}.zip"
            if not zip_path.is_file():
                raise WeightsDownloadError(
                    f"The weights mirror folder {path} has no {folder}.zip (set by {MIRROR_ENV} or --mirror).",
                    f"Copy {folder}.zip into {path}, or unset the mirror to download from the official source.")
            return {**base, "kind": "folder", "path": zip_path, "url": str(zip_path)}
        if "{folder}" in mirror:
            url = mirror.format(folder=folder, release=ds["release"] or "licensed")
        else:
            url = f"{mirror.rstrip('/')}/{folder}.zip"
        return {**base, "kind": "http", "method": "GET", "url": url, "body": None, "key": None}
    if official is not None:
        return {**base, "kind": "http", "method": "GET", "url": official, "body": None, "key": None}
    key = require_license(license_key)
    body = {"license_number": key, "task": _license_task(cat, dataset), "version": OFFICIAL_VERSION}
    return {**base, "kind": "http", "method": "POST", "url": license_url or cat.licensed_weights_url,
            "body": body, "key": key}


def _license_task(cat, dataset):
    """The task name the licence server knows a dataset by (the last licensed task using it, as upstream)."""
    name = None
    for task in cat.tasks():
        if task.licensed and any(m.dataset == dataset for mode in task.modes.values() for m in mode.models):
            name = task.name
    return name


def _manual_fix(source, weights_dir):
    folder = source["folder"]
    how = (f"then run: python -m SegmentationLogic import-weights {folder}.zip  (or use 'Import weights' in the "
           f"TotalSegmentator module, Advanced section). ")
    if source["licensed"] and source["method"] == "POST":
        where = (f"Licensed weights are only given out by the licence server: on a computer with internet run the "
                 f"official tool (totalseg_set_license, then totalseg_download_weights -t {_task_hint(source)}), "
                 f"zip its folder {folder} to {folder}.zip, copy that here, ")
    else:
        where = (f"On a computer with internet download {source['official'] or source['shown']} (the file "
                 f"{folder}.zip), copy it here, ")
    return (where + how + f"Or install it by hand as {weights_dir}/{folder}. Behind a proxy set HTTPS_PROXY; "
            f"a hospital mirror can be set with {MIRROR_ENV}.")


def _task_hint(source):
    body = source.get("body") or {}
    return body.get("task") or "TASK"


# -- download + install -------------------------------------------------------------------------

def _download_and_install(source, zip_path, weights_dir, required, report, opts):
    dl, unpack = report.sub(0.0, _DOWNLOAD_SHARE), report.sub(_DOWNLOAD_SHARE, 1.0)
    for attempt in (1, 2):
        resumed = _fetch(source, zip_path, weights_dir, dl, opts)
        try:
            return _install_zip(zip_path, weights_dir, required, unpack, source, keep=False)
        except InvalidWeightsError as e:
            zip_path.unlink(missing_ok=True)  # not what we need: do not reuse it next time
            if not isinstance(e, CorruptArchiveError):
                raise
            if resumed and attempt == 1:
                report.log(f"{source['folder']}.zip was damaged after resuming; downloading it again from the start.",
                           "warning")
                continue
            raise WeightsDownloadError(
                f"The file downloaded from {source['shown']} is not a valid zip archive (damaged in transfer, or the "
                f"server sent an error page).", _manual_fix(source, weights_dir)) from None


def _install_zip(zip_path, weights_dir, required, report, source, keep):
    installed = install_zip(zip_path, weights_dir, report, origin=source["shown"], required=required,
                            only=source["folder"], fix=f"Check the file, or import the right one by hand: "
                                                       f"{_manual_fix(source, weights_dir)}")
    if not keep:
        zip_path.unlink(missing_ok=True)
    return installed


# -- HTTP ------------------------------------------------------------------------------------------

def _fetch(source, dest, weights_dir, report, opts):
    """Bring `source` to `dest` complete; return True if the file was (partly) resumed or reused."""
    if dest.is_file():
        report.log(f"using {dest.name} downloaded earlier")
        return True
    part = dest.with_name(dest.name + ".part")
    meta_path = dest.with_name(dest.name + ".part.json")
    url = source["url"]
    if urlparse(url).scheme == "http" and urlparse(url).hostname not in ("127.0.0.1", "localhost", "::1"):
        report.log(f"{url} is plain http: the download is not protected against tampering.", "warning")
    failures = resumed = attempts = 0
    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    report(0.0, f"{source['folder']}: connecting to {urlparse(url).hostname}", dataset=source["folder"])
    try:
        while True:
            meta = _read_meta(meta_path, url, part)
            offset = part.stat().st_size if meta else 0
            resumed = resumed or offset > 0
            state = {"received": 0}
            try:
                _transfer(session, source, part, meta_path, meta, offset, weights_dir, report, opts, state)
                os.replace(part, dest)
                meta_path.unlink(missing_ok=True)
                return bool(resumed)
            except _Restart as e:
                report.log(f"{source['folder']}: {e}; downloading from the start", "warning")
                part.unlink(missing_ok=True)
                meta_path.unlink(missing_ok=True)
            except _Stopped as e:  # too slow or past the deadline: retrying would not help
                raise _final_error(source, e, weights_dir, opts) from None
            except (_Transient, OSError) as e:  # requests' exceptions are OSErrors too
                if not isinstance(e, (_Transient, requests.RequestException, ConnectionError, TimeoutError)):
                    raise _disk_error(e, part) from None  # e.g. disk full: retrying will not help
                if report.cancelled:
                    raise Cancelled() from None
                if isinstance(e, requests.exceptions.SSLError):  # never retried, never bypassed
                    raise _final_error(source, e, weights_dir, opts) from None
                if state["received"]:
                    failures = 0  # bytes arrived: a flaky link is making progress
                failures += 1
                attempts += 1
                # No connection at all (offline, DNS, refused), or a server that accepts and never
                # answers: one retry only, to fail fast.
                cannot_connect = isinstance(e, (requests.ConnectTimeout, requests.ReadTimeout)) or (
                    isinstance(e, requests.ConnectionError) and _is_connect_failure(e))
                allowed = min(1, opts["retries"]) if cannot_connect else opts["retries"]
                delay = min(opts["backoff"], 1.0) if cannot_connect else opts["backoff"] * 2 ** (failures - 1)
                left = _time_left(opts)
                if left is not None and left <= delay and failures <= allowed:
                    e = _Stopped(f"{_reason(e, opts)}; the deadline of {opts['limits'].deadline:g} s leaves no "
                                 "time to try again")
                if failures > allowed or attempts >= MAX_ATTEMPTS or isinstance(e, _Stopped):
                    raise _final_error(source, e, weights_dir, opts) from None
                report.log(f"{source['folder']}: {_reason(e, opts)}; retry {failures}/{allowed} in {delay:.1f} s",
                           "warning")
                _sleep(delay, report)
    finally:
        session.close()


def _transfer(session, source, part, meta_path, meta, offset, weights_dir, report, opts, state):
    """One HTTP request appending to `part` (bytes counted in state["received"]); raises _Transient/_Restart."""
    headers = {"Accept-Encoding": "identity"}  # byte ranges must count bytes of the file itself
    if offset:
        headers["Range"] = f"bytes={offset}-"
        validator = meta.get("etag") or meta.get("last_modified")
        if validator:
            headers["If-Range"] = validator
    limits = opts["limits"]
    left = _time_left(opts)
    if left is not None and left <= 0:
        raise _Stopped(_deadline_reason(limits))
    read_timeout = limits.read_timeout if left is None else max(min(limits.read_timeout, left), 0.1)
    resp = session.request(source["method"], source["url"], json=source["body"], headers=headers, stream=True,
                           timeout=(limits.connect_timeout, read_timeout), allow_redirects=True)
    watcher = _Watchdog(resp, report, opts, state)
    try:
        status = resp.status_code
        if status == 416 and offset:
            raise _Restart("the server cannot resume the partial file")
        _check_status(resp, source, weights_dir)
        total = None
        if status == 206:
            m = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != offset:
                raise _Restart("the server resumed at the wrong position")
            total = int(m.group(3)) if m.group(3) != "*" else None
        else:  # 200: the whole file, whatever we asked for
            if offset:
                report.log(f"{source['folder']}: the server does not support resuming; restarting from zero")
                offset = 0
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        if total is not None:
            # the zip, plus as much again to unpack it
            check_free_space(part.parent, (total - offset) + total, f"downloading {source['folder']}")
        _write_meta(meta_path, source["url"], resp, total)
        done, start, last_emit = offset, time.monotonic(), 0.0
        with open(part, "ab" if offset else "wb") as f:
            for chunk in _chunks(resp, opts):
                if report.cancelled:
                    raise Cancelled()
                f.write(chunk)
                state["received"] += len(chunk)
                done += len(chunk)
                now = time.monotonic()
                if now - last_emit >= 0.2:
                    last_emit = now
                    _emit(report, source, done, total, state["received"] / max(now - start, 1e-6))
        if report.cancelled:
            raise Cancelled()
        if watcher.reason:
            raise _Stopped(watcher.reason)
        if total is not None and done < total:
            raise _Transient(f"the connection was closed after {done} of {total} bytes")
        _emit(report, source, done, total or done, state["received"] / max(time.monotonic() - start, 1e-6),
              final=True)
    except Exception as e:
        if report.cancelled and not isinstance(e, Cancelled):
            raise Cancelled() from None  # the watchdog closed the socket under us
        if watcher.reason and not isinstance(e, _Stopped):
            raise _Stopped(watcher.reason) from None  # too slow or past the deadline
        raise
    finally:
        watcher.stop()
        resp.close()


def _chunks(resp, opts):
    """The body as it arrives: read1 returns what came before a dropped connection (read(n) loses it)."""
    raw = resp.raw
    try:
        if hasattr(raw, "read1"):  # urllib3 >= 2
            while chunk := raw.read1(CHUNK, decode_content=False):
                yield chunk
        else:
            yield from raw.stream(CHUNK, decode_content=False)
    except urllib3.exceptions.ReadTimeoutError:
        raise _Transient(f"no data for {opts['limits'].read_timeout:g} s (timeout)") from None
    except urllib3.exceptions.ProtocolError:
        raise _Transient("the connection was closed before the end of the file") from None
    except urllib3.exceptions.HTTPError as e:
        raise _Transient(f"the transfer failed ({type(e).__name__})") from None


def _emit(report, source, done, total, speed, final=False):
    mb = 1024 * 1024
    of = f" of {total / mb:.1f}" if total else ""
    message = f"{source['folder']}: {done / mb:.1f}{of} MB at {speed / mb:.1f} MB/s"
    fraction = done / total if total else 0.0
    report(1.0 if final else fraction, message, dataset=source["folder"], bytes=done, total_bytes=total,
           speed=round(speed))


def _check_status(resp, source, weights_dir):
    status = resp.status_code
    is_json = resp.headers.get("Content-Type", "").startswith("application/json")
    if status in (200, 206) and not (source["method"] == "POST" and is_json):
        return
    if status in (429,) or status >= 500:
        raise _Transient(f"HTTP {status} {resp.reason or ''}".strip())
    if source["method"] == "POST" and (status in (200, 400, 401, 403)):  # the licence server said no
        detail = _json_status(resp)
        raise LicenseError(
            f"The licence server refused the licence key {mask_license(source['key'])} "
            f"({detail or f'HTTP {status}'}) for {source['folder']}.",
            "Check the key (python -m SegmentationLogic set-license), or contact TotalSegmentator support. "
            "Free academic licences: https://backend.totalsegmentator.com/license-academic/")
    if status == 404:
        raise WeightsDownloadError(f"{source['shown']} was not found (HTTP 404).",
                                   "If you use a mirror, check that it holds this file. " +
                                   _manual_fix(source, weights_dir))
    raise WeightsDownloadError(f"Downloading {source['shown']} failed: HTTP {status} {resp.reason or ''}.".strip(),
                               _manual_fix(source, weights_dir))


def _json_status(resp):
    try:
        data = json.loads(resp.raw.read(4096, decode_content=True) or b"{}")
        return str(data.get("status", ""))[:80] if isinstance(data, dict) else ""
    except Exception:
        return ""


def _read_meta(meta_path, url, part):
    """Metadata of a partial download of `url` (else the partial file is dropped)."""
    if not part.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        meta = None
    if not isinstance(meta, dict) or meta.get("url") != url:
        part.unlink(missing_ok=True)
        meta_path.unlink(missing_ok=True)
        return None
    return meta


def _write_meta(meta_path, url, resp, total):
    meta = {"url": url, "etag": resp.headers.get("ETag"), "last_modified": resp.headers.get("Last-Modified"),
            "total": total}
    meta_path.write_text(json.dumps(meta), encoding="utf-8")


class _Watchdog:
    """Watches one transfer from a thread and shuts its socket down, so that a blocked read
    returns at once, when the user cancels, when fewer bytes than the minimum speed arrived
    over the speed window, or at the deadline (`reason` then says which)."""

    def __init__(self, resp, report, opts, state):
        self.resp, self.report, self.opts, self.state = resp, report, opts, state
        self.reason = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="weights-download-watchdog")
        self.thread.start()

    def _run(self):
        limits = self.opts["limits"]
        start = time.monotonic()
        samples = collections.deque([(start, 0)])
        while not self.done.wait(0.1):
            now, received = time.monotonic(), self.state["received"]
            samples.append((now, received))
            while len(samples) > 1 and samples[1][0] <= now - limits.speed_window:
                samples.popleft()
            left = _time_left(self.opts)
            if self.report.cancelled:
                self._shut()
                return
            if left is not None and left <= 0:
                self.reason = _deadline_reason(limits)
            elif limits.min_speed_kbps and now - start >= limits.speed_window:
                t0, r0 = samples[0]
                speed = (received - r0) / max(now - t0, 1e-6)
                if speed < limits.min_speed_kbps * 1000:
                    self.reason = (f"only {speed / 1000:.1f} KB/s over the last {limits.speed_window:g} s, below the "
                                   f"minimum of {limits.min_speed_kbps:g} KB/s")
            if self.reason:
                self._shut()
                return

    def _shut(self):
        sock = getattr(getattr(self.resp.raw, "connection", None), "sock", None)
        try:
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def stop(self):
        self.done.set()
        self.thread.join(1.0)


def _time_left(opts):
    return None if opts["deadline_at"] is None else opts["deadline_at"] - time.monotonic()


def _deadline_reason(limits):
    return f"not finished within the deadline of {limits.deadline:g} s"


def _is_connect_failure(e):
    text = repr(e)
    return any(s in text for s in ("NewConnectionError", "NameResolutionError", "Failed to resolve",
                                   "Connection refused", "Network is unreachable", "ProxyError"))


def _reason(e, opts):
    limits = opts["limits"]
    if isinstance(e, _Stopped):
        return str(e)
    if isinstance(e, requests.ConnectTimeout):
        return f"no connection within {limits.connect_timeout:g} s (timeout)"
    if isinstance(e, requests.ReadTimeout):
        return f"the server accepted the connection but sent no answer for {limits.read_timeout:g} s (timeout)"
    if "Read timed out" in repr(e):
        return f"no data for {limits.read_timeout:g} s (timeout)"
    if isinstance(e, requests.exceptions.ProxyError):
        return "the proxy refused the connection or could not be reached"
    if isinstance(e, requests.exceptions.SSLError):
        return "the TLS certificate could not be verified"
    if isinstance(e, requests.ConnectionError) and _is_connect_failure(e):
        if "resolve" in repr(e).lower():
            return "the server name could not be resolved (no internet or DNS?)"
        return "the connection was refused or the network is unreachable"
    if isinstance(e, _Transient):
        return str(e)
    return f"the connection failed ({type(e).__name__})"


def _final_error(source, e, weights_dir, opts):
    reason = _reason(e, opts)
    proxy = proxy_for(source["url"])
    via = f" through the proxy {proxy}" if proxy else ""
    cause = f"Cannot download the weights {source['folder']} from {source['shown']}{via}: {reason}."
    fix = _manual_fix(source, weights_dir)
    if isinstance(e, requests.exceptions.SSLError):
        fix = ("If your network inspects TLS, point REQUESTS_CA_BUNDLE at your organisation's CA certificates. "
               + fix)
    if proxy:
        fix = "Check the proxy (HTTPS_PROXY / HTTP_PROXY, NO_PROXY) with your IT department. " + fix
    if isinstance(e, (_Stopped, requests.Timeout, _Transient)):
        fix = (f"A slow or overloaded link: try again later, or allow more ({', '.join(DownloadLimits.ENV.values())}"
               f", or the download-weights flags). The partial download is kept and resumed. " + fix)
    return WeightsDownloadError(cause, fix)


def _disk_error(e, part):
    return WeightsFolderError(f"Cannot write {part}: {e.strerror or e}.",
                              "Free disk space or choose a writable weights folder (TOTALSEG_WEIGHTS_PATH).")


def _sleep(seconds, report):
    end = time.monotonic() + seconds
    while True:
        report.check()
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.1))


def ensure_models(models, weights_dir=None, download=True, license_key=None, progress=None, mirror=None,
                  limits=None):
    """Return the model folders, downloading what is missing when allowed (within `limits`)."""
    missing = [m for m in models if not is_installed(m, weights_dir)]
    if missing and download:
        download_models(missing, weights_dir=weights_dir, license_key=license_key, progress=progress, mirror=mirror,
                        limits=limits)
        missing = [m for m in models if not is_installed(m, weights_dir)]
    if missing:
        names = ", ".join(m.folder for m in missing)
        raise WeightsMissingError(
            f"Model weights not installed: {names} (looked in {resolve_weights_dir(weights_dir)}).",
            "Download them (python -m SegmentationLogic download-weights --task ...), or import a zip or folder "
            "you downloaded elsewhere (python -m SegmentationLogic import-weights PATH).")
    for m in models:  # damaged since installed (disk error, an interrupted copy by hand): say so before the run
        quick_check(model_dir(m, weights_dir), folds_of(m, weights_dir))
    return [model_dir(m, weights_dir) for m in models]
