"""Parity runs both tools on the fitted test models: whatever their weights, the two
labelmaps must be identical, and their outputs look like anatomy, so every branch of the
pipeline (crops, parts, postprocessing) has work to do.

The only assertions here that depend on what those models output are the checks that a
case is not vacuous (a non-empty labelmap, something for --remove_small_blobs to remove).
If such a check fails on a machine whose fitted models are not the recorded ones
(testmodels_fingerprints.json), the failure says so first."""
import pytest

_DIFFERENCES = []


@pytest.fixture(scope="session")
def test_weights(fitted_weights):
    return fitted_weights


def _differences(folder):
    if not _DIFFERENCES:
        from testmodels import fingerprint_differences

        _DIFFERENCES.append(fingerprint_differences(folder))
    return _DIFFERENCES[0]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed or "fitted_weights" not in item.fixturenames:
        return
    from testmodels import build_test_weights

    differences = _differences(build_test_weights(size="fitted", log=lambda line: None))
    if differences:
        report.longrepr = ("test models differ from the recorded ones: " + "; ".join(differences) +
                           "\n(a check that a parity case is not vacuous may fail on other test models; the "
                           "comparison of the two tools holds whatever the weights)\n\n" + str(report.longrepr))
