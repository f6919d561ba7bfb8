"""Closed surfaces for every label of a labelmap from ONE multi-label SurfaceNets pass.

One pass over the voxels instead of one per segment, and touching organs share their
boundary. SurfaceNets' own (joint) smoothing is used with the number of iterations
Slicer derives from its smoothing factor, and the segmentation's conversion parameters
name the same method, so a surface Slicer regenerates after an edit looks the same.
Without vtkSurfaceNets3D (old VTK) callers fall back to Slicer's standard conversion.
"""
import numpy as np
import vtk
from vtk.util import numpy_support

SMOOTHING_FACTOR = 0.5  # Slicer's default closed-surface smoothing factor


def surface_nets_available():
    """vtkSurfaceNets3D with the multi-label API used here (VTK >= 9.3, Slicer >= 5.6)."""
    nets = getattr(vtk, "vtkSurfaceNets3D", None)
    return nets is not None and all(hasattr(nets, m) for m in ("SetOutputMeshTypeToTriangles", "SetSmoothing",
                                                               "SetNumberOfIterations", "SetValue"))


def set_conversion_parameters(segmentation):
    segmentation.SetConversionParameter("Smoothing factor", str(SMOOTHING_FACTOR))
    if surface_nets_available():
        segmentation.SetConversionParameter("Conversion method", "1")  # SurfaceNets
        segmentation.SetConversionParameter("SurfaceNets smoothing", "1")


def _iterations(smoothing_factor):
    # Slicer's mapping of its smoothing factor to SurfaceNets smoothing iterations
    # (vtkBinaryLabelmapToClosedSurfaceConversionRule): 0.5 -> 8.
    return int(np.floor(15.0 * smoothing_factor ** 2 + 9.0 * smoothing_factor))


def surfaces_by_label(data, extent_start, image_to_world, labels, smoothing_factor=SMOOTHING_FACTOR):
    """{label: vtkPolyData closed surface in RAS} for `data` indexed [i, j, k] at extent_start."""
    padded = np.zeros(np.add(data.shape, 2), dtype=data.dtype, order="F")  # closes surfaces cut by the border
    padded[1:-1, 1:-1, 1:-1] = data
    image = vtk.vtkImageData()
    start = np.asarray(extent_start, dtype=int) - 1
    image.SetExtent(start[0], start[0] + padded.shape[0] - 1, start[1], start[1] + padded.shape[1] - 1,
                    start[2], start[2] + padded.shape[2] - 1)
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(padded.ravel(order="F"), deep=1))
    del padded
    nets = vtk.vtkSurfaceNets3D()
    nets.SetInputData(image)
    nets.SetOutputMeshTypeToTriangles()
    iterations = _iterations(smoothing_factor)
    nets.SetSmoothing(iterations > 0)
    nets.SetNumberOfIterations(iterations)
    for i, label in enumerate(labels):
        nets.SetValue(i, int(label))
    nets.Update()
    mesh = nets.GetOutput()
    surfaces = {int(label): vtk.vtkPolyData() for label in labels}
    if mesh.GetNumberOfPolys() == 0:
        return surfaces
    rotation = image_to_world[:3, :3].astype(np.float32)
    points = numpy_support.vtk_to_numpy(mesh.GetPoints().GetData())
    world = points @ rotation.T + image_to_world[:3, 3].astype(np.float32)
    triangles = numpy_support.vtk_to_numpy(mesh.GetPolys().GetConnectivityArray()).reshape(-1, 3)
    sides = numpy_support.vtk_to_numpy(mesh.GetCellData().GetArray("BoundaryLabels"))
    # A face between labels a and b belongs to both; SurfaceNets orients it outward from
    # its first label, so the second label gets it reversed. A mirrored lattice (negative
    # determinant) reverses every face once more, keeping normals outward in RAS.
    mirrored = np.linalg.det(rotation) < 0
    wanted = np.asarray(labels, dtype=sides.dtype)
    groups = []
    for side in (0, 1):
        order = np.argsort(sides[:, side], kind="stable")
        owner = sides[order, side]
        groups.append((order, np.searchsorted(owner, wanted, "left"), np.searchsorted(owner, wanted, "right")))
    for i, label in enumerate(labels):
        (order0, lo0, hi0), (order1, lo1, hi1) = groups
        faces = [triangles[order0[lo0[i]:hi0[i]]], triangles[order1[lo1[i]:hi1[i]]][:, ::-1]]
        face = np.concatenate(faces)
        if len(face) == 0:
            continue
        if mirrored:
            face = face[:, ::-1]
        used, local = np.unique(face, return_inverse=True)
        surfaces[int(label)] = _polydata(world[used], local.reshape(-1, 3))
    return surfaces


def _polydata(points, triangles):
    vtk_points = vtk.vtkPoints()
    vtk_points.SetData(numpy_support.numpy_to_vtk(np.ascontiguousarray(points), deep=1))
    offsets = np.arange(0, 3 * len(triangles) + 1, 3, dtype=np.int64)
    cells = vtk.vtkCellArray()
    cells.SetData(numpy_support.numpy_to_vtkIdTypeArray(offsets, deep=1),
                  numpy_support.numpy_to_vtkIdTypeArray(np.ascontiguousarray(triangles, dtype=np.int64).ravel(),
                                                        deep=1))
    poly = vtk.vtkPolyData()
    poly.SetPoints(vtk_points)
    poly.SetPolys(cells)
    return poly
