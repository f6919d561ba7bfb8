"""3D preview PNG of a labelmap, rendered offscreen with VTK.

Surfaces: one pass of vtkSurfaceNets3D over all labels (smoothed, shared faces between
touching structures), each face coloured by its structure. Views: anterior (patient's
right on the left of the image, as when facing the patient) and left lateral, side by
side. Text: a title (task) at the top, a legend of the largest structures, and, when
given, a note in a red banner at the bottom (the engine uses it to label results made
with TEST models, so a picture can never pass for a real segmentation).

Colours: an explicit {name: (r, g, b)} mapping, else the recommended colour of the
standard terminology (`SegmentationLogic.terminology.recommended_color`), else a fixed
colour derived from the class name, so a structure keeps its
colour across tasks and runs. Components may be 0..1 floats or 0..255 integers.

Offscreen rendering needs no display: on Linux without $DISPLAY the EGL render window
(Mesa) is used directly.
"""
import colorsys
import hashlib
import os
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np

from .. import terminology
from ..errors import SegmentationError
from ..system.files import atomic_path

NOTE_BANNER_RGB = (0.78, 0.08, 0.08)  # the note's background, kept out of the class palette
BACKGROUND_RGB = (0.08, 0.09, 0.12)
LEGEND_ENTRIES = 20
LEGEND_WIDTH = 0.24  # fraction of the width left of the views


class PreviewError(SegmentationError):
    kind = "preview"


def _name_color(name):
    """Deterministic colour of a class name (not Python's salted hash)."""
    h = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big")
    hue = (h & 0xFFFF) / 65536.0
    if 0.95 <= hue or hue < 0.03:  # keep clear of the red note banner
        hue = (hue + 0.08) % 1.0
    sat = 0.45 + 0.4 * ((h >> 16) & 0xFF) / 255.0
    val = 0.75 + 0.2 * ((h >> 24) & 0xFF) / 255.0
    return colorsys.hsv_to_rgb(hue, sat, val)


def _normalise(rgb):
    rgb = tuple(float(c) for c in rgb[:3])
    if any(c > 1.0 for c in rgb):
        rgb = tuple(c / 255.0 for c in rgb)
    return rgb


def class_colors(names, colors=None):
    """{name: (r, g, b) in 0..1} for `names`: explicit, terminology, then name-derived."""
    out = {}
    for name in names:
        rgb = None
        if colors and name in colors:
            rgb = colors[name]
        else:
            try:
                rgb = terminology.recommended_color(name)
            except (KeyError, ValueError, LookupError):
                rgb = None
        out[name] = _normalise(rgb) if rgb is not None else _name_color(name)
    return out


def _as_image(labelmap):
    if isinstance(labelmap, nib.spatialimages.SpatialImage):
        return labelmap
    return nib.Nifti1Image(np.asarray(labelmap), np.eye(4))


def _render_window(size):
    """An offscreen render window; EGL directly when there is no display (no X warning)."""
    import vtk  # heavy (all of VTK): only when a preview is drawn

    window = None
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        for cls in ("vtkEGLRenderWindow", "vtkOSOpenGLRenderWindow"):
            try:
                import vtkmodules.vtkRenderingOpenGL2 as gl  # offscreen windows live here, not in `vtk`

                window = getattr(gl, cls)()
                break
            except (ImportError, AttributeError):
                continue
    if window is None:
        window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(int(size[0]), int(size[1]))
    return window


def _surfaces(data, spacing, origin, labels, smoothing):
    """One smoothed surface mesh for all labels, with per-face label (first non-background)."""
    import vtk  # heavy (all of VTK): only when a preview is drawn
    from vtk.util import numpy_support

    image = vtk.vtkImageData()
    image.SetDimensions(*data.shape)
    image.SetSpacing(*spacing)
    image.SetOrigin(*origin)
    scalars = numpy_support.numpy_to_vtk(np.ascontiguousarray(data.ravel(order="F")), deep=True)
    image.GetPointData().SetScalars(scalars)
    if hasattr(vtk, "vtkSurfaceNets3D"):
        nets = vtk.vtkSurfaceNets3D()  # VTK >= 9.3: all labels in one pass, shared faces
        nets.SetInputData(image)
        nets.SetBackgroundLabel(0)
        nets.SetNumberOfLabels(len(labels))
        for i, v in enumerate(labels):
            nets.SetLabel(i, float(v))
        nets.SetOutputMeshTypeToTriangles()
        nets.SetSmoothing(smoothing > 0)
        nets.SetNumberOfIterations(int(smoothing))
        nets.Update()
        mesh = nets.GetOutput()
        boundary = mesh.GetCellData().GetArray("BoundaryLabels")
        if boundary is None or mesh.GetNumberOfCells() == 0:
            return None, None
        pairs = numpy_support.vtk_to_numpy(boundary).reshape(-1, 2)
        return mesh, np.where(pairs[:, 0] > 0, pairs[:, 0], pairs[:, 1]).astype(np.int64)
    # older VTK (e.g. an older Slicer): discrete flying edges per label value + windowed sinc
    edges = vtk.vtkDiscreteFlyingEdges3D()
    edges.SetInputData(image)
    for i, v in enumerate(labels):
        edges.SetValue(i, float(v))
    edges.ComputeScalarsOn()
    edges.ComputeNormalsOff()
    smoother = vtk.vtkWindowedSincPolyDataFilter()
    smoother.SetInputConnection(edges.GetOutputPort())
    smoother.SetNumberOfIterations(max(int(smoothing), 1))
    smoother.SetPassBand(0.01 if smoothing > 0 else 1.0)
    smoother.NonManifoldSmoothingOn()
    smoother.NormalizeCoordinatesOn()
    smoother.BoundarySmoothingOff()
    smoother.Update()
    mesh = smoother.GetOutput()
    if mesh.GetNumberOfCells() == 0:
        return None, None
    point_label = numpy_support.vtk_to_numpy(mesh.GetPointData().GetScalars()).astype(np.int64)
    triangles = numpy_support.vtk_to_numpy(mesh.GetPolys().GetConnectivityArray())
    mesh.GetPointData().SetScalars(None)
    return mesh, point_label[triangles[::3]]


def _legend(renderer, entries, size):
    import vtk  # heavy (all of VTK): only when a preview is drawn

    legend = vtk.vtkLegendBoxActor()
    legend.SetNumberOfEntries(len(entries))
    square = vtk.vtkPlaneSource()
    square.Update()
    for i, (name, rgb) in enumerate(entries):
        legend.SetEntry(i, square.GetOutput(), name, rgb)
    legend.BorderOff()
    legend.SetPadding(2)
    legend.GetEntryTextProperty().SetColor(0.92, 0.92, 0.92)
    legend.GetEntryTextProperty().SetFontSize(max(10, int(size[1] / 60)))
    height = min(0.8, 0.032 * len(entries) * 1000 / size[1])
    top = 1.0 - 70.0 / size[1]
    legend.GetPositionCoordinate().SetCoordinateSystemToNormalizedViewport()
    legend.GetPositionCoordinate().SetValue(0.005, top - height)
    legend.GetPosition2Coordinate().SetCoordinateSystemToNormalizedViewport()
    legend.GetPosition2Coordinate().SetValue(LEGEND_WIDTH - 0.01, height)
    renderer.AddViewProp(legend)


def _text(renderer, text, x, y, font_size, color=(1, 1, 1), background=None, bold=False, anchor_top=False):
    import vtk  # heavy (all of VTK): only when a preview is drawn

    actor = vtk.vtkTextActor()
    actor.SetInput(text)
    prop = actor.GetTextProperty()
    prop.SetFontSize(int(font_size))
    prop.SetColor(*color)
    prop.SetBold(bold)
    if anchor_top:
        prop.SetVerticalJustificationToTop()
    if background is not None:
        prop.SetBackgroundColor(*background)
        prop.SetBackgroundOpacity(1.0)
        prop.SetFrame(True)
        prop.SetFrameColor(*background)
        prop.SetFrameWidth(6)
    actor.GetPositionCoordinate().SetCoordinateSystemToNormalizedViewport()
    actor.GetPositionCoordinate().SetValue(x, y)
    renderer.AddViewProp(actor)
    return actor


def render_preview(labelmap, class_map, png_path, colors=None, note=None, size=(1000, 1000), title=None,
                   views=("anterior", "left lateral"), smoothing=20):
    """Render `labelmap` (nibabel image or array) to `png_path`; returns the path.

    `class_map` {value: name}; `colors` {name: (r, g, b)}; `note` is printed in a red
    banner (TEST-model runs); `title` at the top (e.g. "TotalSegmentator total --fast").
    The PNG is written to a temporary name and renamed, so no half-written file remains.
    """
    import vtk  # heavy (all of VTK): only when a preview is drawn
    from vtk.util import numpy_support

    png_path = Path(png_path)
    img = nib.as_closest_canonical(_as_image(labelmap))  # RAS voxel order: views are anatomical
    data = np.asanyarray(img.dataobj)
    data = data.reshape(data.shape[:3]) if data.ndim > 3 else data
    if data.dtype.kind == "f":
        data = np.rint(data)
    data = data.astype(np.int32 if data.max(initial=0) > 65535 else np.uint16)
    spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
    origin = tuple(float(v) for v in img.affine[:3, 3])
    counts = np.bincount(data.ravel()) if data.size else np.zeros(1, int)
    labels = [int(v) for v in np.nonzero(counts)[0] if v > 0]
    names = {v: (class_map or {}).get(v, str(v)) for v in labels}
    palette = class_colors(list(names.values()), colors)

    window = _render_window(size)
    views = tuple(views) or ("anterior",)
    left = LEGEND_WIDTH if labels else 0.0
    bottom = 0.12 if note else 0.02
    top = 1.0 - 60.0 / size[1]
    background = vtk.vtkRenderer()  # fills the title, legend and note areas
    background.SetBackground(*BACKGROUND_RGB)
    window.AddRenderer(background)
    renderers = []
    for i, view in enumerate(views):
        r = vtk.vtkRenderer()
        x0 = left + (1 - left) * i / len(views)
        x1 = left + (1 - left) * (i + 1) / len(views)
        r.SetViewport(x0, bottom, x1, top)
        r.SetBackground(*BACKGROUND_RGB)
        window.AddRenderer(r)
        renderers.append((view, r, (x1 - x0) * size[0] / ((top - bottom) * size[1])))

    mesh, face_label = _surfaces(data, spacing, origin, labels, smoothing) if labels else (None, None)
    if mesh is not None:
        # sized by the labels too: a label that only touches other labels has no face of its own
        lut = np.zeros((max(int(face_label.max()), max(labels)) + 1, 3), np.uint8)
        for v in labels:
            lut[v] = np.round(np.array(palette[names[v]]) * 255)
        rgb = numpy_support.numpy_to_vtk(lut[face_label], deep=True, array_type=vtk.VTK_UNSIGNED_CHAR)
        rgb.SetName("Colors")
        mesh.GetCellData().SetScalars(rgb)
        normals = vtk.vtkPolyDataNormals()
        normals.SetInputData(mesh)
        normals.SplittingOff()
        normals.ConsistencyOff()  # faces shared by two structures have no single outside
        mapper = vtk.vtkPolyDataMapper()
        mapper.SetInputConnection(normals.GetOutputPort())
        mapper.SetScalarModeToUseCellData()
        mapper.SetColorModeToDirectScalars()
        actor = vtk.vtkActor()
        actor.SetMapper(mapper)
        prop = actor.GetProperty()
        prop.SetAmbient(0.25)
        prop.SetDiffuse(0.8)
        prop.SetSpecular(0.0)  # no white highlights: colours stay those of the classes
        for view, r, aspect in renderers:
            r.AddActor(actor)
            _place_camera(r, mesh.GetBounds(), view, aspect)
    for view, r, _ in renderers:
        _text(r, view, 0.02, 0.97, size[1] / 45, color=(0.7, 0.7, 0.7), anchor_top=True)

    overlay = vtk.vtkRenderer()  # text over the whole window
    overlay.SetLayer(1)
    overlay.InteractiveOff()
    window.SetNumberOfLayers(2)
    window.AddRenderer(overlay)
    title = title or "TotalSegmentator"
    _text(overlay, f"{title}  -  {len(labels)} structure{'s' if len(labels) != 1 else ''}", 0.01, 0.985,
          size[1] / 36, bold=True, anchor_top=True)
    if labels:
        largest = sorted(labels, key=lambda v: -counts[v])[:LEGEND_ENTRIES]
        _legend(overlay, [(names[v], palette[names[v]]) for v in largest], size)
    else:
        _text(overlay, "no structure found (empty segmentation)", 0.3, 0.5, size[1] / 30, color=(1, 0.8, 0.3))
    if note:
        width = max(20, int(size[0] / (size[1] / 60)))
        _text(overlay, textwrap.fill(note, width), 0.02, 0.03, size[1] / 38, background=NOTE_BANNER_RGB, bold=True)

    window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.SetInputBufferTypeToRGB()
    grab.ReadFrontBufferOff()
    grab.Update()
    pixels = grab.GetOutput()
    if pixels.GetDimensions()[0] != int(size[0]) or pixels.GetDimensions()[1] != int(size[1]):
        raise PreviewError("Offscreen 3D rendering is not available (no OpenGL context).",
                           "Install Mesa's EGL/OSMesa libraries (e.g. apt install libegl1 libgl1-mesa-dri) "
                           "or run with a display; the segmentation itself is not affected.")
    with atomic_path(png_path, ".png") as tmp:
        writer = vtk.vtkPNGWriter()
        writer.SetFileName(str(tmp))
        writer.SetInputData(pixels)
        writer.Write()
        if writer.GetErrorCode() or os.path.getsize(tmp) == 0:
            raise PreviewError(f"Could not write the preview image {png_path}.",
                               "Check that the output folder is writable and the disk is not full.")
    window.Finalize()
    return png_path


def _place_camera(renderer, bounds, view, aspect):
    """Anterior: look from the front (+A) with S up. Left lateral: from the patient's left.
    Parallel projection scaled so the structures fill the viewport (width/height `aspect`)."""
    center = np.array([(bounds[0] + bounds[1]) / 2, (bounds[2] + bounds[3]) / 2, (bounds[4] + bounds[5]) / 2])
    direction = {"anterior": (0, 1, 0), "posterior": (0, -1, 0), "left lateral": (-1, 0, 0),
                 "right lateral": (1, 0, 0)}[view]
    camera = renderer.GetActiveCamera()
    camera.SetFocalPoint(*center)
    camera.SetPosition(*(center + 1000 * np.array(direction, dtype=float)))
    camera.SetViewUp(0, 0, 1)
    camera.ParallelProjectionOn()
    renderer.ResetCamera(bounds)
    extent = np.array([bounds[1] - bounds[0], bounds[3] - bounds[2], bounds[5] - bounds[4]])
    width = extent[1] if "lateral" in view else extent[0]
    camera.SetParallelScale(0.53 * max(extent[2], width / aspect))
