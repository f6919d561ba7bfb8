"""Write small synthetic DICOM series with SimpleITK, for input-reading tests.

Each slice is a real DICOM file (GDCM writer) with the tags a scanner writes for
geometry and rescale, so readers see orientation, position, spacing, slope/intercept,
series UID, image type exactly as they would from a PACS export.
"""
import os

import numpy as np
import SimpleITK as sitk

UID_ROOT = "1.2.826.0.1.3680043.2.1125.77"


def rotation(axis, degrees):
    a = np.radians(degrees)
    c, s = np.cos(a), np.sin(a)
    i, j = [(1, 2), (0, 2), (0, 1)][axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def write_series(folder, volume_zyx, spacing=(0.8, 0.7, 2.5), direction=np.eye(3), origin=(-100.0, -120.0, 50.0),
                 slope=None, intercept=None, series=1, description="synthetic", modality="CT",
                 tilt_mm_per_slice=0.0, image_type="ORIGINAL\\PRIMARY\\AXIAL", name_order=None, extra_tags=None):
    """Write `volume_zyx` (slices, rows, columns) as one DICOM file per slice.

    `direction` columns are the LPS row, column and slice directions; `slope`/`intercept`
    store values as (value - intercept) / slope; `tilt_mm_per_slice` shifts each slice
    along the column direction (gantry tilt); `name_order` permutes file names so that
    directory order is not slice order; `extra_tags` ({"gggg|eeee": value}) go into every slice.
    """
    os.makedirs(folder, exist_ok=True)
    volume_zyx = np.asarray(volume_zyx)
    direction = np.asarray(direction, dtype=float)
    if slope is not None:
        image = sitk.GetImageFromArray(volume_zyx.astype(np.float64))
    else:
        image = sitk.GetImageFromArray(volume_zyx.astype(np.int16))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = f"{UID_ROOT}.{series}"
    n = volume_zyx.shape[0]
    names = list(name_order) if name_order is not None else list(range(n))
    for k in range(n):
        s = image[:, :, k]
        position = (np.asarray(origin) + direction[:, 2] * spacing[2] * k + direction[:, 1] * tilt_mm_per_slice * k)
        tags = {
            "0008|0060": modality, "0008|0008": image_type, "0008|103e": description,
            "0020|000d": f"{UID_ROOT}.0", "0020|000e": uid, "0020|0011": str(series),
            "0008|0018": f"{uid}.{k + 1}", "0020|0013": str(k + 1),
            "0020|0037": "\\".join(f"{v:.6f}" for v in (*direction[:, 0], *direction[:, 1])),
            "0020|0032": "\\".join(f"{v:.4f}" for v in position),
            "0028|0030": f"{spacing[1]}\\{spacing[0]}", "0018|0050": str(spacing[2]),
        }
        tags.update(extra_tags or {})
        if slope is not None:
            tags.update({"0028|1053": str(slope), "0028|1052": str(intercept), "0028|0100": "16",
                         "0028|0101": "16", "0028|0102": "15", "0028|0103": "1"})
        for key, value in tags.items():
            s.SetMetaData(key, value)
        writer.SetFileName(os.path.join(folder, f"IM{names[k]:04d}.dcm"))
        writer.Execute(s)
    return folder


def phantom(shape_zyx=(12, 40, 48), seed=0):
    """A CT-like volume: air around a water ellipse with a bone blob, in HU."""
    z, y, x = np.indices(shape_zyx)
    nz, ny, nx = shape_zyx
    vol = np.full(shape_zyx, -1000, dtype=np.int16)
    body = ((y - ny / 2) / (ny * 0.4)) ** 2 + ((x - nx / 2) / (nx * 0.45)) ** 2 < 1
    vol[body] = 40
    bone = ((y - ny * 0.6) ** 2 + (x - nx * 0.4) ** 2 + ((z - nz / 2) * 2) ** 2) < (min(ny, nx) * 0.15) ** 2
    vol[bone] = 700
    rng = np.random.default_rng(seed)
    return (vol + rng.integers(-20, 20, shape_zyx)).astype(np.int16)
