"""Voxel lattices between numpy, VTK and MRML: matrices, alignment onto a volume's lattice,
oriented images and Slicer's serialised reference geometry."""
import numpy as np
import vtk
from vtk.util import numpy_support

import slicer

from ..errors import SceneImportError


def matrix_to_numpy(matrix):
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def numpy_to_matrix(array):
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def ijk_to_ras(volume_node):
    """The volume's voxel-to-RAS affine in its own frame (a parent transform not applied)."""
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return matrix_to_numpy(matrix)


def check_affine(affine):
    m = affine[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    if np.any(spacing <= 0) or not np.all(np.isfinite(affine)):
        raise SceneImportError("The labelmap has a degenerate geometry (zero voxel size).",
                               "Import the labelmap the engine wrote for this volume.")
    directions = m / spacing
    if np.abs(directions.T @ directions - np.eye(3)).max() > 1e-4:
        raise SceneImportError("The labelmap's voxel axes are not perpendicular (sheared geometry), which Slicer "
                               "cannot represent.", "Resample the image to an orthogonal grid before segmenting.")


def align_to_reference(data, affine, reference_volume_node):
    """Re-index the labelmap onto the reference volume's voxel lattice when it is the same
    lattice in another axis order or direction (exact: a transpose and flips, no resampling).
    Returns (data, affine, index offset of data[0,0,0] in the reference lattice)."""
    ref = ijk_to_ras(reference_volume_node)
    to_ref = np.linalg.solve(ref, affine)  # labelmap ijk -> reference ijk
    rot = to_ref[:3, :3]
    perm = np.rint(rot)
    if np.abs(rot - perm).max() > 1e-3 or not np.array_equal(np.abs(perm).sum(axis=0), [1, 1, 1]) \
            or not np.array_equal(np.abs(perm).sum(axis=1), [1, 1, 1]):
        return data, affine, np.zeros(3, dtype=int)
    shift = to_ref[:3, 3]
    if np.abs(shift - np.rint(shift)).max() > 1e-2:
        return data, affine, np.zeros(3, dtype=int)
    axes = [int(np.nonzero(perm[r])[0][0]) for r in range(3)]  # reference axis r <- labelmap axis
    signs = [int(perm[r, axes[r]]) for r in range(3)]
    out = np.transpose(data, axes)
    offset = np.rint(shift).astype(int)
    for r in range(3):
        if signs[r] < 0:
            out = np.flip(out, axis=r)
            offset[r] -= out.shape[r] - 1
    return out, ref, offset


def check_overlap(data_shape, affine, offset, reference_volume_node):
    """Refuse a labelmap that lies entirely outside the reference volume (wrong volume picked)."""
    dims = reference_volume_node.GetImageData().GetDimensions()
    ref = ijk_to_ras(reference_volume_node)
    corners = np.array([[i, j, k, 1] for i in (0, data_shape[0] - 1) for j in (0, data_shape[1] - 1)
                        for k in (0, data_shape[2] - 1)], dtype=float)
    corners[:, :3] += offset
    in_ref = np.linalg.solve(ref, (affine @ corners.T)).T[:, :3]
    lo, hi = in_ref.min(axis=0), in_ref.max(axis=0)
    if np.any(hi < -0.5) or np.any(lo > np.array(dims) - 0.5):
        raise SceneImportError(f"The labelmap does not overlap the volume '{reference_volume_node.GetName()}'.",
                               "Import the result onto the volume it was computed from.")


VTK_TYPES = {np.dtype(np.uint8): vtk.VTK_UNSIGNED_CHAR, np.dtype(np.uint16): vtk.VTK_UNSIGNED_SHORT,
             np.dtype(np.int32): vtk.VTK_INT}


def oriented_image(data, extent_start, image_to_world):
    """vtkOrientedImageData sharing nothing with numpy: `data` indexed [i, j, k] at extent_start."""
    image = slicer.vtkOrientedImageData()
    start = [int(s) for s in extent_start]
    image.SetExtent(start[0], start[0] + data.shape[0] - 1, start[1], start[1] + data.shape[1] - 1,
                    start[2], start[2] + data.shape[2] - 1)
    scalars = numpy_support.numpy_to_vtk(data.ravel(order="F"), deep=1,
                                         array_type=VTK_TYPES[data.dtype])
    scalars.SetName("ImageScalars")
    image.GetPointData().SetScalars(scalars)
    image.SetImageToWorldMatrix(numpy_to_matrix(image_to_world))
    return image


def reference_geometry_string(shape, offset, affine):
    """Slicer's serialised geometry of a labelmap lattice (shape at index offset, voxel-to-RAS affine)."""
    image = slicer.vtkOrientedImageData()
    image.SetExtent(int(offset[0]), int(offset[0]) + shape[0] - 1, int(offset[1]), int(offset[1]) + shape[1] - 1,
                    int(offset[2]), int(offset[2]) + shape[2] - 1)
    image.SetImageToWorldMatrix(numpy_to_matrix(affine))
    return slicer.vtkSegmentationConverter.SerializeImageGeometry(image)
