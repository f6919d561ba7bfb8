"""Regenerate Resources/Screenshots/TotalSegmentator3D.png, the README's 3D screenshot.

The official 117-class result for the example CT (example_seg.nii.gz on example_ct_sm)
is imported with `SegmentationLogic.mrml.segmentation_import.import_labelmap` into a slicer-core
scene and rendered offscreen by Slicer's own 3D-view displayable managers (camera, view,
segmentations), so the picture is what Slicer's 3D view shows after Apply, with the
large soft-tissue organs set to 30% opacity (as a user would in the Segmentations
module) so that the skeleton, vessels and kidneys inside show.

    python Testing/tools/make_screenshot.py [--out PATH] [--size 720x420]
"""
import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "Testing" / "support")]

from SegmentationLogic.mrml import scene as mrml_scene  # noqa: E402
from SegmentationLogic.mrml.segmentation_import import import_labelmap  # noqa: E402
from SegmentationLogic.catalogue import load_catalogue  # noqa: E402
from sample_data import example_path  # noqa: E402

SEE_THROUGH = ("liver", "colon", "stomach", "small_bowel", "duodenum", "spleen", "autochthon_left", "autochthon_right",
               "iliopsoas_left", "iliopsoas_right", "lung_lower_lobe_left", "lung_lower_lobe_right")
DISPLAYABLE_MANAGERS = ("vtkMRMLCameraDisplayableManager", "vtkMRMLViewDisplayableManager",
                        "vtkMRMLSegmentationsDisplayableManager3D")


def render_3d_view(scene, size, azimuth=-30.0, elevation=25.0, zoom=1.5):
    """Render the scene's 3D view offscreen (no display needed) and return the vtkImageData."""
    import slicer
    import vtk

    view = scene.AddNewNodeByClass("vtkMRMLViewNode")
    view.SetLayoutName("1")
    view.SetBoxVisible(False)
    view.SetAxisLabelsVisible(False)
    view.SetOrientationMarkerType(0)
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(*size)
    window.SetMultiSamples(8)
    renderer = vtk.vtkRenderer()
    window.AddRenderer(renderer)
    interactor = vtk.vtkRenderWindowInteractor()  # the camera displayable manager expects one
    interactor.SetRenderWindow(window)
    group = slicer.vtkMRMLDisplayableManagerGroup()
    group.SetRenderer(renderer)
    for name in DISPLAYABLE_MANAGERS:
        group.AddDisplayableManager(getattr(slicer, name)())
    group.SetMRMLDisplayableNode(view)
    renderer.ResetCamera()
    camera = renderer.GetActiveCamera()
    camera.Azimuth(azimuth)
    camera.Elevation(elevation)
    camera.OrthogonalizeViewUp()
    camera.Zoom(zoom)
    renderer.ResetCameraClippingRange()
    window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.Update()
    return grab.GetOutput()


def main(argv=None):
    import vtk

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "Resources" / "Screenshots" / "TotalSegmentator3D.png")
    parser.add_argument("--size", default="720x420")
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.split("x"))
    scene = mrml_scene.new_scene()
    ct = mrml_scene.load_volume(scene, example_path("example_ct_sm.nii.gz"))
    node = import_labelmap(scene, example_path("example_seg.nii.gz"),
                                         load_catalogue().task("total").classes, reference_volume_node=ct, task="total")
    display = node.GetDisplayNode()
    for segment_id in SEE_THROUGH:
        if node.GetSegmentation().GetSegment(segment_id) is not None:
            display.SetSegmentOpacity3D(segment_id, 0.3)
    image = render_3d_view(scene, size)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    writer = vtk.vtkPNGWriter()
    writer.SetCompressionLevel(9)
    writer.SetFileName(str(args.out))
    writer.SetInputData(image)
    writer.Write()
    print(f"{args.out} ({args.out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
