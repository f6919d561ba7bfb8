"""Class 1, data loss: no run ever writes over an input, or over a file it did not create.

Every variant must be refused before any work (no download, no model run, nothing
written), with a cause naming the file and a fix, exit code 1 (batch script: 2), and
every input byte for byte as it was.
"""
import os
import shutil

import nibabel as nib
import numpy as np

from faultkit import (assert_error, assert_nothing_left, digest, listing, no_work_done, run_batch,
                      run_cli_many, write_dicom_stack)


def _segment(engine, *args):
    return ["segment", "--fastest", "--progress", "json", *engine, *map(str, args)]


def test_the_input_is_never_an_output(ct, engine, tmp_path):
    data = ct.parent
    (data / "sub").mkdir()
    os.symlink(ct, data / "link.nii.gz")
    os.link(ct, data / "hard.nii.gz")
    liver = data / "liver.nii.gz"  # an input named like a class, per-class output into its folder
    shutil.copy(ct, liver)
    dicom = write_dicom_stack(tmp_path / "dicom", n=6)
    before = digest(data, dicom)
    cases = [
        (_segment(engine, "-i", ct, "-o", ct, "--ml"), "is the input"),
        (_segment(engine, "-i", ct, "-o", data / "sub" / ".." / "ct.nii.gz", "--ml"), "is the input"),
        (_segment(engine, "-i", ct, "-o", data / "link.nii.gz", "--ml"), "is the input"),
        (_segment(engine, "-i", ct, "-o", data / "hard.nii.gz", "--ml"), "is the input"),
        (_segment(engine, "-i", ct, "-o", data / "hard.nii.gz", "--ml", "--overwrite"), "is the input"),
        (_segment(engine, "-i", liver, "-o", data, "--roi_subset", "liver", "spleen", "--overwrite"), "is the input"),
        (_segment(engine, "-i", dicom, "-o", dicom / "seg.nii.gz", "--ml"), "inside the input folder"),
        (_segment(engine, "-i", dicom / "IM0002.dcm", "-o", dicom / "masks", "--roi_subset", "liver"),
         "inside the input folder"),
    ]
    runs = run_cli_many([argv for argv, _ in cases], tmp_path)
    for (argv, words), run in zip(cases, runs):
        assert_error(run, [words], ["another output"], json_mode=True)
        no_work_done(run)
    assert digest(data, dicom) == before
    assert listing(dicom) == [f"IM{k:04d}.dcm" for k in range(6)]
    assert_nothing_left(runs[0], data)


def test_files_the_run_did_not_create_need_overwrite(ct, engine, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    mine = out / "spleen.nii.gz"  # a user's own mask that has a class's name
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.uint8), np.eye(4)), str(mine))
    ml_dir = tmp_path / "ml"
    ml_dir.mkdir()
    (ml_dir / "statistics.json").write_text('{"from": "another tool"}')  # beside a multilabel result
    (ml_dir / "seg.labels.json").write_text("my notes")  # a file named like our sidecar, not ours
    other = tmp_path / "other.nii.gz"  # a NIfTI without TotalSegmentator's label table
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), str(other))
    before = digest(out, ml_dir, other, ct)
    cases = [
        (_segment(engine, "-i", ct, "-o", out, "--roi_subset", "liver", "spleen"), ["spleen.nii.gz"]),
        (_segment(engine, "-i", ct, "-o", ml_dir / "seg.nii.gz", "--ml", "--statistics"),
         ["statistics.json", "seg.labels.json", "2 output file(s)"]),
        (_segment(engine, "-i", ct, "-o", other, "--ml"), ["other.nii.gz"]),
    ]
    runs = run_cli_many([argv for argv, _ in cases], tmp_path)
    for (argv, words), run in zip(cases, runs):
        assert_error(run, ["already exist", "not written by TotalSegmentator", *words], ["--overwrite"],
                     json_mode=True)
        no_work_done(run)
    assert digest(out, ml_dir, other, ct) == before
    assert_nothing_left(runs[0], out, ml_dir)


def test_vessel_commands_protect_inputs_and_foreign_files(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    mask = np.zeros((20, 20, 20), np.uint8)
    mask[5:15, 8:12, 8:12] = 1
    vessels = out / "portal_vein_branches.nii.gz"  # the input carries an output's name, in the output folder
    nib.save(nib.Nifti1Image(mask, np.eye(4)), str(vessels))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    nib.save(nib.Nifti1Image(mask, np.eye(4)), str(foreign / "enhanced_liver_vessels.nii.gz"))
    (foreign / "enhanced_liver_vessels_metadata.json").write_text('{"mine": true}')
    ct_img = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(mask.astype(np.int16), np.eye(4)), str(ct_img))
    before = digest(out, foreign, ct_img)
    runs = run_cli_many([
        ["split-vessels", "--vessels", vessels, "-o", out],
        ["split-vessels", "--vessels", vessels, "-o", out, "--overwrite"],
        ["liver-vessels", "-i", ct_img, "-o", foreign],
    ], tmp_path)
    assert_error(runs[0], ["portal_vein_branches.nii.gz", "is the input"], ["another output"])
    assert_error(runs[1], ["is the input"], ["another output"])
    assert_error(runs[2], ["2 output file(s)", "not written by TotalSegmentator"], ["--overwrite"])
    assert digest(out, foreign, ct_img) == before
    assert_nothing_left(runs[0], out, foreign)


def test_batch_keeps_segmentations_it_did_not_write(ct, tmp_path):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    outputs.mkdir()
    shutil.copy(ct, inputs / "case1.nii.gz")
    manual = outputs / "case1.seg.nrrd"  # a hand-made segmentation of the same case
    manual.write_bytes(b"NRRD0004\n# Complete NRRD file format specification at:\ntype: unsigned char\n\n\0\0")
    (outputs / "summary.csv").write_text("patient,diagnosis\n1,secret\n")  # someone's own table
    before = digest(inputs, outputs)
    run = run_batch(["--input-dir", inputs, "--output-dir", outputs, "--quality", "fastest"], tmp_path)
    assert run.rc == 2 and "Traceback" not in run.stderr, run.stdout[-2000:] + run.stderr[-2000:]
    assert "not written by TotalSegmentator" in run.stdout and "--overwrite" in run.stdout
    assert "case1.seg.nrrd" in run.stdout and "summary.csv" in run.stdout  # both named, in one error
    assert digest(inputs, outputs) == before
    assert_nothing_left(run, outputs)
