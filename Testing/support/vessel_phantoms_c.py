"""Family C: liver-vessel phantoms grown by space colonisation, for tuning the portal/hepatic split.

A third phantom family, written from anatomy and from the failures the split showed on a
family it was not tuned on (issue 14), without reading that family's code. It differs
from family A (vessel_phantoms.py) in how trees grow and how vessels meet:

- growth: both trees grow at once by space colonisation (each tip steps 2 mm towards the
  mean direction of the attraction points it is the nearest node to), so branches are
  curved polylines, branching where the territory asks for it, not at fixed Murray
  angles; the portal tree from the hilum, three hepatic veins from the IVC, keeping a
  clearance from the other tree while they grow;
- radii from flow: every leaf carries the same flow, a node the sum of its subtree's, and
  r = k * flow^(1/3) (Murray), so radii are exact at every bifurcation but not graded by
  generation;
- contacts (touching, noisy): a new vessel of one tree that runs along a vessel of the
  other in contact for 12-35 mm and then leaves it and goes on (or ends there); a vessel
  crossing another of the same radius (an X whose walls merge); a vessel passing beside
  another with a gap joined by a ladder of 2-4 bridges; merges between thick vessels near
  the hilum and near the IVC;
- partial volume (every degraded level): the vessels are drawn with sub-voxel edges,
  blurred with the scanner's point-spread function and thresholded, so vessels passing
  within about a voxel fuse and thin ones thin out or break;
- gaps: slabs cut out of branches; noisy: boundary noise, spurious blobs, the trunk and
  IVC masks shifted, the trunk without its hilum end, the IVC without a slab or cut off.

Truth: each vessel voxel belongs to the tree of the vessel whose wall is nearest relative
to its radius; `branch_ids` names the generating branch (a run between two bifurcations).
World coordinates are RAS mm (x right, y anterior, z superior), array axes x, y, z.

    ph = make_phantom_c("touching", shape=(144, 144, 120), spacing=(1, 1, 1), seed=0)
    score_split(labels, ph, confidence=conf)      # the same scores as family A
"""

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from vessel_phantoms import Phantom, boundary_noise, score_split  # noqa: F401  (score_split: the same scores for every family)

LEVELS_C = ("clean", "touching", "gaps", "noisy")
PORTAL, HEPATIC = 1, 2


PhantomC = Phantom   # the same fields as family A's phantoms (segments: empty, C grows node trees)


def _unit(v):
    v = np.asarray(v, float)
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.maximum(n, 1e-12)


def _orthogonal(d, rng):
    a = rng.normal(size=3)
    a -= a.dot(d) * d
    return _unit(a)


class _Liver:
    """A right lobe and a flatter left lobe (superellipsoids), bumpy surface."""

    def __init__(self, fov, rng):
        self.c = fov * np.array([0.57, 0.5, 0.48])
        self.a = fov * np.array([0.3, 0.34, 0.34]) * rng.uniform(0.95, 1.05, 3)
        self.lc = self.c + np.array([-0.85, 0.3, 0.25]) * self.a
        self.la = self.a * np.array([0.55, 0.5, 0.4])
        self.k = rng.normal(size=(5, 3)) / self.a.mean() * 4.0
        self.ph = rng.uniform(0, 2 * np.pi, 5)

    def level(self, p):
        p = np.asarray(p, float)
        q1 = (np.abs((p - self.c) / self.a) ** 2.4).sum(-1) ** (1 / 2.4)
        q2 = (np.abs((p - self.lc) / self.la) ** 2.2).sum(-1) ** (1 / 2.2)
        bump = 1.0 + 0.04 * np.sin(p @ self.k.T + self.ph).sum(-1) / 2
        return np.minimum(q1, q2) / bump

    def inside(self, p, margin_mm=0.0):
        return self.level(p) < 1.0 - margin_mm / self.a.min()


# ---------------------------------------------------------------------------------------
# the trees: nodes with a parent, grown by space colonisation

class _Trees:
    def __init__(self):
        self.pos = np.zeros((0, 3))
        self.parent = np.zeros(0, int)
        self.cls = np.zeros(0, int)
        self.tree = np.zeros(0, int)        # 0 portal, 1-3 hepatic right/middle/left, 4+ added vessels
        self.flow = np.zeros(0)             # own flow (leaves 1, added vessels their own)
        self.fixed_r = np.zeros(0)          # > 0: radius set by hand (added vessels)
        self.kind = np.zeros(0, int)        # 0 grown, 1 added by a contact event

    def add(self, pos, parent, cls, tree, kind=0, fixed_r=0.0):
        self.pos = np.vstack([self.pos, pos])
        self.parent = np.append(self.parent, parent)
        self.cls = np.append(self.cls, cls)
        self.tree = np.append(self.tree, tree)
        self.flow = np.append(self.flow, 0.0)
        self.fixed_r = np.append(self.fixed_r, fixed_r)
        self.kind = np.append(self.kind, kind)
        return len(self.parent) - 1

    def add_path(self, points, parent, cls, tree, r, kind=1):
        ids = []
        for p in points:
            parent = self.add(p, parent, cls, tree, kind, r)
            ids.append(parent)
        return ids

    def children_count(self):
        return np.bincount(self.parent[self.parent >= 0], minlength=len(self.parent))

    def order(self):
        """Nodes with every parent before its children."""
        depth = np.zeros(len(self.parent), int)
        for i in range(len(self.parent)):           # parents are always added first
            depth[i] = depth[self.parent[i]] + 1 if self.parent[i] >= 0 else 0
        return np.argsort(depth, kind="stable"), depth


def _grow(liver, roots, n_attract, rng, step=2.0, influence=16.0, kill=4.5, clearance=4.0, iterations=220):
    """Space colonisation of the portal (class 1) and hepatic (class 2) trees at once."""
    t = _Trees()
    for cls, tree, chain in roots:
        parent = -1
        for p in chain:
            parent = t.add(p, parent, cls, tree)
    lo, hi = liver.c - 2 * liver.a, liver.c + 2 * liver.a
    attract = {}
    for cls in (PORTAL, HEPATIC):
        pts = rng.uniform(lo, hi, size=(n_attract * 8, 3))
        pts = pts[liver.inside(pts, 3.0)][:n_attract]
        attract[cls] = pts
    for _ in range(iterations):
        grew = False
        for cls in (PORTAL, HEPATIC):
            att = attract[cls]
            mine = np.nonzero(t.cls == cls)[0]
            if not len(att) or not len(mine):
                continue
            d, nn = cKDTree(t.pos[mine]).query(att, distance_upper_bound=influence)
            ok = np.isfinite(d)
            if not ok.any():
                continue
            owner = mine[nn[ok]]
            pull = _unit(att[ok] - t.pos[owner])
            total = np.zeros((len(t.parent), 3))
            np.add.at(total, owner, pull)
            movers = np.unique(owner)
            other = np.nonzero(t.cls != cls)[0]
            other_tree = cKDTree(t.pos[other]) if len(other) else None
            own_tree = cKDTree(t.pos[mine])
            for m in movers:
                d_new = _unit(total[m]) + rng.normal(scale=0.08, size=3)
                if t.parent[m] >= 0:
                    d_new = d_new + 0.7 * _unit(t.pos[m] - t.pos[t.parent[m]])
                q = t.pos[m] + step * _unit(d_new)
                if not liver.inside(q, 1.5):
                    continue
                if own_tree.query(q)[0] < 0.8 * step:
                    continue
                if other_tree is not None and other_tree.query(q)[0] < clearance:
                    continue
                t.add(q, m, cls, t.tree[m])
                grew = True
            new = np.nonzero(t.cls == cls)[0]
            d, _ = cKDTree(t.pos[new]).query(att)
            attract[cls] = att[d > kill]
        if not grew:
            break
    return t


def _prune_twigs(t, min_len=4.0):
    """Drop terminal chains shorter than min_len (a step or two towards a last attractor)."""
    for _ in range(3):
        kids = t.children_count()
        leaf = np.nonzero((kids == 0) & (t.kind == 0))[0]
        drop = np.zeros(len(t.parent), bool)
        for lf in leaf:
            chain, n, length = [lf], lf, 0.0
            while t.parent[n] >= 0 and kids[t.parent[n]] == 1:
                length += np.linalg.norm(t.pos[n] - t.pos[t.parent[n]])
                n = t.parent[n]
                chain.append(n)
            p = t.parent[n]
            if p >= 0 and length + np.linalg.norm(t.pos[n] - t.pos[p]) < min_len:
                drop[chain] = True
        if not drop.any():
            break
        _keep(t, ~drop)


def _keep(t, keep):
    new_id = np.cumsum(keep) - 1
    par = t.parent[keep]
    t.parent = np.where(par >= 0, new_id[np.maximum(par, 0)], -1)
    for name in ("pos", "cls", "tree", "flow", "fixed_r", "kind"):
        setattr(t, name, getattr(t, name)[keep])


def _radii(t, k, r_floor):
    """Murray radii from flows: leaves carry 1, added vessels their own flow."""
    order, _ = t.order()
    kids = t.children_count()
    own = np.where(kids == 0, np.where(t.fixed_r > 0, (t.fixed_r / k[t.cls]) ** 3, 1.0), 0.0)
    flow = own.copy()
    for i in order[::-1]:
        if t.parent[i] >= 0:
            flow[t.parent[i]] += flow[i]
    # an added vessel keeps its own radius; the flow it brings widens its ancestors
    r = np.where(t.fixed_r > 0, t.fixed_r, np.maximum(k[t.cls] * np.cbrt(np.maximum(flow, 1.0)), r_floor))
    return r


def _descendants(t, nodes):
    mark = np.zeros(len(t.parent), bool)
    mark[nodes] = True
    order, _ = t.order()
    for i in order:
        if t.parent[i] >= 0 and mark[t.parent[i]]:
            mark[i] = True
    return mark


def _separate(t, k, r_floor, margin=1.0):
    """Prune the thinner vessel wherever the two trees come within `margin` mm of each
    other (walls), so the clean level has no contact; radii are recomputed each round."""
    for _ in range(12):
        r = _radii(t, k, r_floor)
        p, h = np.nonzero(t.cls == PORTAL)[0], np.nonzero(t.cls == HEPATIC)[0]
        pairs = cKDTree(t.pos[p]).query_ball_tree(cKDTree(t.pos[h]), float(2 * r.max() + margin))
        drop = []
        for i, near in enumerate(pairs):
            for j in near:
                a, b = p[i], h[j]
                if np.linalg.norm(t.pos[a] - t.pos[b]) < r[a] + r[b] + margin:
                    thin = a if r[a] < r[b] else b
                    if t.parent[thin] >= 0 and t.parent[t.parent[thin]] >= 0:
                        drop.append(thin)
        if not drop:
            return r
        _keep(t, ~_descendants(t, np.unique(drop)))
    return _radii(t, k, r_floor)


def _branches(t):
    """Branch id per node: runs of nodes between bifurcations (a node and its edge up)."""
    kids = t.children_count()
    order, _ = t.order()
    bid = np.zeros(len(t.parent), int)
    nxt = 0
    for i in order:
        p = t.parent[i]
        if p < 0 or kids[p] != 1 or t.kind[p] != t.kind[i]:
            nxt += 1
            bid[i] = nxt
        else:
            bid[i] = bid[p]
    return bid


# ---------------------------------------------------------------------------------------
# contacts

def _chain_from(t, start, length):
    """Nodes going down from `start` along the widest child, up to `length` mm (a vessel's course)."""
    kids_of = {}
    for i, p in enumerate(t.parent):
        if p >= 0:
            kids_of.setdefault(p, []).append(i)
    chain, acc, n = [start], 0.0, start
    while acc < length and n in kids_of:
        nxt = max(kids_of[n], key=lambda c: t.flow_r[c])
        acc += np.linalg.norm(t.pos[nxt] - t.pos[n])
        chain.append(nxt)
        n = nxt
    return np.array(chain), acc


def _clear_of(t, r, pts, rad, cls, allowed, gap=1.0):
    """True if a path (pts, radius rad) stays `gap` mm clear of the other tree's vessels but `allowed`."""
    other = np.nonzero((t.cls != cls) & ~np.isin(np.arange(len(t.parent)), allowed))[0]
    if not len(other):
        return True
    d, nn = cKDTree(t.pos[other]).query(pts)
    return bool((d - r[other[nn]] - rad >= gap).all())


def _resample(points, step=1.5):
    points = np.asarray(points, float)
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    s = np.concatenate([[0], np.cumsum(seg)])
    n = max(2, int(s[-1] / step) + 1)
    q = np.linspace(0, s[-1], n)
    return np.stack([np.interp(q, s, points[:, a]) for a in range(3)], 1)


def _by_width(cand, r, rng):
    """Candidates in random order, wider vessels first more often (thin ones are the many)."""
    if not len(cand):
        return cand
    w = r[cand] ** 3
    return rng.choice(cand, size=len(cand), replace=False, p=w / w.sum())


def _follow(t, r, rng, liver, kind, gap_walls=None, through=True):
    """A new vessel of one tree that comes from one of its nodes, runs along a vessel of the
    other tree (in contact, or at `gap_walls` mm with bridges), then leaves it (or ends)."""
    cand = _by_width(np.nonzero((t.kind == 0) & (r >= 1.2) & (r <= 3.2) & (t.parent >= 0))[0], r, rng)
    for s in cand[:60]:
        chain, length = _chain_from(t, s, rng.uniform(14, 35))
        if length < 12:
            continue
        path = t.pos[chain]
        rt = float(np.median(r[chain]))
        rn = rt * rng.uniform(0.85, 1.15)
        cls = 3 - t.cls[s]
        # an attachment node of the new vessel's tree, near the start of the run
        mine = np.nonzero((t.cls == cls) & (r >= 0.8 * rn))[0]
        if not len(mine):
            continue
        d = np.linalg.norm(t.pos[mine] - path[0], axis=1)
        near = mine[(d > 6) & (d < 25)]
        if not len(near):
            continue
        a = near[rng.integers(len(near))]
        tang = _unit(path[-1] - path[0])
        side = _orthogonal(tang, rng)
        off = (rt + rn) * rng.uniform(0.55, 1.0) if gap_walls is None else rt + rn + gap_walls
        run = path + off * side
        approach = _resample([t.pos[a], run[0]], 1.5)[1:-1]
        out = []
        if through:
            away = _unit(tang + rng.uniform(0.6, 1.2) * side)
            out = [run[-1] + away * k for k in np.arange(1.5, rng.uniform(9, 20), 1.5)]
        pts = np.vstack([approach, _resample(run, 1.5)] + ([np.array(out)] if len(out) else []))
        if not liver.inside(pts, 1.0).all():
            continue
        # the approach and the way out keep clear of the other tree; the run touches only its
        # partner (and the partner's own side branches where they leave it)
        legs = np.vstack([approach] + ([np.array(out)] if len(out) else []))
        partner = np.concatenate([chain, [t.parent[s]]])
        beside = np.nonzero(np.linalg.norm(t.pos[:, None] - path[None], axis=2).min(1) < 2 * rt + 2)[0]
        if not (_clear_of(t, r, legs, rn, cls, partner, 1.5) and _clear_of(t, r, pts, rn, cls, beside, 0.5)):
            continue
        tree = 4 + len(t.parent)
        ids = t.add_path(pts, a, cls, tree, rn)
        bridges = []
        if gap_walls is not None:
            for f in np.sort(rng.uniform(0.15, 0.85, int(rng.integers(2, 5)))):
                k = int(f * (len(chain) - 1))
                bridges.append((path[k], run[k], min(rt, rn) * rng.uniform(0.5, 0.8)))
        return {"kind": kind, "class": int(cls), "radius_mm": float(rn), "partner_radius_mm": float(rt),
                "length_mm": float(length), "offset_mm": float(off), "through": bool(through),
                "at_mm": path[len(path) // 2].tolist(), "nodes": ids}, bridges
    return None, []


def _crossing(t, r, rng, liver):
    """A new vessel crossing a vessel of the other tree of the same radius (an X)."""
    cand = _by_width(np.nonzero((t.kind == 0) & (r >= 1.2) & (r <= 3.0) & (t.parent >= 0))[0], r, rng)
    for c in cand[:80]:
        rt = r[c]
        tang = _unit(t.pos[c] - t.pos[t.parent[c]])
        cls = 3 - t.cls[c]
        mine = np.nonzero((t.cls == cls) & (r >= 0.85 * rt))[0]
        if not len(mine):
            continue
        v = t.pos[c] - t.pos[mine]
        d = np.linalg.norm(v, axis=1)
        ang = np.degrees(np.arccos(np.abs((_unit(v) * tang).sum(1))))
        ok = mine[(d > 8) & (d < 25) & (ang > 40)]
        if not len(ok):
            continue
        a = ok[rng.integers(len(ok))]
        rn = rt * rng.uniform(0.9, 1.1)
        centre = t.pos[c] + _orthogonal(tang, rng) * rng.uniform(0, 0.5) * rt
        direction = _unit(centre - t.pos[a])
        beyond = [centre + direction * k for k in np.arange(1.5, rng.uniform(10, 20), 1.5)]
        pts = np.vstack([_resample([t.pos[a], centre], 1.5)[1:], np.array(beyond)])
        if not liver.inside(pts, 1.0).all():
            continue
        near = np.nonzero(np.linalg.norm(t.pos - centre, axis=1) < 2 * rt + 2 * rn + 3)[0]
        if not _clear_of(t, r, pts, rn, cls, np.concatenate([near, [t.parent[c]]]), 1.5):
            continue
        ids = t.add_path(pts, a, cls, 4 + len(t.parent), rn)
        return {"kind": "crossing", "class": int(cls), "radius_mm": float(rn), "partner_radius_mm": float(rt),
                "at_mm": centre.tolist(), "nodes": ids}
    return None


def _root_contacts(t, r, rng, near_point, n):
    """Merges between thick vessels of the two trees near a point (the hilum, the IVC)."""
    out = []
    p = np.nonzero(t.cls == PORTAL)[0]
    h = np.nonzero(t.cls == HEPATIC)[0]
    dp = np.linalg.norm(t.pos[p] - near_point, axis=1)
    dh = np.linalg.norm(t.pos[h] - near_point, axis=1)
    p, h = p[(dp < 40) & (r[p] >= 2.0)], h[(dh < 40) & (r[h] >= 2.0)]
    if not len(p) or not len(h):
        return out
    d, nn = cKDTree(t.pos[h]).query(t.pos[p])
    gap = d - r[p] - r[h[nn]]
    for k in np.argsort(gap):
        if len(out) >= n or gap[k] > 9.0:
            break
        a, b = p[k], h[nn[k]]
        if any(np.linalg.norm(t.pos[a] - np.array(o[0])) < 10 for o in out):
            continue
        out.append((t.pos[a].copy(), t.pos[b].copy(), min(r[a], r[b]) * rng.uniform(0.7, 1.0)))
    return out


# ---------------------------------------------------------------------------------------
# drawing

def _segments(t, r):
    """Cone segments (p0, p1, r0, r1) per node with a parent, and the node."""
    has = np.nonzero(t.parent >= 0)[0]
    par = t.parent[has]
    r0 = np.where(t.kind[has] > t.kind[par], r[has], r[par])   # an added vessel starts at its own radius
    return t.pos[par], t.pos[has], r0, r[has], has


def _paint(shape, spacing, p0, p1, r0, r1, owner_of, extra=()):
    """Signed distance to the nearest wall (mm, min over segments) and the owner of the
    smallest normalised distance, in each segment's box."""
    sd = np.full(shape, np.inf, np.float32)
    q_best = np.full(shape, np.inf, np.float32)
    owner = np.zeros(shape, np.int32)
    shp = np.array(shape)
    for i in range(len(p0)):
        rad = max(r0[i], r1[i])
        lo = np.clip(np.floor((np.minimum(p0[i], p1[i]) - rad - 2.5) / spacing).astype(int), 0, shp)
        hi = np.clip(np.ceil((np.maximum(p0[i], p1[i]) + rad + 2.5) / spacing).astype(int) + 1, 0, shp)
        if np.any(hi <= lo):
            continue
        ax = [np.arange(lo[a], hi[a]) * spacing[a] for a in range(3)]
        pts = np.stack(np.meshgrid(*ax, indexing="ij"), -1)
        d = p1[i] - p0[i]
        tt = np.clip(((pts - p0[i]) @ d) / max(d @ d, 1e-9), 0, 1)
        dist = np.linalg.norm(pts - (p0[i] + tt[..., None] * d), axis=-1)
        rr = r0[i] + (r1[i] - r0[i]) * tt
        sl = tuple(slice(lo[a], hi[a]) for a in range(3))
        s = (dist - rr).astype(np.float32)
        q = (dist / rr).astype(np.float32)
        np.minimum(sd[sl], s, out=sd[sl])
        take = q < q_best[sl]
        q_best[sl][take] = q[take]
        owner[sl][take] = owner_of[i]
    for a, b, rr in extra:   # bridges: in the mask, owned by the nearest vessel (set later)
        lo = np.clip(np.floor((np.minimum(a, b) - rr - 2) / spacing).astype(int), 0, shp)
        hi = np.clip(np.ceil((np.maximum(a, b) + rr + 2) / spacing).astype(int) + 1, 0, shp)
        ax = [np.arange(lo[k], hi[k]) * spacing[k] for k in range(3)]
        pts = np.stack(np.meshgrid(*ax, indexing="ij"), -1)
        d = b - a
        tt = np.clip(((pts - a) @ d) / max(d @ d, 1e-9), 0, 1)
        s = (np.linalg.norm(pts - (a + tt[..., None] * d), axis=-1) - rr).astype(np.float32)
        sl = tuple(slice(lo[k], hi[k]) for k in range(3))
        np.minimum(sd[sl], s, out=sd[sl])
    return sd, owner


def _ball(shape, spacing, centre, radii):
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    q = sum(((g * s - c) / r) ** 2 for g, s, c, r in zip(grid, spacing, centre, radii))
    return q <= 1.0


# ---------------------------------------------------------------------------------------
# the phantom

def make_phantom_c(level="touching", shape=(144, 144, 120), spacing=(1.0, 1.0, 1.0), seed=0):
    """A family-C phantom at one of LEVELS_C (see the module docstring)."""
    if level not in LEVELS_C:
        raise ValueError(f"level must be one of {LEVELS_C}, not {level!r}")
    rng = np.random.default_rng([seed, 2024])
    shape = tuple(int(n) for n in shape)
    spacing = np.asarray(spacing, float)
    fov = np.asarray(shape) * spacing
    liver = _Liver(fov, rng)
    size = float(liver.a.mean())
    scale = size / 46.0

    # the IVC runs up behind the liver; the hepatic veins leave it at the confluence
    ivc_r = rng.uniform(8.5, 10.5) * scale
    ivc_xy = liver.c[:2] + np.array([-0.3, -0.82]) * liver.a[:2]
    conf_z = liver.c[2] + rng.uniform(0.45, 0.6) * liver.a[2]
    hilum = liver.c + np.array([-0.35, 0.1, -0.5]) * liver.a
    portal_dir = _unit([0.4, -0.1, 1.0])
    roots = [(PORTAL, 0, [hilum - portal_dir * 6 * scale + portal_dir * k * scale for k in (0, 3, 6, 9)])]
    for tree, direction in ((1, [1.0, 0.3, -0.5]), (2, [0.2, 1.0, -0.5]), (3, [-0.9, 0.7, -0.3])):
        d = _unit(direction)
        flat = _unit([d[0], d[1], 0])
        start = np.array([*ivc_xy, conf_z]) + flat * (ivc_r + 0.5) + [0, 0, rng.uniform(-3, 3)]
        roots.append((HEPATIC, tree, [start + d * k * scale for k in (0, 2.5, 5)]))
    n_att = int(1000 * (size / 46.0) ** 2)
    t = _grow(liver, roots, n_att, rng, step=2.0 * max(scale, 0.6), influence=18.0 * scale,
              kill=6.0 * scale, clearance=4.0 * scale)
    _prune_twigs(t, 4.0 * scale)

    k = np.zeros(3)
    leaves_p = max(int(((t.children_count() == 0) & (t.cls == PORTAL)).sum()), 1)
    leaves_h = max(int(((t.children_count() == 0) & (t.cls == HEPATIC)).sum()), 1)
    k[PORTAL] = rng.uniform(4.4, 5.4) * scale / np.cbrt(leaves_p)
    k[HEPATIC] = rng.uniform(4.6, 5.6) * scale / np.cbrt(leaves_h)   # three veins share this flow
    r_floor = 0.9 * float(spacing.min())
    r = _separate(t, k, r_floor, margin=2.0 * float(spacing.max()))   # walls two voxels apart never touch
    t.flow_r = r

    touching = level in ("touching", "noisy")
    blurred = level != "clean"
    info = {"nodes": int(len(t.parent)), "contacts": []}
    bridges = []
    if touching:
        n_par = max(3, int(round(4 * scale ** 2)))
        for j in range(n_par):
            ev, _ = _follow(t, r, rng, liver, "parallel", through=j % 3 != 2)
            if ev:
                info["contacts"].append(ev)
                r = _radii(t, k, r_floor)
                t.flow_r = r
        for _ in range(max(3, int(round(3 * scale ** 2)))):
            ev = _crossing(t, r, rng, liver)
            if ev:
                info["contacts"].append(ev)
                r = _radii(t, k, r_floor)
                t.flow_r = r
        for _ in range(2):
            ev, br = _follow(t, r, rng, liver, "ladder", gap_walls=rng.uniform(1.5, 3.0), through=True)
            if ev:
                info["contacts"].append(ev)
                bridges += br
                r = _radii(t, k, r_floor)
                t.flow_r = r
        for name, point in (("hilum", hilum + portal_dir * 10 * scale), ("ivc", np.array([*ivc_xy, conf_z]))):
            for a, b, rr in _root_contacts(t, r, rng, point, 1 if name == "ivc" else 2):
                bridges.append((a, b, rr))
                info["contacts"].append({"kind": name, "at_mm": ((a + b) / 2).tolist(), "radius_mm": float(rr)})
    info["contact_kinds"] = [c["kind"] for c in info["contacts"]]
    for c in info["contacts"]:
        c.pop("nodes", None)

    bid = _branches(t)
    p0, p1, r0, r1, node = _segments(t, r)
    sd, owner = _paint(shape, spacing, p0, p1, r0, r1, node + 1, bridges)
    vox = float(spacing.min())
    if blurred:
        # partial volume: sub-voxel edges, the scanner's blur, a threshold
        occ = np.clip(0.5 - sd / vox, 0.0, 1.0)
        sigma = rng.uniform(0.45, 0.75) * vox / spacing
        occ = ndimage.gaussian_filter(occ, sigma)
        vessels = occ >= rng.uniform(0.42, 0.55)
        info["psf_sigma_vox"] = sigma.tolist()
    else:
        vessels = sd <= 0
    liver_mask = np.zeros(shape, bool)
    grid = np.stack(np.meshgrid(np.arange(shape[0]) * spacing[0], np.arange(shape[1]) * spacing[1],
                                indexing="ij"), -1)
    for z in range(shape[2]):
        pts = np.concatenate([grid, np.full(grid.shape[:2] + (1,), z * spacing[2])], -1)
        liver_mask[:, :, z] = liver.inside(pts)
    ivc2d = np.linalg.norm(grid - ivc_xy, axis=-1) <= ivc_r
    ivc = np.broadcast_to(ivc2d[..., None], shape).copy()
    vessels &= ~ivc
    vessels &= liver_mask | (sd <= 0)
    # every vessel voxel belongs to the nearest drawn vessel
    drawn = owner > 0
    _, ind = ndimage.distance_transform_edt(~drawn, sampling=spacing, return_indices=True)
    own = owner[tuple(ind)]
    node_cls = np.concatenate([[0], t.cls])
    node_bid = np.concatenate([[0], bid])
    truth = np.where(vessels, node_cls[own], 0).astype(np.uint8)
    branch_ids = np.where(vessels, node_bid[own], 0).astype(np.int32)

    # portal trunk: from below and medially up to the hilum, reaching a little into the liver
    trunk = np.zeros(shape, bool)
    tr = float(r[t.cls == PORTAL].max()) * 1.05
    a, b = hilum - portal_dir * 30 * scale + np.array([-8, 0, -5]) * scale, hilum + portal_dir * 2 * scale
    tsd, _ = _paint(shape, spacing, np.array([a]), np.array([b]), np.array([tr * 1.1]), np.array([tr]),
                    np.array([1]))
    trunk = tsd <= 0

    if level in ("gaps", "noisy"):
        info["gaps"] = _cut_gaps(vessels, truth, branch_ids, t, r, bid, spacing, rng, max(3, int(4 * scale ** 2)))
    if level == "noisy":
        info["blobs"] = _noise(vessels, truth, branch_ids, liver_mask, spacing, rng)
        trunk, ivc, info["support"] = _damage_support(trunk, ivc, hilum, portal_dir, conf_z, spacing, scale, rng)
    truth = np.where(vessels, truth, 0).astype(np.uint8)
    branch_ids = np.where(truth > 0, branch_ids, 0).astype(np.int32)
    liver_mask = (liver_mask | vessels) & ~ivc
    affine = np.diag([*spacing, 1.0])
    return PhantomC(level, affine, tuple(spacing.tolist()), vessels.astype(np.uint8), liver_mask.astype(np.uint8),
                    trunk.astype(np.uint8), ivc.astype(np.uint8), truth, branch_ids, [], info)


def _cut_gaps(vessels, truth, branch_ids, t, r, bid, spacing, rng, n):
    """Slabs 2-4 mm thick cut through whole branches (some just before a bifurcation)."""
    out = []
    cand = np.nonzero((t.parent >= 0) & (r >= 1.2) & (t.cls > 0))[0]
    rng.shuffle(cand)
    used = set()
    for c in cand:
        if len(out) >= n:
            break
        if bid[c] in used or t.parent[t.parent[c]] < 0:
            continue
        used.add(bid[c])
        tang = _unit(t.pos[c] - t.pos[t.parent[c]])
        g = rng.uniform(2.0, 4.0)
        idx = np.argwhere(branch_ids == bid[c])   # the branch's own voxels only
        if not len(idx):
            continue
        rel = idx * spacing - t.pos[c]
        along = rel @ tang
        across = np.linalg.norm(rel - along[:, None] * tang, axis=1)
        cut = (np.abs(along) <= g / 2) & (across <= 2.0 * r[c] + 1.0)
        if cut.sum() < 3:
            continue
        vessels[tuple(idx[cut].T)] = False
        out.append({"at_mm": t.pos[c].tolist(), "length_mm": float(g)})
    return out


def _noise(vessels, truth, branch_ids, liver, spacing, rng):
    """Spurious blobs (no class) and a ragged vessel boundary."""
    out = []
    free = np.argwhere(liver & ~vessels)
    for _ in range(int(rng.integers(4, 8))):
        c = free[rng.integers(len(free))] * spacing
        blob = _ball(vessels.shape, spacing, c, rng.uniform(1.0, 2.5, 3))
        blob &= ~vessels
        vessels |= blob
        out.append({"at_mm": c.tolist(), "voxels": int(blob.sum())})
    boundary_noise(vessels, truth, branch_ids, liver, spacing, rng, 0.15, 0.1)
    return out


def _damage_support(trunk, ivc, hilum, portal_dir, conf_z, spacing, scale, rng):
    """Trunk and IVC shifted a few mm; the trunk without its hilum end; the IVC without a
    slab at the confluence, or cut off above or below it."""
    st = _unit(rng.normal(size=3)) * rng.uniform(2.0, 6.0)
    si = _unit(np.r_[rng.normal(size=2), 0.0]) * rng.uniform(2.0, 5.0)
    trunk = ndimage.shift(trunk.astype(np.uint8), st / spacing, order=0) > 0
    ivc = ndimage.shift(ivc.astype(np.uint8), si / spacing, order=0) > 0
    idx = np.argwhere(trunk)
    cut = rng.uniform(5.0, 14.0) * scale
    trunk[tuple(idx[(idx * spacing - hilum) @ portal_dir > -cut].T)] = False
    mode = ("slab", "above", "below")[int(rng.integers(3))]
    k = int(conf_z / spacing[2])
    half = int(rng.uniform(6, 12) * scale / spacing[2])
    if mode == "slab":
        ivc[:, :, max(k - half, 0):k + half] = False
    elif mode == "above":
        ivc[:, :, k + half:] = False
    else:
        ivc[:, :, :max(k - half, 0)] = False
    return trunk, ivc, {"trunk_shift_mm": st.tolist(), "ivc_shift_mm": si.tolist(), "trunk_cut_mm": float(cut),
                        "ivc": mode}
