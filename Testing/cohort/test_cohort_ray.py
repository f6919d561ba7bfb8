"""Cohorts on a real local Ray (one session for this module, 2 CPUs): good cases identical to
the single-process CLI, broken and wrong-modality cases failed with cause, a rerun that skips
what is done, a manifest naming missing files, an actor killed mid-case, a cancelled run."""
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from cohort_cases import make_cases, private_ray_tmpdir
from SegmentationLogic.cohort.manifest import MANIFEST_NAME
from SegmentationLogic.cohort.runner import LOCAL_OBJECT_STORE_BYTES, StopRequest, import_ray, run_cohort

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_session():
    """One private local Ray for the module; none of its processes may outlive it."""
    with private_ray_tmpdir():
        ray = import_ray()
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                 log_to_driver=False, logging_level=logging.ERROR)
        try:
            yield ray
        finally:
            ray.shutdown()


def _cohort(source, out, weights, progress=None, **kwargs):
    options = {"quality": "fastest", **kwargs.pop("options", {})}
    kwargs.setdefault("actors", 2)
    kwargs.setdefault("cpus_per_actor", 1)
    return run_cohort(source, out, options, device="cpu", weights_dir=weights, download=False, progress=progress,
                      **kwargs)


def _records(out):
    lines = (Path(out) / MANIFEST_NAME).read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len({r["case"] for r in records}) == len(records), "one line per case after a run"
    return {r["case"]: r for r in records}


def _leftovers(out):
    """Files a half-finished write would leave (the lock file is the runner's own)."""
    return [p.name for p in Path(out).rglob(".*") if p.name != ".cohort.lock"]


def _engine_progress(event):
    """A progress report from the engine inside the actor (not the driver's 'started')."""
    return event["event"] == "progress" and event.get("stage") != "start"


def _sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def first_run(ray_session, test_weights, example, tmp_path_factory):
    """Two CT copies, the DICOM series, the MR, a truncated file, a text file named .nii.gz and
    a non-image, with 2 actors; meanwhile the single-process CLI segments the CT and the series."""
    root = tmp_path_factory.mktemp("cohort")
    cases = make_cases(root / "in", example, names=("ct", "ct_copy"), dicom=True, mr=True, broken=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cli = [subprocess.Popen([sys.executable, "-m", "SegmentationLogic", "segment", "-i", str(cases / src), "-o",
                             str(root / "cli" / f"{name}.nii.gz"), "--ml", "--fastest", "--device", "cpu",
                             "--weights_dir", str(test_weights), "--no_download", "-q"], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for name, src in (("ct", "ct.nii.gz"), ("series", "series"))]
    events = []
    summary = _cohort(cases, root / "out", test_weights, progress=events.append)
    for proc in cli:
        output, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, output
    return {"root": root, "in": cases, "out": root / "out", "cli": root / "cli", "summary": summary, "events": events}


def test_good_cases_are_identical_to_the_single_process_cli(first_run):
    out, cli = first_run["out"], first_run["cli"]
    for case in ("ct", "series"):
        for suffix in (".nii.gz", ".labels.json"):
            assert (out / f"{case}{suffix}").read_bytes() == (cli / f"{case}{suffix}").read_bytes(), case + suffix
    assert (out / "ct_copy.nii.gz").read_bytes() == (out / "ct.nii.gz").read_bytes()


def test_broken_and_wrong_modality_cases_fail_with_cause_and_the_rest_run(first_run):
    records, out, summary = _records(first_run["out"]), first_run["out"], first_run["summary"]
    assert {k: r["status"] for k, r in records.items()} == {
        "ct": "done", "ct_copy": "done", "series": "done", "mr": "failed", "truncated": "failed", "notes": "failed"}
    assert "does not look like a CT" in records["mr"]["error"]["cause"] and "total_mr" in records["mr"]["error"]["fix"]
    assert "truncated or corrupt" in records["truncated"]["error"]["cause"]
    assert "notes.nii.gz" in records["notes"]["error"]["cause"]
    for case in ("mr", "truncated", "notes"):
        assert records[case]["error"]["fix"] and records[case]["outputs"] == []
        assert not list(out.glob(f"{case}.*"))
    assert summary["done"] == 3 and summary["failed"] == 3 and summary["not_images"] == 1  # readme.txt
    assert _leftovers(out) == []
    finished = [e for e in first_run["events"] if e.get("status") in ("done", "failed")]
    assert sorted(e["case"] for e in finished) == sorted(records)  # one event per case, as it finished
    rows = (out / "cohort_summary.csv").read_text().splitlines()
    assert len(rows) == 7 and rows[0].startswith("case,status,seconds")


def test_manifest_records_hashes_versions_and_both_actors(first_run, test_weights):
    records, out = _records(first_run["out"]), first_run["out"]
    ct = records["ct"]
    assert [o["path"] for o in ct["outputs"]] == ["ct.nii.gz", "ct.labels.json"]
    for record in (r for r in records.values() if r["status"] == "done"):
        for entry in record["outputs"]:
            assert entry["sha256"] == _sha256(out / entry["path"])
        assert record["attempts"] == 1 and record["runs"] == 1 and record["seconds"] > 0
    assert ct["engine"]["nnunetv2"] == metadata.version("nnunetv2")
    assert ct["engine"]["torch"] == metadata.version("torch")
    (model,) = ct["models"]  # --fastest: the 6 mm model alone
    folder = next(Path(test_weights).glob(model["folder"]))
    assert folder.parent.name.startswith("Dataset298")
    assert model["checkpoints"]["fold_0/checkpoint_final.pth"] == _sha256(folder / "fold_0" / "checkpoint_final.pth")
    assert ct["request"]["quality"] == "fastest" and ct["input"] == str(first_run["in"] / "ct.nii.gz")
    assert "TEST MODEL" in ct["note"]
    assert len({r["pid"] for r in records.values()}) == 2  # the two actors shared the cases


def test_a_rerun_skips_done_cases_redoes_changed_ones_and_retries_failed_ones(first_run, test_weights, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(first_run["out"], out)  # copy2 keeps the times: the copies count as unchanged
    before = {name: (out / name).stat().st_mtime_ns for name in ("ct.nii.gz", "series.nii.gz")}
    with open(out / "ct_copy.nii.gz", "ab") as f:
        f.write(b"\0")  # someone changed an output: that case is no longer done
    events = []
    summary = _cohort(first_run["in"], out, test_weights, progress=events.append)
    records = _records(out)
    assert summary["skipped_done"] == 2 and summary["done"] == 1 and summary["failed"] == 3
    assert {name: (out / name).stat().st_mtime_ns for name in before} == before  # not written again
    assert records["ct"]["runs"] == records["series"]["runs"] == 1
    assert records["ct_copy"]["runs"] == 2 and (out / "ct_copy.nii.gz").read_bytes() == (out / "ct.nii.gz").read_bytes()
    assert all(records[c]["runs"] == 2 and records[c]["status"] == "failed" for c in ("mr", "truncated", "notes"))
    ran = {e["case"] for e in events if e.get("status") in ("done", "failed")}
    assert ran == {"ct_copy", "mr", "truncated", "notes"}


def test_a_manifest_with_missing_files_and_per_case_options(ray_session, test_weights, example, first_run,
                                                            tmp_path):
    scans = make_cases(tmp_path / "scans", example, names=("ct",), mr=True)
    manifest = tmp_path / "cohort.csv"
    manifest.write_text("case,input,task,quality\n"
                        "patient1,scans/ct.nii.gz,,\n"
                        "patient2,scans/gone.nii.gz,,\n"
                        "patient3,scans/mr.nii.gz,total_mr,\n"
                        "patient4,scans/ct.nii.gz,,fats\n"
                        f"patient5,{scans / 'missing_series'},,fast\n")
    summary = _cohort(manifest, tmp_path / "out", test_weights)
    records = _records(tmp_path / "out")
    assert {k: r["status"] for k, r in records.items()} == {
        "patient1": "done", "patient2": "failed", "patient3": "done", "patient4": "failed", "patient5": "failed"}
    assert "Input not found" in records["patient2"]["error"]["cause"]
    assert "cohort.csv line 3" in records["patient2"]["error"]["cause"] and records["patient2"]["attempts"] == 0
    assert "missing_series" in records["patient5"]["error"]["cause"]
    assert "'fats'" in records["patient4"]["error"]["cause"]
    assert records["patient3"]["request"]["task"] == "total_mr"
    assert records["patient3"]["models"][0]["folder"].startswith("Dataset853")  # total_mr 6 mm ran
    assert (tmp_path / "out" / "patient1.nii.gz").read_bytes() == (first_run["cli"] / "ct.nii.gz").read_bytes()
    assert summary["done"] == 2 and summary["failed"] == 3


def test_statistics_put_each_case_in_its_own_folder_as_the_cli_would(ray_session, test_weights, example,
                                                                      first_run, tmp_path):
    cases = make_cases(tmp_path / "in", example, names=("ct",))
    _cohort(cases, tmp_path / "out", test_weights, actors=1, options={"statistics": True})
    record = _records(tmp_path / "out")["ct"]
    assert sorted(o["path"] for o in record["outputs"]) == ["ct/ct.labels.json", "ct/ct.nii.gz", "ct/statistics.json"]
    assert (tmp_path / "out" / "ct" / "ct.nii.gz").read_bytes() == (first_run["cli"] / "ct.nii.gz").read_bytes()
    assert "liver" in json.loads((tmp_path / "out" / "ct" / "statistics.json").read_text())


def test_a_killed_actor_is_restarted_its_case_completes_and_a_case_that_keeps_killing_it_fails(
        ray_session, test_weights, example, first_run, tmp_path):
    """Case a: its worker is killed once (SIGKILL as soon as the case is handed to it: with the
    quick test models a case can end between two progress polls), the case runs again on the
    restarted actor. Case series (the DICOM series): its worker dies on every attempt, so it
    fails with the cause after the retries. Case b is left alone."""
    cases = make_cases(tmp_path / "in", example, names=("a", "b"), dicom=True)
    killed = {"a": [], "series": []}

    def kill(event):
        case = event.get("case")
        if event["event"] != "progress" or case not in killed or not event.get("pid") or event["pid"] in killed[case]:
            return
        if case == "series" or not killed["a"]:
            killed[case].append(event["pid"])
            os.kill(event["pid"], signal.SIGKILL)

    events = []
    summary = _cohort(cases, tmp_path / "out", test_weights, actors=1, cpus_per_actor=2, retries=1,
                      progress=lambda e: (events.append(e), kill(e)))
    records = _records(tmp_path / "out")
    assert killed["a"], "case a was over before the test saw it run"
    assert records["a"]["status"] == "done" and records["a"]["attempts"] == 2 and records["a"]["runs"] == 2
    assert records["a"]["pid"] not in killed["a"]  # finished by the restarted actor
    assert (tmp_path / "out" / "a.nii.gz").read_bytes() == (first_run["cli"] / "ct.nii.gz").read_bytes()
    assert any(e.get("status") == "retry" and e.get("case") == "a" for e in events)
    assert records["b"]["status"] == "done" and records["b"]["attempts"] == 1
    series = records["series"]
    assert series["status"] == "failed" and series["attempts"] == 2 and len(killed["series"]) == 2
    assert "worker process died" in series["error"]["cause"] and "dmesg" in series["error"]["fix"]
    assert summary["done"] == 2 and summary["failed"] == 1 and _leftovers(tmp_path / "out") == []


def test_cancelling_a_run_stops_the_running_case_without_writing_it(ray_session, test_weights, example, tmp_path):
    cases = make_cases(tmp_path / "in", example, names=("a", "b"))
    stop = StopRequest()

    def cancel_once_running(event):
        if _engine_progress(event) and event.get("case") == "a":
            stop.cancel()

    summary = _cohort(cases, tmp_path / "out", test_weights, actors=1, cpus_per_actor=2, stop=stop,
                      progress=cancel_once_running, options={"quality": "fast"})
    records = _records(tmp_path / "out")
    assert records["a"]["status"] == "cancelled" and records["a"]["error"]["kind"] == "cancelled"
    assert "b" not in records and summary["not_started"] == 1 and summary["interrupted"]
    assert not list((tmp_path / "out").glob("a.*")) and _leftovers(tmp_path / "out") == []
