"""Review of a portal/hepatic split in Slicer: show, inspect, correct, save.

Works on real MRML nodes (Slicer, or slicer-core in plain Python); no Qt. The module's
widget wires its buttons to exactly these functions:

    node = load_split(scene, "out/liver_vessels_labeled.nii.gz", ct_node, qc=metadata)
    qc = reassign_branch(node, point_ras, scope="branch")       # or "subtree", to="portal"
    qc = rerun_split(node, ivc="out/inferior_vena_cava.nii.gz", portal_points_ras=[p1])
    qc_rows(qc), warnings(qc)                                   # table and panel
    save_review(node, "out")                                    # NIfTI files, metadata, .seg.nrrd

The segmentation node carries its state as node attributes (QC and the inputs as JSON,
the reference volume's ID), so it survives a scene save and needs no global registry.
Each edit replaces both segments in one step (same segment IDs), so a failed edit leaves
the node as it was.
"""
import datetime
import json
from pathlib import Path

import numpy as np

from ..errors import SegmentationError
from . import qc as qc_module
from .io import OUTPUT_FILES, ras_to_ijk, read_metadata, write_json, write_nifti, write_split_files

PORTAL, HEPATIC = 1, 2
CLASS_IDS = {PORTAL: "portal_vein_branches", HEPATIC: "hepatic_veins"}
SEGMENT_NAMES = {PORTAL: "Portal vein branches", HEPATIC: "Hepatic veins"}
CLASS_BY_NAME = {"portal": PORTAL, "hepatic": HEPATIC, PORTAL: PORTAL, HEPATIC: HEPATIC,
                 "Portal vein branches": PORTAL, "Hepatic veins": HEPATIC}
# SNOMED CT types (category Anatomical Structure 123037004), region liver 10200004
SNOMED = {PORTAL: ("SCT", "32764006", "Portal vein"), HEPATIC: ("SCT", "8993003", "Hepatic vein")}
LIVER = ("SCT", "10200004", "Liver")
# hepatic: Slicer's vein blue; portal: violet, the usual colour of the portal system in
# liver-surgery planning, well apart from the hepatic veins and from arterial red
COLORS = {PORTAL: (0.69, 0.35, 0.85), HEPATIC: (0.0, 0.592, 0.808)}
ATTR_QC = "LiverVessels.QC"
ATTR_INPUTS = "LiverVessels.Inputs"
ATTR_REFERENCE = "LiverVessels.ReferenceVolumeID"
POINT_MAX_MM = 10.0


class ReviewError(SegmentationError):
    kind = "review"


def _slicer():
    import slicer

    return slicer


# Slicer's own DICOM contexts list both veins, so Slicer's terminology selector resolves them
CONTEXT = "Segmentation category and type - DICOM master list"
REGION_CONTEXT = "Anatomic codes - DICOM master list"
CATEGORY = ("SCT", "123037004", "Anatomical Structure")


def terminology_string(cls):
    """Slicer's 7-field terminology string (context~category~type~modifier~region context~
    region~region modifier) for a class."""
    code = "^".join
    return f"{CONTEXT}~{code(CATEGORY)}~{code(SNOMED[cls])}~^^~{REGION_CONTEXT}~{code(LIVER)}~^^"


# ---------------------------------------------------------------------------------------
# node state

def _get_json(node, attr, default=None):
    text = node.GetAttribute(attr)
    if not text:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default


def _set_json(node, attr, value):
    node.SetAttribute(attr, json.dumps(value, default=_plain))


def _plain(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _reference(node):
    scene = node.GetScene()
    ref_id = node.GetAttribute(ATTR_REFERENCE)
    ref = scene.GetNodeByID(ref_id) if (scene is not None and ref_id) else None
    if ref is None:
        raise ReviewError("The vessel segmentation has lost its reference volume (the CT).",
                          "Load the split again with load_split(), passing the CT volume node.")
    return ref


def _segment_ids(node):
    """{class value: segment ID} by the class tag, the ID or the name."""
    seg = node.GetSegmentation()
    out = {}
    for i in range(seg.GetNumberOfSegments()):
        sid = seg.GetNthSegmentID(i)
        name = seg.GetSegment(sid).GetName()
        for cls in (PORTAL, HEPATIC):
            if sid == CLASS_IDS[cls] or name == SEGMENT_NAMES[cls]:
                out.setdefault(cls, sid)
    return out


def current_labels(node):
    """(labels 0/1/2 in the reference volume's IJK order, IJK-to-RAS affine) of the node."""
    slicer = _slicer()
    import vtk

    ref = _reference(node)
    ids = _segment_ids(node)
    scene = node.GetScene()
    before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    labelmap = slicer.vtkMRMLLabelMapVolumeNode()
    scene.AddNode(labelmap)
    try:
        shape = ref.GetImageData().GetDimensions()
        labels = np.zeros(shape, np.uint8)
        for cls, sid in ids.items():  # one segment at a time: values do not depend on segment order
            names = vtk.vtkStringArray()
            names.InsertNextValue(sid)
            if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(node, names, labelmap, ref):
                raise ReviewError(f"Slicer could not export the segment '{SEGMENT_NAMES[cls]}'.",
                                  "Check that the segment still has a binary labelmap.")
            arr = slicer.util.arrayFromVolume(labelmap).transpose(2, 1, 0)
            labels[(arr > 0) & (labels == 0)] = cls
        m = vtk.vtkMatrix4x4()
        ref.GetIJKToRASMatrix(m)
        affine = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
    finally:
        # the export adds a display node and a colour table for the temporary labelmap
        for i in range(labelmap.GetNumberOfDisplayNodes()):
            display = labelmap.GetNthDisplayNode(i)
            color = display.GetColorNode() if display is not None else None
            if color is not None and color.GetID() not in before:
                scene.RemoveNode(color)
            if display is not None:
                scene.RemoveNode(display)
        scene.RemoveNode(labelmap)
    return labels, affine


# ---------------------------------------------------------------------------------------
# load

def load_split(scene, labeled_path_or_array, reference_volume_node, segmentation_node=None, qc=None):
    """Show a split as segments "Portal vein branches" and "Hepatic veins" (standard
    terminology, colours, closed surfaces) and return the segmentation node.

    labeled_path_or_array: liver_vessels_labeled.nii.gz (1 portal, 2 hepatic), a nibabel
    image, or an array in the reference volume's IJK order. qc: the split's QC dict, or
    the whole enhanced_liver_vessels_metadata.json content (its inputs are kept for re-runs).
    An existing `segmentation_node` is replaced in one step.
    """
    import nibabel as nib
    import vtk

    if reference_volume_node is None or reference_volume_node.GetImageData() is None:
        raise ReviewError("No reference volume: the split is shown on the CT it was computed from.",
                          "Pass the CT volume node.")
    if isinstance(labeled_path_or_array, (str, Path)):
        if not Path(labeled_path_or_array).exists():
            raise ReviewError(f"The split file {labeled_path_or_array} does not exist.",
                              "Run liver-vessels with --split_portal_hepatic, or split-vessels, first.")
        image = nib.load(str(labeled_path_or_array))
    elif hasattr(labeled_path_or_array, "affine"):
        image = labeled_path_or_array
    else:
        arr = np.asarray(labeled_path_or_array)
        dims = reference_volume_node.GetImageData().GetDimensions()
        if arr.shape != tuple(dims):
            raise ReviewError(f"The split array has shape {arr.shape}, the reference volume {tuple(dims)}.",
                              "Pass labels in the reference volume's voxel order, or the labelled NIfTI file.")
        m = vtk.vtkMatrix4x4()
        reference_volume_node.GetIJKToRASMatrix(m)
        image = nib.Nifti1Image(arr.astype(np.uint8), np.array([[m.GetElement(r, c) for c in range(4)]
                                                                   for r in range(4)]))
    data = np.asanyarray(image.dataobj)
    extra = set(np.unique(data).tolist()) - {0, PORTAL, HEPATIC}
    if extra:
        raise ReviewError(f"The split has label values {sorted(extra)}; a split has only 1 (portal) and 2 (hepatic).",
                          "Load liver_vessels_labeled.nii.gz, not another segmentation.")
    node = _import(scene, image, reference_volume_node, segmentation_node)
    metadata = qc or {}
    split_qc = metadata.get("portal_hepatic_split_qc", metadata)
    if not split_qc:  # counts only; seed figures unknown
        split_qc = qc_module.split_qc(data, data > 0, None, None, True)
    _set_json(node, ATTR_QC, split_qc)
    if "inputs" in metadata:
        _set_json(node, ATTR_INPUTS, metadata["inputs"])
    return node


def _import(scene, image, reference_volume_node, segmentation_node):
    from ..slicer_import import import_labelmap

    node = import_labelmap(scene, image, CLASS_IDS, reference_volume_node=reference_volume_node,
                           segmentation_node=segmentation_node, include_empty=True,
                           name=segmentation_node.GetName() if segmentation_node else "Liver vessels split")
    seg = node.GetSegmentation()
    for cls, sid in _segment_ids(node).items():
        segment = seg.GetSegment(sid)
        if hasattr(segment, "SetNameAutoGenerated"):
            segment.SetNameAutoGenerated(False)
            segment.SetColorAutoGenerated(False)
        segment.SetName(SEGMENT_NAMES[cls])
        segment.SetColor(*COLORS[cls])
        segment.SetTerminology(terminology_string(cls))
    node.SetAttribute(ATTR_REFERENCE, reference_volume_node.GetID())
    return node


def _replace(node, labels, affine):
    import nibabel as nib

    _import(node.GetScene(), nib.Nifti1Image(labels.astype(np.uint8), affine), _reference(node), node)


# ---------------------------------------------------------------------------------------
# edits

def _graph(labels, affine):
    from .skeleton import build_skeleton_graph

    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    graph = build_skeleton_graph(labels > 0, spacing)
    if graph is None:
        raise ReviewError("The vessel segmentation is empty.", "Load or re-run the split first.")
    return graph, spacing


def _branch_at(graph, point_ijk):
    """The branch node nearest to a point (junction voxels excluded)."""
    from scipy.spatial import cKDTree

    branch_vox = np.nonzero(~graph.is_junction[graph.node])[0]
    if not len(branch_vox):
        branch_vox = np.arange(len(graph.coords))
    d, i = cKDTree(graph.points_mm(branch_vox)).query(np.asarray(point_ijk) * graph.spacing)
    # the click may land anywhere in the vessel: allow the vessel's radius on top
    if d > POINT_MAX_MM + graph.radius[branch_vox[i]]:
        return None, d
    return int(graph.node[branch_vox[i]]), d


def _node_labels(graph, labels):
    """Majority label of each node's voxels."""
    v = labels[tuple(graph.voxel_index.T)]
    counts = np.zeros((graph.n_nodes, 3))
    np.add.at(counts, (graph.voxel_node, v), 1)
    return counts.argmax(1)


def subtree(graph, node_labels, start):
    """Nodes of `start`'s subtree away from the root of its tree: the root is the widest node
    of the same-class piece (vessels widen towards their root); the subtree is what hangs
    beyond `start` on the shortest paths from that root."""
    from scipy import sparse
    from scipy.sparse import csgraph

    cls = node_labels[start]
    e = graph.edges
    same = (node_labels[e[:, 0]] == cls) & (node_labels[e[:, 1]] == cls)
    e = e[same]
    n = graph.n_nodes
    w = (graph.node_length[e[:, 0]] + graph.node_length[e[:, 1]]) / 2.0 + 1e-3
    g = sparse.coo_matrix((w, (e[:, 0], e[:, 1])), shape=(n, n)).tocsr()
    _, piece = csgraph.connected_components(g, directed=False)
    members = np.nonzero((piece == piece[start]) & (node_labels == cls))[0]
    width = np.where(graph.is_junction, graph.node_max_radius, graph.node_radius)
    root = members[np.argmax(width[members])]
    if root == start:
        return members
    _, pred = csgraph.dijkstra(g, directed=False, indices=root, return_predecessors=True)
    children = {}
    for child in members:
        children.setdefault(pred[child], []).append(child)
    out, stack = [], [start]
    while stack:  # a walk over graph nodes, not voxels
        m = stack.pop()
        out.append(m)
        stack.extend(children.get(m, []))
    return np.array(out)


def reassign_branch(segmentation_node, point_ras, scope="branch", to=None):
    """Flip the branch at `point_ras` (between its bifurcations), or its whole subtree away
    from the root, to the other class (or to `to`: "portal"/"hepatic"/1/2). Returns the
    updated QC (also stored on the node)."""
    if scope not in ("branch", "subtree"):
        raise ReviewError(f"Unknown scope '{scope}'.", "Use scope='branch' or scope='subtree'.")
    labels, affine = current_labels(segmentation_node)
    graph, _ = _graph(labels, affine)
    point_ijk = ras_to_ijk([point_ras], affine)[0]
    start, dist = _branch_at(graph, point_ijk)
    if start is None:
        raise ReviewError(f"No vessel near the point {np.round(point_ras, 1).tolist()} (nearest {dist:.0f} mm away).",
                          "Place the point on a vessel branch.")
    node_labels = _node_labels(graph, labels)
    current = int(node_labels[start])
    if to is None:
        target = HEPATIC if current == PORTAL else PORTAL
    elif to in CLASS_BY_NAME:
        target = CLASS_BY_NAME[to]
    else:
        raise ReviewError(f"Unknown class '{to}'.", "Use to='portal' or to='hepatic'.")
    nodes = subtree(graph, node_labels, start) if scope == "subtree" else np.array([start])
    if scope == "subtree" and current == 0:
        nodes = np.array([start])
    flip = np.isin(graph.voxel_node, nodes)
    idx = graph.voxel_index[flip]
    labels[tuple(idx.T)] = target
    qc = qc_module.update_qc(_get_json(segmentation_node, ATTR_QC, {}), labels, labels > 0)
    qc["manual_edits"] = qc.get("manual_edits", 0) + 1
    qc["last_edit"] = {"scope": scope, "to": "portal" if target == PORTAL else "hepatic",
                       "voxels": int(len(idx)), "branches": int(len(nodes))}
    _replace(segmentation_node, labels, affine)
    _set_json(segmentation_node, ATTR_QC, qc)
    return qc


def _mask_input(value, what, shape, affine):
    """A support input for a re-run: None, an array on the reference grid, or a NIfTI path."""
    from .io import SUPPORT_NAMES, load_image

    if value is None:
        return None
    name = SUPPORT_NAMES.get(what, what)
    if isinstance(value, (str, Path)):
        img = load_image(value, what)
        if tuple(img.shape) != tuple(shape) or not np.allclose(img.affine, affine, atol=1e-3):
            raise ReviewError(f"The {name} {value} is not on the CT's grid (shape {tuple(img.shape)} vs {tuple(shape)}).",
                              "Use the masks written for this CT.")
        return np.asanyarray(img.dataobj) > 0
    arr = np.asarray(value) > 0
    if arr.shape != tuple(shape):
        raise ReviewError(f"The {name} array is not on the CT's grid (shape {arr.shape} vs {tuple(shape)}).",
                          "Pass masks on the CT's voxel grid.")
    return arr


def rerun_split(segmentation_node, vessels=None, liver=None, portal_trunk=None, ivc=None, portal_points_ras=(),
                hepatic_points_ras=(), use_skeleton=True, min_component_size=20):
    """Split again with the user's seed points (RAS mm, e.g. from markups fiducials).

    vessels: the vessel mask (path or array on the CT grid); by default the union of the
    two segments. Support masks: paths or arrays; by default the files recorded when the
    split was loaded (metadata "inputs"), where they still exist. Returns the new QC."""
    import nibabel as nib

    from .io import from_canonical, to_canonical
    from .split import split_vessels

    labels, affine = current_labels(segmentation_node)
    shape = labels.shape
    inputs = _get_json(segmentation_node, ATTR_INPUTS, {}) or {}
    defaults = {k: inputs.get(k) for k in ("liver", "portal_trunk", "ivc")}
    given = {"liver": liver, "portal_trunk": portal_trunk, "ivc": ivc}
    masks = {}
    for key, value in given.items():
        if value is None and defaults.get(key) and Path(defaults[key]).exists():
            value = defaults[key]
        masks[key] = _mask_input(value, key, shape, affine)
    vessel_mask = _mask_input(vessels, "vessels", shape, affine) if vessels is not None else labels > 0
    if not vessel_mask.any():
        raise ReviewError("There are no vessels to split.", "Load a split with vessels first.")

    def canon(arr):
        return None if arr is None else to_canonical(nib.Nifti1Image(arr.astype(np.uint8), affine))[0] > 0

    ref_img = nib.Nifti1Image(np.zeros(shape, np.uint8), affine)
    _, can_affine, spacing = to_canonical(ref_img)
    res = split_vessels(canon(vessel_mask), spacing, canon(masks["liver"]), canon(masks["portal_trunk"]),
                        canon(masks["ivc"]), use_skeleton=use_skeleton, min_component_size=min_component_size,
                        portal_points=ras_to_ijk(portal_points_ras, can_affine) if len(portal_points_ras) else None,
                        hepatic_points=ras_to_ijk(hepatic_points_ras, can_affine) if len(hepatic_points_ras) else None)
    new_labels = from_canonical(res.labels, ref_img)
    qc = res.qc
    old = _get_json(segmentation_node, ATTR_QC, {}) or {}
    qc["manual_edits"] = int(old.get("manual_edits", 0))
    qc["user_seed_points"] = {"portal": len(portal_points_ras), "hepatic": len(hepatic_points_ras)}
    _replace(segmentation_node, new_labels, affine)
    _set_json(segmentation_node, ATTR_QC, qc)
    return qc


# ---------------------------------------------------------------------------------------
# QC display and saving

def get_qc(segmentation_node):
    return _get_json(segmentation_node, ATTR_QC, {}) or {}


def qc_rows(qc):
    """[(label, value text)] for the QC table."""
    return qc_module.qc_rows(qc or {})


def warnings(qc):
    """QC warnings as sentences for the panel."""
    return qc_module.warnings(qc or {})


def save_review(segmentation_node, out_dir, seg_nrrd=True):
    """Write the reviewed split: liver_vessels_labeled.nii.gz, portal_vein_branches.nii.gz,
    hepatic_veins.nii.gz (CT geometry), the QC into enhanced_liver_vessels_metadata.json,
    and the segmentation as liver_vessels_split.seg.nrrd. Returns the paths."""
    import nibabel as nib

    labels, affine = current_labels(segmentation_node)
    ref_img = nib.Nifti1Image(np.zeros(labels.shape, np.uint8), affine)
    out_dir = Path(out_dir)
    paths = write_split_files(out_dir, labels, ref_img)
    qc = get_qc(segmentation_node)
    meta = read_metadata(out_dir)
    meta["portal_hepatic_split_qc"] = qc
    meta["review"] = {"saved": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                      "manual_edits": int(qc.get("manual_edits", 0))}
    paths.append(write_json(meta, out_dir / OUTPUT_FILES["metadata"]))
    if seg_nrrd:
        from ..slicer_import import save_segmentation

        paths.append(save_segmentation(segmentation_node, out_dir / "liver_vessels_split.seg.nrrd"))
    return paths


__all__ = ["load_split", "reassign_branch", "rerun_split", "qc_rows", "warnings", "save_review", "get_qc",
           "current_labels", "write_nifti"]
