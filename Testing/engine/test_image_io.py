"""Input reading and checks: real examples, synthetic DICOM series, every error message.

The DICOM reader must give what the official tool feeds its pipeline (dicom2nifti with
reorient_nifti=True, loaded back with nibabel); the official converter runs once, in a
subprocess, over the real example series and a set of synthetic series with awkward
geometry (sagittal, coronal, oblique, reversed file order, fractional rescale).
"""
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from dicomseries import phantom, rotation, write_series
from SegmentationLogic.errors import InputImageError, OutOfMemoryError
from SegmentationLogic.imaging import (ImageTooLargeError, as_3d, check_image, estimate_memory_bytes, guess_modality,
                                       load_image, modality_warning, open_input, select_volume)

REPO = Path(__file__).resolve().parents[2]

SYNTHETIC = {
    "axial": {},
    "sagittal": dict(direction=np.array([[0, 1, 0], [0, 0, -1], [-1, 0, 0]], dtype=float)),
    "coronal": dict(direction=np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=float)),
    "oblique": dict(direction=rotation(2, 20) @ rotation(0, 15), spacing=(0.5, 0.9, 4.0)),
    "feet_first": dict(direction=np.diag([1.0, 1.0, -1.0])),
    "shuffled_names": dict(name_order=[5, 2, 9, 0, 11, 7, 1, 3, 10, 4, 8, 6]),
    "fractional_rescale": dict(slope=0.37, intercept=-1024),
}

OFFICIAL_CONVERT = """
import sys
from pathlib import Path
from totalsegmentator.dicom_io import dcm_to_nifti
if __name__ == "__main__":
    for src, dst in zip(sys.argv[1::2], sys.argv[2::2]):
        dcm_to_nifti(Path(src), Path(dst), Path(dst).parent / (Path(dst).name + "_tmp"))
"""


@pytest.fixture(scope="module")
def dicom_cases(tmp_path_factory, example):
    """{case: (our input path, official NIfTI path)} for the real series, its zip and the synthetic ones."""
    root = tmp_path_factory.mktemp("dicom")
    cases = {"example": Path(example("example_ct_dicom"))}
    volume = phantom()
    for name, kw in SYNTHETIC.items():
        values = volume * kw["slope"] + kw["intercept"] if "slope" in kw else volume
        cases[name] = Path(write_series(str(root / name), values, **kw))
    zipped = root / "example_series.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        for f in sorted(cases["example"].iterdir()):
            zf.write(f, f"study/series/{f.name}")
    cases["zip"] = zipped
    args = []
    for name, src in cases.items():
        args += [str(src), str(root / f"{name}_official.nii.gz")]
    pytest.importorskip("totalsegmentator")
    (root / "convert.py").write_text(OFFICIAL_CONVERT)
    run = subprocess.run([sys.executable, str(root / "convert.py"), *args], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return {name: (src, root / f"{name}_official.nii.gz") for name, src in cases.items()}


@pytest.fixture(scope="module")
def dicom_image(example):
    """The example series, read once (JPEG 2000: about a second per read)."""
    return load_image(example("example_ct_dicom"))


@pytest.fixture
def clean_tmp(tmp_path, monkeypatch):
    """A private temporary folder, to see what a read leaves behind."""
    tmp = tmp_path / "systmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


def assert_same_image(ours, official):
    assert ours.shape == official.shape
    assert nib.aff2axcodes(ours.affine) == nib.aff2axcodes(official.affine)
    np.testing.assert_allclose(ours.affine, official.affine, rtol=0, atol=1e-6)
    a, b = ours.get_fdata(), official.get_fdata()
    assert a.dtype == b.dtype == np.float64
    np.testing.assert_array_equal(a, b)


# -- reading -----------------------------------------------------------------------

@pytest.mark.parity
@pytest.mark.parametrize("case", ["example", "zip", *SYNTHETIC])
def test_dicom_matches_official_conversion(dicom_cases, case, clean_tmp):
    src, official_path = dicom_cases[case]
    ours = load_image(src)
    official = nib.load(official_path)
    assert_same_image(ours, official)
    # what the output header is copied from: same codes and units as the official input
    for field in ("sform_code", "qform_code", "xyzt_units", "datatype"):
        assert ours.header[field] == official.header[field], field
    assert list(clean_tmp.iterdir()) == []  # a zip read leaves nothing behind


def test_example_dicom_geometry(dicom_image):
    img = dicom_image
    assert img.shape == (512, 512, 20)
    assert nib.aff2axcodes(img.affine) == ("L", "A", "S")
    data = img.get_fdata()
    assert data.min() == -1024 and data.max() > 1000  # Hounsfield units: rescale applied
    assert img.header["sform_code"] == 2 and img.header["qform_code"] == 0


def test_dicom_without_rescale_keeps_stored_type(tmp_path):
    pydicom = pytest.importorskip("pydicom")  # test-only: strips the tags SimpleITK always writes
    folder = write_series(str(tmp_path / "raw"), phantom() + 1024)
    for f in Path(folder).iterdir():
        ds = pydicom.dcmread(f)
        del ds.RescaleSlope, ds.RescaleIntercept
        ds.save_as(f)
    img = load_image(folder)
    assert img.get_data_dtype() == np.int16
    # LPS axial slices -> LAS: columns run to the left already, rows are flipped to run anterior
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), (phantom() + 1024).transpose(2, 1, 0)[:, ::-1, :])


def test_nifti_is_loaded_as_nibabel_does(example):
    path = example("example_mr_sm.nii.gz")
    ours, ref = load_image(path), nib.load(str(path))
    assert_same_image(ours, nib.Nifti1Image(ref.get_fdata(), ref.affine))
    assert ours.header.binaryblock == ref.header.binaryblock


@pytest.mark.parametrize("name", ["example_ct_sm.nii.gz", "example_mr_sm.nii.gz"])
@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_itk_formats_round_trip(example, tmp_path, name, suffix):
    """NRRD/MetaImage (LPS) give the RAS geometry and voxels of the NIfTI they came from."""
    src = example(name)
    path = tmp_path / (name.split(".")[0] + suffix)
    sitk.WriteImage(sitk.ReadImage(str(src)), str(path))
    ours, ref = load_image(path), nib.load(str(src))
    assert ours.get_data_dtype() == ref.get_data_dtype()
    assert_same_image(ours, ref)


def test_4d_singleton_is_dropped_like_official(tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6, 1)
    nib.save(nib.Nifti1Image(data, np.diag([2, 2, 3, 1])), tmp_path / "a.nii.gz")
    img = load_image(tmp_path / "a.nii.gz")
    assert img.shape == (4, 5, 6)
    np.testing.assert_array_equal(img.get_fdata(), data[..., 0])
    assert check_image(img) == []


def test_select_volume_of_4d():
    data = np.stack([np.full((4, 5, 6), v, dtype=np.int16) for v in (10, 20, 30)], axis=-1)
    img = nib.Nifti1Image(data, np.eye(4))
    assert as_3d(img) is img  # several volumes: left for check_image to refuse
    assert select_volume(img, 2).get_fdata().max() == 30
    with pytest.raises(InputImageError, match="Volume 3 does not exist: the image has 3 volume"):
        select_volume(img, 3)


def test_zip_with_unsafe_entries_is_refused(tmp_path, clean_tmp, example):
    dicom = next(Path(example("example_ct_dicom")).iterdir())
    for bad in ("../evil.dcm", "/etc/evil.dcm", "a/../../evil.dcm"):
        zpath = tmp_path / "bad.zip"
        with zipfile.ZipFile(zpath, "w") as zf:
            zf.write(dicom, "ok.dcm")
            zf.writestr(zipfile.ZipInfo(bad), b"x")
        with pytest.raises(InputImageError) as e:
            load_image(zpath)
        assert "points outside the archive" in e.value.cause and bad in e.value.cause
        assert "create it again" in e.value.fix
    assert list(clean_tmp.iterdir()) == []
    assert not (tmp_path.parent / "evil.dcm").exists()


def test_zip_without_dicom_fails_and_cleans_up(tmp_path, clean_tmp):
    zpath = tmp_path / "notes.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(InputImageError) as e:
        load_image(zpath)
    assert "No DICOM images found" in e.value.cause and ".txt" in e.value.cause
    assert "one series" in e.value.fix
    assert list(clean_tmp.iterdir()) == []


def test_zip_cleanup_on_cancel(tmp_path, clean_tmp, example):
    """A cancel (raised from the progress callback) mid-read leaves no temp files."""
    from SegmentationLogic.errors import Cancelled
    from SegmentationLogic.progress import CancelToken, Progress

    zpath = tmp_path / "s.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in Path(example("example_ct_dicom")).iterdir():
            zf.write(f, f.name)
    token = CancelToken()
    seen = []

    def on_event(event):
        seen.append(event)
        if "DICOM slices" in event.get("message", ""):
            token.cancel()

    with pytest.raises(Cancelled):
        load_image(zpath, progress=Progress(on_event, cancel=token))
    assert list(clean_tmp.iterdir()) == []
    assert any(e.get("stage") == "load" for e in seen)


def test_missing_and_unsupported_inputs(tmp_path):
    with pytest.raises(InputImageError) as e:
        load_image(tmp_path / "nope.nii.gz")
    assert "Input image not found" in e.value.cause and "Supported inputs" in e.value.fix
    (tmp_path / "scan.png").write_bytes(b"\x89PNG....")
    with pytest.raises(InputImageError) as e:
        load_image(tmp_path / "scan.png")
    assert "Unsupported input format: scan.png" in e.value.cause and ".nrrd" in e.value.fix
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(InputImageError, match="broken.nii.gz is not a compressed NIfTI image: it is a text file"):
        load_image(tmp_path / "broken.nii.gz")
    (tmp_path / "series.zip").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(InputImageError, match="Cannot open zip file series.zip"):
        load_image(tmp_path / "series.zip")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputImageError, match="No DICOM images found"):
        load_image(tmp_path / "empty")


def test_folder_with_two_series(tmp_path):
    write_series(str(tmp_path / "a"), phantom(), series=3, description="Abdomen 1.0 Br40")
    write_series(str(tmp_path / "b"), phantom((20, 40, 48)), series=4, description="Abdomen 3.0 Br60")
    with pytest.raises(InputImageError) as e:
        load_image(tmp_path)
    cause = e.value.cause
    assert "holds 2 series" in cause
    assert "series 3 'Abdomen 1.0 Br40' (CT, 12 file(s), 48x40)" in cause
    assert "series 4 'Abdomen 3.0 Br60' (CT, 20 file(s), 48x40)" in cause
    assert "series_uid" in e.value.fix
    uid = cause.split("series 4")[1].split("uid=")[1].split()[0]
    assert load_image(tmp_path, series_uid=uid).shape == (48, 40, 20)
    # a single file of a multi-series folder picks its own series
    assert load_image(tmp_path / "a" / "IM0000.dcm").shape == (48, 40, 12)
    with pytest.raises(InputImageError, match="series 9.9 not found"):
        load_image(tmp_path, series_uid="9.9")


def test_localizer_duplicate_and_screenshot_are_dropped(tmp_path):
    folder = tmp_path / "s"
    write_series(str(folder), phantom())
    write_series(str(tmp_path / "scout"), phantom((1, 40, 48)), image_type="ORIGINAL\\PRIMARY\\LOCALIZER",
                 direction=np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=float))
    shutil.copy(tmp_path / "scout" / "IM0000.dcm", folder / "scout.dcm")
    shutil.copy(folder / "IM0003.dcm", folder / "copy_of_3.dcm")
    screenshot = sitk.GetImageFromArray(np.zeros((20, 30), np.uint8))  # a dose screen: no position
    for tag, value in (("0008|0016", "1.2.840.10008.5.1.4.1.1.7"), ("0008|0060", "OT"), ("0020|000e", "1.2.3.4")):
        screenshot.SetMetaData(tag, value)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(folder / "dose_screen.dcm"))
    writer.Execute(screenshot)
    pydicom = pytest.importorskip("pydicom")  # GDCM may add a default position; a real screen has none
    ds = pydicom.dcmread(folder / "dose_screen.dcm")
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.save_as(folder / "dose_screen.dcm")
    img = load_image(folder)
    assert img.shape == (48, 40, 12)
    only_screens = tmp_path / "screens"
    only_screens.mkdir()
    shutil.copy(folder / "dose_screen.dcm", only_screens)
    with pytest.raises(InputImageError) as e:
        load_image(only_screens)
    assert "holds 1 DICOM image(s), but none is a slice of a 3D scan" in e.value.cause
    assert "original CT or MR series" in e.value.fix


def test_missing_slice_is_reported(tmp_path):
    folder = write_series(str(tmp_path / "s"), phantom())
    os.remove(Path(folder) / "IM0005.dcm")
    with pytest.raises(InputImageError) as e:
        load_image(folder)
    assert "not evenly spaced: 5.00 mm between slices 5 and 6, 2.50 mm elsewhere" in e.value.cause
    assert "missing slice" in e.value.cause and "Export the complete series" in e.value.fix


def test_4d_dicom_series_is_refused(tmp_path):
    folder = tmp_path / "s"
    write_series(str(folder / "t0"), phantom(seed=0))
    write_series(str(folder / "t1"), phantom(seed=1), name_order=range(100, 112))
    with pytest.raises(InputImageError) as e:
        load_image(folder)
    assert "holds 2 images at each slice position: it is 4D" in e.value.cause
    assert "Export one phase/echo" in e.value.fix


def test_gantry_tilt_is_read_then_refused(tmp_path):
    folder = write_series(str(tmp_path / "tilt"), phantom(), tilt_mm_per_slice=0.5)
    img = load_image(folder)  # the sheared geometry the scanner describes
    with pytest.raises(InputImageError) as e:
        check_image(img)
    assert "not orthogonal (sheared by 11.3 degrees): a gantry tilt" in e.value.cause
    assert "Harden transform" in e.value.fix and "Resample" in e.value.fix


def test_memory_check_before_reading_pixels(tmp_path, example):
    with pytest.raises(ImageTooLargeError) as e:
        load_image(example("example_ct_dicom"), available_bytes=10_000_000)
    assert isinstance(e.value, InputImageError) and isinstance(e.value, OutOfMemoryError)
    assert e.value.cause == ("the DICOM series is 512x512x20 voxels: reading it needs 40 MiB, "
                             "but only 10 MiB of memory is available.")
    assert "Crop" in e.value.fix


# -- checks ------------------------------------------------------------------------

def _img(data, affine=None):
    return nib.Nifti1Image(data, np.diag([1.5, 1.5, 3.0, 1]) if affine is None else affine)


def _raw_nifti(path, data, affine=np.eye(4), shape=None, zooms=None):
    """Write a NIfTI file byte by byte, as a damaged or hand-made file holds it (nibabel
    refuses to build such headers from an affine)."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape or data.shape)
    hdr.set_data_dtype(data.dtype)
    hdr["pixdim"][1:4] = zooms if zooms is not None else np.linalg.norm(np.nan_to_num(affine[:3, :3]), axis=0)
    hdr["sform_code"] = 2
    for i, row in enumerate(("srow_x", "srow_y", "srow_z")):
        hdr[row] = affine[i]
    hdr["vox_offset"] = 352
    with open(path, "wb") as f:
        f.write(hdr.binaryblock + b"\0" * 4 + (data.tobytes(order="F") if shape is None else b""))
    return path


CT_LIKE = np.where(np.indices((20, 20, 10)).sum(0) % 7 == 0, -1000, 40).astype(np.int16)


@pytest.mark.parametrize("data, cause, fix", [
    (np.ones((30, 40), np.int16), "The image is 2D (30x40)", "whole series"),
    (np.ones((30, 40, 1), np.int16), "The image is 2D (30x40x1)", "whole series"),
    (np.ones((10, 10, 10, 3), np.int16), "The image is 4D: 3 volumes of 10x10x10", "select_volume(img, index)"),
    (np.zeros((10, 10, 10), np.int16), "The image is empty: every voxel is 0.", "Choose the volume"),
    (np.full((10, 10, 10), -1024, np.int16), "The image is constant: every voxel is -1024.", "Choose the volume"),
])
def test_check_image_refuses_data(data, cause, fix):
    with pytest.raises(InputImageError) as e:
        check_image(_img(data))
    assert cause in e.value.cause, e.value.cause
    assert fix in e.value.fix, e.value.fix


def test_check_image_counts_nan():
    data = CT_LIKE.astype(np.float32)
    data[0, 0, :3] = np.nan
    data[1, 1, 1] = -np.inf
    with pytest.raises(InputImageError, match="contains 3 NaN and 1 infinite voxel values"):
        check_image(_img(data))


@pytest.mark.parametrize("affine, cause, fix", [
    (np.diag([1.0, 0.0, 3.0, 1]), "The voxel spacing is 1, 0, 3 mm: it must be positive.", "header is damaged"),
    (np.diag([0.001, 0.001, 0.003, 1]), "implausible for CT/MR", "millimetres"),
    (np.array([[1.5, 0.3, 0, 0], [0, 1.5, 0, 0], [0, 0, 3, 0], [0, 0, 0, 1]]), "not orthogonal (sheared by 11.3 degrees)",
     "Harden transform"),
    (np.diag([1.5, np.nan, 3.0, 1]), "NaN or infinite", "export the image again"),
])
def test_check_image_refuses_geometry(affine, cause, fix, tmp_path):
    img = nib.load(_raw_nifti(tmp_path / "a.nii", CT_LIKE, affine))
    np.testing.assert_allclose(img.affine, affine, rtol=1e-6)
    with pytest.raises(InputImageError) as e:
        check_image(img)
    assert cause in e.value.cause, e.value.cause
    assert fix in e.value.fix, e.value.fix


def test_pixdim_disagreeing_with_affine_is_refused(tmp_path):
    # nibabel turns a 0 pixdim into 1 on load; the official tool would resample with it
    img = nib.load(_raw_nifti(tmp_path / "a.nii", CT_LIKE, np.diag([1.5, 1.5, 3, 1]), zooms=(1.5, 0, 3)))
    with pytest.raises(InputImageError) as e:
        check_image(img)
    assert e.value.cause == ("The header's voxel size (1.5 x 1 x 3 mm) disagrees with its affine (1.5 x 1.5 x 3 mm): "
                             "the header is inconsistent.")
    assert "Save the image again" in e.value.fix


def test_check_image_refuses_colour():
    rgb = np.zeros((10, 10, 10), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    with pytest.raises(InputImageError, match="3-channel .colour/RGB. voxels"):
        check_image(nib.Nifti1Image(rgb, np.eye(4)))


def test_check_image_memory_estimate(tmp_path):
    """A huge image is refused from its header alone, before any voxel is read."""
    path = _raw_nifti(tmp_path / "huge.nii", CT_LIKE, np.diag([0.3, 0.3, 0.3, 1]), shape=(2048, 2048, 3000))
    img = nib.load(str(path))  # header only: reading voxels would fail
    with pytest.raises(ImageTooLargeError) as e:
        check_image(img, available_bytes=64 * 2**30)
    assert "2048x2048x3000 voxels) needs about 293.0 GiB of memory" in e.value.cause
    assert "only 64.0 GiB is available" in e.value.cause
    assert "--fast" in e.value.fix and "Crop Volume" in e.value.fix
    # the model run is part of the estimate when the task is known
    small = estimate_memory_bytes((100, 100, 100), (1.5, 1.5, 1.5))
    with_model = estimate_memory_bytes((100, 100, 100), (1.5, 1.5, 1.5), target_spacing=(3, 3, 3), n_classes=117)
    assert with_model > small
    assert with_model - small == int(50 ** 3 * (12 + 6 * 118))


def test_check_image_warnings(example):
    img = nib.load(str(example("example_ct_sm.nii.gz")))
    assert check_image(img) == []
    warnings = check_image(img, available_bytes=int(estimate_memory_bytes(img.shape, (3, 3, 3)) * 1.2))
    assert len(warnings) == 1 and "may need about" in warnings[0]
    moved = nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine)
    moved.set_qform(img.affine @ np.array([[1, 0, 0, 50], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]), code=1)
    assert any("sform and qform disagree" in w for w in check_image(moved))


def test_examples_pass_checks(example, dicom_image):
    for name in ("example_ct_sm.nii.gz", "example_mr_sm.nii.gz"):
        assert check_image(load_image(example(name))) == []
    img, warnings = open_input(dicom_image, target_spacing=(3, 3, 3), n_classes=117)
    assert img.shape == (512, 512, 20) and warnings == []
    img4d = nib.Nifti1Image(np.asanyarray(img.dataobj)[..., None], img.affine)
    assert open_input(img4d)[0].shape == (512, 512, 20)


# -- modality ----------------------------------------------------------------------

def test_guess_modality_on_examples(example, dicom_image):
    modality, confidence, reason = guess_modality(load_image(example("example_ct_sm.nii.gz")))
    assert modality == "CT" and confidence >= 0.9 and "below -500" in reason
    modality, confidence, reason = guess_modality(load_image(example("example_mr_sm.nii.gz")))
    assert modality == "MR" and confidence >= 0.8 and "non-negative" in reason
    assert guess_modality(dicom_image)[0] == "CT"


def test_guess_modality_soft_tissue_crop_and_warning(example):
    ct = load_image(example("example_ct_sm.nii.gz"))
    data = ct.get_fdata()
    crop = data[40:80, 30:70, 10:20]  # inside the abdomen: fat and soft tissue, no air
    assert (crop < -500).mean() < 0.01
    modality, confidence, reason = guess_modality(nib.Nifti1Image(crop, ct.affine))
    assert modality == "CT" and "fat" in reason
    mr = load_image(example("example_mr_sm.nii.gz"))
    warning = modality_warning("total", "CT", guess_modality(mr))
    assert warning.startswith("This volume looks like MR") and "the task is for CT" in warning
    assert modality_warning("total_mr", "MR", guess_modality(mr)) is None
    assert modality_warning("total", "CT", guess_modality(ct)) is None


def test_modality_guess_and_warning_need_only_numpy():
    """The Slicer panel warns before the engine's dependencies are installed: the guess and
    its text work without nibabel, SimpleITK or scipy."""
    code = ("import sys\n"
            "for name in ('nibabel', 'SimpleITK', 'scipy', 'torch'): sys.modules[name] = None  # not installed\n"
            "import numpy as np\n"
            "from SegmentationLogic.imaging.modality import guess_modality, modality_warning\n"
            "mr = np.random.default_rng(0).uniform(0, 400, (40, 40, 20))\n"
            "print(modality_warning('total', 'CT', guess_modality(mr)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("This volume looks like MR") and "'total' is for CT" in out.stdout
