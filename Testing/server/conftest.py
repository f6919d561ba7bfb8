"""Clients of the session's segmentation server (`remote_server`, `test_ca`: Testing/support/server_fixtures.py)."""
import pytest


@pytest.fixture
def remote(remote_server, test_ca):
    """A client of `remote_server`, as a user would configure it."""
    from SegmentationLogic.server.client import RemoteSegmenter

    return RemoteSegmenter(remote_server.url, token_file=remote_server.token_file, ca_cert=test_ca.cert_path)


@pytest.fixture(scope="session")
def local_segmenter(test_weights):
    from SegmentationLogic.pipeline import Segmenter

    return Segmenter(device="cpu", weights_dir=test_weights, download=False)
