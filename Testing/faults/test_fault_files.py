"""Class 4, file faults a user can cause: each ends in one line with cause and fix, exit
code 1, no traceback, nothing left, inputs unchanged - in segment, the vessel commands,
the batch summary, evaluate and the weights commands. Output location, writability and
free space are checked before any model runs.

Permission faults run with the permission bits binding root too (faultkit.drop_file_access);
read-only and full disks are real tmpfs mounts (root only, skipped elsewhere); the
file-size limit is the kernel's RLIMIT_FSIZE.
"""
import gzip
import json
import os
import shutil
import signal
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from faultkit import (FASTEST_MODEL, assert_error, assert_nothing_left, digest, drop_file_access, file_size_limit,
                      fill, finish, listing, no_work_done, read_only, run_batch, run_cli, run_cli_many, small_disk,
                      stage_event, start_cli, wait_for_line, write_dicom_stack)
from model_zips import assert_nothing_half_installed


def _segment(engine, source, out, *extra):
    return ["segment", "-i", str(source), "-o", str(out), "--fastest", "--progress", "json", *engine,
            *map(str, extra)]


def _cut(src, dst, keep):
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[:int(len(data) * keep)] if isinstance(keep, float) else data[:keep])
    return Path(dst)


def test_unreadable_truncated_and_foreign_inputs(ct, engine, tmp_path):
    v = tmp_path / "v"
    v.mkdir()
    raw = v / "plain.nii"
    nib.save(nib.load(str(ct)), str(raw))
    itk = {}
    for suffix in (".nrrd", ".mha"):
        import SimpleITK as sitk

        sitk.WriteImage(sitk.ReadImage(str(ct)), str(v / f"whole{suffix}"))
        itk[suffix] = _cut(v / f"whole{suffix}", v / f"cut{suffix}", 0.6)
    dicom = write_dicom_stack(v / "dicom_cut", n=6)
    _cut(dicom / "IM0003.dcm", dicom / "IM0003.dcm", 0.7)
    (v / "not_dicom").mkdir()
    (v / "not_dicom" / "notes.txt").write_text("patient list")
    cases = {
        "cut.nii": (_cut(raw, v / "cut.nii", 0.5), ["cut.nii", "truncated"], ["again"]),
        "cut.nii.gz": (_cut(ct, v / "cut.nii.gz", 0.5), ["cut.nii.gz", "truncated"], ["again"]),
        "header_cut.nii.gz": (_cut(ct, v / "header_cut.nii.gz", 60), ["truncated"], ["again"]),
        "cut.nrrd": (itk[".nrrd"], ["cut.nrrd", "voxel data"], ["truncated"]),
        "cut.mha": (itk[".mha"], ["cut.mha", "voxel data"], ["truncated"]),
        "dicom_cut": (dicom, ["IM0003.dcm", "truncated or damaged", "leave out slices"], ["export"]),
        "png.nii.gz": (_bytes(v / "png.nii.gz", b"\x89PNG\r\n\x1a\n" + b"\0" * 400), ["not a compressed NIfTI",
                                                                                     "PNG"], ["NIfTI"]),
        "gz_text.nii.gz": (_bytes(v / "gz_text.nii.gz", gzip.compress(b"name,age\n" * 80)), ["not a NIfTI",
                                                                                               "text"], ["NIfTI"]),
        "text.nii": (_bytes(v / "text.nii", b"just some notes\n" * 40), ["not a NIfTI", "text file"], ["NIfTI"]),
        "page.nrrd": (_bytes(v / "page.nrrd", b"<!DOCTYPE html><html>log in</html>"), ["not an NRRD", "HTML"],
                      ["NRRD"]),
        "empty.nii.gz": (_bytes(v / "empty.nii.gz", b""), ["empty", "0 bytes"], ["again"]),
        "empty.mha": (_bytes(v / "empty.mha", b""), ["empty"], ["again"]),
        "not_dicom": (v / "not_dicom", ["No DICOM images"], ["DICOM"]),
    }
    before = digest(v)
    argvs = [_segment(engine, src, tmp_path / "out" / f"{name}.nii.gz", "--ml") for name, (src, _, _) in cases.items()]
    others = {  # the other commands on the same files
        "liver-vessels": (["liver-vessels", "-i", v / "cut.nii.gz", "-o", tmp_path / "out" / "lv", "-d", "cpu",
                           "--weights_dir", engine[1]], ["cut.nii.gz", "truncated"], ["again"]),
        "split-vessels": (["split-vessels", "--vessels", v / "cut.nii.gz", "-o", tmp_path / "out" / "sv"],
                          ["cut.nii.gz", "truncated"], ["again"]),
        "split-vessels text": (["split-vessels", "--vessels", v / "text.nii", "-o", tmp_path / "out" / "sv"],
                               ["vessel mask", "not a NIfTI", "text file"], ["NIfTI"]),
        "evaluate": (["evaluate", v / "cut.nii.gz", ct], ["cut.nii.gz", "truncated"], ["again"]),
        "evaluate empty": (["evaluate", ct, v / "empty.nii.gz"], ["empty.nii.gz", "empty"], ["again"]),
    }
    runs = run_cli_many(argvs + [argv for argv, _, _ in others.values()], tmp_path)
    for (name, (_, cause, fix)), run in zip(cases.items(), runs):
        assert_error(run, cause, fix, json_mode=True)
        no_work_done(run)
    for (name, (_, cause, fix)), run in zip(others.items(), runs[len(argvs):]):
        assert_error(run, cause, fix)
    assert digest(v) == before and listing(tmp_path / "out") in (None, [])
    assert_nothing_left(runs[0], v)


def _bytes(path, data):
    Path(path).write_bytes(data)
    return Path(path)


def test_permissions_on_inputs_and_outputs(ct, engine, tmp_path):
    locked = tmp_path / "locked.nii.gz"
    shutil.copy(ct, locked)
    locked.chmod(0)
    closed = write_dicom_stack(tmp_path / "closed", n=5)
    closed.chmod(0)
    partly = write_dicom_stack(tmp_path / "partly", n=5)
    (partly / "IM0002.dcm").chmod(0)
    ro_dir = tmp_path / "ro"
    ro_dir.mkdir()
    ro_dir.chmod(0o555)
    try:
        cases = [
            (_segment(engine, locked, tmp_path / "o1.nii.gz", "--ml"), ["Permission denied", "locked.nii.gz"],
             ["read permission"]),
            (_segment(engine, closed, tmp_path / "o2.nii.gz", "--ml"), ["Permission denied", "closed"],
             ["read permission"]),
            (_segment(engine, partly, tmp_path / "o3.nii.gz", "--ml"), ["IM0002.dcm", "permission denied",
                                                                       "leave out slices"], ["chmod"]),
            (_segment(engine, ct, ro_dir / "seg.nii.gz", "--ml"), ["Permission denied", "cannot write in", "ro"],
             ["write permission"]),
            (_segment(engine, ct, ro_dir / "new" / "deeper"), ["Permission denied", "ro"], ["write permission"]),
            (["split-vessels", "--vessels", ct, "-o", ro_dir / "split"], ["Permission denied"], ["write"]),
            (["evaluate", locked, ct], ["Permission denied", "locked.nii.gz"], ["read permission"]),
        ]
        runs = run_cli_many([argv for argv, _, _ in cases], tmp_path, preexec=drop_file_access)
        for (argv, cause, fix), run in zip(cases, runs):
            assert_error(run, cause, fix, json_mode="--progress" in argv)
            if "--progress" in argv:
                no_work_done(run)
        assert listing(ro_dir) == [] and not list(tmp_path.glob("o?.nii.gz"))
        assert_nothing_left(runs[0])
    finally:
        for p in (locked, closed, partly / "IM0002.dcm", ro_dir):
            p.chmod(0o755)


def test_paths_that_are_folders_or_files(ct, engine, tmp_path):
    folder = tmp_path / "a_folder"
    folder.mkdir()
    (folder / "keep.txt").write_text("x")
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("x")
    before = digest(folder, a_file)
    cases = [
        (_segment(engine, ct, folder, "--ml"), ["existing folder"], ["file name", "drop --ml"]),
        (_segment(engine, ct, a_file), ["a_file.txt", "is a file"], ["folder"]),
        (_segment(engine, ct, a_file / "seg.nii.gz", "--ml"), ["a_file.txt", "is a file, not a folder"], ["folders"]),
        (_segment(engine, ct, tmp_path / "seg.nrrd", "--ml"), ["NIfTI file name"], [".nii.gz"]),
        (["split-vessels", "--vessels", folder, "-o", tmp_path / "split"], ["is a folder"], ["NIfTI"]),
        (["split-vessels", "--vessels", ct, "-o", a_file], ["is a file"], ["folder"]),
        (["split-vessels", "--vessels", ct, "--liver", a_file, "-o", tmp_path / "s2"], ["liver mask",
                                                                                       "cannot be read"], ["NIfTI"]),
        (["evaluate", ct, tmp_path / "empty_ref"], ["No mask files"], ["multilabel"]),
    ]
    (tmp_path / "empty_ref").mkdir()
    runs = run_cli_many([argv for argv, _, _ in cases], tmp_path)
    for (argv, cause, fix), run in zip(cases, runs):
        assert_error(run, cause, fix, json_mode="--progress" in argv)
    assert digest(folder, a_file) == before
    assert not (tmp_path / "split").exists() and not (tmp_path / "s2").exists()
    assert_nothing_left(runs[0], folder)


def test_damaged_model_files_are_named_before_the_run(ct, test_weights, tmp_path):
    def damaged(name, damage):
        wdir = tmp_path / name
        shutil.copytree(Path(test_weights) / FASTEST_MODEL, wdir / FASTEST_MODEL)
        model = next((wdir / FASTEST_MODEL).iterdir())
        damage(model)
        return wdir

    def plans(model, text):
        (model / "plans.json").write_text(text)

    cases = {
        "plans_cut": (lambda m: _cut(m / "plans.json", m / "plans.json", 0.5), ["plans.json", "not valid JSON"]),
        "plans_other_config": (lambda m: plans(m, json.dumps({"configurations": {"2d": {}}})),
                               ["plans.json", "no configuration"]),
        "dataset_list": (lambda m: (m / "dataset.json").write_text("[]"), ["dataset.json", "not a JSON object"]),
        "checkpoint_cut": (lambda m: _cut(m / "fold_0" / "checkpoint_final.pth", m / "fold_0" / "checkpoint_final.pth",
                                          0.5), ["checkpoint_final.pth", "damaged or incomplete"]),
        "checkpoint_empty": (lambda m: (m / "fold_0" / "checkpoint_final.pth").write_bytes(b""),
                             ["checkpoint_final.pth", "not a PyTorch checkpoint"]),
        "plans_without_content": (lambda m: plans(m, json.dumps({"configurations": {m.name.split("__")[-1]: {}}})),
                                  ["plans.json", "do not describe its network"]),
    }
    argvs = [_segment(["--weights_dir", damaged(name, damage), "--no_download", "--device", "cpu"], ct,
                      tmp_path / "out" / f"{name}.nii.gz", "--ml") for name, (damage, _) in cases.items()]
    runs = run_cli_many(argvs, tmp_path)
    for (name, (_, cause)), run in zip(cases.items(), runs):
        assert_error(run, cause, ["again", "import"], json_mode=True)
        if name != "plans_without_content":  # found by the quick check, before the image is even read
            assert "load" not in {e.get("stage") for e in run.events()}, name
    assert not (tmp_path / "out").exists()
    assert_nothing_left(runs[0])


def test_read_only_and_full_disks_are_found_before_inference(ct, engine, tmp_path):
    with small_disk(tmp_path / "full", "512k") as full, small_disk(tmp_path / "ro", "512k") as ro:
        (full / "results").mkdir()
        read_only(ro)
        runs = run_cli_many([
            _segment(engine, ct, full / "results" / "seg.nii", "--ml"),
            _segment(engine, ct, ro / "results"),
            ["split-vessels", "--vessels", ct, "-o", ro / "split"],
        ], tmp_path)
        assert_error(runs[0], ["Not enough free disk space", "needed", "free"], ["Free disk space"], json_mode=True)
        assert_error(runs[1], ["read-only file system"], ["writable disk"], json_mode=True)
        assert_error(runs[2], ["read-only file system"], ["writable"])
        no_work_done(runs[0])
        no_work_done(runs[1])
        assert listing(full) == ["results"] and listing(ro) == []
    assert_nothing_left(runs[0])


def test_disk_full_and_file_size_limit_while_writing(ct, engine, tmp_path):
    """The disk fills up after the checks passed (another program wrote meanwhile)."""
    with small_disk(tmp_path / "disk", "8m") as disk:
        out = disk / "results" / "masks"
        proc, env = start_cli(_segment(engine, ct, out), tmp_path)
        started = time.monotonic()
        wait_for_line(proc, stage_event("predict"))
        os.kill(proc.pid, signal.SIGSTOP)
        filler = fill(disk)
        os.kill(proc.pid, signal.SIGCONT)
        stdout, stderr = proc.communicate(timeout=180)
        run = finish(proc, env, started, stdout, stderr)
        assert_error(run, ["disk is full", "masks"], ["Free disk space"], json_mode=True)
        filler.unlink()
        assert listing(disk) == [], listing(disk)  # no partial file, not even the folders the writer made
    assert_nothing_left(run)
    # a file-size limit (ulimit -f): the kernel refuses to let a result grow (the same write
    # errors as above, EFBIG instead of ENOSPC; the vessel split needs no model run)
    vessels = tmp_path / "vessels.nii.gz"
    mask = np.zeros((40, 40, 40), np.uint8)
    mask[5:35, 18:22, 18:22] = 1
    mask[18:22, 5:35, 20:24] = 1
    nib.save(nib.Nifti1Image(mask, np.diag([1.5, 1.5, 1.5, 1])), str(vessels))
    run = run_cli(["split-vessels", "--vessels", vessels, "-o", tmp_path / "split"], tmp_path,
                  preexec=file_size_limit(300))
    assert_error(run, ["larger than allowed"], ["ulimit"])
    assert not any(p.name.startswith(".") for p in (tmp_path / "split").iterdir())
    assert_nothing_left(run)


def test_batch_summary_and_weights_commands(mixed_batch, model_zip, tmp_path):
    run = mixed_batch.run  # a good case and three damaged files: each damaged one is a failed row
    assert run.rc == 1 and "Traceback" not in run.stderr, run.stdout[-2000:] + run.stderr[-2000:]
    rows = {r.split(",")[0]: r for r in mixed_batch.summary.splitlines()[1:]}
    assert set(rows) == {"case1", "cut", "empty", "photo"} and ",ok," in rows["case1"]
    assert "truncated" in rows["cut"] and "empty" in rows["empty"] and "JPEG" in rows["photo"]
    assert all(",failed," in rows[r] and "Fix:" in rows[r] and "Internal error" not in rows[r]
               for r in ("cut", "empty", "photo"))
    assert mixed_batch.listing == ["case1.seg.nrrd", "summary.csv"]  # nothing of the failed cases
    assert_nothing_left(run)

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    run = run_batch(["--input-dir", mixed_batch.inputs, "--output-dir", a_file], tmp_path)
    assert run.rc == 2 and "is a file" in run.stdout and "Traceback" not in run.stderr

    cut_zip = _cut(model_zip, tmp_path / "weights.zip", 0.6)
    empty_dir = tmp_path / "no_models"
    empty_dir.mkdir()
    (empty_dir / "readme.txt").write_text("x")
    wdir = tmp_path / "weights"
    runs = run_cli_many([
        ["import-weights", cut_zip, "--weights_dir", wdir],
        ["import-weights", empty_dir, "--weights_dir", wdir],
        ["import-weights", tmp_path / "missing.zip", "--weights_dir", wdir],
        ["download-weights", "--fastest", "--weights_dir", a_file / "w", "--mirror", tmp_path],
    ], tmp_path)
    assert_error(runs[0], ["weights.zip", "not a valid zip"], ["Download it again"])
    assert_error(runs[1], ["No nnU-Net model"], ["laid out"])
    assert_error(runs[2], ["does not exist"], ["path"])
    assert_error(runs[3], ["a_file"], ["write to", "TOTALSEG_WEIGHTS_PATH"])
    assert_nothing_half_installed(wdir, allow_partial=False)
    assert_nothing_left(runs[0])
