"""Canonical (RAS+) voxel order and back: the one implementation the engine uses.

The models run on arrays whose axes point Right, Anterior, Superior (nibabel's
`as_closest_canonical`), the vessel split too; results go back to the input's own voxel
order. Only axes are permuted and flipped (views, no copy, no resampling).
"""
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

_IDENTITY = [[0, 1], [1, 1], [2, 1]]


def to_canonical(data, affine):
    """(data in RAS+ voxel order, its affine), as nibabel's as_closest_canonical."""
    ornt = io_orientation(affine)
    if np.array_equal(ornt, _IDENTITY):
        return data, np.asarray(affine, dtype=np.float64)
    new_affine = np.asarray(affine, dtype=np.float64).dot(inv_ornt_aff(ornt, data.shape))
    return apply_orientation(data, ornt), new_affine


def from_canonical(data, original_affine):
    """Back from RAS+ to the voxel order of `original_affine` (official undo_canonical)."""
    ornt = ornt_transform(axcodes2ornt("RAS"), io_orientation(original_affine))
    if np.array_equal(ornt, _IDENTITY):
        return data
    return apply_orientation(data, ornt)


def from_canonical_affine(affine, shape, original_affine):
    """The affine of RAS+ data of `shape` (with `affine`) once `from_canonical` has put it back into
    the voxel order of `original_affine` (nibabel's as_reoriented)."""
    ornt = ornt_transform(axcodes2ornt("RAS"), io_orientation(original_affine))
    affine = np.asarray(affine, dtype=np.float64)
    return affine if np.array_equal(ornt, _IDENTITY) else affine.dot(inv_ornt_aff(ornt, shape))
