"""Liver-vessel phantoms, family B: anatomical portal and hepatic trees with ground truth.

Written independently of the portal/hepatic split method and of the first phantom family
(family A, ``vessel_phantoms.py``): its author read neither, only the file interface of
``SegmentationLogic.vessels`` (io.py, cli.py). Use it to *report* on a split tuned on family A
(or the other way round), never to tune and report on the same family.

Array and world frame
    Arrays are indexed ``[i, j, k]`` in RAS order: axis 0 runs from the patient's left to the
    right (index grows towards the patient's Right), axis 1 from posterior to anterior, axis 2
    from inferior to superior. The affine is ``diag(spacing)`` with the volume centred on the
    world origin, so world coordinates are RAS millimetres and ``nibabel.as_closest_canonical``
    leaves the arrays unchanged. The liver sits around the origin, the right lobe at +x.

Anatomy model (distances for the reference field of view 144 x 144 x 120 mm; a larger field
scales the whole anatomy, radii included; every position, radius and variant is drawn per seed)
    * Liver: smooth union of a super-ellipsoid right lobe, a flatter left lobe reaching to the
      patient's left and a caudate lobe, with a low-frequency surface deformation; carved by
      the IVC groove and by the porta hepatis (the notch the portal trunk enters through).
    * IVC: a slightly flattened, gently curving vertical tube behind the liver (r ~ 8 mm),
      running through the whole field of view.
    * Portal vein: trunk from the spleno-mesenteric confluence (below, left of the hilum) up
      to the hilum; there a bifurcation (or, in some seeds, a trifurcation) into a short right
      portal vein (anterior and posterior sector branches, each dividing into segment 5/8 and
      6/7 branches) and a left portal vein (transverse part, umbilical part, branches to
      segments 2, 3, 4a, 4b and small caudate branches towards the IVC).
    * Hepatic veins: right, middle and left hepatic veins leaving the IVC wall high and
      posterior (confluence below the dome), running forwards, down and out in the planes
      between the portal sectors; in some seeds the middle and left veins share a common
      trunk, and some have an inferior right hepatic vein joining the IVC low, near the hilum.
    * Further branches grow by a space-filling rule, not by a fixed binary recursion: both
      trees compete for one shared set of attraction points spread through the liver (a branch
      consumes the points around it), so the trees interdigitate. A branch ends either in a
      bifurcation or in a continuing trunk with a side branch (share of flow f drawn per
      branch point); child radii follow Murray's law (r0^3 = r1^3 + r2^3) and the branching
      angles its minimum-work angles; hepatic veins also receive side tributaries along their
      length. Centrelines are curved (Bezier arcs with a lateral wiggle, splines for the named
      veins); lengths are a random multiple of the radius, capped by the liver surface. Every
      branch keeps a clearance from the other tree, so "easy" has no contact at all.

Levels (the same seed gives the same anatomy at every level; a level adds its defects)
    * ``easy``: the two trees are separate (at least ~2 voxels between them, portal branches
      also keep off the IVC); the portal tree is one piece, the hepatic veins one piece per root
      at the IVC (they meet only in the IVC, which is not in the vessel mask); support masks
      are right.
    * ``gaps``: breaks in branches (a few mm of a thin branch missing, as partial-volume losses
      do, plus a break in a medium branch in some seeds) and small isolated vessel fragments:
      each tree falls into several connected pieces.
    * ``touching``: contacts between the trees: long parallel runs of a portal and a hepatic
      branch side by side, crossings of vessels of equal radius, a hepatic vein running along
      the portal bifurcation near the hilum, a portal branch running up along a hepatic vein
      root near the IVC, and places where the trees pass close and partial volume bridges
      them. Every engineered contact has several bridges (voxel bridges across the gap).
    * ``noisy``: touching + gaps, then rendered like a CT: partial-volume occupancy from the
      distance field, the hepatic veins less enhanced than the portal vein, an anisotropic
      blur (slice thickness), correlated noise and a threshold: thin branches break up, close
      vessels merge, boundaries are ragged. Support masks are shifted by a few mm, and parts
      are missing (the portal trunk stops short of the hilum, the IVC lacks its intrahepatic
      part, the liver mask lacks a chunk), at least one of them per case.

Truth: every vessel voxel is labelled 1 (portal) or 2 (hepatic) and carries the id of the
branch it belongs to (the vessel whose surface it lies deepest in; a bridge or blur voxel
takes the nearest vessel's). ``score_split_b`` scores a split against it.

Files: ``write_case_b(phantom, folder, orientation="RAS")`` writes vessels, liver, portal_trunk,
ivc (the inputs of ``python -m SegmentationLogic split-vessels``), truth, branch_ids and
case.json; ``orientation="LPS"`` (or "LAS", ...) stores the arrays as DICOM converters do.
``read_labels_b`` reads a result in any orientation back into the phantom's order,
``read_case_b`` a whole case.
"""
import heapq
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.interpolate import CubicSpline
from scipy.spatial import cKDTree

LEVELS_B = ("easy", "gaps", "touching", "noisy")
PORTAL, HEPATIC = 1, 2
UNSURE = 0.75  # confidence below this flags a voxel as "unsure" (issue 14)
REF_FOV_MM = np.array([144.0, 144.0, 120.0])
CASE_FILES_B = {"vessels": "vessels.nii.gz", "liver": "liver.nii.gz", "portal_trunk": "portal_trunk.nii.gz",
                "ivc": "ivc.nii.gz", "truth": "truth.nii.gz", "branch_ids": "branch_ids.nii.gz"}
CASE_JSON_B = "case.json"


@dataclass
class PhantomB:
    """One phantom case. Arrays share one grid (RAS index order, see the module docstring)."""
    vessels: np.ndarray        # uint8 0/1: the vessel mask to split
    liver: np.ndarray          # bool
    portal_trunk: np.ndarray   # bool: extra-hepatic portal vein + splenic vein + SMV
    ivc: np.ndarray            # bool
    truth: np.ndarray          # uint8: 0 background, 1 portal, 2 hepatic (on vessel voxels only)
    branch_ids: np.ndarray     # int32: generated branch id per vessel voxel, 0 elsewhere
    branch_class: dict         # branch id -> 1 | 2
    spacing: tuple
    affine: np.ndarray
    level: str
    seed: int
    info: dict = field(default_factory=dict)  # what was generated: counts, contacts, defects, timings


# ---------------------------------------------------------------------------------------
# geometry helpers

def _unit(v):
    v = np.asarray(v, float)
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def _perp(d):
    a = np.array([1.0, 0.0, 0.0]) if abs(d[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = _unit(np.cross(d, a))
    return e1, np.cross(d, e1)


def _rotate(v, axis, angle):
    """Rodrigues rotation of vector(s) v about the unit axis."""
    axis = _unit(axis)
    c, s = np.cos(angle), np.sin(angle)
    return v * c + np.cross(axis, v) * s + np.outer(v @ axis, axis).reshape(np.shape(v)) * (1 - c)


def _rotate_about(d, axes, angle):
    """The unit vector d rotated by `angle` about each of the unit axes (n, 3) perpendicular to it."""
    return d[None] * np.cos(angle) + np.cross(axes, d) * np.sin(angle)


def _arclength(pts):
    return np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))]


def _resample(pts, step):
    arc = _arclength(pts)
    n = max(2, int(np.ceil(arc[-1] / step)) + 1)
    t = np.linspace(0.0, arc[-1], n)
    return np.stack([np.interp(t, arc, pts[:, k]) for k in range(3)], 1), t


def _tangents(pts):
    return _unit(np.gradient(pts, axis=0))


def _bezier(p0, p1, p2, p3, n=64):
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t ** 2 * p2 + t ** 3 * p3


def _spline(ctrl, n=160):
    ctrl = np.asarray(ctrl, float)
    u = _arclength(ctrl)
    return CubicSpline(u, ctrl, axis=0, bc_type="natural")(np.linspace(0.0, u[-1], n))


def _wiggle(pts, rng, amp):
    """Smooth lateral perturbation vanishing at both ends."""
    n = len(pts)
    t = np.linspace(0.0, 1.0, n)
    chord = _unit(pts[-1] - pts[0]) if np.linalg.norm(pts[-1] - pts[0]) > 1e-6 else np.array([0, 0, 1.0])
    e1, e2 = _perp(chord)
    k = rng.uniform(1.0, 2.5)
    off = (rng.normal(0, amp) * e1[None] * np.sin(np.pi * t)[:, None]
           + rng.normal(0, amp) * e2[None]
           * (np.sin(np.pi * t) * np.sin(np.pi * k * t + rng.uniform(0, np.pi)))[:, None])
    return pts + off


def _smin(a, b, k):
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b * (1 - h) + a * h - k * h * (1 - h)


def _smax(a, b, k):
    return -_smin(-a, -b, k)


def _capsule_dist(p, a, b):
    ab = b - a
    t = np.clip(((p - a) @ ab) / (ab @ ab), 0.0, 1.0)
    return np.linalg.norm(p - (a + t[..., None] * ab), axis=-1)


# ---------------------------------------------------------------------------------------
# organs

class _Grid:
    def __init__(self, shape, spacing):
        self.shape = tuple(int(v) for v in shape)
        self.spacing = np.asarray(spacing, float)
        if len(self.shape) != 3 or self.spacing.shape != (3,) or np.any(self.spacing <= 0):
            raise ValueError(f"shape and spacing must be 3 positive values, got {shape}, {spacing}")
        self.origin = -(np.asarray(self.shape) - 1) / 2.0 * self.spacing
        self.affine = np.eye(4)
        self.affine[:3, :3] = np.diag(self.spacing)
        self.affine[:3, 3] = self.origin
        self.s = float(np.min(np.asarray(self.shape) * self.spacing / REF_FOV_MM))  # anatomy scale
        self.vox = float(self.spacing.max())
        self.r_floor = 0.5 * float(np.linalg.norm(self.spacing)) + 0.02  # thinnest tube that stays 26-connected

    def axes(self):
        return [self.origin[k] + self.spacing[k] * np.arange(self.shape[k]) for k in range(3)]

    def world(self, ijk):
        return np.asarray(ijk) * self.spacing + self.origin


class _IVC:
    def __init__(self, rng, s):
        self.x0 = (-4 + rng.normal(0, 2)) * s
        self.y0 = (-36 + rng.normal(0, 1.5)) * s
        self.r = 8.0 * s * rng.uniform(0.9, 1.1)
        self.ex, self.ey = rng.uniform(1.05, 1.18), rng.uniform(0.8, 0.92)  # flattened front to back
        self.ax, self.ay = rng.uniform(1, 3) * s, rng.uniform(0.5, 2) * s
        self.w = 2 * np.pi / (rng.uniform(120, 200) * s)
        self.ph = rng.uniform(0, 2 * np.pi, 2)

    def centre(self, z):
        return (self.x0 + self.ax * np.sin(self.w * z + self.ph[0]),
                self.y0 + self.ay * np.sin(self.w * z + self.ph[1]))

    def sdf(self, p):
        cx, cy = self.centre(p[..., 2])
        return np.hypot((p[..., 0] - cx) / self.ex, (p[..., 1] - cy) / self.ey) - self.r

    def wall_point(self, z, angle, inset):
        """Point `inset` mm inside the wall at height z, direction `angle` (from +x towards +y)."""
        cx, cy = self.centre(z)
        u = np.array([np.cos(angle), np.sin(angle)])
        return np.array([cx + u[0] * (self.r - inset) * self.ex, cy + u[1] * (self.r - inset) * self.ey, z])


class _Liver:
    def __init__(self, rng, s, ivc):
        j = lambda sd: rng.normal(0, sd, 3) * s  # noqa: E731
        self.s = s
        self.lobes = [
            (np.array([20, -4, 2.0]) * s + j(2.5), np.array([44, 50, 44.0]) * s * rng.uniform(0.94, 1.05, 3), 2.6),
            (np.array([-26, 10, 14.0]) * s + j(2.5), np.array([38, 34, 22.0]) * s * rng.uniform(0.9, 1.08, 3), 2.2),
            (np.array([-14, -22, 2.0]) * s + j(1.5), np.array([12, 10, 20.0]) * s, 2.0),
            # posterior-superior part of the left liver around the hepatic vein confluence
            (np.array([-14, -16, 22.0]) * s + j(1.5), np.array([24, 20, 15.0]) * s, 2.0),
        ]
        m = 6
        lam = rng.uniform(50, 90, m) * s
        self.waves = _unit(rng.normal(size=(m, 3))) * (2 * np.pi / lam)[:, None]
        self.phase = rng.uniform(0, 2 * np.pi, m)
        self.amp = rng.uniform(0.4, 0.9, m) * s
        self.ivc = ivc
        self.notch = None  # (a, b, radius): the porta hepatis, set once the portal trunk is known

    def sdf(self, p):
        d = None
        for c, a, e in self.lobes:
            q = np.abs((p - c) / a)
            di = (np.sum(q ** e, axis=-1) ** (1.0 / e) - 1.0) * a.min()
            d = di if d is None else _smin(d, di, 12 * self.s)
        d = d + np.sin(p @ self.waves.T + self.phase) @ self.amp
        d = _smax(d, -(self.ivc.sdf(p) - 1.0 * self.s), 3 * self.s)
        if self.notch is not None:
            a, b, r = self.notch
            d = _smax(d, -(_capsule_dist(p, a, b) - r), 5 * self.s)
        return d

    def freeze(self, grid):
        """Tabulate the (smooth) distance field on a coarse lattice over the field of view: growth
        queries and the voxel mask then interpolate it instead of evaluating the lobes again."""
        self.step = 2.5 * self.s
        self.lo = grid.origin - 2 * self.step
        hi = grid.origin + (np.asarray(grid.shape) - 1) * grid.spacing + 2 * self.step
        ax = [np.arange(self.lo[k], hi[k] + self.step, self.step) for k in range(3)]
        self.table = self.sdf(np.stack(np.meshgrid(*ax, indexing="ij"), -1)).astype(np.float32)

    def depth(self, p):
        p = np.asarray(p, float)
        idx = ((p.reshape(-1, 3) - self.lo) / self.step).T
        return -ndimage.map_coordinates(self.table, idx, order=1, mode="nearest").reshape(p.shape[:-1])

    def sdf_grid(self, grid):
        """The tabulated field at every voxel centre (separable linear interpolation)."""
        out = self.table
        for a, x in enumerate(grid.axes()):
            f = np.clip((x - self.lo[a]) / self.step, 0, self.table.shape[a] - 1.001)
            i0 = np.floor(f).astype(int)
            w = (f - i0).astype(np.float32).reshape([-1 if k == a else 1 for k in range(3)])
            out = np.take(out, i0, axis=a) * (1 - w) + np.take(out, i0 + 1, axis=a) * w
        return out


# ---------------------------------------------------------------------------------------
# trees

@dataclass
class _Branch:
    id: int
    cls: int
    pts: np.ndarray      # dense centreline, world mm
    rad: np.ndarray      # radius per centreline point, mm
    arc: np.ndarray      # arclength per centreline point
    parent: int
    gen: int
    kind: str            # trunk | named | grown | side | contact | fragment
    name: str = ""
    r_parent: float = 0.0
    keep: np.ndarray = None               # False where a gap removes the vessel
    child_s: list = field(default_factory=list)  # arclengths where children leave


class _Occupancy:
    """Centreline samples of all branches, for clearance queries (KD-trees rebuilt in batches)."""

    def __init__(self, big_radius):
        self.P, self.R, self.C, self.B = np.zeros((0, 3)), np.zeros(0), np.zeros(0, int), np.zeros(0, int)
        self.n_frozen = 0
        self.tree = self.big_tree = None
        self.big_idx = np.zeros(0, int)
        self.big_radius = big_radius

    def add(self, P, R, C, B):
        self.P = np.vstack([self.P, P])
        self.R = np.r_[self.R, R]
        self.C = np.r_[self.C, np.full(len(P), C)]
        self.B = np.r_[self.B, np.full(len(P), B)]
        if len(self.P) - self.n_frozen > 600:
            self.rebuild()

    def rebuild(self):
        self.n_frozen = len(self.P)
        self.tree = cKDTree(self.P) if self.n_frozen else None
        self.big_idx = np.nonzero(self.R >= self.big_radius)[0]
        self.big_tree = cKDTree(self.P[self.big_idx]) if len(self.big_idx) else None

    def gaps(self, Q, rq, cls, ignore=()):
        """Smallest surface gap (mm) from each point (radius rq) to the other tree and to its own."""
        go = np.full(len(Q), np.inf)
        gw = np.full(len(Q), np.inf)
        if not len(Q) or not len(self.P):
            return go, gw
        ignore = np.asarray(list(ignore), int)

        def fold(idx, d):
            nonlocal go, gw
            valid = np.isfinite(d)
            idx = np.where(valid, idx, 0)
            g = np.where(valid, d - rq[:, None] - self.R[idx], np.inf)
            if len(ignore):
                g = np.where(np.isin(self.B[idx], ignore), np.inf, g)
            other = self.C[idx] != cls
            go = np.minimum(go, np.where(other, g, np.inf).min(1))
            gw = np.minimum(gw, np.where(~other, g, np.inf).min(1))

        reach = float(rq.max() + self.R.max() + 12.0)
        if self.tree is not None:
            k = min(16, self.n_frozen)
            d, idx = self.tree.query(Q, k=k, distance_upper_bound=reach)
            fold(idx.reshape(len(Q), -1), d.reshape(len(Q), -1))
        if self.big_tree is not None:
            k = min(6, len(self.big_idx))
            d, idx = self.big_tree.query(Q, k=k, distance_upper_bound=reach)
            idx = idx.reshape(len(Q), -1)
            d = d.reshape(len(Q), -1)
            fold(self.big_idx[np.minimum(idx, len(self.big_idx) - 1)], d)
        if len(self.P) > self.n_frozen:
            rp = self.P[self.n_frozen:]
            d = np.linalg.norm(Q[:, None, :] - rp[None], axis=-1)
            idx = np.broadcast_to(np.arange(self.n_frozen, len(self.P))[None], d.shape)
            fold(idx, d)
        return go, gw


class _Anatomy:
    """Grows both trees inside the liver; holds everything a level needs afterwards."""

    def __init__(self, grid, rng):
        self.grid, self.rng = grid, rng
        s = self.s = grid.s
        self.vox = grid.vox
        self.r_floor = grid.r_floor
        self.r_stop = 0.75 * grid.r_floor  # thinner branches still grow; voxels draw them at r_floor
        self.margin_other = 2.4 * grid.vox   # surface gap kept between the trees ("easy": no contact)
        self.margin_own = 0.6 * grid.vox
        self.check_step = 0.6 * grid.vox
        self.ivc = _IVC(rng, s)
        self.liver = _Liver(rng, s, self.ivc)
        self.branches = []
        self.occ = _Occupancy(big_radius=2.0 * s)
        self.heap = []
        self.counter = 0
        self.bridges = []    # (pa, pb, radius)
        self.contacts = []   # dicts
        self.extra_tubes = []  # (pts, rad) of the portal_trunk mask only (splenic vein, SMV)

    # -- attraction points shared by both trees ------------------------------------------------
    def _init_attractors(self):
        s, rng = self.s, self.rng
        lo, hi = np.array([-72, -66, -56.0]) * s, np.array([72, 66, 56.0]) * s
        cand = rng.uniform(lo, hi, size=(9000, 3))
        inside = cand[self.liver.depth(cand) > 3.0 * s]
        per_point = np.prod(hi - lo) / len(cand)
        n = int(len(inside) * per_point / (7.0 * s) ** 3)
        self.A = inside[:max(n, 50)]
        self.alive = np.ones(len(self.A), bool)
        self.A_tree = cKDTree(self.A)
        self.kill_r, self.score_r = 6.5 * s, 12.0 * s

    def _kill(self, pts):
        hits = self.A_tree.query_ball_point(pts, self.kill_r)
        idx = [i for h in hits for i in h]
        if idx:
            self.alive[np.asarray(idx, int)] = False

    def _attraction(self, q):
        a = self.A[self.alive]
        if not len(a):
            return np.zeros(len(q))
        d = np.linalg.norm(q[:, None, :] - a[None], axis=-1)
        return (d < self.score_r).sum(1).astype(float)

    # -- branches -------------------------------------------------------------------------------
    def add_branch(self, cls, pts, rad, parent=0, gen=0, kind="grown", name="", parent_s=None, r_parent=0.0,
                   kill=True):
        rmin = max(float(np.min(rad)), self.r_floor)
        step = float(np.clip(0.3 * rmin, 0.2, 2.0))  # sphere sweep: the surface sags < 0.015 r between samples
        arc0 = _arclength(pts)
        dense, arc = _resample(pts, step)
        r = np.interp(arc, arc0 * (arc[-1] / max(arc0[-1], 1e-9)), rad)
        b = _Branch(len(self.branches) + 1, cls, dense, r, arc, parent, gen, kind, name, r_parent,
                    np.ones(len(dense), bool))
        self.branches.append(b)
        if parent:
            self.branches[parent - 1].child_s.append(float(parent_s if parent_s is not None else 0.0))
        ci = np.unique(np.r_[np.arange(0, len(dense), max(1, int(round(self.check_step / step)))), len(dense) - 1])
        self.occ.add(dense[ci], np.maximum(r[ci], self.r_floor), cls, b.id)
        if kill:
            self._kill(dense[ci])
        return b

    def check(self, cls, pts, rad, skip, ignore=(), own=True, skip_other=0.0):
        """Arclength of the first point that comes too close to the other tree (beyond
        `skip_other` mm from the start) or to its own tree (beyond `skip` mm), or None."""
        arc = _arclength(pts)
        n = max(2, int(arc[-1] / self.check_step) + 1)
        t = np.linspace(0, arc[-1], n)
        Q = np.stack([np.interp(t, arc, pts[:, k]) for k in range(3)], 1)
        rq = np.maximum(np.interp(t, arc, rad), self.r_floor)
        go, gw = self.occ.gaps(Q, rq, cls, ignore)
        if cls == PORTAL:  # the IVC is a hepatic-side structure: portal branches keep off it too
            go = np.minimum(go, self.ivc.sdf(Q) - rq)
        bad = (go < self.margin_other) & (t >= skip_other)
        if own:
            bad |= (gw < self.margin_own) & (t > skip)
        i = np.argmax(bad)
        return float(t[i]) if bad[i] else None

    def _truncate_inside(self, pts, rad, start_skip):
        """Cut a centreline where it leaves the liver (after having been inside)."""
        depth = self.liver.depth(pts)
        arc = _arclength(pts)
        inside = depth >= 0.6 * np.maximum(rad, self.r_floor) + 0.5 * self.vox
        out = ~inside & (arc > start_skip)
        if out.any():
            k = int(np.argmax(out))
            return pts[:k], rad[:k]
        return pts, rad

    def _radius_profile(self, arc, r0, taper, sprouts):
        """Radius along a branch: a gentle taper and a Murray step down after each side branch."""
        r = r0 * (1.0 - (1.0 - taper) * arc / max(arc[-1], 1e-9))
        for s_pos, r_child in sprouts:
            w = np.clip((arc - s_pos) / 2.0 + 0.5, 0.0, 1.0)
            r_local = np.interp(s_pos, arc, r)
            r_after = max(r_local ** 3 - r_child ** 3, (0.5 * r_local) ** 3) ** (1 / 3)
            r = r * (1 - w) + r * (r_after / r_local) * w
        return r

    def _plan_sprouts(self, cls, length, r0):
        rng = self.rng
        lam = rng.uniform(5, 8) if cls == HEPATIC else rng.uniform(8, 13)
        n = rng.poisson(length / (lam * max(r0, 0.5)))
        out = []
        for s_pos in np.sort(rng.uniform(0.2 * length, 0.9 * length, n)):
            r_child = r0 * rng.uniform(0.35, 0.62)
            if r_child >= self.r_stop and all(abs(s_pos - o[0]) > 2.5 * r0 for o in out):
                out.append((float(s_pos), float(r_child)))
        return out

    def _commit(self, cls, pts, r0, taper, sprouts, parent, gen, kind, name, parent_s, r_parent, skip,
                terminal=False, min_len=None, ignore=()):
        """Check a proposed centreline, truncate it at a conflict, add it and schedule children."""
        arc = _arclength(pts)
        rad = self._radius_profile(arc, r0, taper, sprouts)
        pts, rad = self._truncate_inside(pts, rad, skip)
        if len(pts) < 2:
            return None
        fail = self.check(cls, pts, rad, skip, ignore)
        arc = _arclength(pts)
        min_len = max(2.5 * r0, 3.0 * self.vox) if min_len is None else min_len
        if fail is not None:
            keep_len = fail - r0 - self.vox
            if keep_len < min_len:
                return None
            k = int(np.searchsorted(arc, keep_len))
            pts, rad, arc = pts[:k + 1], rad[:k + 1], arc[:k + 1]
            terminal = True
        if arc[-1] < min_len:
            return None
        b = self.add_branch(cls, pts, rad, parent, gen, kind, name, parent_s, r_parent)
        for s_pos, r_child in sprouts:
            if s_pos < b.arc[-1] - r0:
                self._push(gen + 1, ("side", b.id, s_pos, r_child))
        if not terminal:
            self._push(gen + 1, ("tip", b.id))
        return b

    def _push(self, gen, task):
        self.counter += 1
        heapq.heappush(self.heap, (gen, self.rng.random(), self.counter, task))

    def _length(self, r):
        return r * self.rng.uniform(5, 9) + self.rng.uniform(3, 7) * self.s

    def _grow(self, cls, p, d, r0, parent, gen, parent_s, r_parent, kind):
        rng = self.rng
        L = self._length(r0)
        t = np.arange(0.0, L + 1e-9, max(1.0, self.vox))
        depth = self.liver.depth(p + d * t[:, None])
        skip = r_parent + 2 * r0 + 1.0
        bad = (depth < 0.6 * r0 + 0.5 * self.vox) & (t > skip * 0.5)
        if bad.any():
            L = t[int(np.argmax(bad))] - r0
        if L < max(2.5 * r0, 3 * self.vox):
            return None
        end = p + d * L
        e1, e2 = _perp(d)
        phi = rng.uniform(0, 2 * np.pi)
        d_end = _unit(_rotate(d, np.cos(phi) * e1 + np.sin(phi) * e2, np.radians(rng.uniform(0, 25))))
        pts = _bezier(p, p + d * L * rng.uniform(0.25, 0.4), end - d_end * L * rng.uniform(0.25, 0.4), end,
                      n=max(16, int(L / 0.5)))
        pts = _wiggle(pts, rng, 0.035 * L)
        sprouts = self._plan_sprouts(cls, L, r0)
        return self._commit(cls, pts, r0, rng.uniform(0.93, 0.99), sprouts, parent, gen, kind, "", parent_s,
                            r_parent, skip)

    def _directions(self, d, theta, n=12):
        e1, e2 = _perp(d)
        phis = np.linspace(0, 2 * np.pi, n, endpoint=False) + self.rng.uniform(0, 2 * np.pi / n)
        axes = np.cos(phis)[:, None] * e1 + np.sin(phis)[:, None] * e2
        return _rotate_about(d, axes, theta), axes

    def _choose(self, p, dirs, L, scores_extra=None):
        q = p + dirs * (0.6 * L)
        sc = self._attraction(q) + 2.0 * np.clip(self.liver.depth(q) / (5 * self.s), -3, 1)
        if scores_extra is not None:
            sc = sc + scores_extra
        w = np.exp((sc - sc.max()) / 1.5)
        order = self.rng.choice(len(sc), size=len(sc), replace=False, p=w / w.sum())
        return order, self._attraction(q)

    def _task_tip(self, bid):
        rng, b = self.rng, self.branches[bid - 1]
        r, p = float(b.rad[-1]), b.pts[-1]
        d = _tangents(b.pts[-min(len(b.pts), 6):])[-1]
        p_bif = 0.55 if b.cls == PORTAL else 0.35
        f = rng.uniform(0.5, 0.7) if rng.random() < p_bif else rng.uniform(0.75, 0.9)
        r1, r2 = r * f ** (1 / 3), r * (1 - f) ** (1 / 3)
        c1 = np.clip((r ** 4 + r1 ** 4 - r2 ** 4) / (2 * r ** 2 * r1 ** 2), -1, 1)
        c2 = np.clip((r ** 4 + r2 ** 4 - r1 ** 4) / (2 * r ** 2 * r2 ** 2), -1, 1)
        th1 = np.arccos(c1) + np.radians(rng.normal(0, 7))
        th2 = np.arccos(c2) + np.radians(rng.normal(0, 9))
        dirs1, axes = self._directions(d, th1)
        dirs2 = _rotate_about(d, axes, -th2)
        L1, L2 = r1 * 7 + 5 * self.s, r2 * 7 + 5 * self.s
        q1, q2 = p + dirs1 * 0.6 * L1, p + dirs2 * 0.6 * L2
        sc = (self._attraction(q1) + self._attraction(q2) + 2.0 * np.clip(self.liver.depth(q1) / (5 * self.s), -3, 1)
              + 2.0 * np.clip(self.liver.depth(q2) / (5 * self.s), -3, 1))
        w = np.exp((sc - sc.max()) / 1.5)
        order = rng.choice(len(sc), size=len(sc), replace=False, p=w / w.sum())
        for radius, dirs in ((r1, dirs1), (r2, dirs2)):
            if radius < self.r_stop:
                continue
            attr = self._attraction(p + dirs * 0.6 * (radius * 7 + 5 * self.s))
            for j in order[:5]:
                if attr[j] <= 0 and b.gen > 3:
                    continue
                if self._grow(b.cls, p, dirs[j], radius, b.id, b.gen + 1, b.arc[-1], r, "grown"):
                    break

    def _task_side(self, bid, s_pos, r_child):
        rng, b = self.rng, self.branches[bid - 1]
        i = int(np.clip(np.searchsorted(b.arc, s_pos), 1, len(b.arc) - 2))
        p, d = b.pts[i], _unit(b.pts[i + 1] - b.pts[i - 1])
        r_local = float(b.rad[i])
        dirs, _ = self._directions(d, np.radians(rng.uniform(45, 85)))
        order, attr = self._choose(p, dirs, r_child * 7 + 5 * self.s)
        for j in order[:5]:
            if attr[j] <= 0 and b.gen > 2:
                continue
            if self._grow(b.cls, p, dirs[j], r_child, b.id, b.gen + 1, s_pos, r_local, "side"):
                break

    def run_growth(self, max_branches):
        while self.heap and len(self.branches) < max_branches:
            _, _, _, task = heapq.heappop(self.heap)
            if task[0] == "tip":
                self._task_tip(task[1])
            else:
                self._task_side(*task[1:])
        self.heap = []

    # -- named anatomy --------------------------------------------------------------------------
    def _named(self, cls, ctrl_fn, r0, r1, parent, gen, name, kind="named", parent_s=None, r_parent=0.0,
               skip=None, tries=10, tip=False, sprouts=True, min_frac=0.5):
        """A named vessel along a jittered spline; re-drawn when it conflicts with the other tree."""
        rng = self.rng
        best = None
        for attempt in range(tries):
            ctrl = np.asarray(ctrl_fn(1.0 + 0.4 * attempt), float)
            pts = _spline(ctrl, n=max(24, int(_arclength(ctrl)[-1] / 0.5)))
            pts = _wiggle(pts, rng, 0.02 * _arclength(pts)[-1])
            length = _arclength(pts)[-1]
            sp = self._plan_sprouts(cls, length, r0) if sprouts else []
            taper = r1 / r0
            rad = self._radius_profile(_arclength(pts), r0, taper, sp)
            sk = (r_parent + 2 * r0 + 1.0) if skip is None else skip
            p2, rad2 = self._truncate_inside(pts, rad, sk)
            if len(p2) < 2:
                continue
            fail = self.check(cls, p2, rad2, sk)
            if fail is None:
                return self._commit(cls, pts, r0, taper, sp, parent, gen, kind, name, parent_s, r_parent, sk,
                                    terminal=not tip, min_len=min_frac * length)
            if best is None or fail > best[0]:
                best = (fail, pts, sp)
        if best is not None and best[0] >= min_frac * _arclength(best[1])[-1]:
            fail, pts, sp = best
            return self._commit(cls, pts, r0, r1 / r0, sp, parent, gen, kind, name, parent_s, r_parent,
                                r_parent + 2 * r0 + 1.0, terminal=True, min_len=3 * r0)
        return None

    def build(self):
        s, rng, ivc = self.s, self.rng, self.ivc
        J = lambda sd: rng.normal(0, sd, 3) * s  # noqa: E731
        P = lambda *v: np.array(v, float) * s  # noqa: E731
        self.info = {}

        # portal trunk (spleno-mesenteric confluence -> hilum) and the porta hepatis
        C = P(-16, -14, -52) + J(2)
        H = P(2, -12, -14) + J(2)
        r_t = 5.2 * s * rng.uniform(0.92, 1.08)
        u_t = _unit(H - C)
        r_notch = r_t + 7 * s
        self.liver.notch = (C - P(0, 0, 40), H - u_t * (r_notch + 2 * s), r_notch)
        self.liver.freeze(self.grid)
        self._init_attractors()
        trunk_ctrl = [C, (C + H) / 2 + P(3, 2, 0) + J(1.5), H]
        trunk = self.add_branch(PORTAL, _spline(trunk_ctrl, 80), np.full(80, r_t), kind="trunk", name="portal trunk",
                                kill=False)
        self.hilum, self.confluence, self.r_trunk = H, C, r_t
        self.trunk_pts = trunk.pts
        # splenic vein and SMV: only in the portal_trunk mask (outside the liver)
        spl = _spline([C, C + P(-22, -6, 5) + J(2), C + P(-50, -10, 8) + J(3), C + P(-90, -8, 4)], 120)
        smv = _spline([C, C + P(4, 6, -20) + J(2), C + P(6, 8, -60)], 80)
        self.extra_tubes = [(spl, np.full(len(spl), 0.75 * r_t)), (smv, np.full(len(smv), 0.8 * r_t))]

        tri = rng.random() < 0.2
        r_rpv, r_lpv = 4.2 * s * rng.uniform(0.92, 1.08), 3.7 * s * rng.uniform(0.92, 1.08)
        hs = trunk.arc[-1]
        if not tri:
            rpv = self._named(PORTAL, lambda k: [H, H + P(10, -1, 2) + J(1 * k), H + P(18, -2, 4) + J(2 * k)],
                              r_rpv, 0.95 * r_rpv, trunk.id, 1, "right portal vein", parent_s=hs, r_parent=r_t,
                              sprouts=False)
            origin_r = (rpv.pts[-1], rpv.id, rpv.arc[-1], float(rpv.rad[-1])) if rpv else (H, trunk.id, hs, r_t)
        else:
            origin_r = (H, trunk.id, hs, r_t)
        lpv = self._named(PORTAL, lambda k: [H, H + P(-10, 1, 3) + J(1 * k), P(-20, -6, -6) + J(2 * k)],
                          r_lpv, 0.92 * r_lpv, trunk.id, 1, "left portal vein (transverse)", parent_s=hs, r_parent=r_t,
                          sprouts=False)

        # hepatic veins from the IVC wall
        zc = (28 + rng.normal(0, 2)) * s
        self.z_confluence = zc
        inset = 1.5 * s
        r_rhv, r_mhv, r_lhv = (v * s * rng.uniform(0.9, 1.1) for v in (4.3, 3.9, 3.4))
        a_r = np.radians(rng.uniform(10, 30))
        root = ivc.wall_point(zc - 2 * s, a_r, inset)
        self._named(HEPATIC, lambda k: [root, root + P(14, 6, -4), P(36, 0, -12) + J(3 * k), P(48, 4, -30) + J(4 * k)],
                    r_rhv, 0.5 * r_rhv, 0, 0, "right hepatic vein", skip=3 * r_rhv, tip=True)
        common = rng.random() < 0.6
        mhv_start = lhv_start = None
        parent_ml = 0
        if common:
            a_c = np.radians(rng.uniform(95, 115))
            root_c = ivc.wall_point(zc + 1 * s, a_c, inset)
            r_c = (r_mhv ** 3 + r_lhv ** 3) ** (1 / 3)
            ct = self._named(HEPATIC, lambda k: [root_c, root_c + P(-1, 5, 0.5), root_c + P(-2, 9, 1) + J(k)], r_c, r_c,
                             0, 0, "middle/left hepatic common trunk", skip=3 * r_c, sprouts=False, min_frac=0.9)
            if ct is not None:
                mhv_start = lhv_start = ct.pts[-1]
                parent_ml = ct.id
        if mhv_start is None:
            common = False
            mhv_start = ivc.wall_point(zc, np.radians(rng.uniform(75, 95)), inset)
            lhv_start = ivc.wall_point(zc + 1 * s, np.radians(rng.uniform(110, 135)), inset)
        ps = self.branches[parent_ml - 1].arc[-1] if parent_ml else None
        r_pml = float(self.branches[parent_ml - 1].rad[-1]) if parent_ml else 0.0
        self._named(HEPATIC, lambda k: [mhv_start, mhv_start + P(4, 12, -6), P(6, 26, -10) + J(3 * k),
                                        P(8, 34, -22) + J(4 * k)],
                    r_mhv, 0.5 * r_mhv, parent_ml, 1 if parent_ml else 0, "middle hepatic vein", parent_s=ps,
                    r_parent=r_pml, skip=None if parent_ml else 3 * r_mhv, tip=True)
        self._named(HEPATIC, lambda k: [lhv_start, lhv_start + P(-8, 10, 0), P(-32, 14, 8) + J(3 * k),
                                        P(-52, 12, 10) + J(4 * k)],
                    r_lhv, 0.5 * r_lhv, parent_ml, 1 if parent_ml else 0, "left hepatic vein", parent_s=ps,
                    r_parent=r_pml, skip=None if parent_ml else 3 * r_lhv, tip=True)
        irhv = rng.random() < 0.35
        if irhv:
            zi = zc - rng.uniform(32, 42) * s
            root_i = ivc.wall_point(zi, np.radians(rng.uniform(-10, 20)), inset)
            r_i = 2.4 * s * rng.uniform(0.9, 1.1)
            self._named(HEPATIC, lambda k: [root_i, root_i + P(14, 2, -2), P(40, -16, -22) + J(3 * k)], r_i, 0.6 * r_i,
                        0, 0, "inferior right hepatic vein", skip=3 * r_i, tip=True)

        # portal sectors and segments
        p0, pid, ps0, pr = origin_r
        rap = self._named(PORTAL, lambda k: [p0, p0 + P(6, 8, 0) + J(1 * k), P(30, 14, -4) + J(3 * k)],
                          3.2 * s, 2.9 * s,
                          pid, 2, "right anterior portal branch", parent_s=ps0, r_parent=pr, sprouts=False)
        rpp = self._named(PORTAL, lambda k: [p0, p0 + P(8, -4, -2) + J(1 * k), P(36, -18, -12) + J(3 * k)],
                          3.2 * s, 2.9 * s,
                          pid, 2, "right posterior portal branch", parent_s=ps0, r_parent=pr, sprouts=False)
        segs = []
        if rap is not None:
            segs += [(rap, (32, 24, -26), 2.3, "segment 5"), (rap, (28, 12, 24), 2.4, "segment 8")]
        if rpp is not None:
            segs += [(rpp, (46, -12, -32), 2.3, "segment 6"), (rpp, (44, -28, 18), 2.4, "segment 7")]
        if lpv is not None:
            q = lpv.pts[-1]
            umb = self._named(PORTAL, lambda k: [q, P(-24, 6, -4) + J(1.5 * k), P(-24, 18, -2) + J(3 * k)],
                              3.2 * s, 2.8 * s, lpv.id, 2, "left portal vein (umbilical)", parent_s=lpv.arc[-1],
                              r_parent=float(lpv.rad[-1]),
                              sprouts=False)
            segs.append((lpv, (-44, -4, 20), 2.2, "segment 2"))
            if umb is not None:
                segs += [(umb, (-40, 24, 4), 2.1, "segment 3"), (umb, (-8, 22, 14), 2.0, "segment 4a"),
                         (umb, (-10, 30, -12), 1.8, "segment 4b", 0.5)]
            if rng.random() < 0.8:
                segs.append((lpv, (-14, -24, 4), 1.4, "caudate", 0.3))
        if rng.random() < 0.5 and not tri and self.branches[pid - 1].name == "right portal vein":
            segs.append((self.branches[pid - 1], (0, -24, 6), 1.3, "caudate (right)", 0.5))
        rng.shuffle(segs)
        for item in segs:
            host, target, r, name = item[:4]
            frac = item[4] if len(item) > 4 else 1.0
            i = int(round(frac * (len(host.pts) - 1)))
            q, s_q, r_q = host.pts[i], host.arc[i], float(host.rad[i])
            tgt = np.array(target, float) * s
            d0 = _unit(tgt - q)
            self._named(PORTAL, lambda k, q=q, tgt=tgt, d0=d0: [q, q + d0 * 6 * s + J(1 * k), tgt + J(4 * k)],
                        r * s * rng.uniform(0.9, 1.1), 0.8 * r * s, host.id, 3, name, parent_s=s_q, r_parent=r_q,
                        tip=True)

        self.run_growth(max_branches=int(900 * max(1.0, s)))
        self.occ.rebuild()
        self.info.update(trifurcation=bool(tri), mhv_lhv_common_trunk=bool(common),
                         inferior_right_hepatic_vein=bool(irhv))

    # -- pools ------------------------------------------------------------------------------------
    def pool(self, cls, rmin, exclude=()):
        m = (self.occ.C == cls) & (self.occ.R >= rmin)
        if len(exclude):
            m &= ~np.isin(self.occ.B, list(exclude))
        return self.occ.P[m], self.occ.R[m], self.occ.B[m]


# ---------------------------------------------------------------------------------------
# level defects

def _transport_normals(T, n0):
    out = np.empty_like(T)
    n = n0
    for i, t in enumerate(T):
        n = _unit(n - (n @ t) * t)
        out[i] = n
    return out


def _connector(G, start, t_out, n_out, cls, rnew, skip, ignore):
    """Curve from `start` to the nearest suitable point of tree `cls`; (pts, parent_id, parent_s) or None."""
    P, R, B = G.pool(cls, max(rnew, G.r_floor) * 0.95,
                     exclude=[b.id for b in G.branches if b.kind in ("fragment", "contact")])
    if not len(P):
        return None
    d = np.linalg.norm(P - start, axis=1)
    order = np.argsort(d)
    tried, best = set(), None
    for j in order[:400]:
        if B[j] in tried:
            continue
        tried.add(B[j])
        q = P[j]
        ell = max(d[j], 4 * rnew)
        p1 = start + _unit(0.7 * t_out + 0.7 * n_out) * ell / 3
        p2 = q + _unit(p1 - q) * ell / 3
        pts = _bezier(start, p1, p2, q, n=max(16, int(ell / 0.4)))
        if not _env_ok(G, pts, rnew):
            continue
        if G.check(cls, pts, np.full(len(pts), rnew), skip=0, ignore=ignore, own=False, skip_other=skip) is not None:
            continue  # would run into another vessel of the host's tree
        score = _arclength(pts)[-1]
        if best is None or score < best[0]:
            best = (score, pts, int(B[j]), q)
        if len(tried) >= 8:
            break
    if best is None:
        return None
    _, pts, bid, q = best
    host = G.branches[bid - 1]
    s_q = float(host.arc[np.argmin(np.linalg.norm(host.pts - q, axis=1))])
    return pts, bid, s_q


def _relatives(G, host):
    """The host branch, its parent and its children: the vessels a contact legitimately lies against."""
    return [host.id, host.parent] + [b.id for b in G.branches if b.parent == host.id]


def _clear_of_others(G, pts, r, cls, host):
    """A contact vessel touches its host only: no other vessel of the host's tree in the way."""
    return G.check(cls, pts, np.full(len(pts), r), skip=0, ignore=_relatives(G, host), own=False) is None


def _env_ok(G, pts, r):
    """Inside the liver (or the IVC's groove), and off the IVC lumen."""
    return bool(np.all(G.ivc.sdf(pts) >= r + 1.8 * G.vox) and np.all(G.liver.depth(pts) >= -G.vox))


def _join_to_tree(G, curve, normals, cls, rnew, offsets, host):
    """Connect one end of `curve` (beside `host`) to tree `cls`, whichever end joins shorter:
    (end index 0 | -1, connector points, parent id, parent arclength) or None."""
    options = []
    for end, n_out, off in zip((0, -1), normals, offsets):
        t_out = _unit(curve[0] - curve[1]) if end == 0 else _unit(curve[-1] - curve[-2])
        con = _connector(G, curve[end], t_out, n_out, cls, rnew, skip=off + rnew + 3.0, ignore=_relatives(G, host))
        if con is not None:
            options.append((_arclength(con[0])[-1], end, con))
    if not options:
        return None
    _, end, (cpts, parent, ps) = min(options, key=lambda o: o[0])
    return end, cpts, parent, ps


def _bridge_radius(G, rng, ra, rb):
    return float(min(rng.uniform(0.8, 1.05) * G.r_floor, 0.8 * min(ra, rb) + 0.2 * G.r_floor))


def _add_run(G, rng, host, a0, length, rnew, gap, n_bridges, kind, toward=None):
    """A vessel of the other class running alongside `host` over [a0, a0+length], joined to its
    own tree by a connector; `n_bridges` voxel bridges across the contact."""
    sel = np.nonzero((host.arc >= a0) & (host.arc <= a0 + length))[0]
    if len(sel) < 4:
        return False
    Hp, Hr = host.pts[sel], host.rad[sel]
    T = _tangents(Hp)
    cls = 3 - host.cls
    mid = Hp[len(Hp) // 2]
    tm = T[len(T) // 2]
    if toward is None:
        Pp, _, _ = G.pool(cls, rnew * 0.95)
        toward = Pp[np.argmin(np.linalg.norm(Pp - mid, axis=1))] if len(Pp) else mid + _perp(tm)[0]
    v = toward - mid
    n0 = v - (v @ tm) * tm
    if np.linalg.norm(n0) < 1e-6:
        n0 = _perp(tm)[0]
    n0 = _rotate(_unit(n0), tm, np.radians(rng.normal(0, 35)))
    D = Hr + rnew + gap
    for flip in (0.0, np.pi / 2, -np.pi / 2, np.pi):  # the side that keeps the run in the liver, off the IVC
        N = _transport_normals(T, _rotate(n0, tm, flip))
        run = Hp + N * D[:, None]
        if _env_ok(G, run, rnew) and _clear_of_others(G, run, rnew, cls, host):
            break
    else:
        return False
    joined = _join_to_tree(G, run, (N[0], N[-1]), cls, rnew, (D[0], D[-1]), host)
    if joined is None:
        return False
    end, cpts, parent, ps = joined
    body = run if end == -1 else run[::-1]
    # the free end bends away from the host over a few mm
    tf = _unit(body[0] - body[1])
    nf = N[0] if end == -1 else N[-1]
    ell = rng.uniform(2, 6) * G.s
    tail = _bezier(body[0] + _unit(tf + nf) * ell, body[0] + tf * ell * 0.5, body[0] + tf * ell * 0.2, body[0], n=12)
    if not (_env_ok(G, tail, rnew) and _clear_of_others(G, tail, rnew, cls, host)):
        tail = body[:1].repeat(2, axis=0)
    pts = np.vstack([tail[:-1], body, cpts[1:]])[::-1]  # root (connector end) first
    rad = np.full(len(pts), rnew)
    rad[-len(tail) + 1:] = np.linspace(rnew, 0.8 * rnew, len(tail) - 1)
    b = G.add_branch(cls, pts, rad, parent=parent, gen=G.branches[parent - 1].gen + 1, kind="contact",
                     name=kind, parent_s=ps, r_parent=float(G.branches[parent - 1].rad.max()), kill=False)
    k = min(n_bridges, len(sel) // 3)
    pos = np.sort(rng.choice(np.arange(1, len(sel) - 1), size=k, replace=False)) if k else []
    for i in pos:
        G.bridges.append((Hp[i], run[i], _bridge_radius(G, rng, Hr[i], rnew)))
    G.contacts.append(dict(kind=kind, host_class=int(host.cls), host_branch=int(host.id), new_branch=int(b.id),
                           centre_mm=[round(float(x), 1) for x in mid], length_mm=round(float(length), 1),
                           r_host_mm=round(float(np.median(Hr)), 2), r_new_mm=round(float(rnew), 2),
                           gap_mm=round(float(gap), 2), bridges=int(k)))
    return True


def _add_cross(G, rng, host, i, rnew, gap, n_bridges):
    """A vessel of the other class crossing `host` at point i, surfaces in contact, with bridges."""
    cls = 3 - host.cls
    p, rh = host.pts[i], float(host.rad[i])
    t = _unit(host.pts[min(i + 2, len(host.pts) - 1)] - host.pts[max(i - 2, 0)])
    Pp, _, _ = G.pool(cls, rnew * 0.95)
    if not len(Pp):
        return False
    v = Pp[np.argmin(np.linalg.norm(Pp - p, axis=1))] - p
    n0 = v - (v @ t) * t
    n0 = _unit(n0) if np.linalg.norm(n0) > 1e-6 else _perp(t)[0]
    n0 = _rotate(n0, t, np.radians(rng.normal(0, 40)))
    alpha = np.radians(rng.uniform(35, 90))
    u = _unit(np.cos(alpha) * t + np.sin(alpha) * np.cross(n0, t))
    D = rh + rnew + gap
    c = p + n0 * D
    L1, L2 = rng.uniform(6, 14, 2) * G.s
    tt = np.linspace(-L1, L2, max(12, int((L1 + L2) / 0.4)))
    kappa = rng.uniform(0.004, 0.015) / G.s
    line = c + tt[:, None] * u + (kappa * tt ** 2)[:, None] * n0  # curves away from the host on both sides
    if not (_env_ok(G, line, rnew) and _clear_of_others(G, line, rnew, cls, host)):
        return False
    joined = _join_to_tree(G, line, (n0, n0), cls, rnew, (D, D), host)
    if joined is None:
        return False
    end, cpts, parent, ps = joined
    body = line if end == -1 else line[::-1]
    pts = np.vstack([body, cpts[1:]])[::-1]
    rad = np.full(len(pts), rnew)
    b = G.add_branch(cls, pts, rad, parent=parent, gen=G.branches[parent - 1].gen + 1, kind="contact",
                     name="equal-radius crossing", parent_s=ps, r_parent=float(G.branches[parent - 1].rad.max()),
                     kill=False)
    for k in range(n_bridges):
        off = rng.uniform(-2.5, 2.5) * G.s
        j = int(np.clip(i + round(off / max(host.arc[1] - host.arc[0], 1e-6)), 0, len(host.pts) - 1))
        q = host.pts[j]
        other = b.pts[np.argmin(np.linalg.norm(b.pts - q, axis=1))]
        G.bridges.append((q, other, _bridge_radius(G, rng, float(host.rad[j]), rnew)))
    G.contacts.append(dict(kind="equal-radius crossing", host_class=int(host.cls), host_branch=int(host.id),
                           new_branch=int(b.id), centre_mm=[round(float(x), 1) for x in p],
                           angle_deg=round(float(np.degrees(alpha)), 1), r_host_mm=round(rh, 2),
                           r_new_mm=round(float(rnew), 2), gap_mm=round(float(gap), 2), bridges=int(n_bridges)))
    return True


def _add_contacts(G, rng):
    s, vox = G.s, G.vox
    grown = [b for b in G.branches if b.kind in ("named", "grown", "side")]
    near = [c["centre_mm"] for c in G.contacts]

    def far_from_contacts(p, d=10.0):
        return all(np.linalg.norm(np.asarray(c) - p) > d * s for c in near)

    def pick(cands, weights=None):
        if not cands:
            return None
        return cands[rng.choice(len(cands), p=None if weights is None else np.asarray(weights) / np.sum(weights))]

    gap = lambda: rng.uniform(-0.4, 0.9) * vox  # noqa: E731
    # long parallel runs (one at least with equal radii)
    n_runs = int(rng.integers(2, 4))
    for k in range(n_runs):
        for _ in range(25):
            cls = PORTAL if rng.random() < 0.65 else HEPATIC
            length = rng.uniform(15, 30) * s
            cands = [b for b in grown if b.cls == cls and 1.2 * s <= np.median(b.rad) <= 3.6 * s
                     and b.arc[-1] >= length + 4 * s]
            host = pick(cands)
            if host is None:
                continue
            a0 = rng.uniform(2 * s, host.arc[-1] - length - 2 * s)
            i_mid = int(np.searchsorted(host.arc, a0 + length / 2))
            if not far_from_contacts(host.pts[min(i_mid, len(host.pts) - 1)]):
                continue
            rh = float(np.median(host.rad[(host.arc >= a0) & (host.arc <= a0 + length)]))
            rnew = rh if k == 0 or rng.random() < 0.4 else rh * rng.uniform(0.6, 1.3)
            if _add_run(G, rng, host, a0, length, max(rnew, G.r_floor), gap(), int(rng.integers(2, 6)),
                        "parallel run" + (" (equal radius)" if rnew == rh else "")):
                near.append(G.contacts[-1]["centre_mm"])
                break
    # crossings of equal radius
    for _ in range(int(rng.integers(2, 4))):
        for _ in range(25):
            cls = PORTAL if rng.random() < 0.5 else HEPATIC
            cands = [b for b in grown if b.cls == cls and 1.0 * s <= np.median(b.rad) <= 3.0 * s and b.arc[-1] > 8 * s]
            host = pick(cands)
            if host is None:
                continue
            i = int(rng.integers(len(host.pts) // 4, max(len(host.pts) * 3 // 4, len(host.pts) // 4 + 1)))
            if not far_from_contacts(host.pts[i]):
                continue
            if _add_cross(G, rng, host, i, max(float(host.rad[i]), G.r_floor), gap(), int(rng.integers(2, 4))):
                near.append(G.contacts[-1]["centre_mm"])
                break
    # near the hilum: a hepatic vein along the portal bifurcation / first branches
    H = G.hilum
    for _ in range(1 + int(rng.random() < 0.5)):
        for _ in range(25):
            cands = [b for b in G.branches if b.cls == PORTAL and b.kind in ("named", "grown", "side")
                     and np.min(np.linalg.norm(b.pts - H, axis=1)) < 22 * s and b.arc[-1] > 12 * s]
            host = pick(cands)
            if host is None:
                break
            dist = np.linalg.norm(host.pts - H, axis=1)
            ok = np.nonzero((dist > G.r_trunk + 8 * s) & (dist < 26 * s))[0]
            if len(ok) < 4:
                continue
            length = min(rng.uniform(10, 18) * s, host.arc[ok[-1]] - host.arc[ok[0]])
            a0 = host.arc[ok[0]] + rng.uniform(0, max(host.arc[ok[-1]] - host.arc[ok[0]] - length, 0))
            if length < 6 * s or not far_from_contacts(host.pts[ok[len(ok) // 2]], 6):
                continue
            mhv = [b for b in G.branches if b.name == "middle hepatic vein"]
            toward = mhv[0].pts[len(mhv[0].pts) // 3] if mhv else None
            if _add_run(G, rng, host, a0, length, rng.uniform(1.4, 2.4) * s, gap(), int(rng.integers(2, 5)),
                        "near hilum", toward=toward):
                near.append(G.contacts[-1]["centre_mm"])
                break
    # near the IVC: a portal branch running up along a hepatic vein root
    for _ in range(1 + int(rng.random() < 0.5)):
        for _ in range(25):
            cands = [b for b in G.branches if b.cls == HEPATIC and b.kind in ("named", "grown", "side")]
            wall = [np.abs(G.ivc.sdf(b.pts)) for b in cands]
            cands = [b for b, w in zip(cands, wall) if np.sum((w > 4 * s) & (w < 22 * s)) > 10]
            host = pick(cands)
            if host is None:
                break
            w = G.ivc.sdf(host.pts)
            ok = np.nonzero((w > 4 * s) & (w < 24 * s))[0]
            length = min(rng.uniform(8, 16) * s, host.arc[ok[-1]] - host.arc[ok[0]])
            if length < 5 * s:
                continue
            a0 = host.arc[ok[0]] + rng.uniform(0, max(host.arc[ok[-1]] - host.arc[ok[0]] - length, 0))
            if not far_from_contacts(host.pts[ok[len(ok) // 2]], 6):
                continue
            if _add_run(G, rng, host, a0, length, rng.uniform(1.3, 2.2) * s, gap(), int(rng.integers(2, 5)),
                        "near IVC"):
                near.append(G.contacts[-1]["centre_mm"])
                break
    # where the trees pass close anyway, partial volume bridges them
    P, R, B = G.occ.P, G.occ.R, G.occ.B
    C = G.occ.C
    pi, hi = np.nonzero(C == PORTAL)[0], np.nonzero(C == HEPATIC)[0]
    d, j = cKDTree(P[hi]).query(P[pi], k=1)
    g = d - R[pi] - R[hi[j]]
    order = np.argsort(g + rng.uniform(0, 1.0 * vox, len(g)))
    n_prox = int(rng.integers(3, 7))
    done = 0
    for o in order:
        if g[o] > 4.5 * vox or done >= n_prox:
            break
        p = P[pi[o]]
        if not far_from_contacts(p, 12):
            continue
        q = P[hi[j[o]]]
        nb = int(rng.integers(1, 4))
        for k in range(nb):
            off = _unit(np.cross(q - p, rng.normal(size=3))) * rng.uniform(0, 1.5) * s * (k > 0)
            G.bridges.append((p + off, q + off, _bridge_radius(G, rng, R[pi[o]], R[hi[j[o]]])))
        G.contacts.append(dict(kind="close pass bridged", centre_mm=[round(float(x), 1) for x in p],
                               gap_mm=round(float(g[o]), 2), bridges=nb, host_branch=int(B[pi[o]]),
                               new_branch=int(B[hi[j[o]]])))
        near.append(G.contacts[-1]["centre_mm"])
        done += 1


def _add_gaps(G, rng, n_thin, n_medium, n_frag):
    s, vox = G.s, G.vox
    made = []
    for cls in (PORTAL, HEPATIC):
        for n, lo, hi in ((n_thin, 0.0, 2.0 * s), (n_medium, 2.0 * s, 3.2 * s)):
            cands = [b for b in G.branches if b.cls == cls and b.kind in ("grown", "side", "named")
                     and lo < np.median(b.rad) <= hi]
            rng.shuffle(cands)
            k = 0
            for b in cands:
                if k >= n:
                    break
                r = max(float(b.rad.max()), G.r_floor)
                L = 2 * r + rng.uniform(2.0, 4.5) * vox
                lo_s = b.r_parent + r + 2.0
                hi_s = b.arc[-1] - L - 1.0
                if hi_s <= lo_s:
                    continue
                for _ in range(6):
                    a0 = rng.uniform(lo_s, hi_s)
                    if all(cs < a0 - 2.5 * r - 1 or cs > a0 + L + 2.5 * r + 1 for cs in b.child_s):
                        b.keep &= ~((b.arc >= a0) & (b.arc <= a0 + L))
                        made.append(dict(branch=int(b.id), cls=int(cls), at_mm=round(float(a0), 1),
                                         length_mm=round(float(L), 1), radius_mm=round(r, 2)))
                        k += 1
                        break
    frags = 0
    for _ in range(60):
        if frags >= n_frag:
            break
        cands = [b for b in G.branches if b.kind in ("grown", "side") and np.median(b.rad) <= 2.5 * s]
        if not cands:
            break
        b = cands[rng.integers(len(cands))]
        i = int(rng.integers(len(b.pts)))
        p, rh = b.pts[i], float(b.rad[i])
        d = _unit(rng.normal(size=3))
        r = rng.uniform(1.0, 1.4) * G.r_floor
        start = p + d * (rh + r + rng.uniform(2.5, 4.0) * vox)
        L = rng.uniform(4, 10) * s
        end = start + _unit(d + 0.5 * rng.normal(size=3)) * L
        pts = _bezier(start, start + (end - start) * 0.33 + rng.normal(0, 1, 3), end - (end - start) * 0.33, end, 16)
        if np.min(G.liver.depth(pts)) < r + vox:
            continue
        go, gw = G.occ.gaps(pts, np.full(len(pts), r), b.cls)
        if np.min(go) < G.margin_other or np.min(gw) < 2.4 * vox:
            continue
        G.add_branch(b.cls, pts, np.full(len(pts), r), parent=b.id, gen=b.gen + 1, kind="fragment",
                     name="isolated fragment", parent_s=float(b.arc[i]), r_parent=rh, kill=False)
        frags += 1
    return made, frags


# ---------------------------------------------------------------------------------------
# voxels

def _samples(G):
    P, R, B = [], [], []
    for b in G.branches:
        if b.keep is None or not b.keep.any():
            continue
        P.append(b.pts[b.keep])
        R.append(np.maximum(b.rad[b.keep], G.r_floor))
        B.append(np.full(int(b.keep.sum()), b.id, np.int32))
    return np.vstack(P), np.concatenate(R), np.concatenate(B)


def _tube_samples(pts, rad, step=0.3):
    dense, arc = _resample(np.asarray(pts, float), step)
    return dense, np.interp(arc, _arclength(pts), rad)


class _Raster:
    """Result of _rasterize on the bounding box `box` (a tuple of slices) of the samples."""

    def __init__(self, shape, field_, bid, box):
        self.shape, self.field, self.bid, self.box = shape, field_, bid, box

    def full(self, what, fill):
        out = np.full(self.shape, fill, getattr(self, what).dtype)
        out[self.box] = getattr(self, what)
        return out

    def mask(self, level=0.0):
        out = np.zeros(self.shape, bool)
        out[self.box] = self.field >= level
        return out


def _rasterize(grid, P, R, B, pad):
    """Max over samples of (radius - distance) on the grid (a union of spheres sweeping each
    centreline) and the id of the sample that attains it; voxels farther than `pad` mm outside
    every sphere get -inf and id 0. Works on the samples' bounding box only."""
    shape, sp, org = grid.shape, grid.spacing, grid.origin
    if not len(P):
        return _Raster(shape, np.zeros((0, 0, 0), np.float32), np.zeros((0, 0, 0), np.int32),
                       (slice(0, 0),) * 3)
    ijk = np.rint((P - org) / sp).astype(np.int64)
    K = np.ceil((R[:, None] + pad) / sp[None, :]).astype(np.int64)
    lo = np.clip((ijk - K).min(0), 0, shape)
    hi = np.clip((ijk + K).max(0) + 1, 0, shape)
    bshape = tuple(int(v) for v in hi - lo)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    field_ = np.full(int(np.prod(bshape)), -np.inf, np.float32)
    bid = np.zeros(int(np.prod(bshape)), np.int32)
    local = ijk - lo
    delta = (P - (ijk * sp + org)).astype(np.float32)  # sample position relative to its nearest voxel centre
    Rf = R.astype(np.float32)
    key = (K[:, 0] * 4096 + K[:, 1]) * 4096 + K[:, 2]
    dims = np.asarray(bshape)
    lins, vals, ids = [], [], []
    for kv in np.unique(key):
        idx = np.nonzero(key == kv)[0]
        k = K[idx[0]]
        off = np.stack(np.meshgrid(*[np.arange(-kk, kk + 1) for kk in k], indexing="ij"), -1).reshape(-1, 3)
        off = off[np.linalg.norm(off * sp, axis=1) <= R[idx].max() + pad + 0.5 * np.linalg.norm(sp)]
        offw = (off * sp).astype(np.float32)
        chunk = max(1, 2_000_000 // len(off))
        for c0 in range(0, len(idx), chunk):
            ii = idx[c0:c0 + chunk]
            val = Rf[ii, None] - np.linalg.norm(offw[None] - delta[ii, None, :], axis=-1)
            vox = local[ii, None, :] + off[None]
            ok = val >= -pad
            if (local[ii] - k).min() < 0 or np.any(local[ii] + k >= dims):
                ok &= np.all((vox >= 0) & (vox < dims), axis=-1)
            v = vox[ok]
            lin = (v[:, 0] * bshape[1] + v[:, 1]) * bshape[2] + v[:, 2]
            vv = val[ok]
            np.maximum.at(field_, lin, vv)
            lins.append(lin)
            vals.append(vv)
            ids.append(np.broadcast_to(B[ii, None], ok.shape)[ok])
    lin, val, ids_ = np.concatenate(lins), np.concatenate(vals), np.concatenate(ids)
    win = val >= field_[lin]
    bid[lin[win]] = ids_[win]
    return _Raster(shape, field_.reshape(bshape), bid.reshape(bshape), box)


def _nearest_fill(bid, need, spacing):
    """Give voxels in `need` the id of the nearest voxel that has one."""
    have = np.argwhere(bid > 0)
    pts = np.argwhere(need)
    if not len(pts) or not len(have):
        return bid
    _, j = cKDTree(have * spacing).query(pts * spacing)
    out = bid.copy()
    out[tuple(pts.T)] = bid[tuple(have[j].T)]
    return out


def _shift(mask, vox_shift):
    out = np.zeros_like(mask)
    src = [slice(max(0, -d), mask.shape[a] - max(0, d)) for a, d in enumerate(vox_shift)]
    dst = [slice(max(0, d), mask.shape[a] - max(0, -d)) for a, d in enumerate(vox_shift)]
    out[tuple(dst)] = mask[tuple(src)]
    return out


def _ball(grid, centre, radius):
    out = np.zeros(grid.shape, bool)
    lo = np.clip(np.floor((centre - radius - grid.origin) / grid.spacing).astype(int), 0, grid.shape)
    hi = np.clip(np.ceil((centre + radius - grid.origin) / grid.spacing).astype(int) + 1, 0, grid.shape)
    x, y, z = [ax[lo[k]:hi[k]] for k, ax in enumerate(grid.axes())]
    d2 = (((x - centre[0]) ** 2)[:, None, None] + ((y - centre[1]) ** 2)[None, :, None]
          + ((z - centre[2]) ** 2)[None, None, :])
    out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = d2 <= radius ** 2
    return out


def _ivc_sdf_grid(grid, ivc):
    x, y, z = grid.axes()
    cx, cy = ivc.centre(z)
    return (np.hypot((x[:, None, None] - cx[None, None, :]) / ivc.ex,
                     (y[None, :, None] - cy[None, None, :]) / ivc.ey) - ivc.r).astype(np.float32)


# ---------------------------------------------------------------------------------------
# public API

def make_phantom_b(level, shape=(144, 144, 120), spacing=(1.0, 1.0, 1.0), seed=0):
    """One family-B phantom at `level` (one of LEVELS_B); deterministic per (level, shape, spacing, seed)."""
    import time

    if level not in LEVELS_B:
        raise ValueError(f"unknown level {level!r}; use one of {LEVELS_B}")
    t0 = time.perf_counter()
    grid = _Grid(shape, spacing)
    G = _Anatomy(grid, np.random.default_rng([int(seed), 0xB, 1]))
    G.build()
    t_grow = time.perf_counter()
    info = dict(G.info)
    if level in ("touching", "noisy"):
        _add_contacts(G, np.random.default_rng([int(seed), 0xB, 2]))
    gaps, frags = [], 0
    if level == "gaps":
        rg = np.random.default_rng([int(seed), 0xB, 3])
        gaps, frags = _add_gaps(G, rg, int(rg.integers(5, 9)), int(rg.random() < 0.6), int(rg.integers(2, 5)))
    elif level == "noisy":
        rg = np.random.default_rng([int(seed), 0xB, 3])
        gaps, frags = _add_gaps(G, rg, int(rg.integers(3, 6)), int(rg.random() < 0.4), int(rg.integers(1, 4)))
    t_defects = time.perf_counter()

    s, vox = G.s, grid.vox
    sdf = G.liver.sdf_grid(grid)
    liver = sdf < 0
    ivc_sdf = _ivc_sdf_grid(grid, G.ivc)
    ivc = ivc_sdf <= 0
    ivc_core = ivc_sdf <= -vox
    region = (sdf < 3.0 * s) | _ball(grid, G.hilum, 12.0 * s)

    # portal_trunk support mask: trunk up to a few mm past the hilum, splenic vein, SMV
    u = _unit(G.trunk_pts[-1] - G.trunk_pts[-2])
    tubes = [(np.vstack([G.trunk_pts, G.trunk_pts[-1] + u * 4 * s]), np.full(len(G.trunk_pts) + 1, G.r_trunk))]
    tubes += G.extra_tubes
    tp = [_tube_samples(p, r, 0.5) for p, r in tubes]
    portal_trunk = _rasterize(grid, np.vstack([t[0] for t in tp]), np.concatenate([t[1] for t in tp]),
                              np.ones(sum(len(t[0]) for t in tp), np.int32), 0.0).mask()

    P, R, B = _samples(G)
    branch_class = {b.id: b.cls for b in G.branches}
    lut = np.zeros(len(G.branches) + 1, np.uint8)
    for k, c in branch_class.items():
        lut[k] = c
    if G.bridges:
        bs = [_tube_samples(np.vstack([a, b_]), np.array([r, r]), 0.25) for a, b_, r in G.bridges]
        Pb, Rb = np.vstack([t[0] for t in bs]), np.concatenate([t[1] for t in bs])
    else:
        Pb, Rb = np.zeros((0, 3)), np.zeros(0)

    noise_info = {}
    if level != "noisy":
        real = _rasterize(grid, P, R, B, 0.0)
        bid = real.full("bid", 0)
        vessels = (real.mask() | _rasterize(grid, Pb, Rb, np.zeros(len(Pb), np.int32), 0.0).mask()) & region & ~ivc_core
    else:
        rn = np.random.default_rng([int(seed), 0xB, 4])
        h = float(np.cbrt(np.prod(grid.spacing)))
        pad = 0.6 * h
        real = _rasterize(grid, P, R, B, pad)
        f_real, bid = real.full("field", -np.inf), real.full("bid", 0)
        f_br = _rasterize(grid, Pb, Rb, np.zeros(len(Pb), np.int32), pad).full("field", -np.inf)
        c_hep = rn.uniform(0.8, 1.0)
        contrast = np.where(lut[bid] == HEPATIC, c_hep, 1.0).astype(np.float32)
        occ = np.clip(0.5 + f_real / h, 0, 1) * contrast
        occ = np.maximum(occ, np.clip(0.5 + f_br / h, 0, 1) * rn.uniform(0.8, 1.0))
        sigma_mm = np.array([rn.uniform(0.5, 0.7), rn.uniform(0.5, 0.7), rn.uniform(0.75, 1.05)]) * grid.spacing
        img = ndimage.gaussian_filter(occ, sigma_mm / grid.spacing)
        noise = ndimage.gaussian_filter(rn.normal(size=grid.shape).astype(np.float32), 0.7)
        sd_n = rn.uniform(0.05, 0.09)
        img += noise * (sd_n / max(float(noise.std()), 1e-6))
        thr = rn.uniform(0.38, 0.48)
        near = ndimage.binary_dilation(occ > 0, iterations=2)
        vessels = (img > thr) & near & region & ~ivc_core
        # a segmentation model does not return specks of a few voxels: drop pieces under ~8 mm3
        lab, n = ndimage.label(vessels, np.ones((3, 3, 3)))
        small = np.bincount(lab.ravel()) * float(np.prod(grid.spacing)) < 8.0
        small[0] = False
        vessels &= ~small[lab]
        noise_info = dict(hepatic_contrast=round(float(c_hep), 3), blur_sigma_mm=np.round(sigma_mm, 2).tolist(),
                          noise_sd=round(float(sd_n), 3), threshold=round(float(thr), 3))

    bid = np.where(vessels, bid, 0)
    bid = _nearest_fill(bid, vessels & (bid == 0), grid.spacing)
    truth = np.where(vessels, lut[bid], 0).astype(np.uint8)
    portal_trunk &= truth != HEPATIC  # a hepatic vein may touch the trunk, the trunk mask never holds it

    defects = {}
    if level == "noisy":
        rd = np.random.default_rng([int(seed), 0xB, 5])
        for name in ("portal_trunk", "ivc"):
            v = _unit(rd.normal(size=3)) * rd.uniform(2.0, 4.0)
            sh = np.rint(v / grid.spacing).astype(int)
            if not sh.any():
                sh[int(np.argmax(np.abs(v)))] = 1 if v[int(np.argmax(np.abs(v)))] > 0 else -1
            defects[f"{name}_shift_mm"] = np.round(sh * grid.spacing, 2).tolist()
        vox_shift = {k: np.rint(np.asarray(defects[f"{k}_shift_mm"]) / grid.spacing).astype(int)
                     for k in ("portal_trunk", "ivc")}
        portal_trunk = _shift(portal_trunk, vox_shift["portal_trunk"])
        ivc = _shift(ivc, vox_shift["ivc"])
        flags = rd.random(3) < 0.55
        if not flags.any():
            flags[rd.integers(3)] = True
        if flags[0]:  # trunk segmented only away from the liver
            cut = rd.uniform(8, 18) * s
            portal_trunk &= ~_ball(grid, G.hilum, cut)
            defects["portal_trunk_missing_within_mm_of_hilum"] = round(float(cut), 1)
        if flags[1]:  # intrahepatic IVC missed
            z = grid.world(np.arange(grid.shape[2])[:, None] * np.array([[0, 0, 1]]))[:, 2]
            if rd.random() < 0.6:
                z0, z1 = G.z_confluence - rd.uniform(5, 15) * s, np.inf
            else:
                z0, z1 = G.z_confluence - rd.uniform(35, 45) * s, G.z_confluence - rd.uniform(5, 12) * s
            ivc[:, :, (z >= z0) & (z <= z1)] = False
            defects["ivc_missing_z_mm"] = [round(float(z0), 1), None if np.isinf(z1) else round(float(z1), 1)]
        if flags[2]:  # liver mask with a chunk missing near its surface
            cand = np.argwhere(liver & (sdf > -12 * s) & (sdf < -2 * s))
            c = grid.world(cand[rd.integers(len(cand))])
            r = rd.uniform(14, 22) * s
            liver = liver & ~_ball(grid, c, r)
            defects["liver_missing_ball"] = dict(centre_mm=np.round(c, 1).tolist(), radius_mm=round(float(r), 1))

    t_end = time.perf_counter()
    counts = {c: int(sum(1 for b in G.branches if b.cls == c)) for c in (PORTAL, HEPATIC)}
    info.update(scale=round(s, 3), branches_portal=counts[PORTAL], branches_hepatic=counts[HEPATIC],
                contacts=G.contacts, n_contacts=len(G.contacts), n_bridges=len(G.bridges), gaps=gaps,
                n_gaps=len(gaps), n_fragments=frags, noise=noise_info, support_defects=defects,
                hilum_mm=np.round(G.hilum, 1).tolist(), hepatic_confluence_z_mm=round(float(G.z_confluence), 1),
                vessel_voxels=int(vessels.sum()), seconds=dict(growth=round(t_grow - t0, 3),
                                                               defects=round(t_defects - t_grow, 3),
                                                               voxels=round(t_end - t_defects, 3),
                                                               total=round(t_end - t0, 3)))
    return PhantomB(vessels=vessels.astype(np.uint8), liver=liver, portal_trunk=portal_trunk, ivc=ivc,
                    truth=truth, branch_ids=bid.astype(np.int32), branch_class=branch_class,
                    spacing=tuple(float(v) for v in grid.spacing), affine=grid.affine, level=level, seed=int(seed),
                    info=info)


def make_large_case_b(seed=0):
    """A 300 x 300 x 250 touching-level case at 0.8 x 0.8 x 1 mm (speed checks)."""
    return make_phantom_b("touching", shape=(300, 300, 250), spacing=(0.8, 0.8, 1.0), seed=seed)


def score_split_b(labels, phantom, confidence=None, min_branch_voxels=5):
    """Scores of a portal(1)/hepatic(2) labelling over the phantom's vessel voxels.

    accuracy: share of vessel voxels whose label equals the truth (unlabelled counts as wrong);
    dice_portal / dice_hepatic over the whole volume; unlabelled_fraction; branch_consistency:
    share of generated branches (with >= min_branch_voxels voxels) with >= 90 % of their voxels
    right. With a confidence map: confidence_recall (share of misassigned vessel voxels with
    confidence < 0.75; 1.0 when none is wrong) and flagged_share (share of vessel voxels below 0.75)."""
    labels = np.asarray(labels)
    if labels.shape != phantom.vessels.shape:
        raise ValueError(f"labels have shape {labels.shape}, the phantom {phantom.vessels.shape}")
    labels = np.rint(labels).astype(np.int64)
    V = phantom.vessels > 0
    truth = phantom.truth.astype(np.int64)
    correct = labels[V] == truth[V]
    n = int(V.sum())

    def dice(c):
        a, b = labels == c, truth == c
        den = int(a.sum()) + int(b.sum())
        return 1.0 if den == 0 else 2.0 * int((a & b).sum()) / den

    ids = phantom.branch_ids[V].astype(np.int64)
    tot = np.bincount(ids, minlength=1)
    good = np.bincount(ids, weights=correct.astype(float), minlength=len(tot))
    valid = np.nonzero(tot >= min_branch_voxels)[0]
    valid = valid[valid > 0]
    out = dict(accuracy=float(correct.mean()) if n else 1.0, dice_portal=dice(PORTAL), dice_hepatic=dice(HEPATIC),
               unlabelled_fraction=float((labels[V] == 0).mean()) if n else 0.0,
               branch_consistency=float(np.mean(good[valid] / tot[valid] >= 0.9)) if len(valid) else 1.0,
               n_branches=int(len(valid)), n_vessel_voxels=n)
    if confidence is not None:
        conf = np.asarray(confidence, float)
        if conf.shape != V.shape:
            raise ValueError(f"confidence has shape {conf.shape}, the phantom {V.shape}")
        cv = conf[V]
        wrong = ~correct
        out["confidence_recall"] = float((cv[wrong] < UNSURE).mean()) if wrong.any() else 1.0
        out["flagged_share"] = float((cv < UNSURE).mean()) if n else 0.0
    return out


def write_case_b(phantom, folder, orientation="RAS"):
    """Write the case as NIfTI plus case.json; returns {name: Path}.

    vessels, liver, portal_trunk, ivc are the inputs of `split-vessels`; truth and branch_ids
    (with case.json: level, seed, branch classes) let a later run score from the files alone.
    orientation: axis codes of the stored arrays, e.g. "LPS" or "LAS" as DICOM converters write
    them (the phantom arrays are RAS; `read_labels_b` brings a result back to the phantom's order)."""
    import nibabel as nib
    from nibabel import orientations as no

    codes = tuple(str(orientation).upper())
    ornt = no.ornt_transform(no.axcodes2ornt(("R", "A", "S")), no.axcodes2ornt(codes))
    affine = np.asarray(phantom.affine, float) @ no.inv_ornt_aff(ornt, phantom.vessels.shape)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, fname in CASE_FILES_B.items():
        dtype = np.int32 if name == "branch_ids" else np.uint8
        data = no.apply_orientation(np.asarray(getattr(phantom, name)).astype(dtype), ornt)
        img = nib.Nifti1Image(np.ascontiguousarray(data), affine)
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        nib.save(img, str(folder / fname))
        paths[name] = folder / fname
    meta = dict(level=phantom.level, seed=phantom.seed, spacing=list(phantom.spacing), orientation="".join(codes),
                branch_class={str(k): int(v) for k, v in phantom.branch_class.items()}, info=phantom.info)
    (folder / CASE_JSON_B).write_text(json.dumps(meta, indent=1, default=_json_default))
    paths["case"] = folder / CASE_JSON_B
    return paths


def read_labels_b(path):
    """A label (or confidence) file written in any orientation, as an array in the phantom's RAS order."""
    import nibabel as nib

    return np.asanyarray(nib.as_closest_canonical(nib.load(str(path))).dataobj)


def read_case_b(folder):
    """A PhantomB read back from write_case_b's files (in the phantom's RAS order)."""
    import nibabel as nib

    folder = Path(folder)
    meta = json.loads((folder / CASE_JSON_B).read_text())
    arrays = {name: read_labels_b(folder / fname) for name, fname in CASE_FILES_B.items()}
    affine = nib.as_closest_canonical(nib.load(str(folder / CASE_FILES_B["vessels"]))).affine
    return PhantomB(vessels=arrays["vessels"].astype(np.uint8), liver=arrays["liver"] > 0,
                    portal_trunk=arrays["portal_trunk"] > 0, ivc=arrays["ivc"] > 0,
                    truth=arrays["truth"].astype(np.uint8), branch_ids=arrays["branch_ids"].astype(np.int32),
                    branch_class={int(k): int(v) for k, v in meta["branch_class"].items()},
                    spacing=tuple(meta["spacing"]), affine=affine, level=meta["level"], seed=int(meta["seed"]),
                    info=meta.get("info", {}))


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o).__name__)
