"""Vessel skeleton as a graph of branches and junctions (vectorised, no per-voxel loops).

The vessel mask is thinned to a 26-connected centreline (scikit-image). Skeleton voxels
with three or more skeleton neighbours are junction voxels; connected runs of the others
are branches. Artefacts of thinning are cleaned up on the node graph: short terminal
spurs fold into their junction, and "junctions" that join only two branches (corners of
a digital staircase) fold the two branches into one. What remains is the tree the
split reasons about: per node its voxels, radius (distance to the vessel wall, mm),
centre and length; per branch end its outward direction; per free end (a vessel tip or
a cut) its position and direction, used to bridge gaps in the mask.

All coordinates are array indices of the full volume; distances are in mm.
"""
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse import csgraph
from scipy.spatial import cKDTree

try:
    from skimage.morphology import skeletonize
except ImportError:  # pragma: no cover - scikit-image is a declared dependency
    skeletonize = None

# the 13 "forward" offsets of the 26-neighbourhood: each neighbour pair is found once
LONG_NODE_WIDTH = 0.85
# a branch between two junctions no longer than this many junction radii is no vessel of its
# own: where two vessels cross or touch, thinning often splits the crossing into two
# junctions joined by such a bar; the three become one junction with all four arms
BAR_FACTOR = 1.0
# a branch's direction at a joint: towards the mean of its skeleton within this many radii
DIRECTION_REACH = 3.0
_FORWARD = np.array([o for o in np.ndindex(3, 3, 3) if o > (1, 1, 1)]) - 1


@dataclass
class SkeletonGraph:
    shape: tuple              # full volume shape
    spacing: np.ndarray       # mm per array axis
    coords: np.ndarray        # (n, 3) skeleton voxel indices
    radius: np.ndarray        # (n,) distance to the vessel wall, mm
    node: np.ndarray          # (n,) node of each skeleton voxel
    is_junction: np.ndarray   # (k,) node is a junction
    node_voxels: np.ndarray   # (k,) skeleton voxels per node
    node_radius: np.ndarray   # (k,) mean radius, mm (see build_skeleton_graph)
    node_max_radius: np.ndarray  # (k,) largest radius along the node, mm
    node_centre: np.ndarray   # (k, 3) mm
    node_length: np.ndarray   # (k,) mm
    component: np.ndarray     # (k,) connected component of the node graph
    edges: np.ndarray         # (m, 2) node pairs, a junction and a branch (or two branches)
    edge_dir: np.ndarray      # (m, 2, 3) outward unit direction of each end's node at the joint
    tips: np.ndarray          # (t,) skeleton voxel index of each free end
    tip_dir: np.ndarray       # (t, 3) unit direction pointing out of the vessel at the tip
    voxel_index: np.ndarray   # (v, 3) every vessel voxel
    voxel_node: np.ndarray    # (v,) the node of its nearest skeleton voxel

    @property
    def n_nodes(self):
        return len(self.is_junction)

    def points_mm(self, idx=None):
        c = self.coords if idx is None else self.coords[idx]
        return c * self.spacing

    def nearest_voxel(self, points_ijk, max_mm=np.inf):
        """Skeleton voxel nearest to each point (array indices); -1 beyond max_mm."""
        tree = cKDTree(self.points_mm())
        d, i = tree.query(np.atleast_2d(points_ijk) * self.spacing, distance_upper_bound=max_mm)
        i = np.where(np.isfinite(d), i, -1)
        return i, d


def _neighbour_pairs(lin, shape):
    """Pairs (i, j) of 26-adjacent voxels given sorted linear indices in a padded volume."""
    strides = np.array([shape[1] * shape[2], shape[2], 1])
    out = []
    for off in _FORWARD @ strides:
        target = lin + off
        pos = np.searchsorted(lin, target)
        pos = np.minimum(pos, len(lin) - 1)
        hit = lin[pos] == target
        out.append(np.stack([np.nonzero(hit)[0], pos[hit]], 1))
    return np.concatenate(out) if out else np.zeros((0, 2), int)


def _components(n, pairs):
    if n == 0:
        return 0, np.zeros(0, int)
    g = sparse.coo_matrix((np.ones(len(pairs), bool), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return csgraph.connected_components(g, directed=False)


def _relabel(labels):
    _, inv = np.unique(labels, return_inverse=True)
    return inv.ravel()


def _ragged(starts, counts):
    """Concatenated ranges [starts[i], starts[i] + counts[i]) and the range number of each."""
    counts = np.asarray(counts, int)
    owner = np.repeat(np.arange(len(counts)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.asarray(starts)[owner] + offsets, owner


def _percentile_per_group(values, groups, n_groups, q):
    order = np.lexsort((values, groups))
    counts = np.bincount(groups, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pick = starts + np.floor(q * np.maximum(counts - 1, 0)).astype(int)
    out = np.zeros(n_groups)
    has = counts > 0
    out[has] = values[order][pick[has]]
    return out


def build_skeleton_graph(vessels, spacing, offset=(0, 0, 0), shape=None, spur_factor=1.0, merge_rounds=3,
                         bar_factor=BAR_FACTOR):
    """SkeletonGraph of a binary vessel mask; None if the mask is empty.

    `vessels` may be a crop of a larger volume: `offset` is the crop's first index and
    `shape` the full volume's shape; all coordinates in the graph are full-volume indices.
    """
    if skeletonize is None:  # pragma: no cover
        raise ImportError("scikit-image is required for the skeleton graph")
    vessels = np.asarray(vessels) > 0
    spacing = np.asarray(spacing, float)
    offset = np.asarray(offset, int)
    idx = np.argwhere(vessels)
    if not len(idx):
        return None
    lo = np.maximum(idx.min(0) - 2, 0)
    hi = np.minimum(idx.max(0) + 3, vessels.shape)
    sub = np.pad(vessels[tuple(slice(a, b) for a, b in zip(lo, hi))], 1)
    idx = idx + offset
    origin = lo - 1 + offset

    pieces, n_pieces = ndimage.label(sub, structure=np.ones((3, 3, 3)))
    skel = _skeleton_of_every_piece(skeletonize(sub), sub, pieces, n_pieces)
    coords_p = np.argwhere(skel)                       # C order, so linear indices are sorted
    lin = np.ravel_multi_index(coords_p.T, sub.shape)
    n = len(coords_p)
    pairs = _neighbour_pairs(lin, sub.shape)
    degree = np.bincount(pairs.ravel(), minlength=n)
    coords = coords_p + origin
    pts = coords * spacing

    # radius: distance from each skeleton voxel to the nearest background voxel (as an EDT)
    shell = ndimage.binary_dilation(sub) & ~sub
    wall = cKDTree((np.argwhere(shell) + origin) * spacing)
    radius, _ = wall.query(pts, workers=-1)

    # nodes: runs of junction voxels and runs of ordinary voxels
    junction_vox = degree >= 3
    same = junction_vox[pairs[:, 0]] == junction_vox[pairs[:, 1]]
    _, node = _components(n, pairs[same])
    k = node.max() + 1
    is_junction = np.zeros(k, bool)
    is_junction[node[junction_vox]] = True

    for _ in range(merge_rounds):
        node, is_junction, changed = _fold_artefacts(node, is_junction, pairs, radius, spacing, spur_factor)
        if not changed:
            break
    if bar_factor > 0:
        node, is_junction = _fold_bars(node, is_junction, pairs, radius, spacing, bar_factor)

    k = node.max() + 1
    edges = _node_edges(node, pairs)
    counts = np.bincount(node, minlength=k)
    centre = np.stack([np.bincount(node, weights=pts[:, a], minlength=k) for a in range(3)], 1) / counts[:, None]
    node_max_radius = np.zeros(k)
    np.maximum.at(node_max_radius, node, radius)
    # every vessel voxel belongs to its nearest skeleton voxel's node; a node's mean radius
    # is then its volume over its length: continuous, and robust to one thin or thick spot
    voxel_index = idx.astype(np.int32)
    nearest = _nearest_in_piece(pieces, origin, voxel_index, coords_p, pts, spacing)
    voxel_node = node[nearest].astype(np.int32)
    volume = np.bincount(voxel_node, minlength=k) * float(np.prod(spacing))
    length = _node_lengths(node, pairs, pts, k) + float(np.mean(spacing))
    # a node's radius: volume over length, or the median wall distance along its centreline
    # where junctions took much of its volume (thick, noisy vessels); both ignore a single
    # thin or thick spot, and a true neck is narrow all along
    node_radius = np.maximum(np.sqrt(volume / (np.pi * length)), _percentile_per_group(radius, node, k, 0.5))
    # a narrow neck is short; a long node is a stretch of vessel whose estimate suffers from
    # noise and from junctions taking its volume: let its widest point count (mostly)
    long_node = length > 2.0 * node_max_radius
    node_radius = np.where(long_node, np.maximum(node_radius, LONG_NODE_WIDTH * node_max_radius), node_radius)
    _, comp = _components(k, edges)

    edge_dir = _edge_directions(edges, node, pairs, pts, node_radius, spacing)
    tips = np.nonzero(degree <= 1)[0]
    tip_dir = _tip_directions(tips, node, pts, node_radius, spacing)
    return SkeletonGraph(tuple(shape or vessels.shape), spacing, coords, radius, node, is_junction, counts, node_radius,
                         node_max_radius, centre, length, comp, edges, edge_dir, tips, tip_dir, voxel_index,
                         voxel_node)


def _skeleton_of_every_piece(skel, sub, pieces, n_pieces):
    """Thinning can erase a whole piece (a short, thick or box-shaped one): such a piece
    keeps its deepest voxel as its skeleton, so every vessel voxel has one in its piece."""
    has = np.zeros(n_pieces + 1, bool)
    has[pieces[skel]] = True
    missing = np.nonzero(~has[1:])[0] + 1
    if len(missing):                                 # rare, and small: work in their boxes
        boxes = ndimage.find_objects(pieces)
        for piece in missing:
            box = boxes[piece - 1]
            own = np.pad(pieces[box] == piece, 1)
            depth = ndimage.distance_transform_cdt(own)
            pos = np.unravel_index(np.argmax(depth), depth.shape)
            skel[tuple(b.start + q - 1 for b, q in zip(box, pos))] = True
    return skel


def _nearest_in_piece(pieces, origin, voxel_index, coords_p, pts, spacing, k=8):
    """Nearest skeleton voxel of the same connected piece of the mask for every vessel voxel
    (the plain nearest may sit in a neighbouring vessel that passes close by)."""
    vpiece = pieces[tuple((voxel_index - origin).T)]
    spiece = pieces[tuple(coords_p.T)]
    tree = cKDTree(pts)
    _, nearest = tree.query(voxel_index * spacing, workers=-1)   # all cores: one query per vessel voxel
    wrong = np.nonzero(spiece[nearest] != vpiece)[0]
    if len(wrong):  # few voxels: look further among their neighbours
        k = min(k, len(pts))
        _, nn = tree.query(voxel_index[wrong] * spacing, k=k)
        nn = nn.reshape(len(wrong), k)
        same = spiece[nn] == vpiece[wrong, None]
        nearest[wrong] = nn[np.arange(len(wrong)), np.argmax(same, axis=1)]
        lost = wrong[~same.any(1)]
        for piece in np.unique(vpiece[lost]):  # rare: a voxel far from its own piece's skeleton
            own = np.nonzero(spiece == piece)[0]
            sel = lost[vpiece[lost] == piece]
            if len(own):
                nearest[sel] = own[cKDTree(pts[own]).query(voxel_index[sel] * spacing)[1]]
    return nearest


def _node_lengths(node, pairs, pts, k):
    """Centreline length per node: its minimum spanning tree, so the triangles of a
    26-connected digital line are not counted twice."""
    inner = pairs[node[pairs[:, 0]] == node[pairs[:, 1]]]
    if not len(inner):
        return np.zeros(k)
    d = np.linalg.norm(pts[inner[:, 0]] - pts[inner[:, 1]], axis=1)
    n = len(pts)
    mst = csgraph.minimum_spanning_tree(sparse.coo_matrix((d, (inner[:, 0], inner[:, 1])), shape=(n, n))).tocoo()
    return np.bincount(node[mst.row], weights=mst.data, minlength=k)


def _node_edges(node, pairs):
    cross = node[pairs[:, 0]] != node[pairs[:, 1]]
    e = np.sort(np.stack([node[pairs[cross, 0]], node[pairs[cross, 1]]], 1), axis=1)
    return np.unique(e, axis=0) if len(e) else np.zeros((0, 2), int)


def _node_figures(node, pairs, radius, spacing):
    """(k, edges, degree, widest radius, length in mm) of the current nodes."""
    k = node.max() + 1
    e = _node_edges(node, pairs)
    jrad = np.zeros(k)
    np.maximum.at(jrad, node, radius)
    return k, e, np.bincount(e.ravel(), minlength=k), jrad, np.bincount(node, minlength=k) * float(np.mean(spacing))


def _fold_artefacts(node, is_junction, pairs, radius, spacing, spur_factor):
    """One round of: spurs into their junction, junctions joining <= 2 branches into them."""
    k, e, deg, jrad, length = _node_figures(node, pairs, radius, spacing)

    # a terminal branch not much longer than its junction is wide is a thinning artefact
    spur_edges = []
    for a, b in ((0, 1), (1, 0)):
        br, jn = e[:, a], e[:, b]
        spur = (~is_junction[br]) & is_junction[jn] & (deg[br] == 1) & \
            (length[br] < spur_factor * jrad[jn] + spacing.min())
        spur_edges.append(e[spur][:, [a, b]])
    spurs = np.concatenate(spur_edges)                       # (branch, junction)
    deg_after = deg - np.bincount(spurs[:, 1], minlength=k)
    # a "junction" left with at most two branches is a corner or an end: fold it in
    weak = is_junction & (deg_after <= 2)
    join = e[weak[e[:, 0]] | weak[e[:, 1]]]
    lonely = is_junction & (deg == 0)
    if not len(spurs) and not len(join) and not lonely.any():
        return node, is_junction, False
    _, group = _components(k, np.concatenate([spurs, join]))
    group = _relabel(group)
    new_node = group[node]
    k2 = group.max() + 1
    deg2 = np.bincount(_node_edges(new_node, pairs).ravel(), minlength=k2)
    had_junction = np.bincount(group, weights=is_junction, minlength=k2) > 0
    return new_node, had_junction & (deg2 >= 3), True


def _fold_bars(node, is_junction, pairs, radius, spacing, bar_factor):
    """Fold short branches joining two junctions, with both junctions, into one junction."""
    k, e, deg, jrad, length = _node_figures(node, pairs, radius, spacing)
    # per branch of degree 2: the widest of its junction neighbours
    j_e = e[is_junction[e[:, 0]] ^ is_junction[e[:, 1]]]
    br = np.where(is_junction[j_e[:, 0]], j_e[:, 1], j_e[:, 0])
    jn = np.where(is_junction[j_e[:, 0]], j_e[:, 0], j_e[:, 1])
    n_j = np.bincount(br, minlength=k)
    widest = np.zeros(k)
    np.maximum.at(widest, br, jrad[jn])
    bar = ~is_junction & (deg == 2) & (n_j == 2) & (length < bar_factor * widest)
    if not bar.any():
        return node, is_junction
    join = j_e[bar[br]]
    _, group = _components(k, join)
    group = _relabel(group)
    k2 = group.max() + 1
    had_junction = np.bincount(group, weights=is_junction, minlength=k2) > 0
    return group[node], had_junction


def _local_direction(anchor_pts, voxel_pts, owner, reach):
    """Unit vector from each anchor to the mean of its voxels within `reach` (mm)."""
    d = np.linalg.norm(voxel_pts - anchor_pts[owner], axis=1)
    near = d <= reach[owner]
    m = len(anchor_pts)
    w = near.astype(float)
    cnt = np.bincount(owner, weights=w, minlength=m)
    mean = np.stack([np.bincount(owner, weights=w * voxel_pts[:, a], minlength=m) for a in range(3)], 1)
    v = np.where(cnt[:, None] > 0, mean / np.maximum(cnt, 1)[:, None] - anchor_pts, 0.0)
    norm = np.linalg.norm(v, axis=1)
    return np.where(norm[:, None] > 1e-9, v / np.maximum(norm, 1e-9)[:, None], 0.0)


def _edge_directions(edges, node, pairs, pts, node_radius, spacing):
    """For each edge (a, b): direction of a's voxels seen from where a touches b, and vice
    versa. Anchoring at the touching voxels (not at a junction's centre) keeps tangents
    right where junction clusters are long or lopsided, as in thick vessels."""
    out = np.zeros((len(edges), 2, 3))
    if not len(edges):
        return out
    cross = pairs[node[pairs[:, 0]] != node[pairs[:, 1]]]
    swap = node[cross[:, 0]] > node[cross[:, 1]]
    cross[swap] = cross[swap][:, ::-1]                     # (voxel of lower node, voxel of higher)
    key = np.stack([node[cross[:, 0]], node[cross[:, 1]]], 1)
    _, first = np.unique(key, axis=0, return_index=True)   # same sorted order as `edges`
    touch = cross[first]
    order = np.argsort(node, kind="stable")
    counts = np.bincount(node, minlength=len(node_radius))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for side in (0, 1):
        own = edges[:, side]
        vox, which = _ragged(starts[own], counts[own])
        reach = np.maximum(DIRECTION_REACH * node_radius[own], 4.0 * spacing.min())
        out[:, side] = _local_direction(pts[touch[:, 1 - side]], pts[order[vox]], which, reach)
    return out


def _tip_directions(tips, node, pts, node_radius, spacing):
    """Outward direction at each free end: from the nearby skeleton of its node to the tip."""
    if not len(tips):
        return np.zeros((0, 3))
    order = np.argsort(node, kind="stable")
    counts = np.bincount(node)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    own = node[tips]
    vox, which = _ragged(starts[own], counts[own])
    reach = np.maximum(4.0 * node_radius[own], 5.0 * spacing.min())
    inward = _local_direction(pts[tips], pts[order[vox]], which, reach)
    return -inward
