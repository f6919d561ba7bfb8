"""Importing results into real MRML (slicer-core): what a user sees in Slicer's segment list and 3D view."""
import nibabel as nib
import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

from vtk.util import numpy_support  # noqa: E402

from SegmentationLogic.mrml import geometry, surfaces  # noqa: E402
from SegmentationLogic.mrml import scene as mrml_scene  # noqa: E402
from SegmentationLogic.mrml import segmentation_import as si  # noqa: E402
from SegmentationLogic import terminology as T  # noqa: E402
from SegmentationLogic.catalogue import load_catalogue  # noqa: E402
from SegmentationLogic.errors import Cancelled, SceneImportError  # noqa: E402

TOTAL = load_catalogue().task("total").classes


@pytest.fixture(scope="session")
def scene():
    return mrml_scene.new_scene()


@pytest.fixture(scope="session")
def ct(scene, example):
    return mrml_scene.load_volume(scene, example("example_ct_sm.nii.gz"))


@pytest.fixture(scope="session")
def reference(example):
    """The official 117-class result for the example CT, as an array."""
    return np.asanyarray(nib.load(example("example_seg.nii.gz")).dataobj)


@pytest.fixture(scope="session")
def imported(scene, ct, example):
    """One import of example_seg (total, 117 classes) onto the example CT, shared by the checks."""
    return si.import_labelmap(scene, example("example_seg.nii.gz"), TOTAL, reference_volume_node=ct, task="total")


def _segments(node):
    seg = node.GetSegmentation()
    return [seg.GetNthSegment(i) for i in range(seg.GetNumberOfSegments())]


def _tag(segment, key):
    value = vtk.reference("")
    return value.get() if segment.GetTag(key, value) else None


def _labelmap_array(node, reference_node):
    """The segmentation's shared labelmap as an array on the reference volume's lattice."""
    image = _segments(node)[0].GetRepresentation(si.BINARY)
    dims = reference_node.GetImageData().GetDimensions()
    out = np.zeros(dims, dtype=np.int32)
    x0, x1, y0, y1, z0, z1 = image.GetExtent()
    data = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    out[x0:x1 + 1, y0:y1 + 1, z0:z1 + 1] = data.reshape(z1 - z0 + 1, y1 - y0 + 1, x1 - x0 + 1).transpose(2, 1, 0)
    return out


def _matrix(getter):
    m = vtk.vtkMatrix4x4()
    getter(m)
    return geometry.matrix_to_numpy(m)


def test_segments_have_standard_names_colours_terminology_and_official_values(imported, reference):
    segments = _segments(imported)
    present = sorted(int(v) for v in np.unique(reference) if v)
    assert len(present) == 41 and len(segments) == len(present)
    assert sorted(s.GetLabelValue() for s in segments) == present
    for s in segments:
        class_name = _tag(s, si.TAG_CLASS)
        assert TOTAL[s.GetLabelValue()] == class_name  # label value = official value of that class
        assert s.GetName() == T.standard_name(class_name)
        assert s.GetColor() == pytest.approx(T.recommended_color(class_name))
        assert s.GetTerminology() == T.terminology_string(class_name)
        assert _tag(s, si.TAG_TASK) == "total"
    # a user looks segments up by the name they see
    seg = imported.GetSegmentation()
    left_kidney = seg.GetSegment(seg.GetSegmentIdBySegmentName("Left kidney"))
    assert left_kidney.GetLabelValue() == 3 and "SCT^7771000^Left" in left_kidney.GetTerminology()
    assert seg.GetSegment(seg.GetSegmentIdBySegmentName("Liver")).GetColor() == pytest.approx((40 / 255, 140 / 255, 40 / 255))


def test_one_shared_labelmap_holds_exactly_the_result(imported, ct, reference):
    seg = imported.GetSegmentation()
    assert seg.GetNumberOfLayers() == 1  # one multilabel image, not one image per class
    assert np.array_equal(_labelmap_array(imported, ct), reference)
    image = _segments(imported)[0].GetRepresentation(si.BINARY)
    assert np.allclose(_matrix(image.GetImageToWorldMatrix), _matrix(ct.GetIJKToRASMatrix))
    assert imported.GetNodeReferenceID(imported.GetReferenceImageGeometryReferenceRole()) == ct.GetID()


def test_closed_surfaces_exist_and_enclose_each_structure(imported, reference):
    display = imported.GetDisplayNode()
    assert display.GetVisibility() and display.GetPreferredDisplayRepresentationName3D() == si.SURFACE
    assert imported.GetSegmentation().ContainsRepresentation(si.SURFACE)
    voxel_mm3 = 3.0 ** 3
    for s in _segments(imported):
        surface = s.GetRepresentation(si.SURFACE)
        assert surface is not None and surface.GetNumberOfPolys() > 0, s.GetName()
        voxels = int((reference == s.GetLabelValue()).sum())
        if voxels < 500:
            continue  # tiny or thin structures shrink noticeably under smoothing
        properties = vtk.vtkMassProperties()
        properties.SetInputData(surface)
        properties.Update()
        # closed and outward-facing: the enclosed volume is close to the voxel volume (smoothing
        # shrinks thin structures such as the pancreas at 3 mm by ~25%, as Slicer's own conversion does)
        compact = _tag(s, si.TAG_CLASS) in ("liver", "spleen", "kidney_left", "kidney_right")
        assert properties.GetVolume() == pytest.approx(voxels * voxel_mm3, rel=0.05 if compact else 0.3), s.GetName()
        assert _signed_volume(surface) > 0, s.GetName()
    liver = imported.GetSegmentation().GetSegment("liver").GetRepresentation(si.SURFACE)
    lo, hi = np.array(liver.GetBounds()[::2]), np.array(liver.GetBounds()[1::2])
    ijk = np.argwhere(reference == 5)
    world = ijk * 3.0 + np.array([-177.956, 11.319, 94.302])
    assert np.all(lo > world.min(axis=0) - 3) and np.all(hi < world.max(axis=0) + 3)


def _signed_volume(poly):
    points = numpy_support.vtk_to_numpy(poly.GetPoints().GetData()).astype(float)
    tris = numpy_support.vtk_to_numpy(poly.GetPolys().GetConnectivityArray()).reshape(-1, 3)
    p0, p1, p2 = points[tris[:, 0]], points[tris[:, 1]], points[tris[:, 2]]
    return float(np.einsum("ij,ij->i", p0, np.cross(p1, p2)).sum() / 6)


def test_class_names_when_standard_names_are_off(scene, ct, example):
    node = si.import_labelmap(scene, example("example_seg_roi_subset.nii.gz"), TOTAL, reference_volume_node=ct,
                              use_standard_names=False, create_surfaces=False)
    try:
        names = [s.GetName() for s in _segments(node)]
        assert names == ["liver"]  # brain is outside this CT
        assert _segments(node)[0].GetTerminology() == T.terminology_string("liver")  # still tagged
        assert not node.GetSegmentation().ContainsRepresentation(si.SURFACE)
    finally:
        scene.RemoveNode(node)


def test_seg_nrrd_round_trip(scene, imported, ct, reference, tmp_path):
    path = mrml_scene.save_segmentation(imported, tmp_path / "result.seg.nrrd")
    assert path.is_file() and [p.name for p in tmp_path.iterdir()] == ["result.seg.nrrd"]  # no temp file left
    loaded = mrml_scene.load_segmentation(scene, path)
    try:
        before = {s.GetName(): s for s in _segments(imported)}
        after = {s.GetName(): s for s in _segments(loaded)}
        assert before.keys() == after.keys()
        for name, s in after.items():
            assert s.GetLabelValue() == before[name].GetLabelValue()
            assert s.GetColor() == pytest.approx(before[name].GetColor(), abs=1e-6)
            assert s.GetTerminology() == before[name].GetTerminology()
            assert _tag(s, si.TAG_CLASS) == _tag(before[name], si.TAG_CLASS)
            assert s.GetNameAutoGenerated() and s.GetColorAutoGenerated()
        assert np.array_equal(_labelmap_array(loaded, ct), reference)
    finally:
        scene.RemoveNode(loaded)


def test_rerun_into_the_same_node_replaces_its_segments(scene, ct, example):
    node = si.import_labelmap(scene, example("example_seg.nii.gz"), TOTAL, reference_volume_node=ct,
                              create_surfaces=False)
    try:
        count = scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
        node.GetDisplayNode().SetSegmentVisibility("liver", False)  # the user hid the old liver
        again = si.import_labelmap(scene, example("example_seg_roi_subset.nii.gz"), TOTAL, reference_volume_node=ct,
                                   segmentation_node=node)
        assert again is node and scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == count
        assert [s.GetName() for s in _segments(node)] == ["Liver"]  # no stale kidneys, no duplicate liver
        assert node.GetDisplayNode().GetSegmentVisibility("liver")  # a new result starts visible
        si.import_labelmap(scene, example("example_seg.nii.gz"), TOTAL, reference_volume_node=ct, segmentation_node=node)
        names = [s.GetName() for s in _segments(node)]
        assert len(names) == len(set(names)) == 41
        assert node.GetSegmentation().GetNumberOfLayers() == 1
    finally:
        scene.RemoveNode(node)


def _scene_state(scene):
    nodes = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
    return sorted(n.GetID() for n in nodes)


def test_cancel_or_failure_leaves_the_scene_untouched(scene, ct, example):
    node = si.import_labelmap(scene, example("example_seg_roi_subset.nii.gz"), TOTAL, reference_volume_node=ct,
                              create_surfaces=False, name="user's segmentation")
    try:
        state = _scene_state(scene)

        def cancel_at_surfaces(stage, fraction, message):
            if "surfaces" in message:
                raise Cancelled()

        for target in (node, None):  # the user's existing node, and a new node
            with pytest.raises(Cancelled):
                si.import_labelmap(scene, example("example_seg.nii.gz"), TOTAL, reference_volume_node=ct,
                                   segmentation_node=target, progress=cancel_at_surfaces)
            assert _scene_state(scene) == state  # no partial node, no colour table, nothing
            assert [s.GetName() for s in _segments(node)] == ["Liver"] and node.GetName() == "user's segmentation"

        bad = nib.Nifti1Image(np.full((4, 4, 4), 0.5, dtype=np.float32), np.eye(4))
        with pytest.raises(SceneImportError, match="fractional values"):
            si.import_labelmap(scene, bad, TOTAL, segmentation_node=node)
        sheared = np.eye(4)
        sheared[0, 1] = 0.5
        with pytest.raises(SceneImportError, match="sheared"):
            si.import_labelmap(scene, nib.Nifti1Image(np.ones((4, 4, 4), np.uint8), sheared), TOTAL)
        far = np.eye(4)
        far[:3, 3] = 5000.0  # a result that belongs to another image
        with pytest.raises(SceneImportError, match="does not overlap"):
            si.import_labelmap(scene, nib.Nifti1Image(np.ones((4, 4, 4), np.uint8), far), TOTAL,
                               reference_volume_node=ct)
        with pytest.raises(SceneImportError, match="3D labelmap"):
            si.import_labelmap(scene, nib.Nifti1Image(np.ones((4, 4, 4, 2), np.uint8), np.eye(4)), TOTAL)
        assert _scene_state(scene) == state
        assert [s.GetName() for s in _segments(node)] == ["Liver"]
    finally:
        scene.RemoveNode(node)


def test_labels_outside_the_class_map_are_kept(scene):
    data = np.zeros((10, 10, 10), np.uint8)
    data[2:5, 2:5, 2:5] = 5
    data[6:9, 6:9, 6:9] = 200  # not a class of the task
    node = si.import_labelmap(scene, nib.Nifti1Image(data, np.eye(4)), TOTAL)
    try:
        assert [(s.GetName(), s.GetLabelValue()) for s in _segments(node)] == [("Liver", 5), ("Label 200", 200)]
    finally:
        scene.RemoveNode(node)


def test_dicom_series_result_lands_on_the_series_lattice(scene, example):
    """The engine writes DICOM results in NIfTI (LAS) order; Slicer reads the series in
    DICOM order. The import must put every label on the right voxel of the loaded series."""
    series = mrml_scene.load_volume(scene, example("example_ct_dicom"))
    assert series.GetImageData().GetDimensions() == (512, 512, 20)
    result = nib.load(example("example_seg_dicom.nii.gz"))
    node = si.import_labelmap(scene, result, TOTAL, reference_volume_node=series)
    try:
        image = _segments(node)[0].GetRepresentation(si.BINARY)
        assert np.allclose(_matrix(image.GetImageToWorldMatrix), _matrix(series.GetIJKToRASMatrix))
        on_series = _labelmap_array(node, series)
        # the same physical voxels: map series voxel centres through both affines
        ijk = np.argwhere(on_series > 0)[::97]
        ras = ijk @ _matrix(series.GetIJKToRASMatrix)[:3, :3].T + _matrix(series.GetIJKToRASMatrix)[:3, 3]
        in_result = np.rint(np.linalg.solve(result.affine[:3, :3], (ras - result.affine[:3, 3]).T).T).astype(int)
        data = np.asanyarray(result.dataobj)
        assert np.array_equal(on_series[tuple(ijk.T)], data[tuple(in_result.T)])
        assert (on_series > 0).sum() == (data > 0).sum()
        assert len(_segments(node)) == len(np.unique(data)) - 1
    finally:
        scene.RemoveNode(node)
        scene.RemoveNode(series)


def test_without_surface_nets_slicer_conversion_makes_the_surfaces(scene, ct, example, reference, monkeypatch):
    """Older Slicer/VTK without vtkSurfaceNets3D: Slicer's own conversion gives the surfaces."""
    monkeypatch.setattr(surfaces, "surface_nets_available", lambda: False)
    node = si.import_labelmap(scene, example("example_seg.nii.gz"), TOTAL, reference_volume_node=ct)
    try:
        liver = node.GetSegmentation().GetSegment("liver")
        properties = vtk.vtkMassProperties()
        properties.SetInputData(liver.GetRepresentation(si.SURFACE))
        properties.Update()
        assert properties.GetVolume() == pytest.approx((reference == 5).sum() * 27.0, rel=0.05)
        assert all(s.GetRepresentation(si.SURFACE).GetNumberOfPolys() > 0 for s in _segments(node))
    finally:
        scene.RemoveNode(node)


def test_volume_under_a_transform_gets_the_result_where_it_shows(scene, example, reference):
    """A volume moved by a linear transform (registration, manual alignment): the segmentation
    follows the same transform, and its reference geometry (the lattice Segment Editor
    paints on) is the volume's lattice, not transformed a second time."""
    volume = mrml_scene.load_volume(scene, example("example_ct_sm.nii.gz"), name="CT moved")
    moved = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    to_parent = vtk.vtkTransform()
    to_parent.Translate(10.0, -20.0, 5.0)
    to_parent.RotateZ(30.0)
    moved.SetMatrixTransformToParent(to_parent.GetMatrix())
    volume.SetAndObserveTransformNodeID(moved.GetID())
    node = si.import_labelmap(scene, example("example_seg.nii.gz"), TOTAL, reference_volume_node=volume)
    try:
        assert node.GetTransformNodeID() == moved.GetID()
        geometry_image = slicer.vtkOrientedImageData()
        slicer.vtkSegmentationConverter.DeserializeImageGeometry(
            node.GetSegmentation().GetConversionParameter(
                slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()), geometry_image)
        assert np.allclose(_matrix(geometry_image.GetImageToWorldMatrix), _matrix(volume.GetIJKToRASMatrix))
        assert geometry_image.GetDimensions() == volume.GetImageData().GetDimensions()
        # in the world (what the views show) the liver surface wraps the moved volume's liver voxels
        to_world = vtk.vtkMatrix4x4()
        node.GetParentTransformNode().GetMatrixTransformToWorld(to_world)
        surface = node.GetSegmentation().GetSegment("liver").GetRepresentation(si.SURFACE)
        points = numpy_support.vtk_to_numpy(surface.GetPoints().GetData()).astype(float)
        world = points @ geometry.matrix_to_numpy(to_world)[:3, :3].T + geometry.matrix_to_numpy(to_world)[:3, 3]
        voxel_to_world = geometry.matrix_to_numpy(to_world) @ _matrix(volume.GetIJKToRASMatrix)
        ijk = np.linalg.solve(voxel_to_world, np.c_[world, np.ones(len(world))].T).T[:, :3]
        liver = np.argwhere(reference == 5)
        assert np.all(np.abs(ijk.min(axis=0) - liver.min(axis=0)) < 1.0)
        assert np.all(np.abs(ijk.max(axis=0) - liver.max(axis=0)) < 1.0)
    finally:
        for n in (node, volume, moved):
            scene.RemoveNode(n)


def test_a_labelmap_file_reads_as_nibabel_reads_it_also_oblique_and_flipped(tmp_path):
    """Result files are read with SimpleITK (Slicer ships it; a Slicer that only uses a segmentation
    server has no nibabel): the same voxels in the same order, the same voxel-to-RAS geometry."""
    data = np.random.default_rng(0).integers(0, 5, (7, 6, 5)).astype(np.uint8)
    a = 0.3
    rotation = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([-0.8, 1.5, 2.0])
    affine[:3, 3] = [10.0, -20.0, 30.0]
    path = tmp_path / "labels.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(path))
    labels, read_affine = si.read_labelmap(path)
    assert np.array_equal(labels, data) and np.allclose(read_affine, affine, atol=1e-5)
    (tmp_path / "broken.nii.gz").write_bytes(b"not an image")
    with pytest.raises(SceneImportError, match="Could not read the labelmap"):
        si.read_labelmap(tmp_path / "broken.nii.gz")
