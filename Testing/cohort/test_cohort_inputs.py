"""Cohort inputs and bookkeeping without Ray: case discovery (shared with the batch script),
the CSV manifest, the output manifest (torn lines, compaction, what a rerun may skip),
leftover temporary files, one run per output folder, and Ray missing."""
import json
import os
import sys
import time

import pytest

import batch
from cohort_cases import make_cases
from SegmentationLogic.cli import main as cli_main
from SegmentationLogic.cohort.cases import load_cases, read_manifest
from SegmentationLogic.cohort.errors import CohortError
from SegmentationLogic.cohort.manifest import Manifest, OutputLock, describe_output, is_done, sweep_partials
from SegmentationLogic.cohort.runner import StopRequest


def test_folder_cases_are_the_batch_scripts_cases(tmp_path, example):
    make_cases(tmp_path, example, names=("b", "a"), mr=True, broken=True)
    (tmp_path / "A.nrrd").write_bytes(b"x")  # clashes with a.nii.gz on a case-insensitive disk
    (tmp_path / ".hidden.nii.gz").write_bytes(b"x")
    cases, skipped = load_cases(tmp_path)
    assert [c.case for c in cases] == ["A", "a_2", "b", "mr", "notes", "truncated"]
    assert [p.name for p in skipped] == ["readme.txt"]
    found, not_cases = batch.find_cases(tmp_path)  # the Slicer batch script uses the same discovery
    assert [(c.case, c.input) for c in cases] == found and not_cases == skipped


def test_an_output_folder_inside_the_input_folder_is_not_a_case(tmp_path, example):
    make_cases(tmp_path, example, names=("ct",))
    (tmp_path / "out").mkdir()
    assert [c.case for c in load_cases(tmp_path, exclude=[tmp_path / "out"])[0]] == ["ct"]


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_manifest_rows_options_and_problems(tmp_path, example):
    make_cases(tmp_path / "scans", example, names=("ct",), mr=True)
    manifest = _write(tmp_path / "cohort.csv",
                      "\ufeffcase,input,quality,task,roi_subset,ignore_modality\n"  # Excel's byte-order mark
                      "p1,scans/ct.nii.gz,fastest,,liver spleen,\n"
                      "# a comment row\n"
                      "p2,scans/missing.nii.gz,,,,\n"
                      ",scans/mr.nii.gz,,total_mr,,yes\n"
                      "p4,scans/ct.nii.gz,fats,,,\n"
                      "\n")
    cases = read_manifest(manifest)
    assert [c.case for c in cases] == ["p1", "p2", "mr", "p4"]
    p1, p2, mr, p4 = cases
    assert p1.input == tmp_path / "scans" / "ct.nii.gz" and p1.problem is None
    assert p1.options == {"quality": "fastest", "roi_subset": ["liver", "spleen"]}
    assert mr.options == {"task": "total_mr", "check_modality": False} and mr.problem is None
    assert "Input not found" in p2.problem["cause"] and "cohort.csv line 4" in p2.problem["cause"]
    assert "relative to the manifest's folder" in p2.problem["fix"]
    assert "'fats'" in p4.problem["cause"] and "normal, fast, fastest" in p4.problem["cause"]


@pytest.mark.parametrize("text, words", [
    ("path\nct.nii.gz\n", "no 'input' column"),
    ("input,qualty\nct.nii.gz,fast\n", "unknown column(s) 'qualty'"),
    ("case,input\nsame,a.nii.gz\nsame,b.nii.gz\n", "'same' is also used on line 2"),
    ("input\nx/ct.nii.gz\ny/ct.nii.gz\n", "Add a 'case' column"),
    ("case,input\n../up,a.nii.gz\n", "cannot name an output file"),
    ("", "is empty"),
])
def test_a_manifest_that_cannot_be_read_is_refused_with_cause_and_fix(tmp_path, text, words):
    with pytest.raises(CohortError) as err:
        read_manifest(_write(tmp_path / "m.csv", text))
    assert words in str(err.value) and err.value.fix


def _done_record(out, name="ct.nii.gz", request=None):
    path = out / name
    path.write_bytes(b"labelmap bytes")
    return {"case": "ct", "input": "/in/ct.nii.gz", "status": "done", "request": request or {"task": "total"},
            "outputs": [describe_output(path, out)]}


def test_manifest_keeps_the_last_line_per_case_and_survives_a_torn_line(tmp_path):
    manifest = Manifest(tmp_path)
    manifest.append({"case": "a", "status": "failed"})
    manifest.append({"case": "b", "status": "done"})
    manifest.append({"case": "a", "status": "done"})
    manifest.close()
    with open(manifest.path, "a") as f:
        f.write('{"case": "c", "stat')  # a run killed while writing
    warnings = manifest.load()
    assert {c: manifest.get(c)["status"] for c in manifest.cases()} == {"a": "done", "b": "done"}
    assert len(warnings) == 1 and "cut short" in warnings[0]
    manifest.append({"case": "c", "status": "done"})  # the next run appends on a line of its own
    assert manifest.get("c")["status"] == "done" and Manifest(tmp_path).load() == [
        f"{manifest.path.name} line 4 is not a case record and was ignored."]
    manifest.rewrite(["b", "a"])  # then the others (c), one line each
    assert [json.loads(line)["case"] for line in manifest.path.read_text().splitlines()] == ["b", "a", "c"]
    assert manifest.get("a")["status"] == "done"  # the index follows the rewritten file
    rows = (tmp_path / "cohort_summary.csv").read_text().splitlines()
    assert rows[0].startswith("case,status,seconds") and [r.split(",")[0] for r in rows[1:]] == ["b", "a", "c"]


def test_a_done_case_is_skipped_only_while_its_outputs_are_unchanged(tmp_path):
    record = _done_record(tmp_path)
    assert is_done(record, "/in/ct.nii.gz", {"task": "total"}, tmp_path)
    assert not is_done(record, "/in/other.nii.gz", {"task": "total"}, tmp_path)  # another input
    assert not is_done(record, "/in/ct.nii.gz", {"task": "total_mr"}, tmp_path)  # another request
    assert not is_done({**record, "status": "failed"}, "/in/ct.nii.gz", {"task": "total"}, tmp_path)
    path = tmp_path / "ct.nii.gz"
    os.utime(path, ns=(1, 1))  # copied without its time: same content, so still done
    assert is_done(record, "/in/ct.nii.gz", {"task": "total"}, tmp_path)
    path.write_bytes(b"labelmap BYTES")  # same size, other content
    assert not is_done(record, "/in/ct.nii.gz", {"task": "total"}, tmp_path)
    path.unlink()
    assert not is_done(record, "/in/ct.nii.gz", {"task": "total"}, tmp_path)


def test_verify_rehashes_outputs_whose_size_and_time_look_unchanged(tmp_path):
    record = _done_record(tmp_path)
    path = tmp_path / "ct.nii.gz"
    stat = path.stat()
    path.write_bytes(b"labelmap BYTES")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert is_done(record, "/in/ct.nii.gz", {"task": "total"}, tmp_path)  # looks unchanged, as rsync would judge
    assert not is_done(record, "/in/ct.nii.gz", {"task": "total"}, tmp_path, verify=True)


def test_sweep_removes_only_the_temporary_files_of_killed_writes(tmp_path):
    keep = ["ct.nii.gz", ".cohort.lock", ".notes.partial", "a.part1.nii.gz"]
    other_case = [".ct2.nii.gz.part55.nii.gz"]  # another case's write, maybe running right now
    mine = [".ct.nii.gz.part1234.nii.gz", ".ct.labels.json.part99"]
    for name in keep + other_case + mine + [".preview_total.png.part7.png"]:
        (tmp_path / name).write_text("x")
    swept = sweep_partials(tmp_path, names=["ct.nii.gz", "ct.labels.json"])  # one case's files only
    assert sorted(os.path.basename(p) for p in swept) == sorted(mine)
    assert sorted(os.path.basename(p) for p in sweep_partials(tmp_path)) == sorted(
        other_case + [".preview_total.png.part7.png"])  # at the start of a run: every leftover
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)


def test_one_cohort_run_per_output_folder(tmp_path):
    with OutputLock(tmp_path):
        with pytest.raises(CohortError) as err:
            with OutputLock(tmp_path):
                pass
        assert f"pid {os.getpid()}" in err.value.cause and "another output folder" in err.value.fix
    with OutputLock(tmp_path):  # released: the next run may start
        pass


def test_without_ray_the_cohort_command_says_how_to_install_it(tmp_path, example, test_weights, monkeypatch,
                                                               capsys):
    make_cases(tmp_path / "in", example, names=("ct",))
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where Ray is not installed
    code = cli_main(["cohort", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--fastest",
                     "--weights_dir", str(test_weights), "--no_download", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1 and "Ray is not installed" in err and "totalsegmentator-slicer[cohort]" in err
    assert not list((tmp_path / "out").glob("*.nii.gz"))


@pytest.mark.parametrize("args, words", [
    (["--task", "no_such_task"], "no_such_task"),
    (["--task", "total", "--roi_subset", "not_an_organ"], "not_an_organ"),
])
def test_a_command_line_that_cannot_run_is_refused_before_ray_starts(tmp_path, example, test_weights, capsys,
                                                                      args, words):
    make_cases(tmp_path / "in", example, names=("ct",))
    code = cli_main(["cohort", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--weights_dir",
                     str(test_weights), "--no_download", *args])
    err = capsys.readouterr().err
    assert code == 1 and words in err and "Fix:" in err


def test_the_output_folder_may_not_be_the_input_folder(tmp_path, example, capsys):
    make_cases(tmp_path, example, names=("ct",))
    assert cli_main(["cohort", "-i", str(tmp_path), "-o", str(tmp_path)]) == 1
    assert "is the input folder" in capsys.readouterr().err


def test_a_second_signal_cancels_but_one_signal_delivered_twice_only_stops():
    stop = StopRequest()
    stop.request()
    stop.request()  # e.g. `timeout` forwarding the signal to the process group too
    assert stop.stopping and not stop.aborting
    time.sleep(1.1)
    stop.request()
    assert stop.aborting
