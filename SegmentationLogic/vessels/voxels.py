"""The vessel voxels as a sparse graph: 26-neighbour pairs, pieces per class, class boundaries.

Working on the list of vessel voxels instead of the volume keeps these steps proportional
to the vessels (a few per cent of a CT), not to the image.
"""
import numpy as np
from scipy import sparse
from scipy.sparse import csgraph

from .skeleton import _neighbour_pairs


def neighbour_pairs(idx):
    """(m, 2) index pairs of 26-adjacent voxels among `idx` (n, 3), sorted in C order
    (np.argwhere order) as the skeleton graph keeps them."""
    idx = np.asarray(idx)
    if not len(idx):
        return np.zeros((0, 2), int)
    lo = idx.min(0) - 1
    shape = tuple(idx.max(0) - lo + 2)
    lin = np.ravel_multi_index((idx - lo).T, shape)
    order = np.argsort(lin, kind="stable")
    pairs = _neighbour_pairs(lin[order], shape)
    return order[pairs]


def _pieces(n, pairs):
    if not len(pairs):
        return np.arange(n)
    g = sparse.coo_matrix((np.ones(len(pairs), bool), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return csgraph.connected_components(g, directed=False)[1]


def clean_small_pieces(labels, pairs, min_size, protect=None):
    """26-connected pieces of one class below `min_size` voxels join the other class where
    they touch it, else become 0 (both classes at once, judged on the labels as given).
    Pieces holding a `protect` voxel stay. Returns new labels (classes 1 and 2)."""
    labels = np.asarray(labels).copy()
    if min_size <= 1 or not labels.any():
        return labels
    n = len(labels)
    a, b = pairs[:, 0], pairs[:, 1]
    la, lb = labels[a], labels[b]
    piece = _pieces(n, pairs[(la == lb) & (la > 0)])
    mine = labels > 0
    size = np.bincount(piece, weights=mine, minlength=n)
    small = mine & (size[piece] < min_size)
    if protect is not None:
        held = np.zeros(n, bool)
        held[piece[protect & mine]] = True
        small &= ~held[piece]
    if not small.any():
        return labels
    touch = np.zeros(n, bool)                      # per piece: touches the other class
    cross = (la > 0) & (lb > 0) & (la != lb)
    touch[piece[a[cross & small[a]]]] = True
    touch[piece[b[cross & small[b]]]] = True
    labels[small] = np.where(touch[piece[small]], 3 - labels[small], 0)
    return labels


def class_boundary(labels, pairs):
    """Voxels with a 26-neighbour of another (non-zero) class."""
    out = np.zeros(len(labels), bool)
    a, b = pairs[:, 0], pairs[:, 1]
    cross = (labels[a] > 0) & (labels[b] > 0) & (labels[a] != labels[b])
    out[a[cross]] = True
    out[b[cross]] = True
    return out
