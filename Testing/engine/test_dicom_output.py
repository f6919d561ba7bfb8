"""DICOM SEG and RTSTRUCT outputs: valid files that put every segment where it belongs.

Synthetic series (written by SimpleITK/GDCM, Testing/support/dicomseries.py) in the
orientations that trip writers up: axial with the image top anterior and with it
posterior (the official tool's 2.18 mirroring bug), coronal, sagittal, feet-first with
files out of order, and oblique. The labelmap is built from the voxels the engine's reader
returns (label = a function of the pixel value), so the expected label of every source
pixel is known from the pixel value alone, independent of any geometry code. The files
are checked by dciodvfy and read back by readers written from the standard
(Testing/support/dicom_checks.py).
"""
import json
from pathlib import Path

import numpy as np
import nibabel as nib
import pytest

pytest.importorskip("highdicom")

from dicom_checks import dice, rtstruct_masks, seg_frames_by_source, seg_on_nifti_grid, validate  # noqa: E402
from dicomseries import rotation, write_series  # noqa: E402
from SegmentationLogic.outputs import dicom_source  # noqa: E402
from SegmentationLogic.outputs.dicom_outputs import plan_outputs  # noqa: E402
from SegmentationLogic.outputs.dicom_source import DicomOutputError  # noqa: E402
from SegmentationLogic.outputs.labelmap import multilabel_image  # noqa: E402
from SegmentationLogic.outputs.writer import AtomicWriter  # noqa: E402
from SegmentationLogic.request import BadRequestError, normalize_output_types  # noqa: E402

CLASSES = {1: "liver", 2: "kidney_left", 3: "vertebrae_L1", 4: "lung_nodules"}  # standard, modifier, fallback
ORIENTATIONS = {  # LPS row, column and slice directions (columns of the matrix)
    "axial": np.eye(3),
    "axial_posterior_up": np.diag([1.0, -1.0, -1.0]),
    "coronal": np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]]),
    "sagittal": np.array([[0.0, 0, -1], [1, 0, 0], [0, -1, 0]]),
    "feet_first": np.diag([-1.0, 1.0, -1.0]),
    "oblique": rotation(2, 25) @ rotation(0, 10),
}


def label_volume(shape=(9, 30, 34)):
    """Asymmetric labels (slices, rows, cols): blocks, a ring with a hole, a lone pixel."""
    lab = np.zeros(shape, np.uint8)
    lab[1:6, 3:12, 4:20] = 1
    lab[2:8, 15:27, 22:31] = 2
    z, y, x = np.indices(shape)
    ring = ((y - 20) ** 2 + (x - 10) ** 2 < 36) & ((y - 20) ** 2 + (x - 10) ** 2 >= 6)
    lab[(z >= 3) & (z <= 7) & ring] = 3
    lab[6, 5, 30] = 4
    return lab


FRAME_OF_REFERENCE = "1.2.826.0.1.3680043.2.1125.77.9"
PATIENT = {"0020|0052": FRAME_OF_REFERENCE, "0010|0020": "PAT-0001", "0010|0010": "Phantom^Test",
           "0020|0010": "S1", "0020|0011": "3"}


def write_case(folder, orientation, name_order=None, tags=PATIENT):
    lab = label_volume()
    hu = lab.astype(np.int16) * 200 - 900
    write_series(str(folder), hu, spacing=(0.8, 0.7, 2.5), direction=ORIENTATIONS[orientation], name_order=name_order,
                 extra_tags=tags)
    return lab


def engine_labelmap(folder):
    """What the pipeline hands to the writers: labels in the reader's NIfTI geometry."""
    from SegmentationLogic.imaging.read import load_image

    img = load_image(folder)
    data = np.asanyarray(img.dataobj).astype(np.float64)
    labels = np.clip(np.rint((data + 900) / 200), 0, 255).astype(np.uint8)
    return multilabel_image(labels, img, CLASSES), img


def write_outputs(source, out, types, labelmap):
    plan = plan_outputs(source, out, types, "total")
    writer = AtomicWriter()
    try:
        plan.write(writer, labelmap, CLASSES, "total")
        return writer.commit(), plan
    except BaseException:
        writer.abort()
        raise


def assert_valid(path):
    errors, unexpected, _ = validate(path)
    assert not errors, f"dciodvfy errors in {path.name}:\n" + "\n".join(errors)
    assert not unexpected, f"dciodvfy warnings not accepted in {path.name}:\n" + "\n".join(unexpected)


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_seg_and_rtstruct_put_every_label_on_its_source_pixel(orientation, tmp_path):
    order = [3, 0, 7, 1, 8, 2, 6, 4, 5] if orientation == "feet_first" else None
    lab = write_case(tmp_path / "series", orientation, order)
    labelmap, img = engine_labelmap(tmp_path / "series")
    files, plan = write_outputs(tmp_path / "series", tmp_path / "out" / "result", ["dicom_seg", "dicom_rtstruct"],
                                labelmap)
    seg_path, rt_path = plan.dicom["dicom_seg"], plan.dicom["dicom_rtstruct"]
    assert sorted(files) == sorted([seg_path, rt_path])
    assert seg_path.name == "result_seg.dcm" and rt_path.name == "result_rtstruct.dcm"
    assert not list((tmp_path / "out").glob(".*")), "temporary files left behind"
    for path in files:
        assert_valid(path)

    # the source slices as the files say (not as the writer sorted them), keyed by their UIDs
    import pydicom

    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted((tmp_path / "series").iterdir())]
    names = order if order is not None else list(range(len(sources)))
    expected = {i: lab[names.index(i)] for i in range(len(sources))}  # file IM<i> holds slice names.index(i)
    frames = seg_frames_by_source(seg_path, sources)
    assert sorted(frames) == sorted(CLASSES.values())
    for value, name in CLASSES.items():
        want = np.stack([expected[i] == value for i in range(len(sources))])
        assert np.array_equal(frames[name], want), f"{orientation}: SEG segment {name} is not on its source pixels"

    on_grid = seg_on_nifti_grid(seg_path, img)  # world coordinates: the same voxels as the NIfTI result
    for value, name in CLASSES.items():
        assert np.array_equal(on_grid[name], np.asanyarray(labelmap.dataobj) == value), name

    masks, rt = rtstruct_masks(rt_path, sources)
    assert [r.ROIName for r in rt.StructureSetROISequence] == list(CLASSES.values())
    for value, name in CLASSES.items():
        want = np.stack([expected[i] == value for i in range(len(sources))])
        covered = {i for i in range(len(sources)) if want[i].any()}
        assert {i for i in range(len(sources)) if masks[name][i].any()} == covered, f"{name}: slice coverage"
        assert dice(masks[name], want) > 0.97, f"{orientation}: RTSTRUCT {name} Dice {dice(masks[name], want):.3f}"


def test_segments_carry_codes_colours_and_algorithm(tmp_path):
    import pydicom

    from SegmentationLogic import terminology

    write_case(tmp_path / "series", "axial")
    labelmap, _ = engine_labelmap(tmp_path / "series")
    _, plan = write_outputs(tmp_path / "series", tmp_path / "seg.dcm", ["dicom_seg"], labelmap)
    ds = pydicom.dcmread(plan.dicom["dicom_seg"], stop_before_pixels=True)
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    by_label = {s.SegmentLabel: s for s in ds.SegmentSequence}
    kidney = by_label["kidney_left"]
    assert kidney.SegmentedPropertyTypeCodeSequence[0].CodeValue == terminology.entry("kidney_left").type.value
    modifier = kidney.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence[0]
    assert modifier.CodeMeaning == "Left"
    assert kidney.SegmentAlgorithmType == "AUTOMATIC"
    assert kidney.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "TotalSegmentator"
    nodule = by_label["lung_nodules"]
    scheme = nodule.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator
    if scheme == terminology.PRIVATE_SCHEME:  # a private code must be declared
        assert any(i.CodingSchemeDesignator == scheme for i in ds.CodingSchemeIdentificationSequence)
    # referencing the source: same study, frame of reference, every frame derived from a source image
    src = pydicom.dcmread(sorted((tmp_path / "series").iterdir())[0], stop_before_pixels=True)
    assert ds.StudyInstanceUID == src.StudyInstanceUID
    assert ds.FrameOfReferenceUID == src.FrameOfReferenceUID
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == src.SeriesInstanceUID
    assert len({tuple(k.RecommendedDisplayCIELabValue) for k in ds.SegmentSequence}) == len(CLASSES)


def test_output_types_are_parsed_like_the_official_cli():
    assert normalize_output_types(None) == ["nifti"]
    assert normalize_output_types(["nifti,dicom_seg", "dicom"]) == ["nifti", "dicom_seg", "dicom_rtstruct"]
    with pytest.raises(BadRequestError) as e:
        normalize_output_types(["dicom_sg"])
    assert "dicom_seg" in e.value.fix


def test_file_names_follow_the_official_tool(tmp_path):
    write_case(tmp_path / "series", "axial")
    folder = tmp_path / "outdir"
    folder.mkdir()
    plan = plan_outputs(tmp_path / "series", folder, ["nifti", "dicom_seg", "dicom_rtstruct"], "total")
    assert plan.nifti == folder / "total_segmentation.nii.gz"
    assert plan.dicom == {"dicom_seg": folder / "total_segmentation_seg.dcm",
                          "dicom_rtstruct": folder / "total_segmentation_rtstruct.dcm"}
    plan = plan_outputs(tmp_path / "series", tmp_path / "x" / "case.nii.gz", "dicom_seg,nifti", "total")
    assert plan.nifti == tmp_path / "x" / "case.nii.gz" and plan.dicom["dicom_seg"] == tmp_path / "x" / "case_seg.dcm"
    plan = plan_outputs(tmp_path / "series", tmp_path / "one.dcm", ["dicom_rtstruct"], "total")
    assert plan.dicom == {"dicom_rtstruct": tmp_path / "one.dcm"} and plan.nifti is None


def test_dicom_output_from_a_nifti_input_is_refused_before_inference(tmp_path, example):
    from SegmentationLogic.pipeline import Segmenter

    # an empty weights folder: the run would fail on missing weights if the check came later
    segmenter = Segmenter(device="cpu", weights_dir=tmp_path / "no_weights", download=False)
    with pytest.raises(DicomOutputError) as e:
        segmenter.segment(example("example_ct_sm.nii.gz"), tmp_path / "seg.dcm", quality="fast",
                          output_types=["dicom_seg"])
    assert "DICOM input" in e.value.cause and "nifti" in e.value.fix
    assert not (tmp_path / "seg.dcm").exists()


def test_missing_dicom_extra_names_the_fix(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "highdicom", None)  # as if not installed
    with pytest.raises(DicomOutputError) as e:
        dicom_source.require_dicom_extra()
    assert "highdicom" in e.value.cause and "[dicom]" in e.value.fix


def test_empty_segmentation_writes_nothing(tmp_path):
    write_case(tmp_path / "series", "axial")
    labelmap, img = engine_labelmap(tmp_path / "series")
    empty = nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine)
    with pytest.raises(DicomOutputError) as e:
        write_outputs(tmp_path / "series", tmp_path / "out" / "r", ["dicom_seg", "dicom_rtstruct"], empty)
    assert "empty" in e.value.cause
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_labelmap_of_another_series_is_refused(tmp_path):
    write_case(tmp_path / "series", "axial")
    labelmap, img = engine_labelmap(tmp_path / "series")
    other = nib.Nifti1Image(np.asanyarray(labelmap.dataobj)[:, :, :-1], img.affine)
    with pytest.raises(DicomOutputError) as e:
        write_outputs(tmp_path / "series", tmp_path / "r", ["dicom_seg"], other)
    assert "does not lie on the source" in e.value.cause


def test_an_anonymised_series_without_uids_still_gives_valid_files(tmp_path):
    """The official example series has empty Study/Series/Frame-of-reference UIDs (the official tool
    then writes a SEG that dciodvfy rejects); ours fills them and says so."""
    write_case(tmp_path / "series", "axial", tags={})  # no frame of reference, no patient id
    labelmap, _ = engine_labelmap(tmp_path / "series")
    plan = plan_outputs(tmp_path / "series", tmp_path / "out" / "r", ["dicom_seg", "dicom_rtstruct"], "total")
    assert any("FrameOfReferenceUID" in w for w in plan.series.warnings)
    writer = AtomicWriter()
    plan.write(writer, labelmap, CLASSES, "total")
    for path in writer.commit():
        assert_valid(path)


def test_a_zipped_series_is_referenced_like_its_folder(tmp_path):
    import tempfile
    import zipfile

    write_case(tmp_path / "series", "axial")
    labelmap, _ = engine_labelmap(tmp_path / "series")
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted((tmp_path / "series").iterdir()):
            zf.write(f, f"study/{f.name}")
    before = set(Path(tempfile.gettempdir()).glob("totalseg_dicom_out_*"))
    plan = plan_outputs(archive, tmp_path / "seg.dcm", ["dicom_seg"], "total")
    assert set(Path(tempfile.gettempdir()).glob("totalseg_dicom_out_*")) == before, "unpacked patient files left"
    from_folder = plan_outputs(tmp_path / "series", tmp_path / "seg2.dcm", ["dicom_seg"], "total")
    assert [d.SOPInstanceUID for d in plan.series.datasets] == [d.SOPInstanceUID for d in from_folder.series.datasets]
    writer = AtomicWriter()
    plan.write(writer, labelmap, CLASSES, "total")
    assert_valid(writer.commit()[0])


def test_cli_refuses_dicom_output_for_a_nifti_input_before_loading_models(tmp_path, example, capsys):
    from SegmentationLogic.cli import main

    rc = main(["segment", "-i", str(example("example_ct_sm.nii.gz")), "-o", str(tmp_path / "x.dcm"), "-ot",
               "dicom_seg", "--weights_dir", str(tmp_path / "none"), "--no_download", "--progress", "json"])
    assert rc == 1
    error = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()][-1]
    assert error["event"] == "error" and error["kind"] == "output" and "DICOM input" in error["cause"]
    assert main(["segment", "-i", "x", "-o", "y", "-ot", "rtstruct"]) == 1
    assert "Unknown output type 'rtstruct'" in capsys.readouterr().err


def test_request_carries_output_types_and_statistics_options():
    from SegmentationLogic.request import SegmentRequest

    req = SegmentRequest(input="a", output="b.dcm", output_types=["dicom_seg"], stats_aggregation="median",
                         statistics_extra=True, stats_include_incomplete=True)
    again = SegmentRequest.from_json(json.loads(json.dumps(req.to_json())))
    assert again == req and SegmentRequest(input="a").output_types == ["nifti"]


def test_only_the_slices_the_reader_used_are_referenced(tmp_path):
    """A localizer in the series folder: the reader drops it, so do the DICOM outputs."""
    import shutil

    import pydicom

    lab = write_case(tmp_path / "series", "axial")
    write_series(str(tmp_path / "scout"), np.full((1, 30, 34), -500, np.int16), direction=ORIENTATIONS["coronal"],
                 image_type="ORIGINAL\\PRIMARY\\LOCALIZER", extra_tags=PATIENT)
    shutil.copy(next((tmp_path / "scout").iterdir()), tmp_path / "series" / "scout.dcm")
    labelmap, _ = engine_labelmap(tmp_path / "series")
    _, plan = write_outputs(tmp_path / "series", tmp_path / "out" / "r", ["dicom_seg", "dicom_rtstruct"], labelmap)
    assert len(plan.series.datasets) == lab.shape[0]
    seg = pydicom.dcmread(plan.dicom["dicom_seg"], stop_before_pixels=True)
    referenced = {r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {d.SOPInstanceUID for d in plan.series.datasets}
    for path in plan.dicom.values():
        assert_valid(path)


def test_an_mr_series_is_referenced_as_mr(tmp_path):
    import pydicom

    lab = label_volume()
    write_series(str(tmp_path / "series"), lab.astype(np.int16) * 200 - 900, modality="MR",
                 direction=ORIENTATIONS["sagittal"], extra_tags=PATIENT)
    labelmap, _ = engine_labelmap(tmp_path / "series")
    _, plan = write_outputs(tmp_path / "series", tmp_path / "r", ["dicom_seg", "dicom_rtstruct"], labelmap)
    seg = pydicom.dcmread(plan.dicom["dicom_seg"], stop_before_pixels=True)
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPClassUID == \
        "1.2.840.10008.5.1.4.1.1.4"
    for path in plan.dicom.values():
        assert_valid(path)
