"""Put a segmentation result into a Slicer scene: one multilabel import, names,
standard terminology, colours and 3D surfaces.

No Qt and no globals: every function takes the scene or the nodes it works on, so the
same code runs in Slicer (scene = slicer.mrmlScene) and in plain Python with the
`slicer-core` package (scene = new_scene()).

    from SegmentationLogic.slicer_import import import_labelmap
    node = import_labelmap(scene, result.labelmap, result.class_map,
                           reference_volume_node=volume, segmentation_node=None)

How `import_labelmap` works, and why:
- The labelmap becomes ONE shared binary labelmap: every segment references the same
  image and carries its official label value (what Slicer's own multilabel import makes;
  nothing is written per class). Its voxel lattice is put onto the reference volume's
  lattice when they differ only by axis order or flips (a DICOM series read by Slicer
  versus the engine's NIfTI orientation), so Segment Editor works on the volume's grid.
- Closed surfaces for all segments come from one multi-label SurfaceNets pass with
  SurfaceNets' own (joint) smoothing, split per label: one pass over the voxels
  instead of one per segment, and touching organs share their boundary. The
  segmentation's conversion parameters are set to the same method, so a surface that
  Slicer regenerates after an edit looks the same. Without vtkSurfaceNets3D (old VTK)
  Slicer's standard conversion is used.
- All-or-nothing: segments and surfaces are built detached from the scene; only then
  are they swapped into the target node (a new node is added to the scene only at that
  point). On any error or cancel the scene is as it was: no partial node, no colour
  table node, the user's existing segmentation untouched.
"""
import logging
import os
from pathlib import Path

import numpy as np

from . import terminology
from .errors import SceneImportError
from .system.files import atomic_path

log = logging.getLogger(__name__)

BINARY = "Binary labelmap"
SURFACE = "Closed surface"
SMOOTHING_FACTOR = 0.5  # Slicer's default closed-surface smoothing factor
TAG_CLASS = "TotalSegmentator.ClassName"
TAG_TASK = "TotalSegmentator.Task"


def _slicer():
    import slicer  # Slicer's own module, or slicer-core's

    return slicer


def _vtk():
    import vtk

    return vtk


# -- scene and logics --------------------------------------------------------------------
_HEADLESS = {}  # scene address -> (scene, application logic, {name: logic}) for slicer-core scenes


def _in_slicer_app(scene):
    slicer = _slicer()
    return hasattr(slicer, "app") and scene is getattr(slicer, "mrmlScene", None)


def _headless_logics(scene):
    """Module logics bound to a scene outside the Slicer application (slicer-core)."""
    key = scene.GetAddressAsString("vtkMRMLScene")
    if key not in _HEADLESS:
        slicer = _slicer()
        app = slicer.vtkSlicerApplicationLogic()
        app.SetMRMLScene(scene)
        logics = {}
        # Colors first and under this name: volume display nodes look their colour table up there.
        for name, cls in (("Colors", slicer.vtkSlicerColorLogic), ("Volumes", slicer.vtkSlicerVolumesLogic),
                          ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic)):
            logic = cls()
            logic.SetMRMLApplicationLogic(app)
            logic.SetMRMLScene(scene)
            app.SetModuleLogic(name, logic)
            logics[name] = logic
        _HEADLESS[key] = (scene, app, logics)
    return _HEADLESS[key][2]


def _logic(scene, name):
    if _in_slicer_app(scene):
        return getattr(_slicer().modules, name.lower()).logic()
    return _headless_logics(scene)[name]


def ensure_converter_rules():
    """Register the labelmap <-> surface conversion rules (Slicer's Segmentations module
    does this at start-up; slicer-core has none until someone registers them)."""
    slicer = _slicer()
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    rules = factory.GetConverterRules()
    have = {rules[i].GetName() for i in range(len(rules))} if isinstance(rules, (list, tuple)) else set()
    for cls in (slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule, slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule):
        rule = cls()
        if rule.GetName() not in have:
            factory.RegisterConverterRule(rule)


def new_scene():
    """An empty MRML scene with the logics this module needs (for slicer-core, batch, tests)."""
    ensure_converter_rules()
    scene = _slicer().vtkMRMLScene()
    _headless_logics(scene)
    return scene


def release_scene(scene):
    """Forget the logics new_scene() attached (lets the scene be freed)."""
    _HEADLESS.pop(scene.GetAddressAsString("vtkMRMLScene"), None)
    scene.Clear(1)


# -- files -------------------------------------------------------------------------------
def load_volume(scene, path, name=None):
    """Load a NIfTI/NRRD/... file, or a folder holding one DICOM series, as a scalar volume node."""
    path = Path(path)
    vtk = _vtk()
    files = vtk.vtkStringArray()
    if path.is_dir():
        members = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if not members:
            raise SceneImportError(f"The folder {path} holds no files.", "Choose a folder that contains a DICOM series.")
        for p in members:
            files.InsertNextValue(str(p))
        first = members[0]
    elif path.is_file():
        first = path
    else:
        raise SceneImportError(f"{path} does not exist.", "Check the path.")
    if name is None:
        name = path.name.split(".")[0] if path.is_file() else path.name
    node = _logic(scene, "Volumes").AddArchetypeVolume(str(first), name, 0, files)
    if node is None or node.GetImageData() is None:
        raise SceneImportError(f"Slicer could not read {path} as an image.",
                               "Check that it is a NIfTI, NRRD or DICOM image and not damaged.")
    return node


def save_segmentation(node, path):
    """Write a segmentation node to `.seg.nrrd` (written to a hidden temporary name, then
    renamed; the user's umask sets its permissions, as for any file they write)."""
    slicer = _slicer()
    path = Path(path)
    if not str(path).endswith(".seg.nrrd"):
        raise SceneImportError(f"{path.name}: a segmentation is saved as .seg.nrrd.", "Use a file name ending in .seg.nrrd.")
    with atomic_path(path, ".seg.nrrd") as tmp:
        storage = slicer.vtkMRMLSegmentationStorageNode()
        storage.SetFileName(str(tmp))
        storage.SetUseCompression(1)
        if not storage.WriteData(node):
            raise SceneImportError(f"Could not write {path}.", "Check free disk space and write permission.")
    return path


def is_our_segmentation(path):
    """Whether the .seg.nrrd at `path` was written by this extension (its segments carry our
    class tag): a batch run may replace it without --overwrite."""
    try:
        with open(path, "rb") as f:
            header = f.read(1 << 20).split(b"\n\n", 1)[0]
    except OSError:
        return False
    return header.startswith(b"NRRD") and TAG_CLASS.encode() in header


def load_segmentation(scene, path, name=None):
    """Read a `.seg.nrrd` into a new segmentation node."""
    slicer = _slicer()
    ensure_converter_rules()
    path = Path(path)
    node = slicer.vtkMRMLSegmentationNode()
    if name is None:
        name = path.name[: -len(".seg.nrrd")] if path.name.endswith(".seg.nrrd") else path.stem
    node.SetName(name)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        raise SceneImportError(f"Could not read the segmentation {path}.", "Check that the file is a Slicer .seg.nrrd.")
    scene.AddNode(storage)
    scene.AddNode(node)
    node.SetAndObserveStorageNodeID(storage.GetID())
    node.CreateDefaultDisplayNodes()
    return node


# -- labelmap -> arrays --------------------------------------------------------------------
def _read_labelmap(labelmap):
    """(integer array indexed [i, j, k], 4x4 voxel-to-RAS affine) from a nibabel image or a path."""
    import nibabel as nib

    if isinstance(labelmap, (str, os.PathLike)):
        try:
            labelmap = nib.load(str(labelmap))
        except Exception as e:
            raise SceneImportError(f"Could not read the labelmap {labelmap}: {e}",
                                   "Check that the file is a NIfTI labelmap written by the engine.") from e
    data = np.asanyarray(labelmap.dataobj)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise SceneImportError(f"The labelmap has shape {data.shape}; a 3D labelmap is needed.",
                               "Import the 3D result the engine wrote for this volume.")
    if not np.issubdtype(data.dtype, np.integer):
        rounded = np.rint(data)
        if not np.array_equal(rounded, data):
            raise SceneImportError("The labelmap holds fractional values, not label values.",
                                   "Import the engine's labelmap, not an intensity image or a probability map.")
        data = rounded
    top = int(data.max()) if data.size else 0
    if data.size and int(data.min()) < 0:
        raise SceneImportError("The labelmap holds negative values.", "Import the engine's labelmap (values 0..N).")
    dtype = np.uint8 if top < 256 else np.uint16 if top < 65536 else np.int32
    return np.asarray(data, dtype=dtype), np.asarray(labelmap.affine, dtype=float)


def _check_affine(affine):
    m = affine[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    if np.any(spacing <= 0) or not np.all(np.isfinite(affine)):
        raise SceneImportError("The labelmap has a degenerate geometry (zero voxel size).",
                               "Import the labelmap the engine wrote for this volume.")
    directions = m / spacing
    if np.abs(directions.T @ directions - np.eye(3)).max() > 1e-4:
        raise SceneImportError("The labelmap's voxel axes are not perpendicular (sheared geometry), which Slicer "
                               "cannot represent.", "Resample the image to an orthogonal grid before segmenting.")


def _matrix_to_numpy(matrix):
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _numpy_to_matrix(array):
    matrix = _vtk().vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def _align_to_reference(data, affine, reference_volume_node):
    """Re-index the labelmap onto the reference volume's voxel lattice when it is the same
    lattice in another axis order or direction (exact: a transpose and flips, no resampling).
    Returns (data, affine, index offset of data[0,0,0] in the reference lattice)."""
    matrix = _vtk().vtkMatrix4x4()
    reference_volume_node.GetIJKToRASMatrix(matrix)
    ref = _matrix_to_numpy(matrix)
    to_ref = np.linalg.solve(ref, affine)  # labelmap ijk -> reference ijk
    rot = to_ref[:3, :3]
    perm = np.rint(rot)
    if np.abs(rot - perm).max() > 1e-3 or not np.array_equal(np.abs(perm).sum(axis=0), [1, 1, 1]) \
            or not np.array_equal(np.abs(perm).sum(axis=1), [1, 1, 1]):
        return data, affine, np.zeros(3, dtype=int)
    shift = to_ref[:3, 3]
    if np.abs(shift - np.rint(shift)).max() > 1e-2:
        return data, affine, np.zeros(3, dtype=int)
    axes = [int(np.nonzero(perm[r])[0][0]) for r in range(3)]  # reference axis r <- labelmap axis
    signs = [int(perm[r, axes[r]]) for r in range(3)]
    out = np.transpose(data, axes)
    offset = np.rint(shift).astype(int)
    for r in range(3):
        if signs[r] < 0:
            out = np.flip(out, axis=r)
            offset[r] -= out.shape[r] - 1
    return out, ref, offset


def _check_overlap(data_shape, affine, offset, reference_volume_node):
    """Refuse a labelmap that lies entirely outside the reference volume (wrong volume picked)."""
    dims = reference_volume_node.GetImageData().GetDimensions()
    matrix = _vtk().vtkMatrix4x4()
    reference_volume_node.GetIJKToRASMatrix(matrix)
    ref = _matrix_to_numpy(matrix)
    corners = np.array([[i, j, k, 1] for i in (0, data_shape[0] - 1) for j in (0, data_shape[1] - 1)
                        for k in (0, data_shape[2] - 1)], dtype=float)
    corners[:, :3] += offset
    in_ref = np.linalg.solve(ref, (affine @ corners.T)).T[:, :3]
    lo, hi = in_ref.min(axis=0), in_ref.max(axis=0)
    if np.any(hi < -0.5) or np.any(lo > np.array(dims) - 0.5):
        raise SceneImportError(f"The labelmap does not overlap the volume '{reference_volume_node.GetName()}'.",
                               "Import the result onto the volume it was computed from.")


def _oriented_image(data, extent_start, image_to_world):
    """vtkOrientedImageData sharing nothing with numpy: `data` indexed [i, j, k] at extent_start."""
    from vtk.util import numpy_support

    slicer, vtk = _slicer(), _vtk()
    image = slicer.vtkOrientedImageData()
    start = [int(s) for s in extent_start]
    image.SetExtent(start[0], start[0] + data.shape[0] - 1, start[1], start[1] + data.shape[1] - 1,
                    start[2], start[2] + data.shape[2] - 1)
    vtk_type = {np.dtype(np.uint8): vtk.VTK_UNSIGNED_CHAR, np.dtype(np.uint16): vtk.VTK_UNSIGNED_SHORT,
                np.dtype(np.int32): vtk.VTK_INT}[data.dtype]
    scalars = numpy_support.numpy_to_vtk(data.ravel(order="F"), deep=1, array_type=vtk_type)
    scalars.SetName("ImageScalars")
    image.GetPointData().SetScalars(scalars)
    image.SetImageToWorldMatrix(_numpy_to_matrix(image_to_world))
    return image


# -- surfaces ------------------------------------------------------------------------------
def surface_nets_available():
    """vtkSurfaceNets3D with the multi-label API used here (VTK >= 9.3, Slicer >= 5.6)."""
    nets = getattr(_vtk(), "vtkSurfaceNets3D", None)
    return nets is not None and all(hasattr(nets, m) for m in ("SetOutputMeshTypeToTriangles", "SetSmoothing",
                                                               "SetNumberOfIterations", "SetValue"))


def _surface_nets_iterations(smoothing_factor):
    # Slicer's mapping of its smoothing factor to SurfaceNets smoothing iterations
    # (vtkBinaryLabelmapToClosedSurfaceConversionRule): 0.5 -> 8.
    return int(np.floor(15.0 * smoothing_factor ** 2 + 9.0 * smoothing_factor))


def _surfaces_by_label(data, extent_start, image_to_world, labels, smoothing_factor=SMOOTHING_FACTOR):
    """{label: vtkPolyData closed surface in RAS} from ONE multi-label SurfaceNets pass."""
    from vtk.util import numpy_support

    vtk = _vtk()
    padded = np.zeros(np.add(data.shape, 2), dtype=data.dtype, order="F")  # closes surfaces cut by the border
    padded[1:-1, 1:-1, 1:-1] = data
    image = vtk.vtkImageData()
    start = np.asarray(extent_start, dtype=int) - 1
    image.SetExtent(start[0], start[0] + padded.shape[0] - 1, start[1], start[1] + padded.shape[1] - 1,
                    start[2], start[2] + padded.shape[2] - 1)
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(padded.ravel(order="F"), deep=1))
    del padded
    nets = vtk.vtkSurfaceNets3D()
    nets.SetInputData(image)
    nets.SetOutputMeshTypeToTriangles()
    iterations = _surface_nets_iterations(smoothing_factor)
    nets.SetSmoothing(iterations > 0)
    nets.SetNumberOfIterations(iterations)
    for i, label in enumerate(labels):
        nets.SetValue(i, int(label))
    nets.Update()
    mesh = nets.GetOutput()
    surfaces = {int(label): vtk.vtkPolyData() for label in labels}
    if mesh.GetNumberOfPolys() == 0:
        return surfaces
    rotation = image_to_world[:3, :3].astype(np.float32)
    points = numpy_support.vtk_to_numpy(mesh.GetPoints().GetData())
    world = points @ rotation.T + image_to_world[:3, 3].astype(np.float32)
    triangles = numpy_support.vtk_to_numpy(mesh.GetPolys().GetConnectivityArray()).reshape(-1, 3)
    sides = numpy_support.vtk_to_numpy(mesh.GetCellData().GetArray("BoundaryLabels"))
    # A face between labels a and b belongs to both; SurfaceNets orients it outward from
    # its first label, so the second label gets it reversed. A mirrored lattice (negative
    # determinant) reverses every face once more, keeping normals outward in RAS.
    mirrored = np.linalg.det(rotation) < 0
    wanted = np.asarray(labels, dtype=sides.dtype)
    groups = []
    for side in (0, 1):
        order = np.argsort(sides[:, side], kind="stable")
        owner = sides[order, side]
        groups.append((order, np.searchsorted(owner, wanted, "left"), np.searchsorted(owner, wanted, "right")))
    for i, label in enumerate(labels):
        (order0, lo0, hi0), (order1, lo1, hi1) = groups
        faces = [triangles[order0[lo0[i]:hi0[i]]], triangles[order1[lo1[i]:hi1[i]]][:, ::-1]]
        face = np.concatenate(faces)
        if len(face) == 0:
            continue
        if mirrored:
            face = face[:, ::-1]
        used, local = np.unique(face, return_inverse=True)
        surfaces[int(label)] = _polydata(world[used], local.reshape(-1, 3))
    return surfaces


def _polydata(points, triangles):
    from vtk.util import numpy_support

    vtk = _vtk()
    vtk_points = vtk.vtkPoints()
    vtk_points.SetData(numpy_support.numpy_to_vtk(np.ascontiguousarray(points), deep=1))
    offsets = np.arange(0, 3 * len(triangles) + 1, 3, dtype=np.int64)
    cells = vtk.vtkCellArray()
    cells.SetData(numpy_support.numpy_to_vtkIdTypeArray(offsets, deep=1),
                  numpy_support.numpy_to_vtkIdTypeArray(np.ascontiguousarray(triangles, dtype=np.int64).ravel(), deep=1))
    poly = vtk.vtkPolyData()
    poly.SetPoints(vtk_points)
    poly.SetPolys(cells)
    return poly


# -- import ------------------------------------------------------------------------------
def _report(progress, fraction, message):
    if progress is not None:
        progress("import", fraction, message)  # a Progress raises Cancelled here when cancelled


def _normalise_class_map(class_map):
    try:
        return {int(k): str(v) for k, v in dict(class_map).items()}
    except (TypeError, ValueError) as e:
        raise SceneImportError(f"The class map is not a {{label value: class name}} mapping: {e}",
                               "Pass the class_map of the segmentation result.") from e


def import_labelmap(scene, labelmap, class_map, reference_volume_node=None, segmentation_node=None,
                    use_standard_names=True, create_surfaces=True, progress=None, name=None, task=None,
                    include_empty=False):
    """Import a multilabel result into `segmentation_node` (or a new node) and return the node.

    labelmap: nibabel image or path (official label values, in the input's geometry).
    class_map: {label value: class name}. Label values found in the labelmap but not in the
        class map are kept as segments named "Label N" (nothing is dropped).
    reference_volume_node: the volume the result belongs to: reference geometry, lattice,
        parent transform and subject-hierarchy folder are taken from it.
    segmentation_node: an existing node whose segments are REPLACED; None creates a node.
    use_standard_names: standard terminology names ("Left kidney"); False keeps class names.
    create_surfaces: compute closed surfaces now so the result shows in 3D at once.
    progress: callable(stage, fraction, message); stage is "import".
    include_empty: also create (empty) segments for classes absent from the labelmap.
    Each segment: name, recommended colour, terminology tag, label value = official value,
    ID = class name, tags TotalSegmentator.ClassName (and .Task when `task` is given).
    """
    slicer = _slicer()
    ensure_converter_rules()
    class_map = _normalise_class_map(class_map)
    _report(progress, 0.0, "Reading the labelmap")
    data, affine = _read_labelmap(labelmap)
    _check_affine(affine)
    offset = np.zeros(3, dtype=int)
    if reference_volume_node is not None:
        if reference_volume_node.GetImageData() is None:
            raise SceneImportError(f"The volume '{reference_volume_node.GetName()}' has no image data.",
                                   "Pick the volume the segmentation was computed from.")
        data, affine, offset = _align_to_reference(data, affine, reference_volume_node)
        _check_overlap(data.shape, affine, offset, reference_volume_node)
    full_geometry = (data.shape, offset.copy(), affine)

    present = np.flatnonzero(np.bincount(data.ravel(order="K"))) if data.size else np.array([], dtype=int)
    present = [int(v) for v in present if v != 0]
    unknown = [v for v in present if v not in class_map]
    if unknown:
        log.warning("Label values %s are not in the class map; imported as 'Label N'.", unknown)
    values = sorted(set(present) | (set(class_map) if include_empty else set()))
    classes = {v: class_map.get(v, f"Label_{v}") for v in values}
    names = terminology.segment_names(classes, use_standard_names)

    # Crop to the labelled region (as Slicer's own import does): less memory, faster surfaces.
    if present:
        nz = [np.flatnonzero(data.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
        lo = np.array([n[0] for n in nz])
        hi = np.array([n[-1] for n in nz]) + 1
    else:
        lo, hi = np.zeros(3, dtype=int), np.ones(3, dtype=int)
    # Fortran order = VTK's x-fastest layout: the copies into VTK below are then plain memcpys.
    cropped = np.asfortranarray(data[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]])
    del data
    start = offset + lo
    _report(progress, 0.2, f"Creating {len(values)} segments")
    image = _oriented_image(cropped, start, affine)

    segments = []
    for value in values:
        class_name = classes[value]
        seg_entry = terminology.entry(class_name)
        segment = slicer.vtkSegment()
        segment.SetName(names[value])
        segment.SetColor(*seg_entry.color)
        segment.SetLabelValue(value)
        segment.SetTerminology(seg_entry.terminology_string())
        if hasattr(segment, "SetNameAutoGenerated"):  # Slicer >= 5.7: a terminology change renames/recolours
            segment.SetNameAutoGenerated(bool(use_standard_names))
            segment.SetColorAutoGenerated(True)  # the colour is the terminology's recommendation
        segment.SetTag(TAG_CLASS, class_name)
        if task:
            segment.SetTag(TAG_TASK, str(task))
        segment.AddRepresentation(BINARY, image)
        segments.append((_segment_id(class_name), segment))

    fast_surfaces = create_surfaces and segments and surface_nets_available()
    if fast_surfaces:
        _report(progress, 0.3, "Creating 3D surfaces")
        surfaces = _surfaces_by_label(cropped, start, affine, values)
        for (segment_id, segment), value in zip(segments, values):
            segment.AddRepresentation(SURFACE, surfaces[value])
    # The complete new content, detached from the scene: a vtkSegmentation that replaces the
    # node's in one step (no per-segment removal, which would copy the shared labelmap).
    staging = slicer.vtkSegmentation()
    staging.SetSourceRepresentationName(BINARY)
    _set_conversion_parameters(staging)
    staging.SetConversionParameter(slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(),
                                   _reference_geometry_string(*full_geometry))
    for segment_id, segment in segments:
        if not staging.AddSegment(segment, segment_id):
            raise SceneImportError(f"Slicer refused segment '{segment.GetName()}'.", "Report this with the log.")
    if create_surfaces and segments and not fast_surfaces:
        _report(progress, 0.3, "Creating 3D surfaces")
        if not staging.CreateRepresentation(SURFACE):
            raise SceneImportError("Slicer could not create the 3D surfaces.",
                                   "Import without surfaces, then click 'Show 3D' in the Segmentations module.")
    _report(progress, 0.9, "Adding the segments to the scene")
    node = _commit(scene, staging, segmentation_node, reference_volume_node, name)
    _report(progress, 1.0, f"Imported {len(segments)} segments")
    return node


def _segment_id(class_name):
    return class_name.replace(" ", "_")


def _set_conversion_parameters(segmentation):
    segmentation.SetConversionParameter("Smoothing factor", str(SMOOTHING_FACTOR))
    if surface_nets_available():
        segmentation.SetConversionParameter("Conversion method", "1")  # SurfaceNets
        segmentation.SetConversionParameter("SurfaceNets smoothing", "1")


def _reference_geometry_string(shape, offset, affine):
    """Slicer's serialised geometry of the full (uncropped) labelmap lattice."""
    slicer = _slicer()
    image = slicer.vtkOrientedImageData()
    image.SetExtent(int(offset[0]), int(offset[0]) + shape[0] - 1, int(offset[1]), int(offset[1]) + shape[1] - 1,
                    int(offset[2]), int(offset[2]) + shape[2] - 1)
    image.SetImageToWorldMatrix(_numpy_to_matrix(affine))
    return slicer.vtkSegmentationConverter.SerializeImageGeometry(image)


def _commit(scene, staging, segmentation_node, reference_volume_node, name):
    """Swap the staged segmentation into the target node; put everything back if that fails."""
    slicer = _slicer()
    created = segmentation_node is None
    if created:
        segmentation_node = slicer.vtkMRMLSegmentationNode()
        base = name or (f"{reference_volume_node.GetName()} segmentation" if reference_volume_node else "Segmentation")
        segmentation_node.SetName(scene.GenerateUniqueName(base))
    old_segmentation, old_name = segmentation_node.GetSegmentation(), segmentation_node.GetName()
    old_reference = segmentation_node.GetNodeReferenceID(segmentation_node.GetReferenceImageGeometryReferenceRole())
    old_transform = segmentation_node.GetTransformNodeID()
    was_modifying = segmentation_node.StartModify()
    added_to_scene = False
    try:
        segmentation_node.SetAndObserveSegmentation(staging)
        if name and not created:
            segmentation_node.SetName(name)
        if reference_volume_node is not None:
            segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume_node)
            segmentation_node.SetAndObserveTransformNodeID(reference_volume_node.GetTransformNodeID())
        if created:
            scene.AddNode(segmentation_node)
            added_to_scene = True
            segmentation_node.CreateDefaultDisplayNodes()
        display = segmentation_node.GetDisplayNode()
        if display is not None:
            display.SetPreferredDisplayRepresentationName3D(SURFACE)
            display.SetVisibility(True)
            for segment_id in staging.GetSegmentIDs():  # a replaced result starts with default display
                display.SetSegmentDisplayPropertiesToDefault(segment_id)
        if reference_volume_node is not None:
            _place_in_hierarchy(scene, segmentation_node, reference_volume_node)
    except BaseException:
        if added_to_scene:
            scene.RemoveNode(segmentation_node)
        elif not created:
            segmentation_node.SetAndObserveSegmentation(old_segmentation)
            segmentation_node.SetName(old_name)
            segmentation_node.SetNodeReferenceID(segmentation_node.GetReferenceImageGeometryReferenceRole(), old_reference)
            segmentation_node.SetAndObserveTransformNodeID(old_transform)
        raise
    finally:
        segmentation_node.EndModify(was_modifying)
    if not created:
        _discard(old_segmentation)
    return segmentation_node


def _discard(segmentation):
    """Free a replaced segmentation without Slicer splitting its shared labelmap first.

    Removing a segment from a shared labelmap makes Slicer copy that segment out (two
    passes over the whole image per segment) so the others stay intact; for a result
    nobody else holds that is pure waste (seconds for 117 segments on a large CT)."""
    if segmentation.GetReferenceCount() > 1:  # someone else still uses it: let Slicer do it properly
        return
    for segment_id in segmentation.GetSegmentIDs():
        segmentation.GetSegment(segment_id).RemoveRepresentation(BINARY)


def _place_in_hierarchy(scene, segmentation_node, volume_node):
    """Put the segmentation in the volume's study/folder (ready for DICOM SEG export)."""
    slicer = _slicer()
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if sh is None:
        return
    volume_item = sh.GetItemByDataNode(volume_node)
    parent = sh.GetItemParent(volume_item) if volume_item else 0
    if parent and parent != sh.GetSceneItemID():
        sh.SetItemParent(sh.GetItemByDataNode(segmentation_node), parent)
