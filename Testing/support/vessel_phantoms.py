"""Synthetic liver-vessel phantoms with ground truth, for the portal/hepatic split.

A phantom is a liver (a lumpy two-lobed blob), a portal-vein tree entering at the hilum
(the portal trunk comes from below and medially) and three hepatic veins (right, middle,
left) draining into the inferior vena cava (IVC) at the top and back of the liver.
Trees branch by Murray's law (r^3 = r1^3 + r2^3, the bigger child deviates less), so the
radius shrinks away from the root, and they fill the liver without touching each other.

Levels degrade the masks the way real segmentations are degraded:
  clean     the vessel mask is exactly the two trees
  touching  portal and hepatic branches touch or merge where they pass close
  gaps      short pieces of branches are missing from the vessel mask
  noisy     spurious blobs, boundary noise; trunk and IVC masks shifted by a few mm,
            the trunk without its hilum end, the IVC with a missing slab
  combined  all of the above

`hard=True` adds the geometries that break splits tuned on the above (issue 14); the
trees themselves are the same as without it (the extras draw from their own random
stream); `hard=2` makes them severe: three times as many runs, 6-15 radii long and
overlapping more, twice the contacts, four at the roots, and partial volume at every
degraded level:
  touching  also long parallel runs (a leaf of one tree continues alongside a branch of
            the other, overlapping, touching, or beside it with a ladder of several
            bridges), contacts as wide as the vessels, contacts at thick vessels near the
            hilum and the IVC
  noisy     also partial volume (the mask blurred and thresholded, which fuses vessels
            passing within a voxel and thins small ones) and worse support masks: shifts
            up to 6 mm, the IVC cut above or below the confluence, a trunk mask too thick
            or too thin

World coordinates are RAS millimetres (x to the patient's right, y anterior, z superior);
array axes follow x, y, z with a diagonal affine, as a canonical NIfTI would.

    ph = make_phantom("combined", shape=(80, 80, 64), spacing=(1.5, 1.5, 1.5), seed=1, hard=True)
    ph.vessels, ph.liver, ph.portal_trunk, ph.ivc      # uint8 masks (the inputs)
    ph.truth        # 1 portal, 2 hepatic, 0 not a vessel (spurious blob / background)
    ph.branch_ids   # id of the generating branch per true vessel voxel (0 elsewhere)
    score_split(labels, ph)                            # Dice, accuracy, branch consistency
    ct = phantom_ct(ph)   # a CT of it (Hounsfield units) for the pipeline with the known test models
"""
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

LEVELS = ("clean", "touching", "gaps", "noisy", "combined")
PORTAL, HEPATIC = 1, 2

# Hounsfield units of phantom_ct: each structure lies deep inside the intensity band that the
# known test models (known_models.KNOWN_BANDS_HU) answer, so what they segment is known
CT_HU = {"air": -1000, "fat": -100, "liver": 60, "vessels": 190, "portal_trunk": 290, "ivc": 390}


@dataclass
class Segment:
    id: int
    cls: int            # PORTAL or HEPATIC
    tree: str           # "portal", "right", "middle", "left"
    parent: int         # -1 for a root
    p0: np.ndarray      # start (mm)
    p1: np.ndarray      # end (mm)
    r0: float           # radius at the start (mm)
    r1: float           # radius at the end (mm)
    generation: int


@dataclass
class Phantom:
    level: str
    affine: np.ndarray
    spacing: tuple
    vessels: np.ndarray
    liver: np.ndarray
    portal_trunk: np.ndarray
    ivc: np.ndarray
    truth: np.ndarray
    branch_ids: np.ndarray
    segments: list
    info: dict = field(default_factory=dict)

    @property
    def shape(self):
        return self.vessels.shape

    def save(self, folder):
        """Write the inputs and the truth as NIfTI files; returns {name: path}."""
        import nibabel as nib
        from pathlib import Path

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        out = {}
        for name, arr in (("liver_vessels", self.vessels), ("liver", self.liver),
                          ("portal_vein_and_splenic_vein", self.portal_trunk),
                          ("inferior_vena_cava", self.ivc), ("truth", self.truth)):
            path = folder / f"{name}.nii.gz"
            nib.save(nib.Nifti1Image(arr.astype(np.uint8), self.affine), str(path))
            out[name] = path
        return out


def phantom_ct(phantom, air_border=3):
    """A CT of the phantom (int16 Hounsfield units, CT_HU): fat around the liver, the vessels
    (its liver mask includes them) brighter, the portal trunk and the IVC brighter still
    (where they are not vessel), and air at the border of the field of view, as in a CT."""
    ct = np.full(phantom.shape, CT_HU["fat"], np.int16)
    border = np.ones(phantom.shape, bool)
    border[(slice(air_border, -air_border),) * 3] = False
    ct[border] = CT_HU["air"]
    ct[phantom.liver > 0] = CT_HU["liver"]
    ct[phantom.ivc > 0] = CT_HU["ivc"]
    ct[(phantom.portal_trunk > 0) & (phantom.vessels == 0)] = CT_HU["portal_trunk"]
    ct[phantom.vessels > 0] = CT_HU["vessels"]
    return ct


def save_ct(phantom, path, ct=None):
    """Write phantom_ct (or `ct`) as a NIfTI on the phantom's grid; returns the path."""
    import nibabel as nib
    from pathlib import Path

    nib.save(nib.Nifti1Image(phantom_ct(phantom) if ct is None else ct, phantom.affine), str(path))
    return Path(path)


def subtree_ids(phantom, segment_id):
    """Ids of a generating segment and of every segment that branches off it (its subtree)."""
    children = {}
    for s in phantom.segments:
        children.setdefault(s.parent, []).append(s.id)
    out, todo = set(), [segment_id]
    while todo:
        i = todo.pop()
        out.add(i)
        todo += children.get(i, [])
    return out


# ---------------------------------------------------------------------------------------
# geometry helpers

def _unit(v):
    v = np.asarray(v, dtype=float)
    return v / max(np.linalg.norm(v), 1e-12)


def _perpendicular(d, rng):
    a = rng.normal(size=3)
    a -= a.dot(d) * d
    return _unit(a)


def _rotate_towards(d, e, angle):
    """Rotate unit vector d by `angle` (rad) in the plane spanned by d and unit e (e ⟂ d)."""
    return _unit(np.cos(angle) * d + np.sin(angle) * e)


def _segment_distance(points, p0, p1):
    """Distances (K, M) from K points to M segments (p0, p1: (M, 3)); and the t (K, M)."""
    d = p1 - p0
    dd = np.maximum((d * d).sum(1), 1e-12)
    t = ((points[:, None, :] - p0[None]) * d[None]).sum(2) / dd[None]
    t = np.clip(t, 0.0, 1.0)
    closest = p0[None] + t[..., None] * d[None]
    return np.linalg.norm(points[:, None, :] - closest, axis=2), t


class _Liver:
    """Implicit lumpy liver: main (right) lobe plus a smaller left lobe."""

    def __init__(self, centre, axes, rng):
        self.c = np.asarray(centre, float)
        self.a = np.asarray(axes, float)
        self.left_c = self.c + np.array([-0.75, 0.25, 0.2]) * self.a
        self.left_a = np.array([0.6, 0.55, 0.45]) * self.a
        self.freq = rng.normal(size=(4, 3)) * 2.0
        self.phase = rng.uniform(0, 2 * np.pi, 4)

    def _lump(self, p):
        return 1.0 + 0.05 * np.sin(p @ self.freq.T / self.a.mean() * 3 + self.phase).sum(-1) / 2

    def level(self, p):
        """< 1 inside (a normalised radius), > 1 outside. p: (..., 3) mm."""
        p = np.asarray(p, float)
        q1 = np.linalg.norm((p - self.c) / self.a, axis=-1)
        q2 = np.linalg.norm((p - self.left_c) / self.left_a, axis=-1)
        return np.minimum(q1, q2) / self._lump(p)

    def depth(self, p):
        """Approximate depth below the surface in mm (negative outside)."""
        return (1.0 - self.level(p)) * self.a.min()


# ---------------------------------------------------------------------------------------
# tree growth

class _Forest:
    def __init__(self, liver, clearance, r_min, rng):
        self.liver = liver
        self.clearance = clearance
        self.r_min = r_min
        self.rng = rng
        self.segments = []
        self._p0 = np.zeros((0, 3))
        self._p1 = np.zeros((0, 3))
        self._r = np.zeros(0)
        self._obstacles = []  # (p0, p1, r, classes it blocks)

    def add_obstacle(self, p0, p1, r, classes):
        self._obstacles.append((np.asarray(p0, float), np.asarray(p1, float), float(r), set(classes)))

    def add(self, seg):
        self.segments.append(seg)
        self._p0 = np.vstack([self._p0, seg.p0])
        self._p1 = np.vstack([self._p1, seg.p1])
        self._r = np.append(self._r, max(seg.r0, seg.r1))

    def free(self, p0, p1, r, ignore, cls):
        """True if a tube p0-p1 of radius r keeps its clearance from all other segments."""
        n = max(3, int(np.linalg.norm(p1 - p0) / max(r, 0.5)) + 2)
        pts = p0 + np.linspace(0.15, 1.0, n)[:, None] * (p1 - p0)
        for a, b, ro, classes in self._obstacles:
            if cls in classes and (_segment_distance(pts, a[None], b[None])[0] < r + ro + self.clearance).any():
                return False
        if not len(self.segments):
            return True
        dist, _ = _segment_distance(pts, self._p0, self._p1)
        need = r + self._r + self.clearance
        ok = dist >= need[None]
        ok[:, list(ignore)] = True
        return bool(ok.all())

    def nearest_gap(self, p):
        if not len(self.segments):
            return 1e9
        dist, _ = _segment_distance(p[None], self._p0, self._p1)
        return float((dist[0] - self._r).min())

    def grow(self, roots, length_factor=6.0, max_segments=4000, forced=None):
        """Grow all trees breadth first (big radii first) so they share the liver fairly.

        `forced` {(tree, generation): (dir1, dir2)} fixes the branching of a root.
        """
        forced = dict(forced or {})
        queue = list(roots)  # (cls, tree, parent id, start, direction, radius, generation, fixed length)
        while queue and len(self.segments) < max_segments:
            queue.sort(key=lambda q: -q[5])
            cls, tree, parent, p0, d, r, gen, fixed = queue.pop(0)
            seg = self._place(cls, tree, parent, p0, d, r, gen, length_factor, fixed)
            if seg is None:
                continue
            self.add(seg)
            queue.extend(self._children(seg, forced.pop((tree, gen), None)))

    def _place(self, cls, tree, parent, p0, d, r, gen, length_factor, fixed):
        ignore = {parent} | {s.id for s in self.segments if s.parent == parent and parent >= 0}
        if parent >= 0:
            ignore |= {self.segments[parent].parent} - {-1}
        for attempt in range(8):
            length = fixed if fixed else length_factor * r * self.rng.uniform(0.75, 1.3)
            dd = d if attempt == 0 else _rotate_towards(d, _perpendicular(d, self.rng), self.rng.uniform(0.2, 0.6))
            p1 = p0 + length * dd
            if not fixed and self.liver.depth(p1) < r + 1.0:
                # steer back into the liver or stop
                inward = _unit(self.liver.c - p1)
                dd = _unit(dd + 0.8 * inward)
                length *= 0.7
                p1 = p0 + length * dd
                if self.liver.depth(p1) < r + 1.0:
                    continue
            if fixed or self.free(p0, p1, r, ignore, cls):
                r1 = r * 0.97 if not fixed else r
                return Segment(len(self.segments), cls, tree, parent, p0, p1, r, r1, gen)
        return None

    def _children(self, seg, directions=None):
        r = seg.r1
        k = self.rng.uniform(0.55, 1.0)                  # radius ratio small/big child
        a1 = (1.0 / (1.0 + k ** 3)) ** (1.0 / 3.0)       # Murray: a1^3 + a2^3 = 1
        a2 = k * a1
        c1 = np.clip((1 + a1 ** 4 - a2 ** 4) / (2 * a1 ** 2), -1, 1)   # minimum-work angles
        c2 = np.clip((1 + a2 ** 4 - a1 ** 4) / (2 * a2 ** 2), -1, 1)
        th1 = np.arccos(c1) + np.radians(self.rng.uniform(-5, 8))
        th2 = np.arccos(c2) + np.radians(self.rng.uniform(-5, 10))
        th1, th2 = max(th1, np.radians(12)), min(max(th2, np.radians(28)), np.radians(75))
        d = _unit(seg.p1 - seg.p0)
        best, best_score = None, -1e9
        if directions is not None:
            best, best_score = [_unit(v) for v in directions], 0.0
        for _ in range(6 if directions is None else 0):  # pick the branching plane that leads deepest into free liver
            e = _perpendicular(d, self.rng)
            d1, d2 = _rotate_towards(d, e, th1), _rotate_towards(d, -e, th2)
            probe1 = seg.p1 + d1 * 5 * r
            probe2 = seg.p1 + d2 * 5 * r
            score = (min(self.liver.depth(probe1), self.liver.depth(probe2))
                     + 0.5 * min(self.nearest_gap(probe1), self.nearest_gap(probe2), 20.0))
            if score > best_score:
                best, best_score = (d1, d2), score
        out = []
        for a, dd in zip((a1, a2), best):
            if r * a >= self.r_min:
                out.append((seg.cls, seg.tree, seg.id, seg.p1.copy(), dd, r * a, seg.generation + 1, None))
        return out


# ---------------------------------------------------------------------------------------
# rasterisation

def _grid_bounds(p0, p1, r, spacing, shape):
    lo = np.floor((np.minimum(p0, p1) - r - 1) / spacing).astype(int)
    hi = np.ceil((np.maximum(p0, p1) + r + 1) / spacing).astype(int) + 1
    lo = np.clip(lo, 0, shape)
    hi = np.clip(hi, 0, shape)
    return lo, hi


def _tube(p0, p1, r0, r1, spacing, shape):
    """(slices of the bounding box, normalised distance q (<= 1 inside), t along the axis)."""
    lo, hi = _grid_bounds(p0, p1, max(r0, r1), spacing, np.array(shape))
    if np.any(hi <= lo):
        return None, None, None
    axes = [np.arange(lo[i], hi[i]) * spacing[i] for i in range(3)]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), -1)
    d = p1 - p0
    dd = max(d.dot(d), 1e-12)
    t = np.clip(((pts - p0) @ d) / dd, 0, 1)
    dist = np.linalg.norm(pts - (p0 + t[..., None] * d), axis=-1)
    q = dist / (r0 + (r1 - r0) * t)
    return tuple(slice(lo[i], hi[i]) for i in range(3)), q, t


def _paint_tube(best, owner, value, p0, p1, r0, r1, spacing):
    """Paint a tapered tube into `owner` where it is the nearest tube (normalised distance)."""
    sl, q, _ = _tube(p0, p1, r0, r1, spacing, best.shape)
    if sl is None:
        return
    sub_best = best[sl]
    take = (q <= 1.0) & (q < sub_best)
    sub_best[take] = q[take]
    owner[sl][take] = value


def _paint_ball(mask, centre, radii, spacing):
    radii = np.broadcast_to(np.asarray(radii, float), (3,))
    lo, hi = _grid_bounds(centre, centre, radii.max(), spacing, np.array(mask.shape))
    if np.any(hi <= lo):
        return
    axes = [(np.arange(lo[i], hi[i]) * spacing[i] - centre[i]) / radii[i] for i in range(3)]
    X, Y, Z = np.meshgrid(*axes, indexing="ij")
    sl = tuple(slice(lo[i], hi[i]) for i in range(3))
    mask[sl] |= (X ** 2 + Y ** 2 + Z ** 2) <= 1.0


# ---------------------------------------------------------------------------------------
# the phantom

def make_phantom(level="clean", shape=(80, 80, 64), spacing=(1.5, 1.5, 1.5), seed=0, contacts=None,
                 gaps=None, blobs=None, hard=False):
    """Build a phantom at one of LEVELS. `contacts`, `gaps`, `blobs` override the counts;
    `hard` adds the harder geometries of the module docstring."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, not {level!r}")
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    spacing = np.asarray(spacing, float)
    fov = np.asarray(shape) * spacing
    vox = float(spacing.min())

    # anatomy in mm
    liver_c = fov * np.array([0.55, 0.52, 0.5])
    liver_a = fov * np.array([0.33, 0.36, 0.37])
    liver = _Liver(liver_c, liver_a, rng)
    size = float(liver_a.mean())
    portal_r = max(0.085 * size, 2.6 * vox)
    hepatic_r = 0.85 * portal_r
    ivc_r = max(0.11 * size, 3 * vox)
    ivc_xy = liver_c[:2] + np.array([-0.35, -0.78]) * liver_a[:2]
    confluence_z = liver_c[2] + 0.55 * liver_a[2]
    hilum = liver_c + np.array([-0.3, 0.05, -0.45]) * liver_a
    r_min = max(1.05 * vox, 0.0)

    forest = _Forest(liver, clearance=max(1.6 * vox, 1.5), r_min=r_min, rng=rng)
    ivc_axis = np.array([ivc_xy[0], ivc_xy[1], confluence_z])
    roots = []
    portal_dir = _unit(np.array([0.35, -0.2, 0.9]))
    outside = hilum - portal_dir * (1.2 * portal_r)
    roots.append((PORTAL, "portal", -1, outside, portal_dir, portal_r, 0, 2.2 * portal_r + 1.2 * portal_r))
    # the portal vein divides at the hilum into right and left portal veins, both nearly horizontal
    forced = {("portal", 0): ([1.0, -0.15, 0.2], [-0.75, 0.65, 0.15])}
    for tree, direction in (("right", [1.0, 0.25, -0.55]), ("middle", [0.3, 1.0, -0.6]),
                            ("left", [-0.75, 0.85, -0.3])):
        d = _unit(direction)
        horizontal = _unit(np.array([d[0], d[1], 0.0]))
        start = ivc_axis + horizontal * (ivc_r * 0.8) + np.array([0, 0, rng.uniform(-1, 1) * vox])
        roots.append((HEPATIC, tree, -1, start, d, hepatic_r, 0, 2.5 * hepatic_r))
    # the trees keep clear of the IVC, and hepatic veins of the portal trunk
    forest.add_obstacle(ivc_axis - [0, 0, 2 * size], ivc_axis + [0, 0, 2 * size], ivc_r, (PORTAL, HEPATIC))
    forest.add_obstacle(outside - portal_dir * 0.4 * size, hilum + portal_dir * 2.5 * portal_r, portal_r * 1.1,
                        (HEPATIC,))
    forest.grow(roots, forced=forced)
    touching = level in ("touching", "combined")
    gapped = level in ("gaps", "combined")
    noisy = level in ("noisy", "combined")
    hard_rng = np.random.default_rng([seed, 14])  # the trees stay those of hard=False
    ladders = []
    severe = int(hard) >= 2
    if hard and touching:
        n_runs = max(3, len(forest.segments) // 12) if severe else max(2, len(forest.segments) // 40)
        ladders = _add_runs(forest, n_runs, spacing, hard_rng, long=severe)
    segments = forest.segments

    # masks
    best = np.full(shape, np.inf, dtype=np.float32)
    owner = np.zeros(shape, dtype=np.int32)  # segment id + 1
    for s in segments:
        _paint_tube(best, owner, s.id + 1, s.p0, s.p1, s.r0, s.r1, spacing)
    seg_cls = np.array([0] + [s.cls for s in segments], dtype=np.uint8)

    xy = np.stack(np.meshgrid(np.arange(shape[0]) * spacing[0], np.arange(shape[1]) * spacing[1],
                              indexing="ij"), -1)
    liver_mask = np.zeros(shape, bool)
    for k in range(shape[2]):  # slice by slice: a full coordinate grid would not fit at 300^3
        pts = np.concatenate([xy, np.full(xy.shape[:2] + (1,), k * spacing[2])], -1)
        liver_mask[:, :, k] = liver.level(pts) < 1.0
    ivc_mask = np.broadcast_to((np.linalg.norm(xy - ivc_xy, axis=-1) <= ivc_r)[..., None], shape).copy()
    liver_mask &= ~ivc_mask
    liver_mask |= owner > 0
    liver_mask &= ~ivc_mask
    owner[ivc_mask] = 0  # the IVC itself is not part of the intrahepatic vessel mask

    # portal trunk: from the hilum down and medially to the confluence, plus the splenic vein
    trunk_mask = np.zeros(shape, bool)
    trunk_best = np.full(shape, np.inf, np.float32)
    trunk_owner = np.zeros(shape, np.int32)
    inner = hilum + portal_dir * 1.5 * portal_r           # the trunk reaches a little into the liver
    conf = hilum - portal_dir * 0.35 * size + np.array([-0.15 * size, 0, -0.1 * size])
    _paint_tube(trunk_best, trunk_owner, 1, conf, inner, portal_r * 1.1, portal_r, spacing)
    _paint_tube(trunk_best, trunk_owner, 1, conf + np.array([-0.6 * size, -0.1 * size, 0.05 * size]), conf,
                portal_r * 0.8, portal_r * 0.9, spacing)
    trunk_mask = trunk_owner > 0

    truth = seg_cls[owner]
    vessels = truth > 0
    branch_ids = owner.copy()
    info = {"segments": len(segments), "portal_segments": int(sum(s.cls == PORTAL for s in segments)),
            "hepatic_segments": int(sum(s.cls == HEPATIC for s in segments)),
            "hilum_mm": hilum.tolist(), "ivc_xy_mm": ivc_xy.tolist(), "confluence_z_mm": float(confluence_z)}
    if ladders:
        info["runs"] = ladders

    if touching:
        n = contacts if contacts is not None else max(3, len(segments) // 25)
        info["contacts"] = _add_contacts(vessels, truth, branch_ids, segments, n, spacing, rng)
        if hard:
            info["contacts"] += _add_hard_contacts(vessels, truth, branch_ids, segments, ladders,
                                                   2 * n if severe else n, spacing, hard_rng, 4 if severe else 2)
    if gapped:
        n = gaps if gaps is not None else max(3, len(segments) // 25)
        info["gaps"] = _add_gaps(vessels, segments, n, spacing, rng)
    if noisy:
        n = blobs if blobs is not None else max(4, int(np.prod(fov) / 150000))
        info["blobs"] = _add_noise(vessels, truth, branch_ids, liver_mask, n, spacing, rng)
        trunk_mask, ivc_mask, info["support"] = _degrade_support(trunk_mask, ivc_mask, liver_mask, hilum, portal_dir,
                                                                 confluence_z, spacing, size, rng)
        if hard and not severe:
            info["partial_volume"] = _partial_volume(vessels, truth, branch_ids, liver_mask, spacing, hard_rng)
        if hard:
            trunk_mask, ivc_mask, more = _degrade_support_hard(trunk_mask, ivc_mask, confluence_z, spacing, size,
                                                               hard_rng)
            info["support"].update(more)
    if severe and level != "clean":   # every degraded level seen at CT resolution
        info["partial_volume"] = _partial_volume(vessels, truth, branch_ids, liver_mask, spacing, hard_rng)
    truth = np.where(vessels, truth, 0).astype(np.uint8)
    branch_ids = np.where(truth > 0, branch_ids, 0).astype(np.int32)

    affine = np.diag([*spacing, 1.0])
    return Phantom(level, affine, tuple(spacing.tolist()), vessels.astype(np.uint8), liver_mask.astype(np.uint8),
                   trunk_mask.astype(np.uint8), ivc_mask.astype(np.uint8), truth, branch_ids, segments, info)


def _add_contacts(vessels, truth, branch_ids, segments, n, spacing, rng):
    """Join the closest portal/hepatic segment pairs by a bridge or a merge (as a mask would)."""
    P = [s for s in segments if s.cls == PORTAL and s.parent >= 0]
    H = [s for s in segments if s.cls == HEPATIC and s.parent >= 0]
    if not P or not H:
        return []
    # closest approach between every portal and hepatic segment, sampled along portal segments
    hp0 = np.array([s.p0 for s in H])
    hp1 = np.array([s.p1 for s in H])
    hr = np.array([s.r1 for s in H])
    cand = []
    for s in P:
        pts = s.p0 + np.linspace(0.1, 0.9, 7)[:, None] * (s.p1 - s.p0)
        dist, t = _segment_distance(pts, hp0, hp1)
        gap = dist - hr[None] - s.r1
        k, j = np.unravel_index(np.argmin(gap), gap.shape)
        q = hp0[j] + t[k, j] * (hp1[j] - hp0[j])
        cand.append((gap[k, j], s, H[j], pts[k], q))
    cand.sort(key=lambda c: c[0])
    used, out = set(), []
    for gap, s, h, p, q in cand:
        if len(out) >= n:
            break
        if s.id in used or h.id in used or gap > 6 * spacing.min():
            continue
        used |= {s.id, h.id}
        kind = "merge" if rng.random() < 0.4 else "bridge"
        rr = min(s.r1, h.r1) * (rng.uniform(0.9, 1.05) if kind == "merge" else rng.uniform(0.55, 0.8))
        sl, qn, _ = _tube(p, q, rr, rr, spacing, vessels.shape)
        if sl is None:
            continue
        add = (qn <= 1.0) & ~vessels[sl]
        # each added voxel belongs to the vessel whose axis is nearer
        pts = (np.argwhere(add) + [x.start for x in sl]) * spacing
        dp, _ = _segment_distance(pts, s.p0[None], s.p1[None])
        dh, _ = _segment_distance(pts, h.p0[None], h.p1[None])
        near_p = dp[:, 0] / s.r1 <= dh[:, 0] / h.r1
        truth[sl][add] = np.where(near_p, PORTAL, HEPATIC)
        branch_ids[sl][add] = np.where(near_p, s.id + 1, h.id + 1)
        vessels[sl] |= add
        out.append({"kind": kind, "portal_segment": s.id, "hepatic_segment": h.id,
                    "radius_mm": float(rr), "at_mm": ((p + q) / 2).tolist()})
    return out


def _add_gaps(vessels, segments, n, spacing, rng):
    """Cut short pieces out of non-root segments (whole cross-section), orphaning subtrees."""
    cands = [s for s in segments if s.parent >= 0 and any(c.parent == s.id for c in segments)]
    rng.shuffle(cands)
    out = []
    for s in cands[:n]:
        L = np.linalg.norm(s.p1 - s.p0)
        g = rng.uniform(1.5, 3.0) * spacing.min()
        if L < g + 2 * spacing.min():
            continue
        t0 = rng.uniform(0.2, 0.8 - g / L) if L > 2 * g else 0.3
        a = s.p0 + t0 * (s.p1 - s.p0)
        b = a + g / L * (s.p1 - s.p0)
        # a flat cut through the whole cross-section, between the planes at a and b
        sl, qn, t = _tube(a - (b - a), b + (b - a), s.r0 * 1.6, s.r0 * 1.6, spacing, vessels.shape)
        if sl is None:
            continue
        vessels[sl] &= ~((qn <= 1.0) & (t >= 1 / 3) & (t <= 2 / 3))
        out.append({"segment": s.id, "length_mm": float(g), "at_mm": a.tolist()})
    return out


def _add_noise(vessels, truth, branch_ids, liver, n, spacing, rng):
    """Spurious blobs in the liver and a noisy vessel boundary."""
    out = []
    liver_idx = np.argwhere(liver & ~vessels)
    for _ in range(n):
        c = liver_idx[rng.integers(len(liver_idx))] * spacing
        radii = rng.uniform(1.0, 2.6, 3) * spacing.min()
        blob = np.zeros(vessels.shape, bool)
        _paint_ball(blob, c, radii, spacing)
        blob &= ~vessels
        vessels |= blob   # truth stays 0: not a vessel
        out.append({"at_mm": c.tolist(), "voxels": int(blob.sum())})
    boundary_noise(vessels, truth, branch_ids, liver, spacing, rng, 0.12, 0.08)
    return out


def boundary_noise(vessels, truth, branch_ids, liver, spacing, rng, p_add, p_drop):
    """A ragged vessel boundary, in place: outer-shell voxels added (each with probability
    p_add; they belong to the nearest true vessel voxel), inner-shell voxels dropped (p_drop)."""
    solid = vessels & (truth > 0)
    outer = ndimage.binary_dilation(solid) & ~vessels & liver
    inner = solid & ~ndimage.binary_erosion(solid)
    add = outer & (rng.random(vessels.shape) < p_add)
    drop = inner & (rng.random(vessels.shape) < p_drop)
    _, ind = ndimage.distance_transform_edt(~solid, sampling=spacing, return_indices=True)
    near = tuple(i[add] for i in ind)
    truth[add] = truth[near]
    branch_ids[add] = branch_ids[near]
    vessels |= add
    vessels &= ~drop


def _degrade_support(trunk, ivc, liver, hilum, portal_dir, confluence_z, spacing, size, rng):
    """Shift the trunk and IVC masks by a few mm; cut the trunk's hilum end and an IVC slab."""
    shift_t = rng.normal(size=3)
    shift_t = _unit(shift_t) * rng.uniform(2.0, 4.0)
    shift_i = rng.normal(size=3)
    shift_i[2] = 0
    shift_i = _unit(shift_i) * rng.uniform(2.0, 4.0)
    trunk = ndimage.shift(trunk.astype(np.uint8), shift_t / spacing, order=0) > 0
    ivc = ndimage.shift(ivc.astype(np.uint8), shift_i / spacing, order=0) > 0
    # the trunk stops short of the hilum
    idx = np.argwhere(trunk)
    cut_mm = rng.uniform(0.12, 0.2) * size
    along = (idx * spacing - hilum) @ portal_dir
    drop = along > -cut_mm
    trunk[tuple(idx[drop].T)] = False
    # a slab of the IVC is missing, around the hepatic confluence
    zc = confluence_z + rng.uniform(-0.03, 0.03) * size
    half = rng.uniform(0.08, 0.12) * size
    k0 = int(max(0, (zc - half) / spacing[2]))
    k1 = int(min(ivc.shape[2], (zc + half) / spacing[2] + 1))
    ivc[:, :, k0:k1] = False
    return trunk, ivc, {"trunk_shift_mm": shift_t.tolist(), "ivc_shift_mm": shift_i.tolist(),
                        "trunk_cut_mm": float(cut_mm), "ivc_slab_mm": [k0 * spacing[2], k1 * spacing[2]]}


# ---------------------------------------------------------------------------------------
# the harder geometries (hard=True)

def _leaves(segments):
    parents = {s.parent for s in segments}
    return [s for s in segments if s.id not in parents]


def _add_runs(forest, n, spacing, rng, long=False):
    """Long parallel runs: a leaf of one tree continues (approach, then run) alongside a
    branch of the other tree of similar radius, for 4-8 combined radii. One in three runs
    keeps a gap of 1.5-3 mm and is joined by a ladder of bridges (returned, painted with the
    contacts); the others overlap or touch their partner all along."""
    segs = forest.segments
    vox = float(spacing.min())
    leaves = [s for s in _leaves(segs) if s.generation >= 2]
    rng.shuffle(leaves)
    ladders, used = [], set()
    for leaf in leaves:
        if len(ladders) >= n:
            break
        others = [p for p in segs if p.cls != leaf.cls and p.parent >= 0 and p.id not in used]
        if not others:
            continue
        p0 = np.array([p.p0 for p in others])
        p1 = np.array([p.p1 for p in others])
        dist, t = _segment_distance(leaf.p1[None], p0, p1)
        best = None
        for j in np.argsort(dist[0]):
            p = others[j]
            length = np.linalg.norm(p.p1 - p.p0)
            r = min(leaf.r1, p.r1)
            if dist[0, j] > 14.0:
                break
            if length >= 2.5 * (r + p.r1) and abs(np.log(p.r1 / leaf.r1)) < np.log(1.8):
                best = (p, float(t[0, j]), length)
                break
        if best is None:
            continue
        p, tc, length = best
        axis = _unit(p.p1 - p.p0)
        foot = p.p0 + tc * (p.p1 - p.p0)
        e = leaf.p1 - foot
        e -= e.dot(axis) * axis
        e = _unit(e) if np.linalg.norm(e) > 1e-6 else _perpendicular(axis, rng)
        r = min(leaf.r1, p.r1)
        ladder = rng.random() < 1 / 3
        offset = (r + p.r1) * (1.0 if ladder else rng.uniform(0.4 if long else 0.55, 1.0)) + (
            rng.uniform(1.5, 3.0) if ladder else 0)
        # along the partner, a little past its end (beside its first child) if it is short
        sign = 1 if rng.random() < 0.5 else -1
        ta = float(np.clip(tc, 0.1, 0.9))
        room = (1 - ta if sign > 0 else ta) * length + (6 if long else 2) * (r + p.r1)
        run = min(rng.uniform(6, 15) if long else rng.uniform(4, 8), room / (r + p.r1)) * (r + p.r1)
        if run < 3 * (r + p.r1):
            continue
        a = p.p0 + ta * (p.p1 - p.p0) + offset * e
        b = a + sign * run * axis
        if np.linalg.norm(a - leaf.p1) > 15.0 or min(forest.liver.depth(a), forest.liver.depth(b)) < r + vox:
            continue
        # a run touches its partner only: it keeps clear of every other vessel
        near = ({p.id, p.parent, leaf.id, leaf.parent} | {c.id for c in segs if c.parent in (p.id, leaf.id)}) - {-1}
        if not (forest.free(leaf.p1, a, r, near, leaf.cls) and forest.free(a, b, r, near, leaf.cls)):
            continue
        approach = Segment(len(segs), leaf.cls, leaf.tree, leaf.id, leaf.p1.copy(), a, leaf.r1, r, leaf.generation + 1)
        forest.add(approach)
        stretch = Segment(len(segs), leaf.cls, leaf.tree, approach.id, a, b, r, r, leaf.generation + 2)
        forest.add(stretch)
        used |= {p.id}
        ladders.append({"run": stretch.id, "partner": p.id, "ladder": ladder, "offset_mm": float(offset)})
    return ladders


def _bridge(vessels, truth, branch_ids, s, h, p, q, rr, spacing):
    """Paint a tube p-q of radius rr; each added voxel belongs to the nearer of s and h."""
    sl, qn, _ = _tube(p, q, rr, rr, spacing, vessels.shape)
    if sl is None:
        return 0
    add = (qn <= 1.0) & ~vessels[sl]
    pts = (np.argwhere(add) + [x.start for x in sl]) * spacing
    ds, _ = _segment_distance(pts, s.p0[None], s.p1[None])
    dh, _ = _segment_distance(pts, h.p0[None], h.p1[None])
    near_s = ds[:, 0] / s.r1 <= dh[:, 0] / h.r1
    truth[sl][add] = np.where(near_s, s.cls, h.cls)
    branch_ids[sl][add] = np.where(near_s, s.id + 1, h.id + 1)
    vessels[sl] |= add
    return int(add.sum())


def _closest_points(s, h, samples=15):
    """(gap between the walls, point on s, point on h) at the closest approach of two segments."""
    pts = s.p0 + np.linspace(0.05, 0.95, samples)[:, None] * (s.p1 - s.p0)
    dist, t = _segment_distance(pts, h.p0[None], h.p1[None])
    k = int(np.argmin(dist[:, 0]))
    q = h.p0 + t[k, 0] * (h.p1 - h.p0)
    return float(dist[k, 0] - s.r1 - h.r1), pts[k], q


def _add_hard_contacts(vessels, truth, branch_ids, segments, ladders, n, spacing, rng, near_roots=2):
    """Ladders of 2-4 bridges along the runs that keep a gap; contacts as wide as the wider
    vessel; contacts at the thick vessels near the hilum and the IVC."""
    out = []
    by_id = {s.id: s for s in segments}
    for lad in ladders:
        if not lad["ladder"]:
            continue
        run, partner = by_id[lad["run"]], by_id[lad["partner"]]
        k = int(rng.integers(2, 5))
        for f in np.linspace(0.15, 0.85, k) + rng.uniform(-0.05, 0.05, k):
            p = run.p0 + f * (run.p1 - run.p0)
            _, t = _segment_distance(p[None], partner.p0[None], partner.p1[None])
            q = partner.p0 + t[0, 0] * (partner.p1 - partner.p0)
            rr = min(run.r1, partner.r1) * rng.uniform(0.5, 0.8)
            _bridge(vessels, truth, branch_ids, run, partner, p, q, rr, spacing)
        out.append({"kind": "ladder", "bridges": k, "portal_segment": run.id if run.cls == PORTAL else partner.id,
                    "hepatic_segment": partner.id if run.cls == PORTAL else run.id})
    P = [s for s in segments if s.cls == PORTAL]
    H = [s for s in segments if s.cls == HEPATIC]
    vox = float(spacing.min())
    pairs = []
    for s in P:
        for h in H:
            if np.linalg.norm((s.p0 + s.p1) / 2 - (h.p0 + h.p1) / 2) > 40.0:
                continue
            gap, p, q = _closest_points(s, h)
            pairs.append((gap, s, h, p, q))
    pairs.sort(key=lambda c: c[0])
    thick = [c for c in pairs if min(c[1].generation, c[2].generation) <= 1 and c[0] <= 8.0]
    wide = [c for c in pairs if c[0] <= 5 * vox and abs(np.log(c[1].r1 / c[2].r1)) < np.log(1.4)]
    used = set()
    for kind, cands, count in (("near_root", thick, near_roots), ("wide", wide, max(2, n // 2))):
        done = 0
        for gap, s, h, p, q in cands:
            if done >= count:
                break
            if (s.id, h.id) in used:
                continue
            used.add((s.id, h.id))
            rr = max(s.r1, h.r1) * rng.uniform(0.9, 1.1) if kind == "wide" else min(s.r1, h.r1) * rng.uniform(0.6, 1.0)
            if _bridge(vessels, truth, branch_ids, s, h, p, q, rr, spacing):
                done += 1
                out.append({"kind": kind, "portal_segment": s.id, "hepatic_segment": h.id, "radius_mm": float(rr),
                            "at_mm": ((p + q) / 2).tolist()})
    return out


def _partial_volume(vessels, truth, branch_ids, liver, spacing, rng):
    """Blur the mask and threshold it, as a segmentation of a CT at this resolution would:
    vessels passing within a voxel fuse, small ones thin out or break. New voxels belong to
    the nearest true vessel voxel."""
    sigma = rng.uniform(0.5, 0.8) * float(spacing.min()) / spacing
    level = rng.uniform(0.35, 0.5)
    soft = ndimage.gaussian_filter(vessels.astype(np.float32), sigma)
    new = (soft >= level) & (liver > 0)
    solid = vessels & (truth > 0)
    _, ind = ndimage.distance_transform_edt(~solid, sampling=spacing, return_indices=True)
    add = new & ~vessels
    near = tuple(i[add] for i in ind)
    truth[add] = truth[near]
    branch_ids[add] = branch_ids[near]
    removed = int((vessels & ~new).sum())
    vessels[:] = new
    return {"sigma_vox": sigma.tolist(), "threshold": float(level), "added": int(add.sum()), "removed": removed}


def _degrade_support_hard(trunk, ivc, confluence_z, spacing, size, rng):
    """Further shifts (up to 6 mm in all), the IVC cut off above or below the confluence,
    and a trunk segmented too thick or too thin."""
    shift = _unit(rng.normal(size=3)) * rng.uniform(0.0, 2.0)
    trunk = ndimage.shift(trunk.astype(np.uint8), shift / spacing, order=0) > 0
    k = int(np.clip(confluence_z / spacing[2], 0, ivc.shape[2]))
    span = int(rng.uniform(0.05, 0.15) * size / spacing[2])
    cut = "above" if rng.random() < 0.5 else "below"
    if cut == "above":
        ivc[:, :, k + span:] = False
    else:
        ivc[:, :, : max(k - span, 0)] = False
    thickness = int(rng.integers(-1, 2))
    if thickness > 0:
        trunk = ndimage.binary_dilation(trunk, iterations=thickness)
    elif thickness < 0:
        thin = ndimage.binary_erosion(trunk)
        trunk = thin if thin.any() else trunk
    return trunk, ivc, {"trunk_extra_shift_mm": shift.tolist(), "ivc_cut": cut, "trunk_thickness_vox": thickness}


# ---------------------------------------------------------------------------------------
# scoring

UNSURE_BELOW = 0.75


def score_split(labels, phantom, min_branch_voxels=5, confidence=None):
    """Compare a split (0 unlabelled, 1 portal, 2 hepatic) with the phantom's truth.

    Voxels scored: true vessel voxels present in the input mask (spurious blobs have no
    class, so only count against Dice as false positives). With a `confidence` map:
    flag_recall, the share of misassigned voxels (scored voxels labelled otherwise than
    their truth, unlabelled included) that the map flags (below 0.75), and flagged_share,
    the share of the vessel mask's voxels it flags.
    """
    labels = np.asarray(labels)
    truth = phantom.truth
    scored = (phantom.vessels > 0) & (truth > 0)
    res = {}
    for cls, name in ((PORTAL, "portal"), (HEPATIC, "hepatic")):
        p = labels == cls
        t = scored & (truth == cls)
        denom = p.sum() + t.sum()
        res[f"dice_{name}"] = float(2 * (p & t).sum() / denom) if denom else 1.0
    lab, tru = labels[scored], truth[scored]
    res["accuracy"] = float((lab == tru).mean()) if lab.size else 1.0
    res["unlabelled_fraction"] = float((lab == 0).mean()) if lab.size else 0.0
    ids = phantom.branch_ids[scored]
    correct = (lab == tru).astype(np.int64)
    n = np.bincount(ids, minlength=1)
    c = np.bincount(ids, weights=correct, minlength=len(n))
    big = n >= min_branch_voxels
    big[0] = False
    res["branches"] = int(big.sum())
    res["branch_consistency"] = float(((c[big] / n[big]) >= 0.9).mean()) if big.any() else 1.0
    if confidence is not None:
        confidence = np.asarray(confidence)
        unsure = confidence[scored] < UNSURE_BELOW
        wrong = lab != tru
        res["flag_recall"] = float(unsure[wrong].mean()) if wrong.any() else 1.0
        res["flagged_share"] = float((confidence[phantom.vessels > 0] < UNSURE_BELOW).mean())
    return res
