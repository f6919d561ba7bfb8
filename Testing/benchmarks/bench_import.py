"""Benchmark: importing a 117-class `total` result into Slicer WITH 3D surfaces.

Compares, in the same run on the same data (real MRML from slicer-core):
- multilabel: `SegmentationLogic.mrml.segmentation_import.import_labelmap` on the one multilabel
  NIfTI file (read, one shared labelmap, one multi-label SurfaceNets pass);
- per-class: the incumbent extension's non-multilabel path: one NIfTI file per class of
  the task (117 files, as the official tool writes them without --ml), each loaded as a
  labelmap volume, imported into its own segment, the volume removed; then Slicer's
  closed-surface conversion of the segmentation, once with Slicer's default conversion
  settings and once with SurfaceNets (the per-class path's fastest setting).
Writing the per-class files is not timed (the engine writes them); reading them is.

Cases:
- dicom: the official result for the 512x512x20 DICOM example (example_seg_dicom, 31
  structures present) imported onto the series as Slicer loads it;
- upsampled: example_seg (41 structures) upsampled (nearest) to a realistic abdominal
  CT size, 512x512x120 at 0.75 mm (31 Mvoxels).

    python Testing/benchmarks/bench_import.py [--repeat N] [--cases dicom,upsampled]
"""
import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "Testing" / "support")]

from SegmentationLogic.mrml import scene as mrml_scene  # noqa: E402
from SegmentationLogic.mrml import segmentation_import as si  # noqa: E402
from SegmentationLogic.catalogue import load_catalogue  # noqa: E402
from sample_data import example_path  # noqa: E402


def upsampled_case(folder):
    """example_seg (3 mm, 122x101x30) -> 512x512x120 at 0.75 mm, nearest neighbour, centred."""
    img = nib.load(example_path("example_seg.nii.gz"))
    data = np.asanyarray(img.dataobj)
    data = data.repeat(4, axis=0).repeat(4, axis=1).repeat(4, axis=2)  # 488x404x120 at 0.75 mm
    out = np.zeros((512, 512, data.shape[2]), dtype=np.uint8)
    x0, y0 = (512 - data.shape[0]) // 2, (512 - data.shape[1]) // 2
    out[x0:x0 + data.shape[0], y0:y0 + data.shape[1]] = data
    affine = img.affine.copy()
    affine[:3, :3] /= 4
    affine[:3, 3] -= affine[:3, :3] @ np.array([x0, y0, 0]) + affine[:3, :3] @ np.array([1.5, 1.5, 1.5])
    path = folder / "upsampled_seg.nii.gz"
    nib.save(nib.Nifti1Image(out, affine), path)
    return path, None


def write_per_class(multilabel_path, class_map, folder):
    """One file per class, as TotalSegmentator writes without --ml (empty classes included)."""
    img = nib.load(multilabel_path)
    data = np.asanyarray(img.dataobj)
    folder.mkdir(exist_ok=True)
    for value, name in class_map.items():
        nib.save(nib.Nifti1Image((data == value).astype(np.uint8), img.affine), folder / f"{name}.nii.gz")
    return folder


def import_per_class(scene, folder, class_map, surface_nets):
    """The incumbent's readSegmentationFolder: load each file, import it as one segment."""
    import slicer
    import vtk

    volumes = mrml_scene.module_logic(scene, "Volumes")
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    node.CreateDefaultDisplayNodes()
    segmentation = node.GetSegmentation()
    if surface_nets:
        segmentation.SetConversionParameter("Conversion method", "1")
    for name in class_map.values():
        labelmap = volumes.AddArchetypeVolume(str(folder / f"{name}.nii.gz"), name, 1, vtk.vtkStringArray())
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segmentation.AddEmptySegment(name))
        slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, node, ids)
        scene.RemoveNode(labelmap.GetDisplayNode())
        scene.RemoveNode(labelmap.GetStorageNode())
        scene.RemoveNode(labelmap)
    node.CreateClosedSurfaceRepresentation()
    return node


def timed(fn, repeat):
    """Best wall time of `repeat` runs; each run's segmentation node is removed afterwards."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        node = fn()
        best = min(best, time.perf_counter() - start)
        node.GetScene().RemoveNode(node)
        del node  # free it now, not inside the next timed run
    return best


def run_case(name, multilabel_path, reference_path, class_map, repeat, work):
    scene = mrml_scene.new_scene()
    reference = mrml_scene.load_volume(scene, reference_path) if reference_path else None
    per_class_dir = write_per_class(multilabel_path, class_map, work / f"{name}_per_class")
    shape = nib.load(multilabel_path).shape
    present = len(np.unique(np.asanyarray(nib.load(multilabel_path).dataobj))) - 1

    def multilabel():
        return si.import_labelmap(scene, multilabel_path, class_map, reference_volume_node=reference)

    t_ml = timed(multilabel, repeat)
    t_pc_default = timed(lambda: import_per_class(scene, per_class_dir, class_map, surface_nets=False), repeat)
    t_pc_nets = timed(lambda: import_per_class(scene, per_class_dir, class_map, surface_nets=True), repeat)
    mrml_scene.release_scene(scene)
    return {"case": name, "shape": "x".join(map(str, shape)), "present": present, "multilabel": t_ml,
            "per_class_default": t_pc_default, "per_class_surface_nets": t_pc_nets}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=2, help="runs per method (best time is reported)")
    parser.add_argument("--cases", default="dicom,upsampled")
    args = parser.parse_args(argv)
    class_map = load_catalogue().task("total").classes
    work = Path(tempfile.mkdtemp(prefix="bench_import_"))
    rows = []
    try:
        for case in args.cases.split(","):
            if case == "dicom":
                rows.append(run_case("dicom", example_path("example_seg_dicom.nii.gz"),
                                     example_path("example_ct_dicom"), class_map, args.repeat, work))
            elif case == "upsampled":
                path, reference = upsampled_case(work)
                rows.append(run_case("upsampled", path, reference, class_map, args.repeat, work))
            else:
                parser.error(f"unknown case {case}")
            print_row(rows[-1])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print("Import of a 117-class `total` result with closed surfaces (best of %d, seconds)" % args.repeat)
    print(f"{'case':<10} {'labelmap':<13} {'present':>7} {'multilabel':>10} {'per-class':>10} {'ratio':>6} "
          f"{'per-class SN':>12} {'ratio':>6}")
    for r in rows:
        print(f"{r['case']:<10} {r['shape']:<13} {r['present']:>7} {r['multilabel']:>10.2f} "
              f"{r['per_class_default']:>10.2f} {r['per_class_default'] / r['multilabel']:>5.1f}x "
              f"{r['per_class_surface_nets']:>12.2f} {r['per_class_surface_nets'] / r['multilabel']:>5.1f}x")
    print("per-class: Slicer's default surface conversion; per-class SN: with SurfaceNets. Target ratio >= 5x.")


def print_row(r):
    print(f"[{r['case']}] multilabel {r['multilabel']:.2f} s, per-class {r['per_class_default']:.2f} s "
          f"(SurfaceNets {r['per_class_surface_nets']:.2f} s)", flush=True)


if __name__ == "__main__":
    main()
