"""Portal / hepatic split of a liver-vessel mask: two vessel trees fitted to its skeleton.

How it decides (default, on the skeleton graph):
1. Skeleton graph (skeleton.py): branches and junctions with their widths, directions at
   each joint, and free ends with the way they point.
2. Seeds (seeds.py): the portal tree enters at the hilum with the portal trunk, the hepatic
   veins end at the IVC (robust to shifted or partly missing support masks).
3. Steps (steps.py): every step from one branch into a neighbouring one is priced by how
   much it breaks the shape of a vessel tree seen from its root (widening, Murray's law
   at the junction, turning, crossing into another passing vessel, jumping a gap).
4. Trees (trees.py): every branch takes the one step into it that makes the cheapest
   pair of trees from the seeds (a minimum-cost arborescence), and belongs to its seed's
   tree. Contacts are judged by the steps competing there, not by distance to a root.
5. Voxels: each vessel voxel takes the class of its nearest skeleton voxel's branch (a
   junction's voxels: of its nearest arm, so a crossing is split between the vessels);
   per-class specks below `min_component_size` voxels join the class around them.
6. Confidence (confidence.py): per voxel, 0.5 to 1.0, low where a branch was won by a
   narrow margin and where the two trees meet.

`use_skeleton=False` skips the graph: a voxel watershed on the vessel radius (flooding
from the seeds, thick vessels first), without direction cues or gap bridging; its
confidence map knows only where the classes meet.
Everything is vectorised; Python loops run over free ends and slices only.
"""
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from .confidence import (DOUBTED, UNSURE_BELOW, doubtful_warning, interface_confidence, margin_confidence,
                         summary)
from .io import VesselInputError
from .qc import split_qc
from .seeds import HEPATIC, PORTAL, Seeds, find_seeds
from .skeleton import build_skeleton_graph
from .steps import Steps, width
from .trees import drop_portal_twigs, fit_trees, second_opinions
from .voxels import clean_small_pieces, neighbour_pairs


SPLIT_CONNECTORS = True
CONNECTOR_LENGTH = 3.0      # a bridge between the trees is at most this many junction radii long


@dataclass
class SplitResult:
    labels: np.ndarray                 # uint8, 0 unlabelled, 1 portal, 2 hepatic
    qc: dict
    graph: object = None               # SkeletonGraph
    node_label: np.ndarray = None      # per graph node (junctions: their widest arm's class)
    node_confidence: np.ndarray = None
    seeds: Seeds = None
    voxel_index: np.ndarray = None     # (n, 3) vessel voxels
    voxel_node: np.ndarray = None      # (n,) their skeleton node
    skeleton_labels: np.ndarray = None
    confidence: np.ndarray = None      # float32 like labels: 0.5-1.0 on vessels, 0 elsewhere
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------
# voxels

def _junction_arms(graph):
    """Sorted keys junction * n + arm of every (junction, branch) pair."""
    e = graph.edges
    n = graph.n_nodes
    j0 = graph.is_junction[e[:, 0]] & ~graph.is_junction[e[:, 1]]
    j1 = graph.is_junction[e[:, 1]] & ~graph.is_junction[e[:, 0]]
    return np.unique(np.concatenate([e[j0, 0] * n + e[j0, 1], e[j1, 1] * n + e[j1, 0]]))


def voxel_branches(graph, k=16):
    """The branch each vessel voxel belongs to: its nearest skeleton voxel's node, or for
    voxels of a junction, the node of the nearest skeleton voxel of one of its arms (so
    where two vessels cross, each keeps its own voxels)."""
    node = graph.voxel_node.astype(int).copy()
    in_junction = np.nonzero(graph.is_junction[node])[0]
    branch_vox = np.nonzero(~graph.is_junction[graph.node])[0]
    if not len(in_junction) or not len(branch_vox):
        return node
    pts = graph.points_mm(branch_vox)
    k = min(k, len(branch_vox))
    _, near = cKDTree(pts).query(graph.voxel_index[in_junction] * graph.spacing, k=k, workers=-1)
    near = near.reshape(len(in_junction), k)
    cand = graph.node[branch_vox[near]]
    keys = _junction_arms(graph)
    wanted = node[in_junction, None] * graph.n_nodes + cand
    is_arm = np.isin(wanted, keys)
    first = np.argmax(is_arm, axis=1)
    found = is_arm[np.arange(len(in_junction)), first]
    node[in_junction[found]] = cand[found, first[found]]
    return node


def split_connectors(graph, branch_label, branch):
    """Per vessel voxel: its branch's class, except on a connector, a short branch whose two
    ends meet only the one tree at one end and only the other at the other (a bridge where
    two trees touch): its voxels go to the tree of the nearer end, so the bridge is shared."""
    label = branch_label[branch]
    e = graph.edges
    jn = graph.is_junction
    n = graph.n_nodes
    # per (branch, junction at one of its ends): the classes of the junction's other arms
    pairs = np.concatenate([e[~jn[e[:, 0]] & jn[e[:, 1]]], e[jn[e[:, 0]] & ~jn[e[:, 1]]][:, ::-1]])
    if not len(pairs):
        return label
    arm_j, arm = pairs[:, 1], pairs[:, 0]
    seen = np.zeros((n, 3), int)
    np.add.at(seen, (arm_j, branch_label[arm]), 1)
    other = seen[arm_j] - np.eye(3, dtype=int)[branch_label[arm]]       # the other arms' classes
    end_class = np.where((other[:, 1] > 0) & (other[:, 2] == 0), 1, np.where((other[:, 2] > 0) & (other[:, 1] == 0), 2, 0))
    n_ends = np.bincount(arm, minlength=n)
    two = n_ends[arm] == 2
    order = np.lexsort((arm_j, arm))
    arm, arm_j, end_class, two = arm[order], arm_j[order], end_class[order], two[order]
    first = np.nonzero(two & np.r_[True, arm[1:] != arm[:-1]])[0]
    a_end, b_end = first, first + 1
    conn = (end_class[a_end] > 0) & (end_class[b_end] > 0) & (end_class[a_end] != end_class[b_end])
    # a bridge is short: not much longer than the vessels it joins are wide
    reach = np.maximum(graph.node_max_radius[arm_j[a_end]], graph.node_max_radius[arm_j[b_end]])
    conn &= graph.node_length[arm[a_end]] <= CONNECTOR_LENGTH * reach
    if not conn.any():
        return label
    nodes = arm[a_end[conn]]
    ja, jb = arm_j[a_end[conn]], arm_j[b_end[conn]]
    ca, cb = end_class[a_end[conn]], end_class[b_end[conn]]
    slot = np.full(n, -1)
    slot[nodes] = np.arange(len(nodes))
    vox = np.nonzero(slot[branch] >= 0)[0]
    k = slot[branch[vox]]
    pts = graph.voxel_index[vox] * graph.spacing
    da = np.linalg.norm(pts - graph.node_centre[ja[k]], axis=1)
    db = np.linalg.norm(pts - graph.node_centre[jb[k]], axis=1)
    label[vox] = np.where(da <= db, ca[k], cb[k])
    return label


def _crop_box(mask, pad=1):
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - pad, 0)
    hi = np.minimum(idx.max(0) + pad + 1, mask.shape)
    return tuple(slice(a, b) for a, b in zip(lo, hi)), idx



# ---------------------------------------------------------------------------------------
# voxel watershed (no skeleton)

def _voxel_watershed(vessels, spacing, seeds_vox):
    from skimage.segmentation import watershed  # scikit-image (seconds to import): only this fallback uses it

    box, _ = _crop_box(vessels, pad=2)
    sub = vessels[box]
    dt = ndimage.distance_transform_edt(sub, sampling=spacing)
    markers = np.zeros(sub.shape, np.int32)
    for cls, pts in seeds_vox.items():
        if len(pts):
            local = pts - [b.start for b in box]
            markers[tuple(local.T)] = cls
    out = np.zeros(vessels.shape, np.uint8)
    if markers.any():
        out[box] = watershed(-dt, markers, mask=sub).astype(np.uint8)
    return out


def _work_box(vessels, spacing, margin_mm=30.0):
    """The vessels' bounding box plus a margin that keeps nearby support masks in view."""
    idx = np.nonzero(vessels.any(axis=(1, 2)))[0], np.nonzero(vessels.any(axis=(0, 2)))[0], \
        np.nonzero(vessels.any(axis=(0, 1)))[0]
    pad = np.ceil(margin_mm / np.asarray(spacing)).astype(int)
    return tuple(slice(max(int(i[0]) - p, 0), min(int(i[-1]) + p + 1, n))
                 for i, p, n in zip(idx, pad, vessels.shape))


def split_vessels(vessels, spacing, liver=None, portal_trunk=None, ivc=None, use_skeleton=True,
                  min_component_size=20, portal_points=None, hepatic_points=None, progress=None):
    """Split a binary vessel mask into portal (1) and hepatic (2) in RAS-canonical arrays.

    `portal_points` / `hepatic_points`: extra user seeds as array indices (n, 3).
    Support masks may be None. Returns a SplitResult with labels, the confidence map and
    QC. The liver mask is not needed by the split itself (vessels are expected inside it).
    """
    vessels = np.asarray(vessels) > 0
    spacing = np.asarray(spacing, float)
    if not vessels.any():
        raise VesselInputError("The vessel mask is empty: there is nothing to split.",
                               "Check that the liver_vessels result (or the --vessels file) contains vessels; "
                               "a CT without contrast often gives none.")
    step = progress or (lambda *a, **k: None)
    box = _work_box(vessels, spacing)
    offset = np.array([b.start for b in box])
    crop = (lambda m: None if m is None else np.asarray(m)[box] > 0)
    step("postprocess", 0.05, "Vessel skeleton")
    graph = build_skeleton_graph(vessels[box], spacing, offset, vessels.shape)
    step("postprocess", 0.4, "Seeds from portal trunk and IVC")
    seeds = find_seeds(graph, spacing, crop(portal_trunk), crop(ivc), portal_points, hepatic_points, offset)
    steps = Steps(graph) if use_skeleton else None
    if use_skeleton:
        seeds = drop_portal_twigs(graph, seeds, steps)
    warnings = list(seeds.warnings)
    idx, vnode = graph.voxel_index, graph.voxel_node
    seed_nodes = np.concatenate([seeds.portal, seeds.hepatic]).astype(int)
    pairs = neighbour_pairs(idx)
    protect = np.isin(vnode, seed_nodes)
    node_label = node_conf = None
    if use_skeleton:
        step("postprocess", 0.5, "Fitting the portal and hepatic trees")
        fit = fit_trees(graph, seeds, steps)
        branch = voxel_branches(graph)
        node_conf = margin_confidence(fit.margin)
        doubted = second_opinions(graph, seeds, steps, fit) > 0
        node_conf = np.where(doubted, np.minimum(node_conf, DOUBTED), node_conf)
        fitted = split_connectors(graph, fit.label, branch) if SPLIT_CONNECTORS else fit.label[branch]
        final = clean_small_pieces(fitted, pairs, min_component_size, protect)
        vconf = np.where(final == fit.label[branch], node_conf[branch], 0.5)   # bridges shared, specks moved
        radius = width(graph)[branch]
        node_label = _node_labels(graph, fit.label, branch)
    else:
        step("postprocess", 0.5, "Splitting the vessel mask (voxel watershed)")
        seed_vox = {PORTAL: idx[np.isin(vnode, seeds.portal)], HEPATIC: idx[np.isin(vnode, seeds.hepatic)]}
        final = clean_small_pieces(_voxel_watershed(vessels, spacing, seed_vox)[tuple(idx.T)], pairs,
                                   min_component_size, protect)
        vconf = np.ones(len(final))
        radius = width(graph)[vnode]
    labels = np.zeros(vessels.shape, np.uint8)
    labels[tuple(idx.T)] = final
    step("postprocess", 0.9, "Confidence map")
    vconf = np.minimum(vconf, interface_confidence(idx, final, radius, spacing, pairs))
    vconf[final == 0] = 0.5
    doubtful = doubtful_warning(float((vconf < UNSURE_BELOW).mean()))
    if doubtful:
        warnings.append(doubtful)
    confidence = np.zeros(vessels.shape, np.float32)
    confidence[tuple(idx.T)] = vconf

    seed_voxels = {cls: int(np.isin(vnode, nodes).sum()) for cls, nodes in ((PORTAL, seeds.portal),
                                                                             (HEPATIC, seeds.hepatic))}
    mean_conf, flagged, share = summary(vconf, final)
    skel_labels = np.zeros(vessels.shape, np.uint8)
    skel_labels[tuple(graph.coords.T)] = labels[tuple(graph.coords.T)]
    qc = split_qc(final, np.ones(len(final), bool), seed_voxels[PORTAL], seed_voxels[HEPATIC], use_skeleton,
                  mean_conf, flagged, warnings, seeds, unsure_fraction=share)
    step("postprocess", 1.0, "Split done")
    return SplitResult(labels, qc, graph, node_label, node_conf, seeds, idx, vnode, skel_labels, confidence)


def _node_labels(graph, branch_label, branch):
    """Per graph node: branches their class; junctions the class of most of their voxels."""
    out = branch_label.copy()
    junction_vox = graph.is_junction[graph.voxel_node]
    if junction_vox.any():
        counts = np.zeros((graph.n_nodes, 3))
        np.add.at(counts, (graph.voxel_node[junction_vox], branch_label[branch[junction_vox]]), 1)
        j = graph.is_junction
        out[j] = np.where(counts[j, 1:].sum(1) > 0, 1 + np.argmax(counts[j, 1:], axis=1), 0)
    return out.astype(np.uint8)
