"""What the server refuses, and how: tokens, TLS, sizes, non-images, bad options, paths.

Every refusal is an HTTP 4xx with a JSON body (kind, type, cause, fix), and leaves
nothing in the server's jobs folder.
"""
import http.client
import json
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from SegmentationLogic.errors import InputImageError, UnknownTaskError
from SegmentationLogic.request import SegmentRequest
from SegmentationLogic.server.client import RemoteSegmenter, ServerAuthError, ServerConnectionError, ServerTLSError
from SegmentationLogic.server.protocol import FORMAT_HEADER, REQUEST_HEADER

REPO = Path(__file__).resolve().parents[2]
CT = "example_ct_sm.nii.gz"


def _http(remote_server, test_ca, method, path, token="yes", **kw):
    headers = dict(kw.pop("headers", {}))
    if token:
        headers["Authorization"] = f"Bearer {remote_server.token if token == 'yes' else token}"
    with requests.request(method, remote_server.url + path, headers=headers, verify=str(test_ca.cert_path),
                          timeout=30, **kw) as response:  # closed: a kept response would keep its connection open
        response.content
    return response


def _refusal(response, status):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"kind", "type", "cause", "fix"} and body["cause"] and body["fix"]
    return body


def test_missing_or_wrong_token_is_refused(remote_server, test_ca, example, tmp_path):
    body = _refusal(_http(remote_server, test_ca, "GET", "/v1/info", token=None), 401)
    assert body["kind"] == "auth" and "token" in body["cause"]
    r = _http(remote_server, test_ca, "POST", "/v1/jobs", token=None, data=b"x" * 1000,
              headers={FORMAT_HEADER: "nii.gz"})
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    wrong = "not-the-token-" + "y" * 20
    for path in ("/v1/info", "/v1/jobs/abc/events", "/no/such/page"):  # unknown pages too: nothing without it
        assert _refusal(_http(remote_server, test_ca, "GET", path, token=wrong), 403)["kind"] == "auth"
    assert _refusal(_http(remote_server, test_ca, "GET", "/v1/info", token=remote_server.token[:-1]), 403)
    assert _http(remote_server, test_ca, "GET", "/v1/info", token=None,
                 headers={"Authorization": f"Basic {remote_server.token}"}).status_code == 403
    client = RemoteSegmenter(remote_server.url, token=wrong, ca_cert=test_ca.cert_path)
    with pytest.raises(ServerAuthError) as e:
        client.run(SegmentRequest(input=str(example(CT)), output=str(tmp_path / "seg.nii.gz")))
    assert "token" in e.value.cause and wrong not in str(e.value)
    assert not (tmp_path / "seg.nii.gz").exists()
    assert remote_server.jobs() == []
    log = remote_server.log_text()
    assert remote_server.token not in log and wrong not in log  # tokens are never logged


def test_oversized_upload_is_refused(remote_server, test_ca, tmp_path):
    import nibabel as nib
    import numpy as np

    # announced too large: refused from the headers, before a byte of the image is read
    conn = http.client.HTTPSConnection("127.0.0.1", remote_server.port,
                                       context=ssl.create_default_context(cafile=str(test_ca.cert_path)), timeout=30)
    conn.putrequest("POST", "/v1/jobs")
    for k, v in {"Authorization": f"Bearer {remote_server.token}", FORMAT_HEADER: "nii",
                 "Content-Length": str(50 << 20)}.items():
        conn.putheader(k, v)
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413
    body = json.loads(response.read())
    assert "larger than this server accepts (4 MB)" in body["cause"] and "--max_upload_mb" in body["fix"]
    conn.close()

    # not announced (chunked): cut off at the limit, and nothing of it stays
    def chunks():
        for _ in range(10):
            yield b"\0" * (512 << 10)

    try:
        r = _http(remote_server, test_ca, "POST", "/v1/jobs", data=chunks(), headers={FORMAT_HEADER: "nii"})
        assert r.status_code == 413
    except requests.exceptions.ConnectionError:
        pass  # the server may close the connection before the client has sent everything: refused too
    assert remote_server.wait_no_jobs() == []

    # the client knows the limit and says so before sending anything
    big = tmp_path / "big.nii"  # uncompressed float64: 6.4 MB
    nib.save(nib.Nifti1Image(np.zeros((200, 200, 20)), np.eye(4)), str(big))
    client = RemoteSegmenter(remote_server.url, token_file=remote_server.token_file, ca_cert=test_ca.cert_path)
    with pytest.raises(InputImageError) as e:
        client.run(SegmentRequest(input=str(big), output=str(tmp_path / "seg.nii.gz")))
    assert "larger than the server accepts (4 MB)" in e.value.cause and ".nii.gz" in e.value.fix
    assert remote_server.jobs() == []


@pytest.mark.parametrize("name, content, fmt, says", [
    ("report.nii.gz", b"Patient report\nnothing to see\n" * 20, "nii.gz", "not a gzip-compressed NIfTI image: it looks like text"),
    ("photo.nii", b"\x89PNG\r\n\x1a\n" + b"\0" * 500, "nii", "not a NIfTI image: it looks like a PNG picture"),
    ("scan.nrrd", b"NRRD0004\ntype: short\ndimension: 3\nsizes: 2 2 2\nencoding: raw\n"
                  b"data file: /etc/passwd\n\n", "nrrd", "points at a separate data file"),
    ("scan.mha", b"ObjectType = Image\nNDims = 3\nDimSize = 2 2 2\nElementType = MET_SHORT\n"
                 b"ElementDataFile = ../other/input.raw\n", "mha", "points at a separate data file"),
    ("series.zip", b"PK\x03\x04 this is not really a zip" + b"\0" * 100, "zip", "not a zip image"),
], ids=["text", "png", "nrrd-data-file", "mha-data-file", "broken-zip"])
def test_a_non_image_upload_gets_a_clear_error(name, content, fmt, says, remote_server, test_ca, tmp_path):
    r = _http(remote_server, test_ca, "POST", "/v1/jobs", data=content, headers={FORMAT_HEADER: fmt})
    body = _refusal(r, 422)
    assert body["kind"] == "input" and says in body["cause"]
    assert str(remote_server.jobs_dir) not in body["cause"]  # no server paths
    # the client gets the same cause as an InputImageError, and no file
    path = tmp_path / name
    path.write_bytes(content)
    client = RemoteSegmenter(remote_server.url, token_file=remote_server.token_file, ca_cert=test_ca.cert_path)
    with pytest.raises(InputImageError) as e:
        client.run(SegmentRequest(input=str(path), output=str(tmp_path / "out" / "seg.nii.gz")))
    assert says in e.value.cause
    assert not (tmp_path / "out").exists()
    assert remote_server.jobs() == []


def test_formats_a_server_cannot_take_are_refused_before_sending(remote, tmp_path):
    for name, says in (("scan.nhdr", "separate file"), ("image.png", "A server cannot take image.png")):
        (tmp_path / name).write_bytes(b"NRRD0004\n" if name.endswith("nhdr") else b"\x89PNG")
        with pytest.raises(InputImageError, match=says):
            remote.run(SegmentRequest(input=str(tmp_path / name), output=str(tmp_path / "seg.nii.gz")))


def test_bad_options_unknown_jobs_and_client_paths_are_refused(remote_server, test_ca, remote, example, tmp_path):
    def post(options, fmt="nii.gz"):
        return _http(remote_server, test_ca, "POST", "/v1/jobs", data=b"\x1f\x8b" + b"\0" * 100,
                     headers={FORMAT_HEADER: fmt, REQUEST_HEADER: json.dumps(options)})

    assert "totl" in _refusal(post({"task": "totl"}), 422)["cause"]
    assert _refusal(post({"task": "total", "roi_subset": ["livr"]}), 422)["kind"] == "task"
    assert "quality" in _refusal(post({"quality": "ultra"}), 422)["cause"].lower()
    assert "colour" in _refusal(post({"colour": "red"}), 422)["cause"]
    assert "true or false" in _refusal(post({"statistics": "yes"}), 422)["cause"]
    for field in ({"input": "/etc/passwd"}, {"output": "/root/.bashrc"}, {"weights_dir": "/tmp"}, {"device": "cuda"}):
        body = _refusal(post(field), 422)
        assert "server decides" in body["cause"] and next(iter(field)) in body["cause"]
    assert "Unsupported" in _refusal(post({}, fmt="exe"), 422)["cause"]
    assert _refusal(_http(remote_server, test_ca, "POST", "/v1/jobs", data=b"x",
                          headers={FORMAT_HEADER: "nii", REQUEST_HEADER: "{not json"}), 400)["kind"] == "request"
    for method, path in (("GET", "/v1/jobs/nosuchjob/events"), ("GET", "/v1/jobs/nosuchjob/result"),
                         ("DELETE", "/v1/jobs/nosuchjob"), ("GET", "/v1/jobs/../../etc/passwd/result")):
        assert _refusal(_http(remote_server, test_ca, method, path), 404)["kind"] == "request"
    assert "PUT is not allowed" in _refusal(_http(remote_server, test_ca, "PUT", "/v1/jobs"), 405)["cause"]
    # the client turns the same refusal into the engine's own error
    with pytest.raises(UnknownTaskError, match="totl"):
        remote.run(SegmentRequest(input=str(example(CT)), output=str(tmp_path / "seg.nii.gz"), task="totl"))
    assert remote_server.jobs() == []


def test_tls_certificate_is_verified(remote_server, test_ca, example, tmp_path):
    from tls_certs import TestCA

    good = RemoteSegmenter(remote_server.url, token_file=remote_server.token_file, ca_cert=test_ca.cert_path)
    assert good.info()["api"] == 1
    cases = {
        "another CA": (remote_server.url, TestCA(tmp_path / "evil", "Some Other CA").cert_path, "not signed"),
        "system CAs only": (remote_server.url, None, "not signed"),
        "wrong host name": (remote_server.url.replace("127.0.0.1", "localhost"), test_ca.cert_path, "host name"),
    }
    for case, (url, ca, says) in cases.items():
        client = RemoteSegmenter(url, token_file=remote_server.token_file, ca_cert=ca)
        with pytest.raises(ServerTLSError) as e:
            client.run(SegmentRequest(input=str(example(CT)), output=str(tmp_path / "seg.nii.gz"), quality="fastest"))
        assert says in e.value.cause and "--ca_cert" in e.value.fix, case
    with pytest.raises(ServerTLSError, match="does not speak TLS"):  # an https URL never falls back to http
        _plain_http_server_refused()
    assert not (tmp_path / "seg.nii.gz").exists() and remote_server.jobs() == []
    # and the server answers nothing over plain http on its TLS port
    with socket.create_connection(("127.0.0.1", remote_server.port), timeout=10) as s:
        s.sendall(f"GET /v1/info HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {remote_server.token}\r\n\r\n".encode())
        try:
            answer = s.recv(1000)
        except ConnectionResetError:
            answer = b""
        assert b"200 OK" not in answer and b"max_upload" not in answer


def _plain_http_server_refused():
    """An https client talking to a plain-http port gets a TLS error, not a silent downgrade."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    httpd = HTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    threading.Thread(target=httpd.handle_request, daemon=True).start()
    try:
        RemoteSegmenter(f"https://127.0.0.1:{httpd.server_address[1]}", token="t" * 20).info()
    finally:
        httpd.server_close()


def test_client_refuses_plain_http_off_this_machine():
    with pytest.raises(ServerConnectionError, match="Refusing plain http"):
        RemoteSegmenter("http://192.0.2.10:8470", token="t" * 20)
    with pytest.raises(ServerConnectionError, match="user name, password"):
        RemoteSegmenter("https://user:secret@192.0.2.10:8470", token="t" * 20)


def _serve(*args, env=None):
    import os

    return subprocess.run([sys.executable, "-m", "SegmentationLogic", "serve", *args], capture_output=True, text=True,
                          cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO), **(env or {})), timeout=120)


def test_serve_refuses_a_network_address_without_tls_and_token(tmp_path, test_ca):
    token = tmp_path / "token"
    assert _serve("--generate_token", str(token)).returncode == 0
    assert oct(token.stat().st_mode & 0o777) == "0o600" and len(token.read_text().strip()) >= 32
    r = _serve("--generate_token", str(token))
    assert r.returncode == 1 and "not overwritten" in r.stderr and token.read_text().strip() not in r.stderr
    cert, key = test_ca.server_cert(tmp_path / "tls")
    cases = [
        (("--host", "0.0.0.0", "--token_file", str(token)), "without TLS"),
        (("--host", "0.0.0.0", "--tls_cert", str(cert), "--tls_key", str(key)), "needs an access token"),
        (("--host", "127.0.0.1"), "needs an access token"),
        (("--host", "0.0.0.0", "--token_file", str(token), "--tls_cert", str(cert)), "needs both"),
        (("--host", "0.0.0.0", "--token_file", str(tmp_path / "missing"), "--tls_cert", str(cert), "--tls_key",
          str(key)), "Token file not found"),
    ]
    for args, says in cases:
        r = _serve(*args, "--port", "1")
        assert r.returncode == 1 and says in r.stderr and "Fix:" in r.stderr and "Traceback" not in r.stderr, args
    token.chmod(0o644)
    r = _serve("--token_file", str(token), "--port", "1")
    assert r.returncode == 1 and "chmod 600" in r.stderr and token.read_text().strip() not in r.stderr
    token.chmod(0o600)
    (tmp_path / "weak").write_text("secret\n")
    (tmp_path / "weak").chmod(0o600)
    assert "too short" in _serve("--token_file", str(tmp_path / "weak"), "--port", "1").stderr


def test_insecure_allows_a_network_address_without_tls_or_token_and_warns(capsys, monkeypatch):
    from argparse import Namespace

    from SegmentationLogic.server.cli import check_settings

    monkeypatch.delenv("TOTALSEG_SERVER_TOKEN", raising=False)
    assert check_settings(Namespace(host="0.0.0.0", token_file=None, tls_cert=None, tls_key=None, insecure=True)) == []
    assert "WARNING: --insecure" in capsys.readouterr().err


def test_a_stored_token_is_private_used_by_default_and_never_shown(remote_server, test_ca, monkeypatch, tmp_path):
    from SegmentationLogic.server.tokens import TokenError, mask_token, store_token

    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "home"))
    monkeypatch.delenv("TOTALSEG_SERVER_TOKEN", raising=False)
    path = store_token(remote_server.token)  # what the module's masked token field will call
    assert path == tmp_path / "home" / "server_token" and oct(path.stat().st_mode & 0o777) == "0o600"
    client = RemoteSegmenter(remote_server.url, ca_cert=test_ca.cert_path)  # no token given: the stored one
    assert client.info()["api"] == 1
    assert remote_server.token not in repr(client) + mask_token(remote_server.token)
    monkeypatch.setenv("TOTALSEG_SERVER_TOKEN", "from-the-environment-" + "z" * 10)  # the variable wins
    with pytest.raises(ServerAuthError):
        RemoteSegmenter(remote_server.url, ca_cert=test_ca.cert_path).info()
    path.chmod(0o644)
    monkeypatch.delenv("TOTALSEG_SERVER_TOKEN")
    with pytest.raises(TokenError, match="chmod 600") as e:
        RemoteSegmenter(remote_server.url, ca_cert=test_ca.cert_path)
    assert remote_server.token not in str(e.value)
