"""Class 5, downloads: servers on 127.0.0.1 that never answer, stall before or after the
headers, trickle bytes, drop the connection, or a connection that never opens, fail
within the limits a user set (environment variables or flags), with an error naming the
URL and the proxy (never its password), and nothing half-installed.
"""
import contextlib
import socket
import time

import pytest

from faultkit import FASTEST_MODEL as FOLDER
from faultkit import assert_error, assert_nothing_left, finish, run_cli, start_cli
from http_server import WeightsServer
from model_zips import assert_nothing_half_installed, installed_datasets

QUICK = {"TOTALSEG_DOWNLOAD_CONNECT_TIMEOUT": "1", "TOTALSEG_DOWNLOAD_READ_TIMEOUT": "1",
         "TOTALSEG_DOWNLOAD_MIN_SPEED": "1", "TOTALSEG_DOWNLOAD_SPEED_WINDOW": "1.5",
         "TOTALSEG_DOWNLOAD_DEADLINE": "20"}


@pytest.fixture
def server(model_zip):
    with WeightsServer({f"/{FOLDER}.zip": model_zip.read_bytes()}) as srv:
        yield srv


def _download(tmp_path, url, env=None, *flags):
    wdir = tmp_path / "weights"
    started = time.monotonic()
    run = run_cli(["download-weights", "--fastest", "--mirror", url, "--weights_dir", wdir, *flags], tmp_path,
                  env={**QUICK, **(env or {})})
    return run, wdir, time.monotonic() - started


STALLS = {  # server fault: words the cause must hold
    "no_answer": ["sent no answer for 1 s"],
    "headers_stall": ["sent no answer for 1 s"],
    "trickle": ["KB/s", "below the minimum of 1 KB/s"],
    "stall": ["deadline of 4 s"],
}


def test_stalled_and_trickling_servers_fail_within_the_limits(model_zip, tmp_path):
    # the four downloads wait on their servers at the same time: the test lasts as long as the slowest
    with contextlib.ExitStack() as stack:
        started = {}
        for fault in STALLS:
            srv = stack.enter_context(WeightsServer({f"/{FOLDER}.zip": model_zip.read_bytes()}))
            srv.fault = fault
            root = tmp_path / fault
            proc, env = start_cli(["download-weights", "--fastest", "--mirror", srv.url(), "--weights_dir",
                                   root / "weights"], root, env={**QUICK, "TOTALSEG_DOWNLOAD_DEADLINE": "4"})
            started[fault] = (srv, root, proc, env, time.monotonic())
        for fault, (srv, root, proc, env, t0) in started.items():
            out, err = proc.communicate(timeout=60)
            run = finish(proc, env, t0, out, err)
            assert_error(run, [FOLDER, srv.url(f"/{FOLDER}.zip"), *STALLS[fault]],
                         ["import-weights", "TOTALSEG_DOWNLOAD_"])
            # a person waits seconds, not minutes (without limits: forever, or 330 s); the bound
            # also holds four interpreter starts on a busy machine
            assert run.seconds < 30, (fault, run.seconds)
            assert_nothing_half_installed(root / "weights")
            assert_nothing_left(run)


def test_a_connection_that_never_opens(tmp_path):
    # a listening socket whose accept queue is full: the kernel drops the next SYN, connect() hangs
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    port = srv.getsockname()[1]
    fillers = []
    with contextlib.ExitStack() as stack:
        stack.callback(srv.close)
        for _ in range(4):
            c = socket.socket()
            stack.callback(c.close)
            c.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                c.connect(("127.0.0.1", port))
            fillers.append(c)
        time.sleep(0.2)
        run, wdir, seconds = _download(tmp_path, f"http://127.0.0.1:{port}")
    assert_error(run, ["no connection within 1 s", f"127.0.0.1:{port}"], ["import-weights"])
    assert seconds < 10, seconds
    assert_nothing_half_installed(wdir)


def test_flags_override_the_environment(server, tmp_path):
    server.fault = "no_answer"
    run, wdir, seconds = _download(tmp_path, server.url(), {"TOTALSEG_DOWNLOAD_READ_TIMEOUT": "300"},
                                   "--read_timeout", "1", "--connect_timeout", "1")
    assert_error(run, ["sent no answer for 1 s"], ["import-weights"])
    assert seconds < 10, seconds
    run, _, _ = _download(tmp_path, server.url(), {"TOTALSEG_DOWNLOAD_MIN_SPEED": "fast"})
    assert_error(run, ["TOTALSEG_DOWNLOAD_MIN_SPEED", "not a number"], ["TOTALSEG_DOWNLOAD_MIN_SPEED"])


def test_the_proxy_is_named_without_its_password(server, tmp_path):
    server.fault = "no_answer"  # the "proxy" accepts and never answers
    proxy = f"http://bob:hunter2@127.0.0.1:{server.port}"
    env = {"HTTP_PROXY": proxy, "http_proxy": proxy, "HTTPS_PROXY": proxy, "https_proxy": proxy,
           "NO_PROXY": "", "no_proxy": ""}
    run, wdir, seconds = _download(tmp_path, "http://weights.example.org/mirror", env)
    cause, fix = assert_error(run, ["weights.example.org", f"through the proxy http://127.0.0.1:{server.port}"],
                              ["proxy"])
    assert "hunter2" not in run.stdout + run.stderr and "bob" not in run.stdout + run.stderr
    assert seconds < 10, seconds
    assert_nothing_half_installed(wdir)


def test_segment_downloads_within_the_same_limits(server, ct, tmp_path):
    server.fault = "trickle"
    run = run_cli(["segment", "-i", ct, "-o", tmp_path / "seg.nii.gz", "--ml", "--fastest", "--device", "cpu",
                   "--weights_dir", tmp_path / "weights"], tmp_path,
                  env={**QUICK, "TOTALSEG_WEIGHTS_MIRROR": server.url()})
    assert_error(run, ["below the minimum"], ["import-weights"])
    assert not (tmp_path / "seg.nii.gz").exists()
    assert_nothing_half_installed(tmp_path / "weights")


def test_a_dropped_connection_resumes_and_installs(server, tmp_path):
    server.fault = "drop_once"
    run, wdir, _ = _download(tmp_path, server.url())
    assert run.rc == 0, run.stderr[-3000:]
    assert installed_datasets(wdir) == [FOLDER] and not list(wdir.glob(".install-*"))
    assert len(server.requests) == 2 and "Range" in server.requests[1]["headers"]
    assert_nothing_left(run)


def test_default_limits_fit_a_person_waiting(monkeypatch):
    from SegmentationLogic.weights import DownloadLimits

    for name in DownloadLimits.ENV.values():
        monkeypatch.delenv(name, raising=False)
    limits = DownloadLimits.from_env()
    # a server that never answers: two attempts of one read timeout each, one second apart
    assert 2 * limits.read_timeout + 1 <= 60 and limits.connect_timeout <= 15
    # a trickling server fails at the end of one window; a download cannot run forever
    assert limits.min_speed_kbps > 0 and limits.speed_window <= 120 and 0 < limits.deadline <= 24 * 3600
    monkeypatch.setenv("TOTALSEG_DOWNLOAD_DEADLINE", "0")
    given = DownloadLimits.from_env(read_timeout=5)
    assert given.deadline == 0 and given.read_timeout == 5
