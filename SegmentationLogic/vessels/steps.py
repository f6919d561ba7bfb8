"""Steps from branch to branch of the skeleton graph, priced by how much they break the tree shape.

Seen from its root, a vessel tree only thins and only turns at bifurcations; at each
bifurcation the flow in (the parent) is carried on by the other arms, their cubed widths
summing to the cube of the parent's (Murray's law); thinner children turn more. The
portal vein is such a tree from the hilum, the hepatic veins from the IVC. A step from one
tree into the other, where they touch, breaks that shape: it comes into a junction from an
arm that is not the parent (the other arms carry far more than it brings, or far less),
widens, turns sharply without thinning, leaves a vessel that passes straight through the
junction for another one that does, or jumps a gap. Every step between two branches that
share a junction (or touch, or face each other across a gap) gets a price in units of "one
clear break"; a step along a real tree costs about nothing. The split then picks, for every
branch, the one step into it that makes the cheapest pair of trees (arborescence.py).

Prices use widths relative to each other and angles only: they do not depend on the voxel
size or on how large the liver is.
"""
import numpy as np
from scipy import sparse
from scipy.sparse import csgraph
from scipy.spatial import cKDTree

from .skeleton import _ragged

# widening: each e-fold beyond WIDEN_TOLERANCE (about the noise of width estimates) costs W_WIDEN
WIDEN_TOLERANCE = 1.05
W_WIDEN = 2.0
# turning: a child as wide as where we come from may turn TURN_FREE_DEG, a child half as
# wide (or thinner) TURN_FREE_THIN_DEG (minimum-work branching); beyond, W_TURN per right angle
TURN_FREE_DEG = 60.0
TURN_FREE_THIN_DEG = 100.0
W_TURN = 1.5
# among plausible steps, the straighter and the more even in width is likelier
W_GRADE = 0.05
# Murray at a junction, log-width units: the other arms carry much more than the inflow (we
# did not come in from the parent: up a child, or across a contact), or much less (a wide
# vessel ending where thin ones pass by: a contact at its end, not its bifurcation)
W_EXCESS = 2.0
EXCESS_TOLERANCE = 0.15
W_DEFICIT = 2.0
DEFICIT_TOLERANCE = 0.2
OVERWIDE = 2.0           # an arm whose r^3 exceeds this many times all others' together is foreign
# vessels passing through a junction: two arms continuing each other within 35 degrees and
# of similar width. Leaving one passing vessel for another (a crossing) costs W_CROSS;
# entering a passing vessel sideways from a stem that is not clearly wider (a contact, not
# a T-shaped bifurcation into two thinner arms) costs up to W_TEE
THROUGH_COS = float(np.cos(np.radians(35.0)))
THROUGH_SIMILAR = 0.65
W_CROSS = 1.5
W_TEE = 1.0
TEE_RATIO = 0.8
# gaps in the mask: a free end facing a skeleton voxel of another piece within
# GAP_SEARCH_MM of the vessel walls (the skeleton stops short of a cut face by about a
# radius), where "another piece" is another connected part of the mask or a part of the
# same one at least GAP_DETOUR times (+ GAP_DETOUR_MM) further away along the vessels
GAP_SEARCH_MM = 12.0
GAP_DETOUR, GAP_DETOUR_MM = 2.0, 10.0
GAP_BASE = 0.3
GAP_PER_MM = 0.08
GAP_MISALIGNED = 1.0
GAP_SIDE = 1.0           # landing on the side of a vessel, not on another end


def width(graph):
    """Branch radius; a junction (no meaningful length) by its widest point."""
    return np.where(graph.is_junction, graph.node_max_radius, graph.node_radius).astype(float)


def widen_cost(r_from, r_to):
    return W_WIDEN * np.maximum(0.0, np.log(np.maximum(r_to, 1e-3) / np.maximum(r_from, 1e-3) / WIDEN_TOLERANCE))


def turn_cost(cos_turn, ratio):
    """Price of turning by acos(cos_turn) into an arm `ratio` times as wide as where we came from."""
    angle = np.degrees(np.arccos(np.clip(cos_turn, -1.0, 1.0)))
    thin = np.clip((1.0 - ratio) / 0.5, 0.0, 1.0)
    free = TURN_FREE_DEG + (TURN_FREE_THIN_DEG - TURN_FREE_DEG) * thin
    return W_TURN * np.maximum(0.0, angle - free) / 90.0


def _graph_distance(graph, sources, limit):
    """(len(sources), n_nodes) path length along the skeleton graph (mm), inf beyond `limit`."""
    e = graph.edges
    if not len(e):
        return np.full((len(sources), graph.n_nodes), np.inf)
    d = np.linalg.norm(graph.node_centre[e[:, 0]] - graph.node_centre[e[:, 1]], axis=1) + 1e-6
    mat = sparse.coo_matrix((d, (e[:, 0], e[:, 1])), shape=(graph.n_nodes, graph.n_nodes)).tocsr()
    return csgraph.dijkstra(mat, directed=False, indices=sources, limit=limit)


def gap_jumps(graph):
    """Free ends facing another piece of vessel: (pairs (tip node, target node), price).

    Each free end jumps to the skeleton voxel it faces best (direction and distance) on
    another piece (pieces cut off by a gap are often joined to the rest through a contact
    elsewhere, so "another piece" includes far-away parts of the same connected mask). Two
    ends pointing at each other make the cheapest jump."""
    if not len(graph.tips):
        return np.zeros((0, 2), int), np.zeros(0)
    pts = graph.points_mm()
    tree = cKDTree(pts)
    comp = graph.component[graph.node]
    is_tip = np.zeros(len(pts), bool)
    is_tip[graph.tips] = True
    tip_dir = np.zeros((len(pts), 3))
    tip_dir[graph.tips] = graph.tip_dir
    close = 1.5 * float(graph.spacing.min())
    along = _graph_distance(graph, graph.node[graph.tips],
                            GAP_DETOUR * (GAP_SEARCH_MM + 2.0 * float(graph.radius.max())) + GAP_DETOUR_MM)
    pairs, prices = [], []
    reach = GAP_SEARCH_MM + graph.radius[graph.tips] + float(graph.radius.max())
    for k, (t, near) in enumerate(zip(graph.tips, tree.query_ball_point(pts[graph.tips], reach))):
        near = np.asarray(near, int)
        v = pts[near] - pts[t]
        d = np.maximum(np.linalg.norm(v, axis=1), 1e-6)
        other = (comp[near] != comp[t]) | (along[k, graph.node[near]] > GAP_DETOUR * d + GAP_DETOUR_MM)
        near, v, d = near[other], v[other], d[other]
        if not len(near):
            continue
        align = (v @ tip_dir[t]) / d
        # a cut vessel: two ends pointing at each other, as wide as each other; the
        # skeleton stops about a radius short of each cut face
        back = np.einsum("ij,ij->i", -v, tip_dir[near]) / d
        gap = np.maximum(d - graph.radius[t] - np.where(is_tip[near], graph.radius[near], 0.0), 0.0)
        ok = (align >= 0.5) | (d <= close)
        if not ok.any():
            continue
        far_side = np.where(is_tip[near], 1.0 - np.clip(back, 0, 1) + np.abs(np.log(graph.radius[near] / graph.radius[t])),
                            GAP_SIDE)
        price = GAP_BASE + GAP_PER_MM * gap + GAP_MISALIGNED * ((1.0 - np.clip(align, 0, 1)) + far_side)
        price[~ok] = np.inf
        best = int(np.argmin(price))
        pairs.append((graph.node[t], graph.node[near[best]]))
        prices.append(price[best])
    if not pairs:
        return np.zeros((0, 2), int), np.zeros(0)
    return np.array(pairs, int), np.array(prices)


def _axes(graph, points, comp, pts, tree):
    """Unit principal axis of the skeleton of the same piece around each of `points`."""
    out = np.zeros((len(points), 3))
    reach = np.maximum(3.0 * graph.radius[points], 4.0 * float(graph.spacing.max()))
    for k, (p, near) in enumerate(zip(points, tree.query_ball_point(pts[points], reach))):
        near = np.asarray(near, int)
        near = near[comp[near] == comp[p]]
        if len(near) < 3:
            continue
        x = pts[near] - pts[near].mean(0)
        out[k] = np.linalg.eigh(x.T @ x)[1][:, -1]
    return out


def piece_jumps(graph, k=32):
    """Where two connected pieces of the mask come closest (within GAP_SEARCH_MM): a jump
    between their nearest skeleton voxels, priced like a gap (distance beyond the two radii,
    and how well both vessels point along the jump). This finds cut ends that thinning
    turned into a junction rather than a free end (a cut just before a bifurcation)."""
    pts = graph.points_mm()
    comp = graph.component[graph.node]
    if comp.max() == 0:
        return np.zeros((0, 2), int), np.zeros(0)
    tree = cKDTree(pts)
    kk = min(k, len(pts))
    d, near = tree.query(pts, k=kk, distance_upper_bound=GAP_SEARCH_MM + 2.0 * float(graph.radius.max()))
    d, near = d.reshape(len(pts), kk), near.reshape(len(pts), kk)
    found = np.isfinite(d)
    other = found & (comp[np.minimum(near, len(pts) - 1)] != comp[:, None])
    first = np.argmax(other, axis=1)
    has = other[np.arange(len(pts)), first]
    a = np.nonzero(has)[0]
    if not len(a):
        return np.zeros((0, 2), int), np.zeros(0)
    b = near[a, first[has]]
    dist = d[a, first[has]]
    # the closest pair per (piece, other piece)
    key = comp[a].astype(np.int64) * (comp.max() + 1) + comp[b]
    order = np.lexsort((dist, key))
    lead = np.r_[True, key[order][1:] != key[order][:-1]]
    a, b, dist = a[order][lead], b[order][lead], dist[order][lead]
    if not len(a):
        return np.zeros((0, 2), int), np.zeros(0)
    u = (pts[b] - pts[a]) / np.maximum(dist, 1e-6)[:, None]
    ax_a, ax_b = _axes(graph, a, comp, pts, tree), _axes(graph, b, comp, pts, tree)
    gap = np.maximum(dist - graph.radius[a] - graph.radius[b], 0.0)
    price = GAP_BASE + GAP_PER_MM * gap + GAP_MISALIGNED * (
        (1.0 - np.abs((ax_a * u).sum(1))) + (1.0 - np.abs((ax_b * u).sum(1))) + np.abs(np.log(graph.radius[b] / graph.radius[a])))
    return np.stack([graph.node[a], graph.node[b]], 1), price


def _arcs(graph):
    """Both directions of every graph edge. Per arc: `back`, the direction from the joint
    into the node we leave, and `ahead`, into the node we enter (unit vectors)."""
    e = graph.edges
    arcs = np.concatenate([e, e[:, ::-1]])
    back = np.concatenate([graph.edge_dir[:, 0], graph.edge_dir[:, 1]])
    ahead = np.concatenate([graph.edge_dir[:, 1], graph.edge_dir[:, 0]])
    return arcs, back, ahead


def _through_partner(first, second, cos, similar, reverse, n_arcs):
    """Per arc into a junction: the arc out of it that continues the same vessel straight
    through (-1 if none): of similar width, and each the other's straightest continuation."""
    through = (cos >= THROUGH_COS) & similar
    score = np.where(through, cos, -np.inf)
    best = np.full(n_arcs, -np.inf)
    np.maximum.at(best, first, score)
    partner = np.full(n_arcs, -1)
    hit = through & (score == best[first])
    partner[first[hit]] = second[hit]
    back = np.where(partner >= 0, partner[reverse[np.maximum(partner, 0)]], -1)   # the partner's partner
    partner[(partner >= 0) & (back != reverse[np.arange(n_arcs)])] = -1
    return partner


def junction_steps(graph, w=None):
    """Every step from one arm of a junction to another: (first arc, second arc, features).

    first is the arc (arm -> junction), second (junction -> arm); features hold what the
    price depends on (see step_price)."""
    w = width(graph) if w is None else w
    arcs, back, ahead = _arcs(graph)
    n_arcs, n = len(arcs), graph.n_nodes
    arm = ~graph.is_junction[arcs[:, 0]] & graph.is_junction[arcs[:, 1]]          # arm -> junction
    into = np.nonzero(arm)[0]
    leave = np.nonzero(graph.is_junction[arcs[:, 0]] & ~graph.is_junction[arcs[:, 1]])[0]
    leave = leave[np.argsort(arcs[leave, 0], kind="stable")]
    n_out = np.bincount(arcs[leave, 0], minlength=n)
    start = np.concatenate([[0], np.cumsum(n_out)[:-1]])
    via = arcs[into, 1]
    first = np.repeat(into, n_out[via])           # every arm in, with every arm out of the same junction
    pos, _ = _ragged(start[via], n_out[via])
    second = leave[pos]
    keep = arcs[second, 1] != arcs[first, 0]      # not back into the arm we came from
    first, second = first[keep], second[keep]
    via, frm, to = arcs[first, 1], arcs[first, 0], arcs[second, 1]
    ratio = w[to] / np.maximum(w[frm], 1e-3)
    cos = -(back[first] * ahead[second]).sum(1)
    # vessels passing through the junction: pairs of arms continuing each other
    m = len(graph.edges)
    reverse = np.concatenate([np.arange(m, 2 * m), np.arange(m)])
    similar = np.minimum(ratio, 1 / np.maximum(ratio, 1e-6)) >= THROUGH_SIMILAR
    partner = _through_partner(first, second, cos, similar, reverse, n_arcs)
    p_in = partner[first]                         # the straight continuation of where we came from
    p_to = partner[reverse[second]]               # the arm that continues the one we take
    has_in, has_to = p_in >= 0, p_to >= 0
    leave_in = has_in & (p_in != second)          # we leave a vessel that goes on
    enter_side = has_to & (arcs[np.maximum(p_to, 0), 1] != frm)   # we join one that comes from elsewhere
    # Murray at the junction, coming in from `frm`: its cubed width against that of the
    # other arms, leaving out vessels passing straight through unrelated to this step (at a
    # crossing, the other vessel carries its own flow) and a vessel far too wide for all the
    # other arms together to carry its flow (it is not their parent: it touches here)
    mate = np.full(n_arcs, -1)                    # per arm (arc into the junction): its partner arm
    mate[partner >= 0] = reverse[partner[partner >= 0]]
    mutual = (mate >= 0) & (mate[np.maximum(mate, 0)] == np.arange(n_arcs))
    cube_of = np.zeros(n_arcs)
    cube_of[into] = w[arcs[into, 0]] ** 3
    pair = np.where(mutual, cube_of + cube_of[np.maximum(mate, 0)], 0.0)
    total, passing = np.zeros(n), np.zeros(n)
    np.add.at(total, arcs[into, 1], cube_of[into])
    np.add.at(passing, arcs[into, 1], pair[into] / 2)
    arm_j = np.zeros(n_arcs, int)
    arm_j[into] = arcs[into, 1]
    over = np.zeros(n_arcs, bool)
    over[into] = ~mutual[into] & (cube_of[into] > OVERWIDE * (total[arm_j[into]] - cube_of[into]))
    overwide = np.zeros(n)
    np.add.at(overwide, arcs[into, 1], np.where(over[into], cube_of[into], 0.0))
    w_in = reverse[second]
    own_pairs = pair[first] + np.where(mate[w_in] == first, 0.0, pair[w_in])
    own_over = np.where(over[first], cube_of[first], 0.0) + np.where(over[w_in], cube_of[w_in], 0.0)
    out_cube = np.maximum(total[via] - cube_of[first] - (passing[via] - own_pairs) - (overwide[via] - own_over), 1e-9)
    balance = np.log(w[frm] / np.cbrt(out_cube))
    feats = dict(cos=cos, ratio=ratio, cross=leave_in & enter_side, tee=~has_in & enter_side, balance=balance)
    return arcs[first, 0], arcs[second, 1], feats


def step_price(f, scale=None):
    """Price of each step through a junction from its features. `scale` multiplies the
    weight of named terms ({"W_EXCESS": 3.0, ...}), for a second opinion."""
    k = {name: globals()[name] * (scale or {}).get(name, 1.0)
         for name in ("W_TURN", "W_WIDEN", "W_GRADE", "W_EXCESS", "W_DEFICIT", "W_CROSS", "W_TEE")}
    ratio, cos, balance = f["ratio"], f["cos"], f["balance"]
    price = turn_cost(cos, ratio) * (k["W_TURN"] / W_TURN)
    price += k["W_WIDEN"] * np.maximum(0.0, np.log(ratio / WIDEN_TOLERANCE))
    price += k["W_GRADE"] * ((1.0 - cos) / 2.0 + np.abs(np.log(ratio)))
    price += k["W_EXCESS"] * np.maximum(0.0, -balance - EXCESS_TOLERANCE)
    price += k["W_DEFICIT"] * np.maximum(0.0, balance - DEFICIT_TOLERANCE)
    price += k["W_CROSS"] * f["cross"]
    price += k["W_TEE"] * f["tee"] * np.clip((ratio - TEE_RATIO) / (1.0 - TEE_RATIO), 0.0, 1.0)
    return price


def _arms(graph):
    """(junction, arm) pairs of the graph, sorted by junction."""
    e = graph.edges
    j0 = graph.is_junction[e[:, 0]] & ~graph.is_junction[e[:, 1]]
    j1 = graph.is_junction[e[:, 1]] & ~graph.is_junction[e[:, 0]]
    pairs = np.concatenate([e[j0], e[j1][:, ::-1]])
    return pairs[np.argsort(pairs[:, 0], kind="stable")]


def _expand_junctions(graph, pairs, prices, arms):
    """Gap jumps ending at a junction end at each of its arms instead."""
    n = graph.n_nodes
    counts = np.bincount(arms[:, 0], minlength=n)
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for side in (0, 1):
        node = pairs[:, side]
        reps = np.where(graph.is_junction[node], counts[node], 1)
        idx = np.repeat(np.arange(len(pairs)), reps)
        pos, _ = _ragged(start[node], reps)
        new = pairs[idx].copy()
        jn = graph.is_junction[node[idx]]
        new[jn, side] = arms[pos[jn], 1]
        pairs, prices = new, prices[idx]
    keep = pairs[:, 0] != pairs[:, 1]
    return pairs[keep], prices[keep]


class Steps:
    """All steps between branch nodes, both directions of each: through a junction from
    each arm to each other arm (priced from their features, so they can be re-priced);
    between two branches joined without a junction (a kink); across gaps."""

    def __init__(self, graph, use_gaps=True):
        w = width(graph)
        src, dst, self.feats = junction_steps(graph, w)
        self.n_junction = len(src)
        out = [(src, dst, np.zeros(len(src)))]
        e = graph.edges
        kink = ~graph.is_junction[e[:, 0]] & ~graph.is_junction[e[:, 1]]
        if kink.any():
            arcs, back, ahead = _arcs(graph)
            both = np.concatenate([kink, kink])
            a, b = arcs[both, 0], arcs[both, 1]
            cos = -(back[both] * ahead[both]).sum(1)
            ratio = w[b] / np.maximum(w[a], 1e-3)
            out.append((a, b, turn_cost(cos, ratio) + widen_cost(w[a], w[b])))
        if use_gaps:
            pairs, prices = (np.concatenate(x) for x in zip(gap_jumps(graph), piece_jumps(graph)))
            if len(pairs):
                pairs, prices = _expand_junctions(graph, pairs, prices, _arms(graph))
                for a, b in ((0, 1), (1, 0)):
                    out.append((pairs[:, a], pairs[:, b], prices + widen_cost(w[pairs[:, a]], w[pairs[:, b]])))
        self.src, self.dst, self._fixed = (np.concatenate(x) for x in zip(*out))
        self.price = self.prices()

    def prices(self, scale=None):
        """Price of every step; `scale` re-weights the junction terms (see step_price)."""
        out = self._fixed.copy()
        out[: self.n_junction] = step_price(self.feats, scale)
        return out


def branch_steps(graph, use_gaps=True):
    """(src, dst, price) of all steps between branch nodes (see Steps)."""
    st = Steps(graph, use_gaps)
    return st.src, st.dst, st.price
