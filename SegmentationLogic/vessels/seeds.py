"""Where each tree enters the liver: portal and hepatic seed nodes on the skeleton graph.

Anatomy, not exact overlap, picks the seeds, so support masks that are shifted by a few
mm or partly missing still work:
- portal: the portal vein enters at the hilum as the thickest intrahepatic vessel, at the
  end of the portal trunk; the seed is the node that best combines a large radius with
  closeness to the trunk mask (searched up to 25 mm away: a trunk without its hilum end
  still points at the right vessel);
- hepatic: the hepatic veins end at the IVC; seeds are the thick nodes whose free end
  lies near the IVC (or which overlap it). A missing IVC slab is filled in by
  interpolating the IVC slice by slice before the search, and an IVC mask that stops
  short of the vessels is continued straight up or down (the IVC runs behind the whole
  liver) from its last 15 mm.
Without a usable support mask a documented fallback guesses from radius and position
(and says so in the warnings). User points override both.
"""
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

PORTAL, HEPATIC = 1, 2
PORTAL_SEARCH_MM = 25.0
PORTAL_DECAY_MM = 15.0
HEPATIC_SEARCH_MM = 10.0     # a vein's free end this close to the IVC may be its root
HEPATIC_TOUCH_MM = 8.0      # any vessel this close touches the IVC (masks shifted by a few mm, a vein root cut short)
USER_POINT_MAX_MM = 15.0


@dataclass
class Seeds:
    portal: np.ndarray                       # node ids
    hepatic: np.ndarray
    user_portal: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    user_hepatic: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    source: dict = field(default_factory=dict)     # {"portal": "portal_trunk" | "fallback" | "user" ...}
    warnings: list = field(default_factory=list)
    support: dict = field(default_factory=dict)    # distances and repairs, for QC


def _surface_points(mask, spacing, offset=(0, 0, 0)):
    """Surface voxels of a mask in mm (full-volume indices when `mask` is a crop at `offset`)."""
    mask = np.asarray(mask) > 0
    if not mask.any():
        return np.zeros((0, 3))
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - 1, 0)
    hi = np.minimum(idx.max(0) + 2, mask.shape)
    sub = mask[tuple(slice(a, b) for a, b in zip(lo, hi))]
    surf = sub & ~ndimage.binary_erosion(sub, border_value=0)
    return (np.argwhere(surf) + lo + np.asarray(offset)) * np.asarray(spacing, float)


def repair_ivc(ivc, spacing, max_gap_mm=120.0):
    """Fill missing axial slabs of an IVC mask by interpolating its slice centroids and radii.

    Returns (mask, filled_mm): the repaired mask and the length of IVC added (mm).
    Assumes RAS-canonical array axes (axis 2 runs inferior to superior).
    """
    ivc = np.asarray(ivc) > 0
    spacing = np.asarray(spacing, float)
    present = np.nonzero(ivc.any(axis=(0, 1)))[0]
    if len(present) < 2:
        return ivc, 0.0
    missing = np.setdiff1d(np.arange(present[0], present[-1] + 1), present)
    if not len(missing):
        return ivc, 0.0
    area = ivc.sum(axis=(0, 1))[present].astype(float)
    idx = np.argwhere(ivc)
    cx = np.bincount(idx[:, 2], weights=idx[:, 0], minlength=ivc.shape[2])[present] / area
    cy = np.bincount(idx[:, 2], weights=idx[:, 1], minlength=ivc.shape[2])[present] / area
    radius_mm = np.sqrt(area * spacing[0] * spacing[1] / np.pi)
    # only gaps up to max_gap_mm: a longer absence is not a slab missing from one vessel
    nxt = np.searchsorted(present, missing)
    gap_mm = (present[nxt] - present[nxt - 1]) * spacing[2]
    missing = missing[gap_mm <= max_gap_mm]
    out = ivc.copy()
    x = np.arange(ivc.shape[0]) * spacing[0]
    y = np.arange(ivc.shape[1]) * spacing[1]
    X, Y = np.meshgrid(x, y, indexing="ij")
    for k in missing:  # one disc per missing slice: a loop over slices, not voxels
        px = np.interp(k, present, cx) * spacing[0]
        py = np.interp(k, present, cy) * spacing[1]
        r = np.interp(k, present, radius_mm)
        out[:, :, k] = (X - px) ** 2 + (Y - py) ** 2 <= r * r
    return out, float(len(missing) * spacing[2])


def extend_ivc(ivc, spacing, reach=(0, None), tail_mm=15.0):
    """Continue an IVC mask straight up and down to the slices `reach` (first, last + 1),
    with the mean centre and area of its last `tail_mm` at each end.

    Returns (mask, extended_mm). Assumes RAS-canonical axes (axis 2 inferior to superior)."""
    ivc = np.asarray(ivc) > 0
    spacing = np.asarray(spacing, float)
    present = np.nonzero(ivc.any(axis=(0, 1)))[0]
    if not len(present):
        return ivc, 0.0
    lo, hi = reach[0], ivc.shape[2] if reach[1] is None else reach[1]
    tail = max(1, int(round(tail_mm / spacing[2])))
    x = np.arange(ivc.shape[0]) * spacing[0]
    y = np.arange(ivc.shape[1]) * spacing[1]
    X, Y = np.meshgrid(x, y, indexing="ij")
    out = ivc.copy()
    added = 0
    for ends, todo in ((present[:tail], range(lo, present[0])), (present[-tail:], range(present[-1] + 1, hi))):
        if not len(todo):
            continue
        idx = np.argwhere(ivc[:, :, ends])
        centre = idx[:, :2].mean(0) * spacing[:2]
        r = np.sqrt(len(idx) / len(ends) * spacing[0] * spacing[1] / np.pi)
        disc = (X - centre[0]) ** 2 + (Y - centre[1]) ** 2 <= r * r
        out[:, :, list(todo)] = disc[..., None]
        added += len(todo)
    return out, float(added * spacing[2])


def _node_distance(graph, points_mm):
    """(min distance per node, distance per skeleton voxel) to a point cloud (mm)."""
    if not len(points_mm):
        inf = np.full(graph.n_nodes, np.inf)
        return inf, np.full(len(graph.coords), np.inf)
    d, _ = cKDTree(points_mm).query(graph.points_mm())
    per_node = np.full(graph.n_nodes, np.inf)
    np.minimum.at(per_node, graph.node, d)
    return per_node, d


def _wall_gap(graph, node_dist):
    """Gap between a support mask and the vessel walls (mm): centreline distance minus radius."""
    return float(max(0.0, np.min(node_dist - graph.node_max_radius)))


def _portal_from_trunk(graph, trunk, spacing, seeds, offset):
    pts = _surface_points(trunk, spacing, offset)
    if not len(pts):
        seeds.warnings.append("Portal trunk mask is empty: portal seed guessed from vessel radius and position.")
        return None
    dist, _ = _node_distance(graph, pts)
    gap = _wall_gap(graph, dist)
    seeds.support["portal_trunk_gap_mm"] = gap
    cand = np.nonzero(dist <= PORTAL_SEARCH_MM)[0]
    if not len(cand):
        seeds.warnings.append(
            f"Portal trunk mask does not reach the vessels (nearest vessel {gap:.1f} mm away): "
            "portal seed guessed from vessel radius and position.")
        return None
    if gap > 2.0 * float(np.max(spacing)):
        seeds.warnings.append(
            f"Portal trunk mask does not touch the vessels (nearest vessel {gap:.1f} mm away): "
            "portal seed taken from the nearest large vessel.")
    # the portal tree, not a speck near the trunk: weigh by the vessel volume of the piece
    score = _width(graph)[cand] ** 4 * np.exp(-dist[cand] / PORTAL_DECAY_MM) * _piece_share(graph, cand)
    return np.array([cand[np.argmax(score)]])


def _hepatic_from_ivc(graph, ivc, spacing, seeds, offset):
    ivc, filled = repair_ivc(ivc, spacing)
    if filled:
        seeds.support["ivc_filled_mm"] = filled
    # the vessels' height, in the crop's slices: the IVC passes all of it
    z = graph.coords[:, 2] - int(np.asarray(offset)[2])
    ivc, extended = extend_ivc(ivc, spacing, (max(int(z.min()), 0), min(int(z.max()) + 1, ivc.shape[2])))
    if extended:
        seeds.support["ivc_extended_mm"] = extended
    pts = _surface_points(ivc, spacing, offset)
    if not len(pts):
        seeds.warnings.append("IVC mask is empty: hepatic seeds guessed from vessel radius and position.")
        return None
    node_d, vox_d = _node_distance(graph, pts)
    gap = _wall_gap(graph, node_d)
    seeds.support["ivc_gap_mm"] = gap
    inside = np.zeros(graph.n_nodes, bool)
    ijk = graph.coords - np.asarray(offset)
    ok = np.all((ijk >= 0) & (ijk < ivc.shape), axis=1)
    inside_vox = np.zeros(len(ijk), bool)
    inside_vox[ok] = ivc[tuple(ijk[ok].T)]
    inside[graph.node[inside_vox]] = True
    # hepatic veins end at the IVC: a free end (or the node itself) close to it
    near_tip = graph.tips[vox_d[graph.tips] <= HEPATIC_SEARCH_MM]
    touching = node_d <= max(HEPATIC_TOUCH_MM, 2.0 * float(np.max(spacing)))
    cand = np.union1d(graph.node[near_tip], np.nonzero(inside | touching)[0])
    if not len(cand):
        seeds.warnings.append(
            f"IVC mask does not reach the vessels (nearest vessel {gap:.1f} mm away): "
            "hepatic seeds guessed from vessel radius and position.")
        return None
    if gap > 2.0 * float(np.max(spacing)):
        seeds.warnings.append(
            f"IVC mask does not touch the vessels (nearest vessel {gap:.1f} mm away): "
            "hepatic seeds taken from the large vessels ending near it.")
    # thin vessels near the IVC are twigs of either tree; the veins are thick where they
    # end. Candidates that the portal tree reaches at full width are dropped later
    # (split.drop_portal_candidates), once the portal seed is known.
    # (per connected piece: a vein cut off from the rest, or one that reaches the IVC on
    # its own, is the widest vessel of its piece there, however thin beside the others)
    size = _width(graph)[cand]
    piece = graph.component[cand]
    widest = np.zeros(piece.max() + 1)
    np.maximum.at(widest, piece, size)
    cand = cand[size >= 0.5 * widest[piece]]
    return np.unique(_nearest_arm(graph, cand, node_d))


def _nearest_arm(graph, nodes, dist):
    """Branches for nodes: a junction (where several vessels may meet, near the IVC the
    portal vein too) stands for its arms touching the mask (`dist` per node) that are at
    least half as wide as the widest of them: veins end at the IVC at their widest, and
    several may meet there; a twig beside them is thinner (portal arms are dropped later)."""
    e = graph.edges
    out = []
    for c in nodes:
        if not graph.is_junction[c]:
            out.append(c)
            continue
        arms = np.concatenate([e[e[:, 0] == c, 1], e[e[:, 1] == c, 0]])
        arms = arms[~graph.is_junction[arms]]
        if not len(arms):
            out.append(c)
            continue
        near = arms[dist[arms] <= dist[arms].min() + HEPATIC_TOUCH_MM]
        w = _width(graph)[near]
        out.extend(near[w >= 0.5 * w.max()])
    return np.asarray(out, int)


def _width(graph):
    """Radius of branches; junctions (clusters with no meaningful length) by their widest point."""
    return np.where(graph.is_junction, graph.node_max_radius, graph.node_radius)


def _piece_share(graph, nodes):
    """Share of the vessel volume in each node's connected piece, capped at 1 from 5 %."""
    piece = np.bincount(graph.component[graph.voxel_node], minlength=graph.component.max() + 1)
    return np.minimum(1.0, piece[graph.component[nodes]] / (0.05 * len(graph.voxel_node)))


def _fallback_portal(graph, hepatic):
    """Without a trunk: the portal vein at the hilum is the thickest vessel of the tree,
    away from the hepatic roots (specks and blobs do not count)."""
    far = np.ones(graph.n_nodes, bool)
    if hepatic is not None and len(hepatic):
        d, _ = cKDTree(graph.node_centre[hepatic]).query(graph.node_centre)
        far = d >= 20.0
    cand = np.nonzero(far)[0] if far.any() else np.arange(graph.n_nodes)
    score = _width(graph)[cand] ** 4 * _piece_share(graph, cand)
    return np.array([cand[np.argmax(score)]])


def _fallback_hepatic(graph, portal):
    """Without an IVC: the hepatic veins end (in the vessel mask) where they reach the IVC,
    so their roots are the thickest free ends apart from the portal root; they lie in the
    upper half of the vessel tree and away from the portal seed."""
    w = _width(graph)
    z = graph.node_centre[:, 2]
    cand = np.unique(graph.node[graph.tips])
    cand = cand[z[cand] >= np.percentile(z, 50)]
    if portal is not None and len(portal):
        d = np.linalg.norm(graph.node_centre[cand][:, None] - graph.node_centre[portal][None], axis=2).min(1)
        cand = cand[d >= 30.0]
        cand = cand[w[cand] >= 0.5 * w[portal].max()]
    if not len(cand):
        return None
    cand = cand[np.argsort(-w[cand])]
    return cand[w[cand] >= 0.7 * w[cand[0]]][:5]


def user_seed_nodes(graph, points_ijk, label, seeds):
    """Nodes nearest to user points (array indices); points too far from any vessel are reported."""
    if points_ijk is None or not len(points_ijk):
        return np.zeros(0, int)
    vox, dist = graph.nearest_voxel(np.asarray(points_ijk, float), USER_POINT_MAX_MM)
    for p, d in zip(points_ijk, dist):
        if not np.isfinite(d):
            seeds.warnings.append(f"A {label} seed point at voxel {np.round(p, 1).tolist()} is more than "
                                  f"{USER_POINT_MAX_MM:.0f} mm from any vessel and was ignored.")
    return np.unique(graph.node[vox[vox >= 0]])


def find_seeds(graph, spacing, portal_trunk=None, ivc=None, portal_points=None, hepatic_points=None,
               offset=(0, 0, 0)):
    """Seeds on `graph`; support masks may be crops starting at `offset` (full-volume index)."""
    seeds = Seeds(np.zeros(0, int), np.zeros(0, int))
    portal = hepatic = None
    if portal_trunk is not None:
        portal = _portal_from_trunk(graph, portal_trunk, spacing, seeds, offset)
    else:
        seeds.warnings.append("Portal trunk mask missing: portal seed guessed from vessel radius and position.")
    if ivc is not None:
        hepatic = _hepatic_from_ivc(graph, ivc, spacing, seeds, offset)
    else:
        seeds.warnings.append("IVC mask missing: hepatic seeds guessed from vessel radius and position.")
    seeds.source["portal"] = "portal_trunk" if portal is not None else "fallback"
    seeds.source["hepatic"] = "inferior_vena_cava" if hepatic is not None else "fallback"
    if portal is None:
        portal = _fallback_portal(graph, hepatic)
    if hepatic is None:
        hepatic = _fallback_hepatic(graph, portal)
        if hepatic is None:
            hepatic = np.zeros(0, int)
    hepatic = np.setdiff1d(hepatic, portal)

    user_p = user_seed_nodes(graph, portal_points, "portal", seeds)
    user_h = user_seed_nodes(graph, hepatic_points, "hepatic", seeds)
    both = np.intersect1d(user_p, user_h)
    if len(both):
        seeds.warnings.append(f"{len(both)} portal and hepatic seed points fall on the same branch; "
                              "those points were ignored.")
        user_p, user_h = np.setdiff1d(user_p, both), np.setdiff1d(user_h, both)
    # guessed seeds give way to the user's points; seeds from a support mask stay
    if len(user_p):
        if seeds.source["portal"] == "fallback":
            portal, seeds.source["portal"] = np.zeros(0, int), "user"
        else:
            seeds.source["portal"] += "+user"
    if len(user_h):
        if seeds.source["hepatic"] == "fallback":
            hepatic, seeds.source["hepatic"] = np.zeros(0, int), "user"
        else:
            seeds.source["hepatic"] += "+user"
    # a user's point wins over an automatic seed of the other class on the same branch
    seeds.user_portal, seeds.user_hepatic = user_p.astype(int), user_h.astype(int)
    seeds.portal = np.union1d(np.setdiff1d(portal, user_h), user_p).astype(int)
    seeds.hepatic = np.union1d(np.setdiff1d(hepatic, user_p), user_h).astype(int)
    return seeds
