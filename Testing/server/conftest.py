"""One real segmentation server for the folder: TLS from a test CA, a token, test models, small limits."""
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


@pytest.fixture
def remote(remote_server, test_ca):
    """A client of `remote_server`, as a user would configure it."""
    from SegmentationLogic.server.client import RemoteSegmenter

    return RemoteSegmenter(remote_server.url, token_file=remote_server.token_file, ca_cert=test_ca.cert_path)


@pytest.fixture(scope="session")
def local_segmenter(test_weights):
    from SegmentationLogic.pipeline import Segmenter

    return Segmenter(device="cpu", weights_dir=test_weights, download=False)
