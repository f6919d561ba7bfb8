"""One real segmentation server per test session, shared by the server tests (Testing/server)
and the module's remote-device tests (Testing/module): `serve` over https on 127.0.0.1 with a
certificate from a test CA, a token, the test models and small limits. Testing/conftest.py
makes these fixtures visible everywhere.
"""
import pytest

from serve_process import ServeProcess
from tls_certs import TestCA

UPLOAD_LIMIT_MB = 4  # the example CT (0.5 MB as .nii.gz) and its DICOM series (zipped) fit
TIMEOUT_S = 3  # unattended jobs and unfetched results go after this


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory):
    return TestCA(tmp_path_factory.mktemp("ca"), "Hospital Test CA")


@pytest.fixture(scope="session")
def remote_server(tmp_path_factory, test_weights, test_ca):
    """`serve` over https on 127.0.0.1; its certificate names the address 127.0.0.1 only (not 'localhost')."""
    folder = tmp_path_factory.mktemp("server")
    tls = test_ca.server_cert(folder / "tls", ip_addresses=["127.0.0.1"])
    srv = ServeProcess(folder, test_weights, tls=tls, ca_cert=test_ca.cert_path, timeout=TIMEOUT_S,
                       max_upload_mb=UPLOAD_LIMIT_MB).start()
    yield srv
    srv.stop()
