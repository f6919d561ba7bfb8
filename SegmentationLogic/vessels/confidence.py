"""How sure the split is, voxel by voxel: 0.5 (a coin flip) to 1.0 (sure).

Three things make a voxel unsure:
- its branch was won by a narrow margin: the other tree's cheapest step into it, or into
  the first branch of the subtree it hangs from, costs little more than its own
  (trees.py); a whole subtree can be unsure this way;
- the same fit with one kind of evidence weighed three times more or less gives its
  branch to the other tree (trees.second_opinions): at most DOUBTED;
- it lies where the two trees meet: within about a vessel width of a voxel of the other
  class, where touching vessels share voxels and any boundary is a guess.
Voxels below UNSURE_BELOW are the ones a reviewer should look at; when they are more than
MAX_UNSURE of the vessels, the QC warns that the split as a whole is doubtful (the map is
not clipped to a budget: a short list that misses the errors would mislead). Vessel voxels
the split left unlabelled are 0.5; voxels outside the vessel mask are 0 (no vessel, no claim).
"""
import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from .voxels import class_boundary

UNSURE_BELOW = 0.75
MARGIN_SCALE = 2.25      # price units: a margin of MARGIN_SCALE * ln 2 (about 1.6, a clear break) sits at 0.75
DOUBTED = 0.6            # a branch a second opinion gives to the other tree
MAX_UNSURE = 0.15        # more flagged than this share of the vessels: the QC warns the split is doubtful
INTERFACE_WIDTHS = 1.5   # up to this many local vessel radii from the other class, a voxel is unsure


def margin_confidence(margin):
    """0.5 for no margin, towards 1.0 for a large one (1.0 for no rival at all)."""
    margin = np.maximum(np.asarray(margin, float), 0.0)
    with np.errstate(over="ignore"):
        return 0.5 + 0.5 * (1.0 - np.exp(-margin / MARGIN_SCALE))


def interface_confidence(idx, labels, radius, spacing, pairs=None):
    """Per voxel (idx (n, 3), labels (n,), local radius (n,) mm): 0.5 touching the other
    class, rising to 1.0 at INTERFACE_WIDTHS radii from it. `pairs`: the voxels' 26-neighbour
    pairs (voxels.neighbour_pairs), to measure from the other class's boundary only."""
    spacing = np.asarray(spacing, float)
    out = np.ones(len(idx))
    pts = idx * spacing
    reach = np.maximum(radius, float(spacing.min())) * INTERFACE_WIDTHS
    edge = class_boundary(labels, pairs) if pairs is not None else np.ones(len(labels), bool)
    for cls, other in ((1, 2), (2, 1)):
        mine, theirs = labels == cls, (labels == other) & edge
        if not mine.any() or not theirs.any():
            continue
        step = float(spacing.max())              # neighbours are at least a voxel apart
        d, _ = cKDTree(pts[theirs]).query(pts[mine], distance_upper_bound=float(reach[mine].max()) + step, workers=-1)
        out[mine] = 0.5 + 0.5 * np.clip((d - step) / reach[mine], 0.0, 1.0)
    return out


def summary(confidence, labels):
    """(mean confidence of labelled voxels, voxels flagged unsure, share of vessel voxels flagged)."""
    confidence = np.asarray(confidence)
    labelled = np.asarray(labels) > 0
    flagged = int((confidence < UNSURE_BELOW).sum())
    mean = float(confidence[labelled].mean()) if labelled.any() else 0.0
    return mean, flagged, flagged / max(len(confidence), 1)


def doubtful_warning(share):
    """The QC warning when more than MAX_UNSURE of the vessel voxels are flagged, else None."""
    if share <= MAX_UNSURE:
        return None
    return (f"The split is unsure in {share:.0%} of the vessel voxels (more than {MAX_UNSURE:.0%}): "
            "review the whole tree, not only the flagged places.")


def is_doubtful_warning(text):
    return text.startswith("The split is unsure in ")


def unsure_mask(confidence, below=UNSURE_BELOW):
    """Vessel voxels the map flags for review (0 outside the vessels is no claim, not doubt)."""
    confidence = np.asarray(confidence)
    return (confidence > 0) & (confidence < below)


def unsure_pieces(confidence, labels, affine, below=UNSURE_BELOW):
    """The connected places to review, largest first: [{"voxels", "volume_mm3", "centroid_ras",
    "portal_voxels", "hepatic_voxels"}] from a map and its labels on one grid (affine: voxel to RAS)."""
    mask = unsure_mask(confidence, below)
    pieces, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if not n:
        return []
    index = np.arange(1, n + 1)
    sizes = np.bincount(pieces.ravel(), minlength=n + 1)[1:]
    centres = np.asarray(ndimage.center_of_mass(mask, pieces, index), float).reshape(n, 3)
    labels = np.asarray(labels)
    portal = np.bincount(pieces[labels == 1], minlength=n + 1)[1:]
    hepatic = np.bincount(pieces[labels == 2], minlength=n + 1)[1:]
    affine = np.asarray(affine, float)
    voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
    ras = centres @ affine[:3, :3].T + affine[:3, 3]
    order = np.argsort(-sizes, kind="stable")
    return [{"voxels": int(sizes[i]), "volume_mm3": round(float(sizes[i]) * voxel_mm3, 1),
             "centroid_ras": [round(float(v), 2) for v in ras[i]], "portal_voxels": int(portal[i]),
             "hepatic_voxels": int(hepatic[i])} for i in order]
