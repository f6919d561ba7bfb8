"""Downloading weights: a real HTTP server on 127.0.0.1 serves a real model zip, with faults."""
import json
import logging
import os
import shutil
import socket
import sys
import threading
import time
import zipfile

import pytest

from http_server import WeightsServer
from model_zips import assert_nothing_half_installed, installed_datasets, zip_dataset
from SegmentationLogic.catalogue import load_catalogue
from SegmentationLogic.cli import main
from SegmentationLogic.errors import (Cancelled, InvalidWeightsError, LicenseError, WeightsDownloadError,
                                      WeightsFolderError)
from SegmentationLogic.pipeline.plan import required_models
from SegmentationLogic.progress import CancelToken, Progress
from SegmentationLogic.weights import ensure_models, is_installed, set_license
from SegmentationLogic.weights.download import MIRROR_ENV, OFFICIAL_VERSION, download_models

CAT = load_catalogue()
SPEC = required_models("total", "fastest")[0]  # Dataset298, one model folder
FOLDER = SPEC.folder
LICENSED = required_models("heartchambers_highres")[-1]  # Dataset301, licence server only
KEY = "aca_TESTKEY0123456"
FAST = {"timeout": (2.0, 2.0), "retries": 2, "backoff": 0.0}


@pytest.fixture(autouse=True)
def loopback_without_proxy(monkeypatch):
    """A proxy configured on the test machine must not intercept requests to our 127.0.0.1 server."""
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(var, ",".join(x for x in (os.environ.get(var), "127.0.0.1", "localhost") if x))


@pytest.fixture(scope="module")
def model_zip(fitted_weights, tmp_path_factory):
    return zip_dataset(fitted_weights / FOLDER, tmp_path_factory.mktemp("zips") / f"{FOLDER}.zip").read_bytes()


@pytest.fixture(scope="module")
def licensed_zip(fitted_weights, tmp_path_factory):
    """Dataset298's files under Dataset301's names: a self-consistent model for the licensed-path tests."""
    import shutil

    root = tmp_path_factory.mktemp("lic")
    src = root / LICENSED.folder / LICENSED.subdir
    shutil.copytree(fitted_weights / FOLDER / SPEC.subdir, src)
    return zip_dataset(root / LICENSED.folder, root / "lic.zip").read_bytes()


@pytest.fixture
def server(model_zip, monkeypatch):
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    with WeightsServer({f"/{FOLDER}.zip": model_zip}) as srv:
        yield srv


@pytest.fixture
def wdir(tmp_path):
    return tmp_path / "weights"


def recorder(cancel=None):
    events = []
    return events, Progress(events.append, cancel=cancel)


def download_events(events):
    return [e for e in events if e["event"] == "progress" and e["stage"] == "download"]


def test_download_installs_verified_model_with_progress(server, wdir):
    events, progress = recorder()
    installed = download_models([SPEC], weights_dir=wdir, progress=progress, mirror=server.url(), **FAST)
    assert installed == [wdir / FOLDER]
    assert is_installed(SPEC, wdir)
    fractions = [e["fraction"] for e in download_events(events)]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    with_bytes = [e for e in events if "bytes" in e]
    size = len(server.files[f"/{FOLDER}.zip"])
    assert with_bytes and with_bytes[-1]["bytes"] == with_bytes[-1]["total_bytes"] == size
    assert all(e["dataset"] == FOLDER and e["speed"] >= 0 for e in with_bytes)
    assert FOLDER in with_bytes[-1]["message"] and "MB/s" in with_bytes[-1]["message"]
    assert [r["method"] for r in server.requests] == ["GET"] and "Range" not in server.requests[0]["headers"]
    assert sorted(p.name for p in (wdir / ".downloads").iterdir()) == [f"{FOLDER}.lock"]  # zip removed
    assert not list(wdir.glob(".install-*"))


def test_resume_after_connection_drops_mid_body(server, wdir):
    size = len(server.files[f"/{FOLDER}.zip"])
    server.fault = "drop_once"
    # No retries: the run fails and keeps the partial file for the next run.
    with pytest.raises(WeightsDownloadError) as e:
        download_models([SPEC], weights_dir=wdir, mirror=server.url(), **{**FAST, "retries": 0})
    assert server.url() in str(e.value)
    assert_nothing_half_installed(wdir)
    part = wdir / ".downloads" / f"{FOLDER}.zip.part"
    assert part.stat().st_size == (size) // 2
    # The next run resumes with a Range request, gets 206 and installs a verified model.
    download_models([SPEC], weights_dir=wdir, mirror=server.url(), **FAST)
    assert server.requests[1]["headers"]["Range"] == f"bytes={size // 2}-"
    assert server.requests[1]["headers"]["If-Range"].startswith('"')
    assert is_installed(SPEC, wdir) and not part.exists()


def test_retry_resumes_within_one_run(server, wdir):
    server.fault = "drop_once"
    events, progress = recorder()
    download_models([SPEC], weights_dir=wdir, progress=progress, mirror=server.url(), **FAST)
    assert len(server.requests) == 2 and "Range" in server.requests[1]["headers"]
    assert is_installed(SPEC, wdir)
    assert any("retry 1/2" in e.get("message", "") for e in events if e["event"] == "log")


def test_server_ignoring_range_restarts_cleanly(server, wdir):
    server.fault = "drop_once"
    with pytest.raises(WeightsDownloadError):
        download_models([SPEC], weights_dir=wdir, mirror=server.url(), **{**FAST, "retries": 0})
    server.fault = "ignore_range"
    download_models([SPEC], weights_dir=wdir, mirror=server.url(), **FAST)
    assert "Range" in server.requests[1]["headers"]  # asked to resume, got 200 and the whole file
    assert is_installed(SPEC, wdir)


def test_file_changed_on_a_server_without_validators(server, wdir, fitted_weights, tmp_path):
    """Resuming blindly glues two different files together: detected, downloaded again from zero."""
    server.fault = "drop_once"
    with pytest.raises(WeightsDownloadError):
        download_models([SPEC], weights_dir=wdir, mirror=server.url(), **{**FAST, "retries": 0})
    stored = zip_dataset(fitted_weights / FOLDER, tmp_path / "stored.zip", compression=zipfile.ZIP_STORED)
    server.files[f"/{FOLDER}.zip"] = stored.read_bytes()
    server.fault = "no_validator"
    events, progress = recorder()
    download_models([SPEC], weights_dir=wdir, progress=progress, mirror=server.url(), **FAST)
    assert "Range" in server.requests[1]["headers"] and "Range" not in server.requests[2]["headers"]
    assert any("damaged after resuming" in e["message"] for e in events if e["event"] == "log")
    assert is_installed(SPEC, wdir)


def test_404_is_a_clear_error_without_retries(server, wdir):
    other = required_models("total", "fast")[0]  # not on the server
    with pytest.raises(WeightsDownloadError) as e:
        download_models([other], weights_dir=wdir, mirror=server.url(), **FAST)
    msg = str(e.value)
    assert f"{server.url()}/{other.folder}.zip" in msg and "404" in msg and "import-weights" in msg
    assert len(server.requests) == 1
    assert_nothing_half_installed(wdir)


def test_500_is_retried_then_a_clear_error(server, wdir):
    server.fault = "500"
    events, progress = recorder()
    with pytest.raises(WeightsDownloadError) as e:
        download_models([SPEC], weights_dir=wdir, progress=progress, mirror=server.url(), **FAST)
    assert len(server.requests) == 3  # first try + 2 retries
    assert "HTTP 500" in e.value.cause and server.url() in e.value.cause
    assert_nothing_half_installed(wdir)


def test_transient_500_recovers(server, wdir):
    server.fault = "500_once"
    download_models([SPEC], weights_dir=wdir, mirror=server.url(), **FAST)
    assert len(server.requests) == 2 and is_installed(SPEC, wdir)


def test_stalled_server_times_out_quickly(server, wdir):
    server.fault = "stall"
    t0 = time.monotonic()
    with pytest.raises(WeightsDownloadError) as e:
        download_models([SPEC], weights_dir=wdir, mirror=server.url(), timeout=(2.0, 0.5), retries=1, backoff=0.0)
    assert time.monotonic() - t0 < 5
    assert "timeout" in e.value.cause and server.url() in e.value.cause
    assert len(server.requests) == 2
    assert_nothing_half_installed(wdir)


@pytest.mark.parametrize("fault", ["corrupt", "html"])
def test_damaged_download_is_an_error_and_deleted(server, wdir, fault):
    zip_bytes = server.files[f"/{FOLDER}.zip"]
    if fault == "corrupt":
        server.files[f"/{FOLDER}.zip"] = zip_bytes[: len(zip_bytes) // 2] + b"\0" * (len(zip_bytes) // 2)
    else:
        server.fault = "html"
    with pytest.raises(WeightsDownloadError) as e:
        download_models([SPEC], weights_dir=wdir, mirror=server.url(), **FAST)
    assert "not a valid zip archive" in e.value.cause
    assert_nothing_half_installed(wdir, allow_partial=False)  # a damaged file is not kept for resuming


def test_zip_without_the_expected_dataset(server, wdir, fitted_weights, tmp_path):
    other = zip_dataset(fitted_weights / required_models("total", "fast")[0].folder, tmp_path / "o.zip")
    server.files[f"/{FOLDER}.zip"] = other.read_bytes()
    with pytest.raises(InvalidWeightsError) as e:
        download_models([SPEC], weights_dir=wdir, mirror=server.url(), **FAST)
    assert f"does not contain {FOLDER}" in e.value.cause
    assert_nothing_half_installed(wdir, allow_partial=False)


def test_not_enough_disk_space_is_checked_before_writing(server, wdir):
    server.fault = "huge"
    with pytest.raises(WeightsFolderError) as e:
        download_models([SPEC], weights_dir=wdir, mirror=server.url(), **FAST)
    assert "Not enough disk space" in e.value.cause
    assert_nothing_half_installed(wdir)
    assert not list((wdir / ".downloads").glob("*.part"))


def test_tls_is_verified(model_zip, wdir, tmp_path):
    """A self-signed https mirror is refused (never verify=False), once, with how to trust a hospital CA."""
    import subprocess

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    try:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                       check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("openssl is needed to make a test certificate")
    with WeightsServer({f"/{FOLDER}.zip": model_zip}, tls=(cert, key)) as srv:
        with pytest.raises(WeightsDownloadError) as e:
            download_models([SPEC], weights_dir=wdir, mirror=srv.url(), **FAST)
    assert "TLS certificate could not be verified" in e.value.cause and srv.url() in e.value.cause
    assert "REQUESTS_CA_BUNDLE" in e.value.fix
    assert srv.requests == []  # the handshake failed: nothing was sent
    assert_nothing_half_installed(wdir)


def _closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_offline_names_the_url_and_how_to_import_by_hand(wdir, monkeypatch):
    mirror = f"http://127.0.0.1:{_closed_port()}"
    t0 = time.monotonic()
    with pytest.raises(WeightsDownloadError) as e:
        download_models([SPEC], weights_dir=wdir, mirror=mirror, backoff=0.0)
    assert time.monotonic() - t0 < 5  # no connection at all: one retry, not four
    msg = str(e.value)
    assert f"{mirror}/{FOLDER}.zip" in e.value.cause and "refused" in e.value.cause
    assert CAT.weights_url(SPEC.dataset) in e.value.fix  # where to get it by hand
    assert f"import-weights {FOLDER}.zip" in msg and "Import weights" in msg
    assert_nothing_half_installed(wdir)


def test_cancel_mid_download_stops_promptly(server, wdir):
    server.fault = "slow"
    token = CancelToken()

    def on_event(event):
        if event.get("bytes", 0) > 0:
            token.cancel()

    events = []
    progress = Progress(lambda e: (events.append(e), on_event(e)), cancel=token)
    t0 = time.monotonic()
    with pytest.raises(Cancelled):
        download_models([SPEC], weights_dir=wdir, progress=progress, mirror=server.url(), **FAST)
    assert time.monotonic() - t0 < 2
    part = wdir / ".downloads" / f"{FOLDER}.zip.part"
    assert 0 < part.stat().st_size < len(server.files[f"/{FOLDER}.zip"])  # stopped mid-body, kept for resume
    assert_nothing_half_installed(wdir)


def test_cancel_while_the_server_stalls(server, wdir):
    server.fault = "stall"
    token = CancelToken()
    threading.Timer(0.5, token.cancel).start()
    t0 = time.monotonic()
    with pytest.raises(Cancelled):
        download_models([SPEC], weights_dir=wdir, progress=Progress(None, cancel=token), mirror=server.url(),
                        timeout=(2.0, 30.0), retries=0)
    assert time.monotonic() - t0 < 3  # did not wait for the 30 s read timeout
    assert_nothing_half_installed(wdir)


def test_unwritable_weights_folder(server, tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the weights folder should be")
    with pytest.raises(WeightsFolderError) as e:
        download_models([SPEC], weights_dir=blocker, mirror=server.url(), **FAST)
    assert str(blocker) in e.value.cause and "TOTALSEG_WEIGHTS_PATH" in e.value.fix
    with pytest.raises(WeightsFolderError):
        download_models([SPEC], weights_dir=blocker / "results", mirror=server.url(), **FAST)
    assert server.requests == []


def _run_cli_as_unprivileged(argv):
    """Run cli.main(argv) in a forked child, as user 'nobody' if we are root; return (exit code, stderr)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        code = 99
        try:
            os.close(r)
            os.dup2(w, 2)
            sys.stderr = os.fdopen(2, "w", closefd=False)
            if os.geteuid() == 0:  # root ignores permissions
                os.setgid(65534)
                os.setuid(65534)
            code = main(argv)
        finally:
            sys.stderr.flush()
            os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        err = f.read()
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), err


def test_read_only_weights_folder(tmp_path):
    """A folder without write permission, through the CLI (as user 'nobody' when the tests run as root)."""
    import tempfile
    from pathlib import Path

    root = Path(tempfile.mkdtemp(prefix="ro-weights-"))  # outside root's private pytest folder
    ro = root / "results"
    ro.mkdir()
    try:
        ro.chmod(0o555)
        root.chmod(0o755)
        code, err = _run_cli_as_unprivileged(
            ["download-weights", "--task", "total", "--fastest", "--weights_dir", str(ro),
             "--mirror", f"http://127.0.0.1:{_closed_port()}", "-q"])
        if code == 99:
            pytest.skip(f"cannot drop privileges here: {err[-300:]}")
        assert code == 1, err
        assert f"ERROR: Cannot write to the weights folder {ro}: Permission denied" in err
        assert "TOTALSEG_WEIGHTS_PATH" in err
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)
        shutil.rmtree(root)


def test_folder_mirror_installs_and_keeps_the_zip(model_zip, wdir, tmp_path, monkeypatch):
    share = tmp_path / "share"
    share.mkdir()
    (share / f"{FOLDER}.zip").write_bytes(model_zip)
    monkeypatch.setenv(MIRROR_ENV, str(share))
    ensure_models([SPEC], weights_dir=wdir)
    assert is_installed(SPEC, wdir) and (share / f"{FOLDER}.zip").is_file()


def test_two_concurrent_downloads_of_one_model_fetch_it_once(server, wdir):
    server.fault = "slow"
    results, errors = [], []

    def run():
        try:
            results.append(download_models([SPEC], weights_dir=wdir, mirror=server.url(), **FAST))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == [] and results == [[wdir / FOLDER]] * 2
    assert len(server.requests) == 1 and is_installed(SPEC, wdir)


def test_ensure_models_downloads_nothing_when_installed(server, wdir):
    download_models([SPEC], weights_dir=wdir, mirror=server.url(), **FAST)
    assert ensure_models([SPEC], weights_dir=wdir, mirror=server.url()) == [wdir / FOLDER / SPEC.subdir]
    assert len(server.requests) == 1


# -- licensed weights --------------------------------------------------------------------------

@pytest.fixture
def licence_server(licensed_zip, monkeypatch, tmp_path):
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "home"))
    with WeightsServer(license_key=KEY, license_files={"heartchambers_highres": licensed_zip}) as srv:
        yield srv


def test_licensed_download_posts_the_key_and_never_shows_it(licence_server, wdir, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    events, progress = recorder()
    assert main(["set-license", KEY]) == 0
    download_models([LICENSED], weights_dir=wdir, progress=progress,
                    license_url=licence_server.url("/download_weights"), **FAST)
    assert is_installed(LICENSED, wdir)
    (req,) = licence_server.requests
    assert req["method"] == "POST"
    assert req["body"] == {"license_number": KEY, "task": "heartchambers_highres", "version": OFFICIAL_VERSION}
    # A wrong key: a LicenseError that shows the key masked only.
    set_license("aca_WRONGKEY012345")
    with pytest.raises(LicenseError) as e:
        download_models([LICENSED], weights_dir=wdir / "other", progress=progress,
                        license_url=licence_server.url("/download_weights"), **FAST)
    assert "invalid_license" in e.value.cause and "aca_****...2345" in e.value.cause
    assert_nothing_half_installed(wdir / "other")
    out = capfd.readouterr()  # file-descriptor level: also what C code or subprocesses would print
    seen = out.out + out.err + caplog.text + json.dumps(events) + str(e.value)
    assert "aca_****...3456" in seen  # set-license confirmed with the masked key
    assert KEY not in seen and "aca_WRONGKEY012345" not in seen


def test_licence_refusal_with_status_200(licence_server, wdir):
    licence_server.fault = "json_200"
    set_license("aca_WRONGKEY012345")
    with pytest.raises(LicenseError) as e:
        download_models([LICENSED], weights_dir=wdir, license_url=licence_server.url("/download_weights"), **FAST)
    assert "refused the licence key aca_****...2345 (invalid_license)" in e.value.cause
    assert_nothing_half_installed(wdir, allow_partial=False)


def test_licensed_download_without_a_key(licence_server, wdir):
    with pytest.raises(LicenseError) as e:
        download_models([LICENSED], weights_dir=wdir, license_url=licence_server.url("/download_weights"), **FAST)
    assert "none is stored" in e.value.cause and "set-license" in e.value.fix
    assert licence_server.requests == []


# -- command line --------------------------------------------------------------------------------

def test_cli_download_weights_with_mirror_env(server, wdir, monkeypatch, capsys):
    monkeypatch.setenv(MIRROR_ENV, server.url())
    assert main(["download-weights", "--task", "total", "--fastest", "--weights_dir", str(wdir),
                 "--progress", "json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert lines[-1] == {"event": "result", "installed": [str(wdir / FOLDER / SPEC.subdir)]}
    assert any(e.get("stage") == "download" and e.get("fraction") == 1.0 for e in lines)
    assert is_installed(SPEC, wdir)


def test_cli_download_weights_offline(wdir, capsys, monkeypatch):
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    mirror = f"http://127.0.0.1:{_closed_port()}"
    assert main(["download-weights", "--task", "total", "--fastest", "--weights_dir", str(wdir),
                 "--mirror", mirror, "-q"]) == 1
    err = capsys.readouterr().err
    assert f"ERROR: Cannot download the weights {FOLDER} from {mirror}/{FOLDER}.zip" in err
    assert "Fix:" in err and f"import-weights {FOLDER}.zip" in err
    assert_nothing_half_installed(wdir)
    assert installed_datasets(wdir) == []
