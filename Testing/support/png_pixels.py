"""Reading PNG files the engine writes (previews) as pixel arrays, for assertions."""
import vtk
from vtk.util import numpy_support


def read_png(path):
    """(height, width, 3) int array, top row first."""
    reader = vtk.vtkPNGReader()
    reader.SetFileName(str(path))
    reader.Update()
    image = reader.GetOutput()
    w, h, _ = image.GetDimensions()
    ncomp = image.GetPointData().GetScalars().GetNumberOfComponents()
    pixels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(h, w, ncomp)
    return pixels[::-1, :, :3].astype(int)
