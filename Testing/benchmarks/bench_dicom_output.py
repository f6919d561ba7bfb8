"""Benchmark: writing DICOM SEG and RTSTRUCT for a realistic series, ours vs the official writers.

A synthetic axial CT series (512x512xN, one DICOM file per slice) and a labelmap with K
classes of organ-sized blobs on it. Timed in the same run, on the same files:
- ours: reading the source headers + SEG (highdicom) + RTSTRUCT (pydicom, scikit-image);
- official: `save_mask_as_dicomseg` and `save_mask_as_rtstruct` of TotalSegmentator 2.18.0
  (highdicom; rt-utils with OpenCV), in a subprocess, on the same labelmap;
- reference for scale: writing the multilabel NIfTI.
Prints seconds and the ratio ours / official (below 1: faster).

    python Testing/benchmarks/bench_dicom_output.py [--slices 100] [--classes 40]
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "Testing" / "support"))

from dicomseries import write_series  # noqa: E402
from SegmentationLogic.catalogue import load_catalogue  # noqa: E402
from SegmentationLogic.imaging.read import load_image  # noqa: E402
from SegmentationLogic.outputs.dicom_outputs import plan_outputs  # noqa: E402
from SegmentationLogic.outputs.labelmap import multilabel_image  # noqa: E402
from SegmentationLogic.outputs.writer import AtomicWriter  # noqa: E402

OFFICIAL = r"""
import json, sys, time, types
import nibabel as nib, numpy as np
from pathlib import Path
sys.modules["nnunetv2.training.nnUNetTrainer.primus.primus_trainers"] = types.ModuleType("p")
from totalsegmentator.dicom_io import save_mask_as_dicomseg, save_mask_as_rtstruct
labels_file, series, out, classes = sys.argv[1], sys.argv[2], Path(sys.argv[3]), json.loads(sys.argv[4])
img = nib.load(labels_file); data = np.asanyarray(img.dataobj)
classes = {int(k): v for k, v in classes.items()}
t = time.perf_counter(); save_mask_as_dicomseg(data, classes, series, out / "seg.dcm", img.affine); seg = time.perf_counter() - t
t = time.perf_counter(); save_mask_as_rtstruct(data, classes, series, out / "rt.dcm"); rt = time.perf_counter() - t
print(json.dumps({"seg": seg, "rtstruct": rt}))
"""


def make_case(folder, slices, n_classes, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.zeros((slices, 512, 512), np.uint8)
    z, y, x = np.ogrid[:slices, :512, :512]
    for value in range(1, n_classes + 1):
        c = rng.uniform([0, 80, 80], [slices, 430, 430])
        r = rng.uniform([slices / 8, 20, 20], [slices / 3, 60, 60])
        labels[((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2 < 1] = value
    hu = labels.astype(np.int16) * 10 - 1000
    write_series(str(folder), hu, spacing=(0.8, 0.8, 1.5), extra_tags={"0020|0052": "1.2.826.0.1.3680043.2.1125.9"})
    img = load_image(folder)
    values = np.rint((np.asanyarray(img.dataobj) + 1000) / 10).astype(np.uint8)
    return img, values


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=100)
    ap.add_argument("--classes", type=int, default=40)
    args = ap.parse_args()
    names = load_catalogue().task("total").classes
    class_map = {k: names[k] for k in range(1, args.classes + 1)}
    with tempfile.TemporaryDirectory(prefix="bench_dicom_") as tmp:
        tmp = Path(tmp)
        img, labels = make_case(tmp / "series", args.slices, args.classes)
        labelmap = multilabel_image(labels, img, class_map)
        t = time.perf_counter()
        nib.save(labelmap, tmp / "labels.nii.gz")
        nifti_s = time.perf_counter() - t

        ours = {}
        for kind in ("dicom_seg", "dicom_rtstruct"):
            t = time.perf_counter()
            plan = plan_outputs(tmp / "series", tmp / f"ours_{kind}.dcm", [kind], "total")
            writer = AtomicWriter()
            plan.write(writer, labelmap, class_map, "total")
            writer.commit()
            ours[kind] = time.perf_counter() - t
        (tmp / "official").mkdir()
        out = subprocess.run([sys.executable, "-c", OFFICIAL, str(tmp / "labels.nii.gz"), str(tmp / "series"),
                              str(tmp / "official"), json.dumps(class_map)], capture_output=True, text=True,
                             encoding="utf-8", errors="replace")
        if out.returncode:
            print(out.stderr[-3000:])
            return 1
        official = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"series 512x512x{args.slices}, {args.classes} classes; NIfTI write (scale reference) {nifti_s:.2f} s")
        for ours_key, off_key in (("dicom_seg", "seg"), ("dicom_rtstruct", "rtstruct")):
            print(f"{ours_key:15s} ours {ours[ours_key]:7.2f} s   official {official[off_key]:7.2f} s   "
                  f"ratio {ours[ours_key] / official[off_key]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
