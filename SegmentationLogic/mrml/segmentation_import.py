"""A segmentation result into a Slicer segmentation node: one multilabel import with
names, standard terminology, colours and 3D surfaces.

The one way a result reaches a scene: the module's job, the batch script and the
liver-vessel review all call `import_result` / `import_labelmap`.

    node = import_result(scene, result, reference_volume_node=volume)   # a SegmentResult
    node = import_labelmap(scene, "seg.nii.gz", {1: "spleen", ...}, reference_volume_node=volume)

How it works, and why:
- The labelmap becomes ONE shared binary labelmap: every segment references the same
  image and carries its official label value (what Slicer's own multilabel import makes;
  nothing is written per class). Its voxel lattice is put onto the reference volume's
  lattice when they differ only by axis order or flips (a DICOM series read by Slicer
  versus the engine's NIfTI orientation), so Segment Editor works on the volume's grid.
- Closed surfaces come from one multi-label SurfaceNets pass (surfaces.py).
- All-or-nothing: segments and surfaces are built detached from the scene; only then
  are they swapped into the target node (a new node is added to the scene only at that
  point). On any error or cancel the scene is as it was: no partial node, no colour
  table node, the user's existing segmentation untouched.
- A volume under a transform: the segmentation goes under the same transform and its
  reference geometry is the volume's own lattice (set after the transform, so Slicer does
  not transform it a second time).
"""
import logging
import os

import numpy as np

import slicer

from .. import terminology
from ..errors import SceneImportError
from . import compat, geometry, surfaces
from .scene import ensure_converter_rules

log = logging.getLogger(__name__)

BINARY = "Binary labelmap"
SURFACE = "Closed surface"
TAG_CLASS = "TotalSegmentator.ClassName"
TAG_TASK = "TotalSegmentator.Task"


def _report(progress, fraction, message):
    if progress is not None:
        progress("import", fraction, message)  # a Progress raises Cancelled here when cancelled


def _read_file(path):
    """(array indexed [i, j, k], voxel-to-RAS affine) of a labelmap file, read with SimpleITK:
    Slicer ships it, so a result (e.g. from a segmentation server) imports where nibabel is
    not installed. ITK's LPS geometry becomes RAS; the voxels are nibabel's, in its order."""
    import SimpleITK as sitk  # heavy (ITK): only when a labelmap is read from a file

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        last = str(e).strip().splitlines()[-1:] or [type(e).__name__]
        raise SceneImportError(f"Could not read the labelmap {path}: {last[0]}",
                               "Check that the file is a NIfTI labelmap written by the engine.") from e
    dim = image.GetDimension()
    data = sitk.GetArrayFromImage(image).T  # ITK's (z, y, x) -> (i, j, k[, t]); a vector image is refused below
    if dim < 3:
        return data, np.eye(4)  # refused below as not 3D
    direction = np.array(image.GetDirection(), float).reshape(dim, dim)[:3, :3]
    affine = np.eye(4)
    affine[:3, :3] = direction * np.array(image.GetSpacing()[:3], float)
    affine[:3, 3] = image.GetOrigin()[:3]
    affine[:2] *= -1  # LPS -> RAS
    return data, affine


def read_labelmap(labelmap):
    """(integer array indexed [i, j, k], 4x4 voxel-to-RAS affine) from a path or an image with
    `dataobj` and `affine` (a nibabel image; the engine's in-memory result)."""
    if isinstance(labelmap, (str, os.PathLike)):
        data, affine = _read_file(labelmap)
    else:
        data, affine = np.asanyarray(labelmap.dataobj), labelmap.affine
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
    return np.asarray(data, dtype=dtype), np.asarray(affine, dtype=float)


def _normalise_class_map(class_map):
    try:
        return {int(k): str(v) for k, v in dict(class_map).items()}
    except (TypeError, ValueError) as e:
        raise SceneImportError(f"The class map is not a {{label value: class name}} mapping: {e}",
                               "Pass the class_map of the segmentation result.") from e


def import_result(scene, result, labelmap=None, **options):
    """Import a `SegmentResult` (its in-memory labelmap, or `labelmap`: the multilabel file
    it wrote) with its class map; options as import_labelmap."""
    labelmap = labelmap if labelmap is not None else result.labelmap
    if labelmap is None:
        raise SceneImportError("The segmentation result has no labelmap to import.",
                               "Run the segmentation with a multilabel output (ml=True).")
    return import_labelmap(scene, labelmap, result.class_map, **options)


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

    ensure_converter_rules()
    class_map = _normalise_class_map(class_map)
    _report(progress, 0.0, "Reading the labelmap")
    data, affine = read_labelmap(labelmap)
    geometry.check_affine(affine)
    offset = np.zeros(3, dtype=int)
    if reference_volume_node is not None:
        if reference_volume_node.GetImageData() is None:
            raise SceneImportError(f"The volume '{reference_volume_node.GetName()}' has no image data.",
                                   "Pick the volume the segmentation was computed from.")
        data, affine, offset = geometry.align_to_reference(data, affine, reference_volume_node)
        geometry.check_overlap(data.shape, affine, offset, reference_volume_node)
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
    image = geometry.oriented_image(cropped, start, affine)

    segments = []
    for value in values:
        class_name = classes[value]
        seg_entry = terminology.entry(class_name)
        segment = slicer.vtkSegment()
        segment.SetName(names[value])
        segment.SetColor(*seg_entry.color)
        segment.SetLabelValue(value)
        compat.set_segment_terminology(segment, seg_entry.terminology_string())
        # a terminology change in Slicer renames (standard names only) and recolours (the colour is its recommendation)
        compat.set_auto_generated(segment, name=use_standard_names, color=True)
        segment.SetTag(TAG_CLASS, class_name)
        if task:
            segment.SetTag(TAG_TASK, str(task))
        segment.AddRepresentation(BINARY, image)
        segments.append((class_name.replace(" ", "_"), segment))

    fast_surfaces = create_surfaces and segments and surfaces.surface_nets_available()
    if fast_surfaces:
        _report(progress, 0.3, "Creating 3D surfaces")
        by_label = surfaces.surfaces_by_label(cropped, start, affine, values)
        for (segment_id, segment), value in zip(segments, values):
            segment.AddRepresentation(SURFACE, by_label[value])
    # The complete new content, detached from the scene: a vtkSegmentation that replaces the
    # node's in one step (no per-segment removal, which would copy the shared labelmap).
    staging = slicer.vtkSegmentation()
    staging.SetSourceRepresentationName(BINARY)
    surfaces.set_conversion_parameters(staging)
    staging.SetConversionParameter(slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(),
                                   geometry.reference_geometry_string(*full_geometry))
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


def _commit(scene, staging, segmentation_node, reference_volume_node, name):
    """Swap the staged segmentation into the target node; put everything back if that fails."""
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
        if created:  # in the scene before the transform: a parent transform resolves through the scene
            scene.AddNode(segmentation_node)
            added_to_scene = True
            segmentation_node.CreateDefaultDisplayNodes()
        if reference_volume_node is not None:
            # Transform first, then the geometry: with both nodes under the same transform Slicer
            # takes the volume's own lattice; the other way round it would transform it twice.
            segmentation_node.SetAndObserveTransformNodeID(reference_volume_node.GetTransformNodeID())
            segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume_node)
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
            segmentation_node.SetNodeReferenceID(segmentation_node.GetReferenceImageGeometryReferenceRole(),
                                                 old_reference)
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
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if sh is None:
        return
    volume_item = sh.GetItemByDataNode(volume_node)
    parent = sh.GetItemParent(volume_item) if volume_item else 0
    if parent and parent != sh.GetSceneItemID():
        sh.SetItemParent(sh.GetItemByDataNode(segmentation_node), parent)


def is_our_segmentation(path):
    """Whether the .seg.nrrd at `path` was written by this extension (its segments carry our
    class tag in the header): the batch script may replace it without --overwrite."""
    try:
        with open(path, "rb") as f:
            header = f.read(1 << 20).split(b"\n\n", 1)[0]
    except OSError:
        return False
    return header.startswith(b"NRRD") and TAG_CLASS.encode() in header
