"""Reviewing a split in real MRML (slicer-core): what the surgeon sees, corrects and saves."""
import json

import nibabel as nib
import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

from SegmentationLogic.mrml import scene as mrml_scene  # noqa: E402
from SegmentationLogic.mrml import segmentation_import as si  # noqa: E402
from SegmentationLogic.mrml import vessel_review as review  # noqa: E402
from SegmentationLogic.vessels.io import OUTPUT_FILES  # noqa: E402
from SegmentationLogic.vessels.workflow import split_vessel_files  # noqa: E402
from vessel_phantoms import HEPATIC, PORTAL, make_phantom, score_split  # noqa: E402


@pytest.fixture(scope="module")
def scene():
    s = mrml_scene.new_scene()
    yield s
    mrml_scene.release_scene(s)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A touching phantom split with all support masks, as files."""
    folder = tmp_path_factory.mktemp("review")
    ph = make_phantom("touching", seed=2)
    files = ph.save(folder)
    out = folder / "out"
    split_vessel_files(files["liver_vessels"], out, liver=files["liver"],
                       portal_trunk=files["portal_vein_and_splenic_vein"], ivc=files["inferior_vena_cava"])
    meta = json.loads((out / OUTPUT_FILES["metadata"]).read_text())
    return ph, files, out, meta


@pytest.fixture
def loaded(scene, case):
    ph, files, out, meta = case
    ct = mrml_scene.load_volume(scene, files["liver"], name="ct")
    node = review.load_split(scene, out / OUTPUT_FILES["labeled"], ct, qc=meta)
    yield node
    scene.RemoveNode(node)
    scene.RemoveNode(ct)


def _segments(node):
    seg = node.GetSegmentation()
    return {seg.GetNthSegment(i).GetName(): seg.GetNthSegment(i) for i in range(seg.GetNumberOfSegments())}


def _labels(node):
    return review.current_labels(node)[0]


def _mid(segment):
    return list((segment.p0 + segment.p1) / 2)  # the phantom's affine is RAS mm


def _unsure(conf):
    return (conf > 0) & (conf < 0.75)


def test_load_shows_named_coloured_segments_with_terminology_and_surfaces(loaded, case):
    ph, _, out, meta = case
    segs = _segments(loaded)
    assert set(segs) == {"Portal vein branches", "Hepatic veins"}
    portal, hepatic = segs["Portal vein branches"], segs["Hepatic veins"]
    assert "SCT^32764006^Portal vein" in portal.GetTerminology()
    assert "SCT^8993003^Hepatic vein" in hepatic.GetTerminology()
    for s in (portal, hepatic):
        assert "SCT^123037004^Anatomical Structure" in s.GetTerminology()
        assert s.GetRepresentation(si.SURFACE) is not None and s.GetRepresentation(si.SURFACE).GetNumberOfPoints() > 0
    assert portal.GetColor() != hepatic.GetColor()
    on_disk = np.asanyarray(nib.load(str(out / OUTPUT_FILES["labeled"])).dataobj)
    assert np.array_equal(_labels(loaded), on_disk)
    assert review.get_qc(loaded) == meta["portal_hepatic_split_qc"]


def test_qc_table_and_warnings(loaded):
    qc = review.get_qc(loaded)
    rows = dict(review.qc_rows(qc))
    assert rows["Portal voxels"] == str(qc["portal_voxels"]) and rows["Portal fraction"].endswith("%")
    assert "Confidence" in rows and "Ambiguous voxels" in rows and rows["Skeleton used"] == "yes"
    assert review.warnings(qc) == qc["warnings"]
    assert review.warnings({"warnings": ["x"]}) == ["x"] and review.qc_rows({}) == []


def test_reassign_branch_flips_the_branch_and_updates_qc(loaded, case):
    ph = case[0]
    before = _labels(loaded)
    qc0 = review.get_qc(loaded)
    seg = next(s for s in ph.segments if s.cls == PORTAL and s.parent >= 0 and
               (before[ph.branch_ids == s.id + 1] == PORTAL).mean() > 0.95 and (ph.branch_ids == s.id + 1).sum() > 30)
    qc = review.reassign_branch(loaded, _mid(seg))
    after = _labels(loaded)
    flipped = (before == PORTAL) & (after == HEPATIC)
    assert flipped.sum() == qc["last_edit"]["voxels"] > 0
    assert (after[ph.branch_ids == seg.id + 1] == HEPATIC).mean() > 0.5   # the clicked branch changed class
    assert ((before != after) & (ph.branch_ids != seg.id + 1) & (ph.branch_ids > 0)).sum() < flipped.sum()
    assert qc["portal_voxels"] == qc0["portal_voxels"] - flipped.sum()
    assert qc["manual_edits"] == 1 and review.get_qc(loaded)["manual_edits"] == 1
    assert set(_segments(loaded)) == {"Portal vein branches", "Hepatic veins"}  # same segments, replaced
    # and back with an explicit class
    review.reassign_branch(loaded, _mid(seg), to="portal")
    assert (_labels(loaded)[ph.branch_ids == seg.id + 1] == PORTAL).mean() > 0.95


def test_confidence_overlay_and_unsure_places_show_where_to_look(loaded, case):
    ph, _, out, meta = case
    on_disk = np.asanyarray(nib.load(str(out / OUTPUT_FILES["confidence"])).dataobj)
    volume = review.confidence_volume(loaded)
    assert volume is not None and review.CONFIDENCE_NAME in volume.GetName()
    assert np.array_equal(review.confidence_array(loaded), on_disk)  # the map beside the split, on the CT grid
    display = volume.GetDisplayNode()
    assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == (0.5, 1.0) and display.GetApplyThreshold()
    unsure = review.unsure_node(loaded)
    segmentation = unsure.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1
    segment_id = segmentation.GetNthSegmentID(0)
    assert segmentation.GetSegment(segment_id).GetName() == review.UNSURE_NAME == "Unsure (< 0.75)"
    shown = unsure.GetDisplayNode()
    assert shown.GetSegmentVisibility2DOutline(segment_id) and not shown.GetSegmentVisibility2DFill(segment_id)
    # the pieces cover exactly the unsure vessel voxels, largest first, each centred near its voxels
    pieces = review.unsure_pieces(loaded)
    flagged = _unsure(on_disk)
    assert pieces and sum(p["voxels"] for p in pieces) == flagged.sum() == meta["portal_hepatic_split_qc"][
        "ambiguous_voxels"]
    assert [p["voxels"] for p in pieces] == sorted((p["voxels"] for p in pieces), reverse=True)
    ijk = np.linalg.inv(ph.affine) @ np.r_[pieces[0]["centroid_ras"], 1.0]
    nearest = np.abs(np.argwhere(flagged) - ijk[:3]).max(axis=1).min()
    assert nearest <= 3, "the first place to look is where the unsure voxels are"
    assert dict(review.qc_rows(review.get_qc(loaded)))["Unsure share"].endswith("%")
    # the overlay goes onto the slice views and comes off again; a place to look centres the views on it
    scene = loaded.GetScene()
    composite, view = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode"), scene.AddNewNodeByClass("vtkMRMLSliceNode")
    try:
        assert review.show_confidence_overlay(loaded, True) >= 1
        assert composite.GetForegroundVolumeID() == volume.GetID() and composite.GetForegroundOpacity() > 0
        review.show_confidence_overlay(loaded, False)
        assert composite.GetForegroundVolumeID() is None
        review.jump_slices(scene, pieces[0]["centroid_ras"])
        centre = [view.GetSliceToRAS().GetElement(i, 3) for i in range(3)]
        assert np.allclose(centre, pieces[0]["centroid_ras"], atol=1e-3)
    finally:
        scene.RemoveNode(composite)
        scene.RemoveNode(view)


def test_a_reassigned_branch_counts_as_sure(loaded, case):
    ph = case[0]
    before, conf_before = _labels(loaded), review.confidence_array(loaded)
    seg = next(s for s in ph.segments if s.cls == PORTAL and s.parent >= 0 and (ph.branch_ids == s.id + 1).sum() > 30)
    qc = review.reassign_branch(loaded, _mid(seg))
    after, conf = _labels(loaded), review.confidence_array(loaded)
    changed = before != after
    assert changed.any() and (conf[changed] == 1.0).all()  # the surgeon decided these
    assert np.array_equal(conf[~changed], conf_before[~changed])
    assert qc["ambiguous_voxels"] == _unsure(conf).sum() <= _unsure(conf_before).sum()
    assert sum(p["voxels"] for p in review.unsure_pieces(loaded)) == _unsure(conf).sum()


def _descendants(ph, sid):
    out, stack = [], [sid]
    while stack:
        s = stack.pop()
        out.append(s)
        stack += [c.id for c in ph.segments if c.parent == s]
    return out


def test_reassign_subtree_flips_everything_beyond_the_branch(loaded, case):
    ph = case[0]
    before = _labels(loaded)
    seg = max((s for s in ph.segments if s.cls == PORTAL and s.generation >= 1),
              key=lambda s: len(_descendants(ph, s.id)) if len(_descendants(ph, s.id)) < 10 else 0)
    subtree = np.isin(ph.branch_ids, [i + 1 for i in _descendants(ph, seg.id)])
    assert len(_descendants(ph, seg.id)) >= 3
    review.reassign_branch(loaded, _mid(seg), scope="subtree")
    after = _labels(loaded)
    assert (after[subtree] == HEPATIC).mean() > 0.9
    rest = (ph.truth > 0) & ~subtree & (ph.vessels > 0)
    assert (after[rest] == before[rest]).mean() > 0.97


def test_rerun_with_seed_points_fixes_a_bad_split(scene, case, tmp_path):
    ph, files, _, _ = case
    bad_dir = tmp_path / "no_ivc"
    split_vessel_files(files["liver_vessels"], bad_dir, portal_trunk=files["portal_vein_and_splenic_vein"])
    ct = mrml_scene.load_volume(scene, files["liver"], name="ct2")
    node = review.load_split(scene, bad_dir / OUTPUT_FILES["labeled"], ct,
                             qc=json.loads((bad_dir / OUTPUT_FILES["metadata"]).read_text()))
    assert score_split(_labels(node), ph)["accuracy"] < 0.9
    volume, unsure, map_before = review.confidence_volume(node), review.unsure_node(node), review.confidence_array(node)
    roots = [_mid(s) for s in ph.segments if s.parent == -1 and s.cls == HEPATIC]
    qc = review.rerun_split(node, hepatic_points_ras=roots)
    assert score_split(_labels(node), ph)["accuracy"] >= 0.95
    # the overlay and the unsure segment show the new split's map (same nodes, refreshed)
    assert review.confidence_volume(node) is volume and review.unsure_node(node) is unsure
    conf = review.confidence_array(node)
    assert not np.array_equal(conf, map_before) and ((conf > 0) == (ph.vessels > 0)).all()
    assert qc["ambiguous_voxels"] == _unsure(conf).sum() == sum(p["voxels"] for p in review.unsure_pieces(node))
    assert qc["user_seed_points"] == {"portal": 0, "hepatic": 3} and qc["seed_sources"]["hepatic"] == "user"
    assert review.get_qc(node) == qc
    # the recorded trunk file was used again: its seed did not fall back
    assert qc["seed_sources"]["portal"] == "portal_trunk"


def test_save_review_writes_files_metadata_and_seg_nrrd(loaded, case, tmp_path):
    ph = case[0]
    seg = next(s for s in ph.segments if s.cls == HEPATIC and s.parent >= 0 and (ph.branch_ids == s.id + 1).sum() > 30)
    review.reassign_branch(loaded, _mid(seg))
    current = _labels(loaded)
    paths = review.save_review(loaded, tmp_path)
    names = {p.name for p in paths}
    assert {OUTPUT_FILES["labeled"], OUTPUT_FILES["portal"], OUTPUT_FILES["hepatic"], OUTPUT_FILES["metadata"],
            OUTPUT_FILES["confidence"], "liver_vessels_split.seg.nrrd"} == names
    saved = np.asanyarray(nib.load(str(tmp_path / OUTPUT_FILES["confidence"])).dataobj)
    assert np.array_equal(saved, review.confidence_array(loaded)), "the map as the review left it, not the split's"
    assert (saved[current > 0] > 0).all() and not saved[current == 0].any()
    img = nib.load(str(tmp_path / OUTPUT_FILES["labeled"]))
    assert np.array_equal(np.asanyarray(img.dataobj), current) and np.allclose(img.affine, ph.affine)
    meta = json.loads((tmp_path / OUTPUT_FILES["metadata"]).read_text())
    assert meta["portal_hepatic_split_qc"]["manual_edits"] == 1 and meta["review"]["manual_edits"] == 1
    back = mrml_scene.load_segmentation(loaded.GetScene(), tmp_path / "liver_vessels_split.seg.nrrd")
    assert set(_segments(back)) == {"Portal vein branches", "Hepatic veins"}
    assert "32764006" in _segments(back)["Portal vein branches"].GetTerminology()
    loaded.GetScene().RemoveNode(back)


def test_review_errors_are_clear(scene, loaded, case):
    ph, files, out, _ = case
    with pytest.raises(review.ReviewError, match="No vessel near the point"):
        review.reassign_branch(loaded, [-500.0, -500.0, -500.0])
    with pytest.raises(review.ReviewError, match="Unknown scope"):
        review.reassign_branch(loaded, [0, 0, 0], scope="tree")
    ct = loaded.GetScene().GetNodeByID(loaded.GetAttribute(review.ATTR_REFERENCE))
    with pytest.raises(review.ReviewError, match="has shape"):
        review.load_split(scene, np.zeros((3, 3, 3), np.uint8), ct)
    with pytest.raises(review.ReviewError, match="label values"):
        review.load_split(scene, nib.Nifti1Image((ph.truth * 3).astype(np.uint8), ph.affine), ct)
    with pytest.raises(review.ReviewError, match="does not exist"):
        review.load_split(scene, out / "missing.nii.gz", ct)
    n_nodes = scene.GetNumberOfNodes()
    with pytest.raises(review.ReviewError, match="not on the CT's grid"):
        review.rerun_split(loaded, ivc=np.zeros((2, 2, 2)))
    assert scene.GetNumberOfNodes() == n_nodes  # no temporary nodes left behind
