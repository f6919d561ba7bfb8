"""The liver-vessel pipeline and the split of existing masks, as files in, files out.

    from SegmentationLogic.vessels import split_vessel_files, run_liver_vessels
    qc = split_vessel_files("liver_vessels.nii.gz", "out", liver="liver.nii.gz",
                            portal_trunk="portal_vein_and_splenic_vein.nii.gz",
                            ivc="inferior_vena_cava.nii.gz")["qc"]
    run_liver_vessels("ct.nii.gz", "out", split_portal_hepatic=True)

Both are what `python -m SegmentationLogic split-vessels` and `liver-vessels` run.
"""
import datetime
from pathlib import Path

import numpy as np

from ..errors import SegmentationError
from ..pipeline import segment
from ..progress import Progress
from .enhancement import enhance, no_liver_error
from .io import (OUTPUT_FILES, SUPPORT_FILES, VesselInputError, check_same_grid, from_canonical, load_image,
                 load_masks, mask_metadata, ras_to_ijk, read_metadata, write_json, write_nifti, write_split_files)
from .split import split_vessels

MODES = ("enhanced_liver", "liver_vessels_only", "standard")
SUPPORT_CLASSES = ("liver", "portal_vein_and_splenic_vein", "inferior_vena_cava")
OUTSIDE_LIVER_WARNING = 0.2


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _progress(progress):
    return progress if progress is not None else (lambda *a, **k: None)


def split_vessel_files(vessels, out_dir, liver=None, portal_trunk=None, ivc=None, use_skeleton=True,
                       min_component_size=20, write_skeleton=None, labeled_only=False, portal_points_ras=None,
                       hepatic_points_ras=None, progress=None):
    """Split a vessel mask file into portal and hepatic files in `out_dir`.

    Any of liver, portal_trunk, ivc may be None (the split then falls back on anatomy and
    says so in the QC warnings); a path given but missing, another grid, or an empty
    vessel mask is an error. User seed points are RAS mm. Writes portal_vein_branches,
    hepatic_veins, liver_vessels_labeled (1 portal, 2 hepatic), the skeleton labels when
    the skeleton is used (or as `write_skeleton` says), the confidence map
    liver_vessels_split_confidence (0.5-1.0 on vessel voxels, below 0.75 "unsure", 0
    elsewhere), and the QC into enhanced_liver_vessels_metadata.json (created, or updated
    when the enhancement wrote it). Returns {"qc", "files", "result"}.
    """
    step = _progress(progress)
    step("load", 0.0, "Reading the masks")
    ref, arrays, spacing, can_affine, notes = load_masks(vessels, liver, portal_trunk, ivc)
    if not arrays["vessels"].any():
        raise VesselInputError(f"The vessel mask {vessels} is empty: there is nothing to split.",
                               "Check the liver_vessels result; a CT without contrast often shows no vessels.")
    result = split_vessels(arrays["vessels"], spacing, arrays["liver"], arrays["portal_trunk"], arrays["ivc"],
                           use_skeleton=use_skeleton, min_component_size=min_component_size,
                           portal_points=ras_to_ijk(portal_points_ras, can_affine) if portal_points_ras else None,
                           hepatic_points=ras_to_ijk(hepatic_points_ras, can_affine) if hepatic_points_ras else None,
                           progress=progress)
    qc = result.qc
    qc["warnings"] = notes + qc["warnings"] + _support_warnings(arrays)
    step("save", 0.0, "Writing the split")
    write_skeleton = use_skeleton if write_skeleton is None else write_skeleton
    labels = from_canonical(result.labels, ref)
    skeleton = from_canonical(result.skeleton_labels, ref) if write_skeleton else None
    confidence = from_canonical(result.confidence, ref)
    files = write_split_files(out_dir, labels, ref, skeleton, labeled_only, confidence)

    meta = read_metadata(out_dir)
    if not meta:
        meta = {"input": str(vessels), "timestamp": _now(), **mask_metadata(arrays["vessels"], spacing),
                "fallbacks": []}
    meta.setdefault("inputs", {})
    meta["inputs"].update({"vessels": str(vessels), "liver": _str(liver), "portal_trunk": _str(portal_trunk),
                           "ivc": _str(ivc)})
    meta["portal_hepatic_split_qc"] = qc
    if labeled_only:
        meta["labeled_only"] = True
    files.append(write_json(meta, Path(out_dir) / OUTPUT_FILES["metadata"]))
    step("save", 1.0, "Split written")
    return {"qc": qc, "files": files, "result": result}


def _str(p):
    return None if p is None else str(p)


def _support_warnings(arrays):
    out = []
    vessels, liver = arrays["vessels"], arrays["liver"]
    if liver is None:
        out.append("Liver mask missing: vessels outside the liver cannot be recognised.")
    elif not liver.any():
        out.append("Liver mask is empty.")
    else:
        outside = float((vessels & ~liver).sum() / max(vessels.sum(), 1))
        if outside > OUTSIDE_LIVER_WARNING:
            out.append(f"{outside:.0%} of the vessel voxels lie outside the liver mask: "
                       "are both masks from the same CT?")
    return out


# ---------------------------------------------------------------------------------------
# the pipeline on a CT

def _write_classes(result, ref_img, out_dir, names):
    """Write the named classes of an engine result as one mask file each; returns paths."""
    arr = np.asanyarray(result.labelmap.dataobj)
    by_name = {v: k for k, v in result.class_map.items()}
    paths = {}
    for name in names:
        value = by_name.get(name)
        mask = (arr == value) if value is not None else np.zeros(arr.shape, bool)
        paths[name] = write_nifti(mask, ref_img, Path(out_dir) / f"{name}.nii.gz")
    return paths


def run_liver_vessels(input, output, mode="enhanced_liver", liver_mask=None, robust_crop=False, device="auto",
                      min_component_size=40, no_fallback_full_liver=False, split_portal_hepatic=False,
                      split_support_dir=None, generate_split_support=False, skip_main_body_veins=False,
                      no_skeleton=False, min_split_component_size=20, labeled_only=False,
                      remove_enhanced_binary=False, weights_dir=None, progress=None, cancel=None,
                      check_modality=True):
    """The enhanced liver-vessel pipeline on a CT (options as the published CLI).

    mode enhanced_liver: liver_vessels task, restricted to the liver (given, found in
    `output`, or segmented with liver, portal trunk and IVC in one ROI-subset run),
    small components removed -> enhanced_liver_vessels.nii.gz + metadata; with
    split_portal_hepatic (implied by labeled_only) the portal/hepatic split follows.
    mode liver_vessels_only: the liver_vessels task's files. mode standard: a total run.
    Returns {"files", "metadata", "qc"}.
    """
    if mode not in MODES:
        raise SegmentationError(f"Unknown mode '{mode}'.", f"Use one of: {', '.join(MODES)}.")
    split = bool(split_portal_hepatic or labeled_only)
    if split and mode != "enhanced_liver":
        raise SegmentationError(f"The portal/hepatic split needs --mode enhanced_liver, not {mode}.",
                                "Drop --mode (enhanced_liver is the default), or run split-vessels on your masks.")
    if cancel is not None and progress is None:  # our own steps check the token too
        progress = Progress(None, cancel=cancel)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    common = dict(device=device, robust_crop=robust_crop, weights_dir=weights_dir, progress=progress, cancel=cancel,
                  check_modality=check_modality)
    if mode == "standard":
        res = segment(input, out, task="total", ml=False, **common)
        return {"files": list(res.files), "metadata": None, "qc": None, "note": res.model_note}
    if mode == "liver_vessels_only":
        res = segment(input, out, task="liver_vessels", ml=False, **common)
        return {"files": list(res.files), "metadata": None, "qc": None, "note": res.model_note}

    ct = load_image(input, "CT") if not hasattr(input, "affine") else input
    notes, generated = [], []
    liver_path = None
    if liver_mask is not None:
        if Path(liver_mask).exists():
            liver_path = Path(liver_mask)
        else:
            notes.append(f"The liver mask {liver_mask} does not exist; the liver is segmented instead.")
    if liver_path is None and (out / SUPPORT_FILES["liver"]).exists():
        liver_path = out / SUPPORT_FILES["liver"]
    wanted = []
    if liver_path is None:
        wanted.append("liver")
    if not skip_main_body_veins:
        wanted += [c for c, key in (("portal_vein_and_splenic_vein", "portal_trunk"), ("inferior_vena_cava", "ivc"))
                   if not (out / SUPPORT_FILES[key]).exists()]
    if wanted:
        # one ROI-subset run for whatever is missing, as the official tool would do
        rois = list(SUPPORT_CLASSES) if not skip_main_body_veins else ["liver"]
        res = segment(input, None, task="total", roi_subset=rois, **common)
        paths = _write_classes(res, ct, out, wanted)
        generated += [str(p) for p in paths.values()]
        if "liver" in paths:
            liver_path = paths["liver"]

    liver = None
    liver_source = None
    if liver_path is not None:  # checked before the long vessel run
        liver_img = load_image(liver_path, "liver")
        check_same_grid(ct, liver_img, input, liver_path, "liver")
        liver = np.asanyarray(liver_img.dataobj) > 0
        liver_source = "generated" if str(liver_path) in generated else "provided"
    if (liver is None or not liver.any()) and no_fallback_full_liver:
        raise no_liver_error()
    vessels_res = segment(input, None, task="liver_vessels", **common)
    value = {v: k for k, v in vessels_res.class_map.items()}.get("liver_vessels", 1)
    raw = np.asanyarray(vessels_res.labelmap.dataobj) == value
    spacing = np.linalg.norm(ct.affine[:3, :3], axis=0)
    enhanced, meta = enhance(raw, liver, spacing, min_component_size, allow_full_volume=not no_fallback_full_liver,
                             liver_source=liver_source or "provided")
    meta["fallbacks"] = notes + meta["fallbacks"]
    enhanced_path = write_nifti(enhanced, ct, out / OUTPUT_FILES["enhanced"])
    meta = {"input": str(input), "output": str(enhanced_path), "timestamp": _now(), **meta,
            "vessel_prediction_ok": True, "model_note": vessels_res.model_note,
            "inputs": {"ct": str(input), "liver_mask": _str(liver_path), "generated": generated}}
    files = [enhanced_path] + [Path(p) for p in generated]
    write_json(meta, out / OUTPUT_FILES["metadata"])

    qc = None
    if split:
        if not enhanced.any():
            raise VesselInputError("The enhanced vessel mask is empty: there is nothing to split.",
                                   "Check the CT (contrast phase) and the liver mask; the enhanced mask and its "
                                   "metadata were written for inspection.")
        support = Path(split_support_dir) if split_support_dir else out
        trunk, ivc = support / SUPPORT_FILES["portal_trunk"], support / SUPPORT_FILES["ivc"]
        if (not trunk.exists() or not ivc.exists()) and generate_split_support:
            res = segment(input, None, task="total", roi_subset=list(SUPPORT_CLASSES), **common)
            missing = [n for n, p in (("portal_vein_and_splenic_vein", trunk), ("inferior_vena_cava", ivc))
                       if not p.exists()]
            paths = _write_classes(res, ct, out, missing)
            files += list(paths.values())
            trunk = paths.get("portal_vein_and_splenic_vein", trunk)
            ivc = paths.get("inferior_vena_cava", ivc)
        split_res = split_vessel_files(enhanced_path, out, liver=liver_path,
                                       portal_trunk=trunk if trunk.exists() else None,
                                       ivc=ivc if ivc.exists() else None, use_skeleton=not no_skeleton,
                                       min_component_size=min_split_component_size, labeled_only=labeled_only,
                                       progress=progress)
        qc = split_res["qc"]
        files += [f for f in split_res["files"] if f not in files]
        if labeled_only and remove_enhanced_binary:
            enhanced_path.unlink()
            files.remove(enhanced_path)
        meta = read_metadata(out)
    return {"files": [str(f) for f in files], "metadata": meta, "qc": qc, "note": vessels_res.model_note}
