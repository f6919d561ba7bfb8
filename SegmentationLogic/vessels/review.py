"""Corrections to a portal/hepatic split on label arrays (no Slicer).

Labels are 0 (none), 1 (portal), 2 (hepatic) on the CT's voxel grid with its affine.

    labels, qc = reassign(labels, affine, point_ras, scope="branch", qc=qc)   # or "subtree", to="portal"
    labels, qc, confidence = resplit(labels, affine, masks={"ivc": "out/inferior_vena_cava.nii.gz"},
                                     portal_points_ras=[p1], qc=qc)

Both build a skeleton graph of the vessels (seconds on a large liver), so the Slicer
module runs them in its engine worker, never on the GUI thread (`worker_commands.py`
registers `reassign_command` / `resplit_command`: files in, files out). `mrml.vessel_review` calls the
same functions in-process for scripts and shows the result on segmentation nodes.
"""
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import sparse
from scipy.sparse import csgraph
from scipy.spatial import cKDTree

from ..errors import SegmentationError
from . import qc as qc_module
from .io import SUPPORT_NAMES, from_canonical, json_safe, load_image, ras_to_ijk, to_canonical
from .skeleton import build_skeleton_graph
from .split import split_vessels

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
POINT_MAX_MM = 10.0
SUPPORT_KEYS = ("liver", "portal_trunk", "ivc")

# Slicer's own DICOM contexts list both veins, so Slicer's terminology selector resolves them
CONTEXT = "Segmentation category and type - DICOM master list"
REGION_CONTEXT = "Anatomic codes - DICOM master list"
CATEGORY = ("SCT", "123037004", "Anatomical Structure")


class ReviewError(SegmentationError):
    kind = "review"


def terminology_string(cls):
    """Slicer's 7-field terminology string (context~category~type~modifier~region context~
    region~region modifier) for a class."""
    code = "^".join
    return f"{CONTEXT}~{code(CATEGORY)}~{code(SNOMED[cls])}~^^~{REGION_CONTEXT}~{code(LIVER)}~^^"


def _report(progress, fraction, message):
    if progress is not None:
        progress("review", fraction, message)  # a Progress raises Cancelled here when cancelled


# ---------------------------------------------------------------------------------------
# reassign a branch

def _graph(labels, affine):
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    graph = build_skeleton_graph(labels > 0, spacing)
    if graph is None:
        raise ReviewError("The vessel segmentation is empty.", "Load or re-run the split first.")
    return graph


def _branch_at(graph, point_ijk):
    """The branch node nearest to a point (junction voxels excluded)."""
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


def reassign(labels, affine, point_ras, scope="branch", to=None, qc=None, progress=None):
    """Flip the branch at `point_ras` (between its bifurcations), or its whole subtree away
    from the root, to the other class (or to `to`: "portal"/"hepatic"/1/2).

    Returns (new labels, updated QC); `labels` itself is not changed."""
    if scope not in ("branch", "subtree"):
        raise ReviewError(f"Unknown scope '{scope}'.", "Use scope='branch' or scope='subtree'.")
    if to is not None and to not in CLASS_BY_NAME:
        raise ReviewError(f"Unknown class '{to}'.", "Use to='portal' or to='hepatic'.")
    labels = np.array(labels, dtype=np.uint8)
    _report(progress, 0.0, "Building the vessel graph")
    graph = _graph(labels, affine)
    _report(progress, 0.8, "Finding the branch")
    start, dist = _branch_at(graph, ras_to_ijk([point_ras], affine)[0])
    if start is None:
        raise ReviewError(f"No vessel near the point {np.round(point_ras, 1).tolist()} (nearest {dist:.0f} mm away).",
                          "Place the point on a vessel branch.")
    node_labels = _node_labels(graph, labels)
    current = int(node_labels[start])
    target = CLASS_BY_NAME[to] if to is not None else (HEPATIC if current == PORTAL else PORTAL)
    nodes = subtree(graph, node_labels, start) if scope == "subtree" and current != 0 else np.array([start])
    idx = graph.voxel_index[np.isin(graph.voxel_node, nodes)]
    labels[tuple(idx.T)] = target
    qc = qc_module.update_qc(dict(qc or {}), labels, labels > 0)
    qc["manual_edits"] = qc.get("manual_edits", 0) + 1
    qc["last_edit"] = {"scope": scope, "to": "portal" if target == PORTAL else "hepatic",
                       "voxels": int(len(idx)), "branches": int(len(nodes))}
    return labels, qc


# ---------------------------------------------------------------------------------------
# split again with the user's seeds

def mask_input(value, what, shape, affine):
    """A support input for a re-run: None, an array on the reference grid, or a NIfTI path."""
    if value is None:
        return None
    name = SUPPORT_NAMES.get(what, what)
    if isinstance(value, (str, Path)):
        img = load_image(value, what)
        if tuple(img.shape) != tuple(shape) or not np.allclose(img.affine, affine, atol=1e-3):
            raise ReviewError(f"The {name} {value} is not on the CT's grid (shape {tuple(img.shape)} vs "
                              f"{tuple(shape)}).", "Use the masks written for this CT.")
        return np.asanyarray(img.dataobj) > 0
    arr = np.asarray(value) > 0
    if arr.shape != tuple(shape):
        raise ReviewError(f"The {name} array is not on the CT's grid (shape {arr.shape} vs {tuple(shape)}).",
                          "Pass masks on the CT's voxel grid.")
    return arr


def resplit(labels, affine, masks=None, portal_points_ras=(), hepatic_points_ras=(), vessels=None, qc=None,
            use_skeleton=True, min_component_size=20, progress=None):
    """Split the vessels again with the user's seed points (RAS mm).

    masks: {"liver", "portal_trunk", "ivc"} -> None, a path or an array on the CT grid.
    vessels: the vessel mask (path or array); by default the union of the two classes.
    Returns (new labels, the split's QC with the manual-edit count kept, the new split's
    confidence map), both arrays on the grid of `labels`."""
    labels = np.asarray(labels)
    shape = labels.shape
    given = {key: mask_input((masks or {}).get(key), key, shape, affine) for key in SUPPORT_KEYS}
    vessel_mask = mask_input(vessels, "vessels", shape, affine) if vessels is not None else labels > 0
    if not vessel_mask.any():
        raise ReviewError("There are no vessels to split.", "Load a split with vessels first.")

    def canon(arr):
        return None if arr is None else to_canonical(nib.Nifti1Image(arr.astype(np.uint8), affine))[0] > 0

    _report(progress, 0.0, "Splitting the vessels")
    ref_img = nib.Nifti1Image(np.zeros(shape, np.uint8), affine)
    _, can_affine, spacing = to_canonical(ref_img)
    res = split_vessels(canon(vessel_mask), spacing, canon(given["liver"]), canon(given["portal_trunk"]),
                        canon(given["ivc"]), use_skeleton=use_skeleton, min_component_size=min_component_size,
                        portal_points=ras_to_ijk(portal_points_ras, can_affine) if len(portal_points_ras) else None,
                        hepatic_points=ras_to_ijk(hepatic_points_ras, can_affine) if len(hepatic_points_ras)
                        else None)
    new_qc = res.qc
    new_qc["manual_edits"] = int((qc or {}).get("manual_edits", 0))
    new_qc["user_seed_points"] = {"portal": len(portal_points_ras), "hepatic": len(hepatic_points_ras)}
    return from_canonical(res.labels, ref_img), new_qc, from_canonical(res.confidence, ref_img)


def qc_rows(qc):
    """[(label, value text)] for the QC table."""
    return qc_module.qc_rows(qc or {})


def warnings(qc):
    """QC warnings as sentences for the panel."""
    return qc_module.warnings(qc or {})


# ---------------------------------------------------------------------------------------
# engine worker commands: labels in a NIfTI file on the CT grid, the new labels written back

def _read_labels(request):
    image = nib.load(str(request["labels"]))
    return np.asanyarray(image.dataobj), image.affine


def _write_labels(labels, affine, path, dtype=np.uint8):
    nib.save(nib.Nifti1Image(np.asarray(labels, dtype=dtype), affine), str(path))
    return str(path)


def reassign_command(request, progress):
    """{"labels", "output", "point_ras", "scope", "to", "qc"} -> {"labels": output, "qc"}."""
    labels, affine = _read_labels(request)
    labels, qc = reassign(labels, affine, request["point_ras"], scope=request.get("scope", "branch"),
                          to=request.get("to"), qc=request.get("qc"), progress=progress)
    return {"labels": _write_labels(labels, affine, request["output"]), "qc": json_safe(qc)}


def resplit_command(request, progress):
    """{"labels", "output", "masks", "portal_points_ras", "hepatic_points_ras", "qc"[, "confidence_output"]}
    -> {"labels": output, "qc"[, "confidence": confidence_output]}."""
    labels, affine = _read_labels(request)
    labels, qc, confidence = resplit(labels, affine, masks=request.get("masks"),
                                     portal_points_ras=request.get("portal_points_ras") or (),
                                     hepatic_points_ras=request.get("hepatic_points_ras") or (), qc=request.get("qc"),
                                     progress=progress)
    out = {"labels": _write_labels(labels, affine, request["output"]), "qc": json_safe(qc)}
    if request.get("confidence_output"):
        out["confidence"] = _write_labels(confidence, affine, request["confidence_output"], np.float32)
    return out
