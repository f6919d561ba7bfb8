"""Class 2, silently wrong: a header whose voxel spacing is missing, zero, negative or not
a number (which nibabel and ITK quietly replace with 1 mm or its absolute value) and a
folder holding several DICOM stacks without telling UIDs are refused, never segmented.

Each variant goes through the real CLI: exit code 1, a cause naming the file and the
problem, a fix, nothing written, nothing left in temp.
"""
import math
import zipfile

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")  # writes the test series (independent of the engine's reader)

from faultkit import (assert_error, assert_nothing_left, digest, no_work_done, patch_nifti1, run_cli_many,
                      series_listing, small_ct, write_dicom_stack)
from SegmentationLogic.imaging.read import load_image

NAN, INF = float("nan"), float("inf")


def _segment(engine, source, out):
    return ["segment", "-i", str(source), "-o", str(out), "--ml", "--fastest", "--progress", "json", *engine]


def _raw_volume():
    return (np.random.default_rng(0).integers(-1000, 1000, (10, 12, 14))).astype(np.int16)


def _nrrd(path, fields):
    header = ("NRRD0004\ntype: short\ndimension: 3\nsizes: 14 12 10\nendian: little\nencoding: raw\n"
              "space: left-posterior-superior\nspace origin: (0,0,0)\n" + fields + "\n")
    path.write_bytes(header.encode() + _raw_volume().tobytes())
    return path


def _mha(path, fields):
    header = "ObjectType = Image\nNDims = 3\nDimSize = 14 12 10\nElementType = MET_SHORT\n" + fields
    path.write_bytes((header + "ElementDataFile = LOCAL\n").encode() + _raw_volume().tobytes())
    return path


def test_nifti_spacing_nibabel_would_invent(ct, engine, tmp_path, example):
    plain = small_ct(tmp_path / "plain.nii", example("example_ct_sm.nii.gz"))
    v = tmp_path / "v"
    v.mkdir()
    variants = {  # file: (header patch, words the cause must hold)
        "qform_zero.nii": (dict(pixdim=[0, 3, 3], qform_code=1, sform_code=0), ["voxel size", "0, 3, 3", "1 mm"]),
        "no_form_zero.nii": (dict(pixdim=[3, 0, 3], qform_code=0, sform_code=0), ["voxel size", "3, 0, 3"]),
        "sform_zero.nii": (dict(pixdim=[3, 3, 0], sform_code=1), ["voxel size", "3, 3, 0"]),
        "pixdim_nan.nii": (dict(pixdim=[NAN, 3, 3], qform_code=1, sform_code=0), ["voxel size", "nan"]),
        "pixdim_inf.nii": (dict(pixdim=[3, INF, 3], sform_code=1), ["voxel size", "inf"]),
        "qform_negative.nii": (dict(pixdim=[-3, 3, 3], qform_code=1, sform_code=0), ["negative", "mirroring"]),
        "sform_nan.nii": (dict(sform_code=1, srow_x=[NAN, 0, 0, 0]), ["sform", "not numbers"]),
    }
    for name, (patch, _) in variants.items():
        patch_nifti1(plain, v / name, **patch)
    before = digest(v)
    runs = run_cli_many([_segment(engine, v / name, tmp_path / "out" / f"{name}.nii.gz") for name in variants],
                        tmp_path)
    for (name, (_, words)), run in zip(variants.items(), runs):
        assert_error(run, [name, *words], ["export"], json_mode=True)
        no_work_done(run)
    assert digest(v) == before and not (tmp_path / "out").exists()
    assert_nothing_left(runs[0])


def test_nrrd_and_metaimage_spacing_itk_would_invent(engine, tmp_path):
    v = tmp_path / "v"
    v.mkdir()
    variants = [
        _nrrd(v / "zero_direction.nrrd", "space directions: (0,0,0) (0,1.5,0) (0,0,2)\n"),
        _nrrd(v / "nan_direction.nrrd", "space directions: (nan,nan,nan) (0,1.5,0) (0,0,2)\n"),
        _nrrd(v / "no_spacing.nrrd", ""),
        _nrrd(v / "nan_spacings.nrrd", "spacings: nan 1 1\n"),
        _nrrd(v / "negative_spacings.nrrd", "spacings: 1 -1.5 2\n"),
        _nrrd(v / "missing_axis.nrrd", "space directions: none (0,1.5,0) (0,0,2)\n"),
        _mha(v / "zero.mha", "ElementSpacing = 0 1.5 2\n"),
        _mha(v / "negative.mha", "ElementSpacing = 1 -1.5 2\n"),
        _mha(v / "nan.mha", "ElementSpacing = nan 1.5 2\n"),
        _mha(v / "missing.mha", ""),
        _mha(v / "element_size_zero.mha", "ElementSize = 1 0 2\n"),
    ]
    before = digest(v)
    runs = run_cli_many([_segment(engine, f, tmp_path / "out" / f"{f.name}.nii.gz") for f in variants], tmp_path)
    for f, run in zip(variants, runs):
        assert_error(run, [f.name, "spacing", "wrong scale"], ["spacing"], json_mode=True)
        no_work_done(run)
    assert digest(v) == before and not (tmp_path / "out").exists()


def test_dicom_spacing_and_position_that_are_not_usable(engine, tmp_path):
    cases = {
        "zero_pixel_spacing": (dict(pixel_spacing="0\\1.2"), ["PixelSpacing", "zero, negative"]),
        "negative_pixel_spacing": (dict(pixel_spacing="-1.5\\1.2"), ["PixelSpacing", "-1.5"]),
        "nan_pixel_spacing": (dict(pixel_spacing="nan\\1.2"), ["PixelSpacing"]),
        "nan_position": (dict(position_override=lambda k: "nan\\0\\0"), ["ImagePositionPatient", "nan"]),
        "same_position": (dict(position_override=lambda k: "0\\0\\0"), ["images at each slice position"]),
    }
    with pytest.warns(UserWarning):  # pydicom warns about writing "nan" into a DS element
        folders = {name: write_dicom_stack(tmp_path / name, n=6, **kw) for name, (kw, _) in cases.items()}
    runs = run_cli_many([_segment(engine, f, tmp_path / "out" / f"{n}.nii.gz") for n, f in folders.items()],
                        tmp_path)
    for (name, (_, words)), run in zip(cases.items(), runs):
        assert_error(run, words, ["series"], json_mode=True)
    assert not (tmp_path / "out").exists()
    assert_nothing_left(runs[0])


def _two_stacks(folder, **b):
    write_dicom_stack(folder, n=6, prefix="A", seed=1)
    write_dicom_stack(folder, n=6, prefix="B", seed=2, **b)
    return folder


def test_two_stacks_in_one_folder_are_two_series(engine, tmp_path):
    """Stacks that share the UID, or have none, are still told apart by geometry or series tags."""
    folders = {
        "disjoint_no_uid": _two_stacks(tmp_path / "disjoint", origin=(-20.0, -30.0, 300.0)),
        "spacing_same_uid": _two_stacks(tmp_path / "spacing", spacing=(0.9, 0.9)),
        "orientation_no_uid": _two_stacks(tmp_path / "orientation", col_dir=(0, 0, -1)),
        "size_no_uid": _two_stacks(tmp_path / "size", rows=30, cols=26),
        "interleaved_series_numbers": _two_stacks(tmp_path / "interleaved", origin=(-20.0, -30.0, 1.5), number=7),
    }
    for f in folders["spacing_same_uid"].iterdir():  # the same UID on both stacks
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = "1.2.826.0.1.3680043.2.1125.99"
        ds.save_as(f)
    zipped = tmp_path / "two_stacks.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        for f in sorted(folders["disjoint_no_uid"].iterdir()):
            zf.write(f, f"export/{f.name}")
    sources = {**folders, "zip_no_uid": zipped}
    before = digest(*sources.values())
    runs = run_cli_many([_segment(engine, s, tmp_path / "out" / f"{n}.nii.gz") for n, s in sources.items()],
                        tmp_path)
    for name, run in zip(sources, runs):
        cause, _ = assert_error(run, ["holds 2 series"], ["folder of their own"], json_mode=True)
        listed = series_listing(cause)
        assert len(listed) == 2 and all("6 file(s)" in line for line in listed), (name, cause)
    assert digest(*sources.values()) == before and not (tmp_path / "out").exists()
    assert_nothing_left(runs[-1])  # the unpacked zip (patient data) is gone from temp


def test_one_stack_without_uid_and_a_file_of_two_stacks_still_read(tmp_path):
    one = write_dicom_stack(tmp_path / "one", n=8)
    assert load_image(one).shape == (20, 24, 8)
    two = _two_stacks(tmp_path / "two", origin=(-20.0, -30.0, 300.0))
    img = load_image(two / "B0003.dcm")  # a file picks its own stack
    assert img.shape == (20, 24, 6) and math.isclose(img.affine[2, 3], 300.0, abs_tol=20)
    gap = write_dicom_stack(tmp_path / "gap", n=10)
    (gap / "IM0004.dcm").unlink()  # one missing slice is a missing slice, not two series
    with pytest.raises(Exception, match="not evenly spaced"):
        load_image(gap)
