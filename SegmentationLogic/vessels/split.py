"""Portal / hepatic split of a liver-vessel mask, using the anatomy of the two trees.

How it decides (default, on the skeleton graph, see skeleton.py):
1. Seeds: the portal tree enters at the hilum with the portal trunk, the hepatic veins
   end at the IVC (seeds.py; robust to shifted or partly missing support masks).
2. Every joint of the skeleton graph gets a strength: the radius of the thinner side to
   the fourth power (Poiseuille conductance: a narrow neck where two trees touch is
   weak), times a direction factor (a branch that continues none of the branches at its
   junction, like a bridge across to another tree, is weak). Free ends facing another
   piece of vessel across a short gap get a weaker "bridge" joint, scored by distance
   and by how well both ends point at each other.
3. Each node goes to the class whose seeds reach it by the strongest path, where a
   path is as strong as its weakest joint (seeded maximum spanning forest, i.e. a
   watershed cut on the graph). So trees are cut at their weakest contact, never in
   the middle of a thick branch; a subtree cut off by a gap follows its best bridge.
   The ratio of the two path strengths is the node's confidence.
4. Vessel voxels take the class of their nearest skeleton voxel; per-class specks
   below `min_component_size` voxels join the class around them or are cleared.

`use_skeleton=False` skips the graph: a voxel watershed on the vessel radius (flooding
from the seeds, thick vessels first), without direction cues or gap bridging.
Everything is vectorised; Python loops run over graph edges and slices only.
"""
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage.segmentation import watershed

from .io import VesselInputError
from .qc import split_qc
from .seeds import HEPATIC, PORTAL, Seeds, find_seeds
from .skeleton import _components, _ragged, build_skeleton_graph

GAP_SEARCH_MM = 12.0
GAP_DECAY_MM = 6.0
GAP_TRUST = 0.25     # a bridge over a gap counts for less than the same vessel seen whole
AMBIGUOUS_BELOW = 0.6


@dataclass
class SplitResult:
    labels: np.ndarray                 # uint8, 0 unlabelled, 1 portal, 2 hepatic
    qc: dict
    graph: object = None               # SkeletonGraph (None without skeleton)
    node_label: np.ndarray = None
    node_confidence: np.ndarray = None
    seeds: Seeds = None
    voxel_index: np.ndarray = None     # (n, 3) vessel voxels
    voxel_node: np.ndarray = None      # (n,) their skeleton node
    skeleton_labels: np.ndarray = None
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------
# joint strengths

def _direction_factor(graph):
    """Per edge: how well the branch end continues another branch at the same junction."""
    e = graph.edges
    factor = np.ones(len(e))
    ja, jb = graph.is_junction[e[:, 0]], graph.is_junction[e[:, 1]]
    inc = np.nonzero(ja ^ jb)[0]                 # branch-junction edges
    if not len(inc):
        return factor
    junction = np.where(ja[inc], e[inc, 0], e[inc, 1])
    side = np.where(ja[inc], 1, 0)               # the branch's side of the edge
    u = graph.edge_dir[inc, side]                # branch direction seen from the junction
    order = np.argsort(junction, kind="stable")
    junction, inc_sorted, u = junction[order], inc[order], u[order]
    counts = np.bincount(junction, minlength=graph.n_nodes)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    # all ordered pairs of incidences at the same junction
    reps = counts[junction]
    first = np.repeat(np.arange(len(junction)), reps)
    second, _ = _ragged(starts[junction], reps)
    keep = first != second
    first, second = first[keep], second[keep]
    straight = -(u[first] * u[second]).sum(1)    # 1 = one branch continues the other
    best = np.full(len(junction), -1.0)
    np.maximum.at(best, first, straight)
    factor[inc_sorted] = 0.3 + 0.7 * np.clip((best + 0.2) / 0.8, 0.0, 1.0)
    return factor


def _width(graph):
    return np.where(graph.is_junction, graph.node_max_radius, graph.node_radius).astype(float)


def _seed_class(graph, seeds):
    cls = np.zeros(graph.n_nodes, np.uint8)
    if seeds is not None:
        cls[np.asarray(seeds.portal, int)] = PORTAL
        cls[np.asarray(seeds.hepatic, int)] = HEPATIC
    return cls


def _capacity(graph, seed_class):
    """Node capacities: branches r^4; junctions (hubs) and seed nodes (known) unlimited."""
    cap = np.where(graph.is_junction, np.inf, graph.node_radius.astype(float) ** 4)
    cap[seed_class > 0] = np.inf
    return cap


def _pair_weight(graph, a, b, seed_class):
    """Joint strength: the narrower end's capacity. Unlimited only around one class's seeds:
    two adjacent hubs are as wide as the narrower, and where seeds of both classes meet
    (directly or through one junction) each seed counts with its real width."""
    cap = _capacity(graph, seed_class)
    w = np.minimum(cap[a], cap[b])
    width4 = _width(graph) ** 4
    sa, sb = seed_class[a], seed_class[b]
    hub = ~np.isfinite(w) & (sa == 0) & (sb == 0)
    w[hub] = np.minimum(width4[a[hub]], width4[b[hub]])
    # junctions touching seeds of each class
    touches = np.zeros((graph.n_nodes, 3), bool)
    touches[a, sb] = True
    touches[b, sa] = True
    mixed = touches[:, PORTAL] & touches[:, HEPATIC]
    clash = ~np.isfinite(w) & (((sa > 0) & (sb > 0) & (sa != sb)) | ((sa > 0) & mixed[b]) | ((sb > 0) & mixed[a]))
    w[clash] = np.minimum(np.where(sa[clash] > 0, width4[a[clash]], np.inf), np.where(sb[clash] > 0, width4[b[clash]],
                                                                                          np.inf))
    return w


def _joint_weights(graph, seed_class):
    e = graph.edges
    return _pair_weight(graph, e[:, 0], e[:, 1], seed_class) * _direction_factor(graph)


def _gap_bridges(graph, seed_class):
    """Joints across gaps: each free end to the best-facing skeleton voxel of another piece."""
    if not len(graph.tips) or graph.component.max() == 0:
        return np.zeros((0, 2), int), np.zeros(0)
    pts = graph.points_mm()
    tree = cKDTree(pts)
    comp = graph.component[graph.node]
    is_tip = np.zeros(len(pts), bool)
    is_tip[graph.tips] = True
    tip_dir = np.zeros((len(pts), 3))
    tip_dir[graph.tips] = graph.tip_dir
    close = 1.5 * float(graph.spacing.min())
    cap = _capacity(graph, seed_class)
    out_e, out_w = [], []
    for t, near in zip(graph.tips, tree.query_ball_point(pts[graph.tips], GAP_SEARCH_MM)):
        near = np.asarray(near, int)
        near = near[comp[near] != comp[t]]
        if not len(near):
            continue
        v = pts[near] - pts[t]
        d = np.maximum(np.linalg.norm(v, axis=1), 1e-6)
        align = (v @ tip_dir[t]) / d
        back = np.where(is_tip[near], np.einsum("ij,ij->i", -v, tip_dir[near]) / d, 0.6)
        ok = (align >= 0.5) | (d <= close)
        if not ok.any():
            continue
        score = np.clip(align, 0.2, 1.0) ** 2 * (0.5 + 0.5 * np.clip(back, 0.0, 1.0)) * np.exp(-d / GAP_DECAY_MM)
        score[~ok] = 0.0
        best = int(np.argmax(score))
        a, b = graph.node[t], graph.node[near[best]]
        w = min(cap[a], cap[b], max(graph.node_radius[a], graph.node_radius[b]) ** 4)
        out_e.append((a, b))
        out_w.append(w * score[best] * GAP_TRUST)
    if not out_e:
        return np.zeros((0, 2), int), np.zeros(0)
    return np.array(out_e, int), np.array(out_w)


def _path_strength(n, edges, weights, seeds):
    """Strength of the best path from any seed to each node (max over paths of the min joint).

    Kruskal order with a union-find: when a seeded group first absorbs another group,
    every node of that group is reached with the joint being added.
    """
    strength = np.zeros(n)
    if not len(seeds):
        return strength
    strength[seeds] = np.inf
    parent = np.arange(n)
    members = {i: [i] for i in range(n)}
    seeded = np.zeros(n, bool)
    seeded[seeds] = True

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for k in np.argsort(-weights, kind="stable"):
        a, b = find(edges[k, 0]), find(edges[k, 1])
        if a == b:
            continue
        if seeded[a] != seeded[b]:
            newcomer = b if seeded[a] else a
            strength[members[newcomer]] = weights[k]
        if len(members[a]) < len(members[b]):
            a, b = b, a
        parent[b] = a
        members[a].extend(members.pop(b))
        seeded[a] |= seeded[b]
    return strength


def _break_ties(labels, sp, sh, edges, weights, rounds=8):
    """Nodes both classes reach equally strongly (their own joint is the bottleneck either
    way) follow the neighbour that holds them best: the strongest joint to a neighbour,
    then the neighbour's own strength (the path beyond the shared bottleneck)."""
    tie = (sp == sh) & (sp > 0) & np.isfinite(sp)
    if not tie.any():
        return
    held = np.where(tie, 0.0, np.maximum(sp, sh))
    a = np.concatenate([edges[:, 0], edges[:, 1]])
    b = np.concatenate([edges[:, 1], edges[:, 0]])
    w = np.concatenate([weights, weights])
    for _ in range(rounds):
        todo = tie[a] & (held[a] == 0) & (held[b] > 0)
        if not todo.any():
            break
        via = np.minimum(held[b], w)
        best = np.zeros(len(labels))
        np.maximum.at(best, a[todo], via[todo])
        first = todo & (via == best[a])
        best2 = np.zeros(len(labels))
        np.maximum.at(best2, a[first], held[b[first]])
        win = first & (held[b] == best2[a])
        labels[a[win]] = labels[b[win]]
        held[a[win]] = best[a[win]]


def _graph_edges(graph, seed_class, use_gaps=True):
    edges, weights = graph.edges, _joint_weights(graph, seed_class)
    if use_gaps:
        ge, gw = _gap_bridges(graph, seed_class)
        if len(ge):
            edges, weights = np.concatenate([edges, ge]), np.concatenate([weights, gw])
    return edges, weights


def drop_portal_candidates(graph, seeds):
    """Drop automatic hepatic seeds that are twigs of the portal tree ending near the IVC.

    A twig: a thin free end (under 60 % of the widest candidate) that the portal seed
    reaches at its full width. A wrongly kept twig costs one twig; a dropped hepatic root
    would cost a whole vein, so only clear cases go."""
    auto = np.setdiff1d(seeds.hepatic, seeds.user_hepatic)
    if len(auto) < 2 or not len(seeds.portal):
        return seeds
    only_portal = np.zeros(graph.n_nodes, np.uint8)
    only_portal[np.asarray(seeds.portal, int)] = PORTAL
    edges, weights = _graph_edges(graph, only_portal)
    sp = _path_strength(graph.n_nodes, edges, weights, seeds.portal)
    width = _width(graph)[auto]
    has_tip = np.isin(auto, graph.node[graph.tips])
    twig = has_tip & (width < 0.6 * width.max()) & (sp[auto] >= 0.9 * width ** 4)
    if twig.any():
        seeds.hepatic = np.setdiff1d(seeds.hepatic, auto[twig])
        seeds.support["hepatic_candidates_dropped"] = int(twig.sum())
    return seeds


def label_graph(graph, seeds, use_gaps=True):
    """(node labels 0/1/2, node confidence 0.5..1) from the seeds by strongest paths."""
    edges, weights = _graph_edges(graph, _seed_class(graph, seeds), use_gaps)
    sp = _path_strength(graph.n_nodes, edges, weights, seeds.portal)
    sh = _path_strength(graph.n_nodes, edges, weights, seeds.hepatic)
    labels = np.where(sp >= sh, PORTAL, HEPATIC).astype(np.uint8)
    labels[(sp == 0) & (sh == 0)] = 0
    _break_ties(labels, sp, sh, edges, weights)
    win, lose = np.maximum(sp, sh), np.minimum(sp, sh)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.where(np.isinf(win) & np.isinf(lose), 0.5,
                        np.where(np.isinf(win), 1.0, win / (win + lose)))
    conf = np.where(labels == 0, 0.0, np.nan_to_num(conf, nan=0.5))
    tie = (sp == sh) & (sp > 0) & np.isfinite(sp)
    if tie.any():
        conf[tie] = _tie_confidence(labels, sp, sh, edges, weights)[tie]
    return labels, conf


def _tie_confidence(labels, sp, sh, edges, weights):
    """For nodes whose own joint is the bottleneck for both classes: how strongly their
    neighbours of the chosen class hold them, against neighbours of the other class."""
    held = np.where(labels == PORTAL, sp, np.where(labels == HEPATIC, sh, 0.0))
    a = np.concatenate([edges[:, 0], edges[:, 1]])
    b = np.concatenate([edges[:, 1], edges[:, 0]])
    via = np.minimum(np.concatenate([weights, weights]), held[b])
    same = labels[a] == labels[b]
    best_same = np.zeros(len(labels))
    best_other = np.zeros(len(labels))
    np.maximum.at(best_same, a[same], via[same])
    other = ~same & (labels[b] > 0)
    np.maximum.at(best_other, a[other], via[other])
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = best_same / (best_same + best_other)
    ratio = np.where(best_other == 0, np.where(best_same > 0, 1.0, 0.5), ratio)
    return np.nan_to_num(ratio, nan=0.5)


# ---------------------------------------------------------------------------------------
# voxels

def _crop_box(mask, pad=1):
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - pad, 0)
    hi = np.minimum(idx.max(0) + pad + 1, mask.shape)
    return tuple(slice(a, b) for a, b in zip(lo, hi)), idx


_OFFSETS26 = np.array([o for o in np.ndindex(3, 3, 3) if o != (1, 1, 1)]) - 1


def clean_small_islands(labels, vessels, min_size, protect=None):
    """Per class, 26-connected pieces below min_size voxels join the other class where they
    touch it, else are cleared. Labelling runs on the vessels' box; the neighbourhood test
    only on the few voxels of small pieces."""
    if min_size <= 1 or not labels.any():
        return labels
    box, _ = _crop_box(vessels)
    sub = labels[box]
    shape = np.array(sub.shape)
    for cls, other in ((PORTAL, HEPATIC), (HEPATIC, PORTAL)):
        comp, n = ndimage.label(sub == cls, structure=np.ones((3, 3, 3)))
        if not n:
            continue
        sizes = np.bincount(comp.ravel())
        small = np.nonzero(sizes < min_size)[0]
        small = small[small > 0]
        if not len(small):
            continue
        objects = ndimage.find_objects(comp)
        keep = np.zeros(n + 1, bool)
        if protect is not None:  # pieces holding a seed stay what they are
            keep[np.unique(comp[protect[box]])] = True
        for c in small[~keep[small]]:  # few and tiny: look around each piece only
            sl = tuple(slice(max(x.start - 1, 0), min(x.stop + 1, n_)) for x, n_ in zip(objects[c - 1], shape))
            piece = comp[sl] == c
            ring = ndimage.binary_dilation(piece, structure=np.ones((3, 3, 3))) & ~piece
            sub[sl][piece] = other if (sub[sl][ring] == other).any() else 0
    labels[box] = sub
    return labels


def clean_small_node_islands(graph, node_label, min_size, protect=()):
    """Graph version: per class, groups of same-label nodes carrying fewer than min_size
    voxels join the other class if they touch it, else are cleared."""
    label = node_label.copy()
    if min_size <= 1 or not label.any():
        return label
    voxels = np.bincount(graph.voxel_node, minlength=graph.n_nodes)
    e = graph.edges
    for cls, other in ((PORTAL, HEPATIC), (HEPATIC, PORTAL)):
        same = (label[e[:, 0]] == cls) & (label[e[:, 1]] == cls)
        _, group = _components(graph.n_nodes, e[same])
        size = np.bincount(group, weights=voxels * (label == cls), minlength=group.max() + 1)
        small = (label == cls) & (size[group] < min_size)
        seeded = np.zeros(group.max() + 1, bool)
        seeded[group[np.asarray(protect, int)]] = True
        small &= ~seeded[group]  # a group holding a seed stays
        if not small.any():
            continue
        touch = np.zeros(group.max() + 1, bool)
        for a, b in ((0, 1), (1, 0)):
            hit = small[e[:, a]] & (label[e[:, b]] == other)
            touch[group[e[hit, a]]] = True
        label[small & touch[group]] = other
        label[small & ~touch[group]] = 0
    return label


# ---------------------------------------------------------------------------------------
# voxel watershed (no skeleton)

def _voxel_watershed(vessels, spacing, seeds_vox):
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
    Support masks may be None. Returns a SplitResult with labels and QC. The liver mask
    is not needed by the split itself (vessels are expected inside it already).
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
    seeds = drop_portal_candidates(graph, find_seeds(graph, spacing, crop(portal_trunk), crop(ivc), portal_points,
                                                     hepatic_points, offset))
    warnings = list(seeds.warnings)
    idx, vnode = graph.voxel_index, graph.voxel_node

    if use_skeleton:
        step("postprocess", 0.5, "Splitting the vessel tree")
        node_label, node_conf = label_graph(graph, seeds)
        seed_nodes = np.concatenate([seeds.portal, seeds.hepatic]).astype(int)
        node_label = clean_small_node_islands(graph, node_label, min_component_size, seed_nodes)
        node_conf = np.where(node_label > 0, node_conf, 0.0)
        labels = np.zeros(vessels.shape, np.uint8)
        labels[tuple(idx.T)] = node_label[vnode]
        protect = np.zeros(vessels.shape, bool)
        protect[tuple(idx[np.isin(vnode, seed_nodes)].T)] = True
        labels = clean_small_islands(labels, vessels, min_component_size, protect)  # what nodes cannot see
        final = labels[tuple(idx.T)]
        vconf = np.where(final > 0, node_conf[vnode], 0.0)
    else:
        step("postprocess", 0.5, "Splitting the vessel mask (voxel watershed)")
        seed_vox = {PORTAL: idx[np.isin(vnode, seeds.portal)], HEPATIC: idx[np.isin(vnode, seeds.hepatic)]}
        labels = _voxel_watershed(vessels, spacing, seed_vox)
        protect = np.zeros(vessels.shape, bool)
        for pts in seed_vox.values():
            protect[tuple(pts.T)] = True
        labels = clean_small_islands(labels, vessels, min_component_size, protect)
        final = labels[tuple(idx.T)]
        node_label = node_conf = vconf = None

    seed_voxels = {cls: int(np.isin(vnode, nodes).sum()) for cls, nodes in ((PORTAL, seeds.portal),
                                                                             (HEPATIC, seeds.hepatic))}
    confidence = ambiguous = None
    if vconf is not None:
        labelled = final > 0
        confidence = float(vconf[labelled].mean()) if labelled.any() else 0.0
        ambiguous = int((labelled & (vconf < AMBIGUOUS_BELOW)).sum())
    skel_labels = np.zeros(vessels.shape, np.uint8)
    skel_labels[tuple(graph.coords.T)] = labels[tuple(graph.coords.T)]
    qc = split_qc(final, np.ones(len(final), bool), seed_voxels[PORTAL], seed_voxels[HEPATIC], use_skeleton,
                  confidence, ambiguous, warnings, seeds)
    step("postprocess", 1.0, "Split done")
    return SplitResult(labels, qc, graph, node_label, node_conf, seeds, idx, vnode, skel_labels)
