"""Shared fixtures: example data, test models built once (before the tests start, with a
line per model on the terminal)."""
import os
from pathlib import Path

import pytest

import slicer_core_build
from sample_data import example_path
from server_fixtures import remote_server, test_ca  # noqa: F401 (session fixtures: one server for all folders)

REPO = Path(__file__).resolve().parents[1]

# Keep torch/nnU-Net from oversubscribing the 2 CI cores and from spawning many workers.
os.environ.setdefault("nnUNet_def_n_proc", "1")

# fixture -> kind of test model (Testing/support/testmodels.py)
MODEL_FIXTURES = {"known_weights": "known", "fitted_weights": "fitted"}


def pytest_collection_finish(session):
    """Build the test models the selected tests need now, where the user sees it: inside a
    test pytest captures the output, and minutes of silence look like a hang. Cached models
    cost nothing; a failure here is left to the tests that need the models to report."""
    kinds = {kind for item in session.items for fixture, kind in MODEL_FIXTURES.items()
             if fixture in getattr(item, "fixturenames", ())}
    if not kinds:
        return
    from testmodels import build_test_weights

    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    write = reporter.write_line if reporter is not None else print
    for kind in sorted(kinds):
        try:
            build_test_weights(size=kind, log=write)
        except Exception as e:  # noqa: BLE001 - the fixture raises it again, inside the tests that need it
            write(f"test models ({kind}) could not be built: {type(e).__name__}: {e}")


def pytest_report_header(config):
    return slicer_core_build.header()  # which MRML build this run tests (make test runs two)


def pytest_sessionstart(session):
    """`make test` names the build its second run must test; a wrong one fails instead of passing unseen."""
    expected = os.environ.get("SLICER_CORE_EXPECTED")
    version, _ = slicer_core_build.build()
    if expected and version != expected:
        pytest.exit(f"slicer-core {expected} was expected on PYTHONPATH, but {version} would be tested", returncode=3)


# Files that take longest run first: on two workers (`make test`) the longest file then starts
# at once on one worker while the other works through the rest, instead of running on alone at the end.
LONGEST_FIRST = ("parity/test_parity.py", "cohort/test_cohort_ray.py", "parity/test_tools_parity.py")


def _longest_first(item):
    path = item.path.as_posix()
    return next((i for i, tail in enumerate(LONGEST_FIRST) if path.endswith(tail)), len(LONGEST_FIRST))


def pytest_collection_modifyitems(config, items):
    """Mark the tests that use real MRML (`make test` runs them again on the stable slicer-core);
    the longest files first (a stable sort: the order within a file stays)."""
    for item in items:
        if slicer_core_build.uses_mrml(item.path):
            item.add_marker(pytest.mark.mrml)
    items.sort(key=_longest_first)


@pytest.fixture(scope="session")
def example():
    """example("example_ct_sm.nii.gz") -> Path of a TotalSegmentator example file."""
    return example_path


@pytest.fixture(scope="session")
def known_weights():
    """Weights folder of the known-output test models: each class answers a band of
    intensities (known_models.KNOWN_BANDS_HU), so what they segment is known on any machine."""
    from testmodels import build_test_weights

    return build_test_weights(size="known")


@pytest.fixture(scope="session")
def fitted_weights():
    """Weights folder of the fitted test models: outputs that look like anatomy (parity), and
    checkpoints of realistic size (the weights download and import tests)."""
    from testmodels import build_test_weights

    return build_test_weights(size="fitted")


@pytest.fixture(scope="session")
def test_weights(known_weights):
    """The test models tests run: the known-output ones (Testing/parity overrides this)."""
    return known_weights


@pytest.fixture
def weights_env(test_weights, monkeypatch, tmp_path):
    """Point the official environment variables at the test weights (as a user's setup would)."""
    monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(test_weights))
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "totalseg_home"))
    return test_weights
