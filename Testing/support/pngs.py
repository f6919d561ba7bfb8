"""Reading rendered PNGs back as pixels (preview and demo tests)."""


def read_png(path):
    import vtk
    from vtk.util import numpy_support

    reader = vtk.vtkPNGReader()
    reader.SetFileName(str(path))
    reader.Update()
    image = reader.GetOutput()
    w, h, _ = image.GetDimensions()
    ncomp = image.GetPointData().GetScalars().GetNumberOfComponents()
    pixels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(h, w, ncomp)
    return pixels[::-1, :, :3].astype(int)  # top row first
