"""The published portal/hepatic "enhanced pipeline" heuristic, re-implemented as a baseline.

Benchmark reference only: the product's split lives in SegmentationLogic/vessels. This
reproduces the published algorithm step by step, including its weaknesses, so that the
benchmark measures what users of that pipeline get:

- portal seeds: portal trunk ∩ liver ∩ vessels; if empty, vessels within `portal_dilate_mm`
  of the trunk, that distance converted to voxels with the mean spacing;
- hepatic seeds: vessel voxels inside the liver within `ivc_distance_mm` (5 mm) of the IVC;
- a class with no seed falls back to a guess by height: the vessel voxels nearest the
  centroid of the lowest 40 % (portal) or the highest 30 % (hepatic) of the vessel mask
  along the third array axis;
- optional skeleton (skimage, 26-connected) on which the seeds are restricted; the
  growth then walks it with 6 neighbours, so diagonal skeleton steps are never taken,
  and every vessel voxel takes the label of the nearest *labelled* skeleton voxel;
- growth: one breadth-first search per class, one voxel step at a time through the
  mask (pure Python deque), then each voxel goes to the class with the shorter step
  count, ties to portal; a class with no seed on the mask gives everything to the other;
- components of each class below `min_component_voxels` are cleared.
"""
from collections import deque

import numpy as np
from scipy import ndimage

try:
    from skimage.morphology import skeletonize
except ImportError:  # pragma: no cover - scikit-image is a dependency
    skeletonize = None

_SIX = ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1))
_UNREACHED = 10 ** 9


def _bfs_steps(mask, seeds):
    """Steps from the nearest seed through `mask` with 6 neighbours (pure Python)."""
    nx, ny, nz = mask.shape
    steps = np.full(mask.shape, _UNREACHED, dtype=np.int32)
    queue = deque()
    for x, y, z in np.argwhere(seeds):
        steps[x, y, z] = 0
        queue.append((int(x), int(y), int(z)))
    while queue:
        x, y, z = queue.popleft()
        nxt = steps[x, y, z] + 1
        for dx, dy, dz in _SIX:
            a, b, c = x + dx, y + dy, z + dz
            if 0 <= a < nx and 0 <= b < ny and 0 <= c < nz and mask[a, b, c] and steps[a, b, c] > nxt:
                steps[a, b, c] = nxt
                queue.append((a, b, c))
    return steps


def _compete(mask, portal_seed, hepatic_seed):
    labels = np.zeros(mask.shape, dtype=np.uint8)
    has_p, has_h = bool(portal_seed.any()), bool(hepatic_seed.any())
    if not has_p and not has_h:
        return labels
    if not has_p:
        labels[mask > 0] = 2
        return labels
    if not has_h:
        labels[mask > 0] = 1
        return labels
    dp = _bfs_steps(mask, portal_seed)
    dh = _bfs_steps(mask, hepatic_seed)
    for x, y, z in zip(*np.nonzero(mask)):
        p, h = dp[x, y, z], dh[x, y, z]
        if p == _UNREACHED and h == _UNREACHED:
            continue
        labels[x, y, z] = 1 if p <= h else 2  # ties go to portal
    return labels


def _height_seed(vessels, upper, percentile, keep_percentile):
    coords = np.argwhere(vessels)
    seed = np.zeros(vessels.shape, dtype=np.uint8)
    if not coords.size:
        return seed
    cut = np.percentile(coords[:, 2], percentile)
    part = coords[coords[:, 2] >= cut] if upper else coords[coords[:, 2] <= cut]
    if not part.size:
        return seed
    dist = np.sqrt(((coords - part.mean(axis=0)) ** 2).sum(1))
    chosen = coords[dist < np.percentile(dist, keep_percentile)]
    seed[tuple(chosen.T)] = 1
    return seed


def heuristic_split(vessels, liver=None, portal_trunk=None, ivc=None, spacing=(1.0, 1.0, 1.0),
                    use_skeleton=True, portal_dilate_mm=3.0, ivc_distance_mm=5.0, min_component_voxels=20):
    """Return (labels uint8 0/1/2, qc dict) as the published heuristic computes them."""
    vessels = (np.asarray(vessels) > 0).astype(np.uint8)
    empty_qc = {"portal_voxels": 0, "hepatic_voxels": 0, "total_vessel_voxels": 0, "portal_fraction": 0.0,
                "hepatic_fraction": 0.0, "portal_seed_voxels": 0, "hepatic_seed_voxels": 0, "use_skeleton": False}
    if not vessels.any():
        return np.zeros(vessels.shape, np.uint8), empty_qc
    liver = np.ones_like(vessels) if liver is None else (np.asarray(liver) > 0).astype(np.uint8)
    spacing = tuple(float(s) for s in spacing)
    voxel_avg = sum(spacing) / 3.0

    portal_seed = np.zeros_like(vessels)
    if portal_trunk is not None:
        trunk = (np.asarray(portal_trunk) > 0).astype(np.uint8)
        portal_seed = trunk & liver & vessels
        if not portal_seed.any():
            dist = ndimage.distance_transform_edt(1 - trunk)  # in voxels
            portal_seed = ((dist <= portal_dilate_mm / voxel_avg) & liver & vessels).astype(np.uint8)
    hepatic_seed = np.zeros_like(vessels)
    if ivc is not None:
        dist_ivc = ndimage.distance_transform_edt(1 - (np.asarray(ivc) > 0), sampling=spacing)
        hepatic_seed = ((dist_ivc <= ivc_distance_mm) & vessels & liver).astype(np.uint8)
    if not portal_seed.any():
        portal_seed = _height_seed(vessels, upper=False, percentile=40, keep_percentile=15)
    if not hepatic_seed.any():
        hepatic_seed = _height_seed(vessels, upper=True, percentile=70, keep_percentile=20)

    use_skel = bool(use_skeleton and skeletonize is not None)
    labels = None
    if use_skel:
        skel = skeletonize(vessels.astype(bool)).astype(np.uint8)
        if portal_seed.any():
            portal_seed = portal_seed & skel
        if hepatic_seed.any():
            hepatic_seed = hepatic_seed & skel
        skel_labels = _compete(skel, portal_seed, hepatic_seed)
        if skel_labels.any():
            _, idx = ndimage.distance_transform_edt(skel_labels == 0, return_indices=True)
            labels = np.zeros_like(vessels)
            inside = np.nonzero(vessels)
            labels[inside] = skel_labels[idx[0][inside], idx[1][inside], idx[2][inside]]
    if labels is None:
        labels = _compete(vessels, portal_seed, hepatic_seed)
    labels[vessels == 0] = 0

    for cls in (1, 2):
        comp, n = ndimage.label(labels == cls)
        if n:
            sizes = ndimage.sum(labels == cls, comp, range(1, n + 1))
            for i, size in enumerate(sizes, start=1):
                if size < min_component_voxels:
                    labels[comp == i] = 0

    total = int(vessels.sum())
    portal, hepatic = int((labels == 1).sum()), int((labels == 2).sum())
    qc = {"portal_voxels": portal, "hepatic_voxels": hepatic, "total_vessel_voxels": total,
          "portal_fraction": portal / total, "hepatic_fraction": hepatic / total,
          "portal_seed_voxels": int(portal_seed.sum()), "hepatic_seed_voxels": int(hepatic_seed.sum()),
          "use_skeleton": use_skel}
    return labels, qc
