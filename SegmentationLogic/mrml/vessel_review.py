"""The portal/hepatic split on Slicer segmentation nodes: show, inspect, correct, save.

    node = load_split(scene, "out/liver_vessels_labeled.nii.gz", ct_node, qc=metadata)
    labels, affine = current_labels(node)                      # what the user sees, as an array
    apply_labels(node, new_labels, affine, qc)                 # show an edit (from the worker)
    qc = reassign_branch(node, point_ras, scope="branch")      # in-process edits, for scripts
    qc = rerun_split(node, ivc="out/inferior_vena_cava.nii.gz", portal_points_ras=[p1])
    save_review(node, "out")                                   # NIfTI files, metadata, .seg.nrrd

The edits themselves are `vessels.review` (label arrays); the Slicer module runs them in
its engine worker and calls `current_labels` / `apply_labels` around them. The node
carries its state as attributes (QC and the split's inputs as JSON, the reference
volume's ID), so it survives a scene save and needs no global registry. Each edit
replaces both segments in one step (same segment IDs): a failed edit leaves the node as
it was.
"""
import datetime
import json
from pathlib import Path

import nibabel as nib  # the vessel files are NIfTI (the module imports this file only after the first Apply)
import numpy as np
import vtk

import slicer

from ..vessels import qc as qc_module
from ..vessels.io import OUTPUT_FILES, json_safe, read_metadata, write_json, write_split_files
from ..vessels.review import (CLASS_IDS, COLORS, HEPATIC, PORTAL, SEGMENT_NAMES, SUPPORT_KEYS, ReviewError, qc_rows,
                              reassign, resplit, terminology_string, warnings)
from . import compat, geometry
from .scene import save_segmentation
from .segmentation_import import import_labelmap

ATTR_QC = "LiverVessels.QC"
ATTR_INPUTS = "LiverVessels.Inputs"
ATTR_REFERENCE = "LiverVessels.ReferenceVolumeID"

__all__ = ["load_split", "current_labels", "apply_labels", "reassign_branch", "rerun_split", "support_masks",
           "get_qc", "qc_rows", "warnings", "save_review", "ReviewError", "ATTR_REFERENCE"]


def _get_json(node, attr, default=None):
    text = node.GetAttribute(attr)
    if not text:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default


def _set_json(node, attr, value):
    node.SetAttribute(attr, json.dumps(json_safe(value)))


def _reference(node):
    scene = node.GetScene()
    ref_id = node.GetAttribute(ATTR_REFERENCE)
    ref = scene.GetNodeByID(ref_id) if (scene is not None and ref_id) else None
    if ref is None:
        raise ReviewError("The vessel segmentation has lost its reference volume (the CT).",
                          "Load the split again with load_split(), passing the CT volume node.")
    return ref


def _segment_ids(node):
    """{class value: segment ID} by the class ID or the name."""
    seg = node.GetSegmentation()
    out = {}
    for i in range(seg.GetNumberOfSegments()):
        sid = seg.GetNthSegmentID(i)
        name = seg.GetSegment(sid).GetName()
        for cls in (PORTAL, HEPATIC):
            if sid == CLASS_IDS[cls] or name == SEGMENT_NAMES[cls]:
                out.setdefault(cls, sid)
    return out


def get_qc(segmentation_node):
    return _get_json(segmentation_node, ATTR_QC, {}) or {}


def support_masks(segmentation_node):
    """{"liver", "portal_trunk", "ivc"} -> the support file recorded when the split was loaded,
    where it still exists (None otherwise): the defaults of a re-run."""
    inputs = _get_json(segmentation_node, ATTR_INPUTS, {}) or {}
    return {k: inputs[k] if inputs.get(k) and Path(inputs[k]).exists() else None for k in SUPPORT_KEYS}


def current_labels(node):
    """(labels 0/1/2 in the reference volume's IJK order, IJK-to-RAS affine) of the node."""
    ref = _reference(node)
    ids = _segment_ids(node)
    scene = node.GetScene()
    before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    labelmap = slicer.vtkMRMLLabelMapVolumeNode()
    scene.AddNode(labelmap)
    try:
        labels = np.zeros(ref.GetImageData().GetDimensions(), np.uint8)
        for cls, sid in ids.items():  # one segment at a time: values do not depend on segment order
            names = vtk.vtkStringArray()
            names.InsertNextValue(sid)
            if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(node, names, labelmap, ref):
                raise ReviewError(f"Slicer could not export the segment '{SEGMENT_NAMES[cls]}'.",
                                  "Check that the segment still has a binary labelmap.")
            arr = slicer.util.arrayFromVolume(labelmap).transpose(2, 1, 0)
            labels[(arr > 0) & (labels == 0)] = cls
        affine = geometry.ijk_to_ras(ref)
    finally:
        # the export adds a display node and a colour table for the temporary labelmap
        for i in range(labelmap.GetNumberOfDisplayNodes()):
            display = labelmap.GetNthDisplayNode(i)
            color = display.GetColorNode() if display is not None else None
            if color is not None and color.GetID() not in before:
                scene.RemoveNode(color)
            if display is not None:
                scene.RemoveNode(display)
        scene.RemoveNode(labelmap)
    return labels, affine


def load_split(scene, labeled_path_or_array, reference_volume_node, segmentation_node=None, qc=None):
    """Show a split as segments "Portal vein branches" and "Hepatic veins" (standard
    terminology, colours, closed surfaces) and return the segmentation node.

    labeled_path_or_array: liver_vessels_labeled.nii.gz (1 portal, 2 hepatic), a nibabel
    image, or an array in the reference volume's IJK order. qc: the split's QC dict, or
    the whole enhanced_liver_vessels_metadata.json content (its inputs are kept for re-runs).
    An existing `segmentation_node` is replaced in one step.
    """
    if reference_volume_node is None or reference_volume_node.GetImageData() is None:
        raise ReviewError("No reference volume: the split is shown on the CT it was computed from.",
                          "Pass the CT volume node.")
    if isinstance(labeled_path_or_array, (str, Path)):
        if not Path(labeled_path_or_array).exists():
            raise ReviewError(f"The split file {labeled_path_or_array} does not exist.",
                              "Run liver-vessels with --split_portal_hepatic, or split-vessels, first.")
        image = nib.load(str(labeled_path_or_array))
    elif hasattr(labeled_path_or_array, "affine"):
        image = labeled_path_or_array
    else:
        arr = np.asarray(labeled_path_or_array)
        dims = reference_volume_node.GetImageData().GetDimensions()
        if arr.shape != tuple(dims):
            raise ReviewError(f"The split array has shape {arr.shape}, the reference volume {tuple(dims)}.",
                              "Pass labels in the reference volume's voxel order, or the labelled NIfTI file.")
        image = nib.Nifti1Image(arr.astype(np.uint8), geometry.ijk_to_ras(reference_volume_node))
    data = np.asanyarray(image.dataobj)
    extra = set(np.unique(data).tolist()) - {0, PORTAL, HEPATIC}
    if extra:
        raise ReviewError(f"The split has label values {sorted(extra)}; a split has only 1 (portal) and 2 (hepatic).",
                          "Load liver_vessels_labeled.nii.gz, not another segmentation.")
    node = _import(scene, image, reference_volume_node, segmentation_node)
    metadata = qc or {}
    split_qc = metadata.get("portal_hepatic_split_qc", metadata)
    if not split_qc:  # counts only; seed figures unknown
        split_qc = qc_module.split_qc(data, data > 0, None, None, True)
    _set_json(node, ATTR_QC, split_qc)
    if "inputs" in metadata:
        _set_json(node, ATTR_INPUTS, metadata["inputs"])
    return node


def _import(scene, image, reference_volume_node, segmentation_node):
    node = import_labelmap(scene, image, CLASS_IDS, reference_volume_node=reference_volume_node,
                           segmentation_node=segmentation_node, include_empty=True,
                           name=segmentation_node.GetName() if segmentation_node else "Liver vessels split")
    seg = node.GetSegmentation()
    for cls, sid in _segment_ids(node).items():
        segment = seg.GetSegment(sid)
        compat.set_auto_generated(segment, name=False, color=False)
        segment.SetName(SEGMENT_NAMES[cls])
        segment.SetColor(*COLORS[cls])
        compat.set_segment_terminology(segment, terminology_string(cls))
    node.SetAttribute(ATTR_REFERENCE, reference_volume_node.GetID())
    return node


def apply_labels(node, labels, affine, qc):
    """Show edited labels (0/1/2 on the reference grid) and store their QC on the node."""
    _import(node.GetScene(), nib.Nifti1Image(np.asarray(labels, dtype=np.uint8), affine), _reference(node), node)
    _set_json(node, ATTR_QC, qc)
    return get_qc(node)


def reassign_branch(segmentation_node, point_ras, scope="branch", to=None):
    """Flip the branch at `point_ras`, or its subtree (scope="subtree"), to the other class
    (or to `to`); in this process. Returns the updated QC (also stored on the node)."""
    labels, affine = current_labels(segmentation_node)
    labels, qc = reassign(labels, affine, point_ras, scope=scope, to=to, qc=get_qc(segmentation_node))
    return apply_labels(segmentation_node, labels, affine, qc)


def rerun_split(segmentation_node, vessels=None, liver=None, portal_trunk=None, ivc=None, portal_points_ras=(),
                hepatic_points_ras=(), use_skeleton=True, min_component_size=20):
    """Split again with the user's seed points (RAS mm), in this process. Support masks
    (paths or arrays) default to the files recorded when the split was loaded. Returns the new QC."""
    labels, affine = current_labels(segmentation_node)
    given = {"liver": liver, "portal_trunk": portal_trunk, "ivc": ivc}
    masks = {k: v if v is not None else support_masks(segmentation_node)[k] for k, v in given.items()}
    labels, qc = resplit(labels, affine, masks=masks, portal_points_ras=portal_points_ras,
                         hepatic_points_ras=hepatic_points_ras, vessels=vessels, qc=get_qc(segmentation_node),
                         use_skeleton=use_skeleton, min_component_size=min_component_size)
    return apply_labels(segmentation_node, labels, affine, qc)


def save_review(segmentation_node, out_dir, seg_nrrd=True):
    """Write the reviewed split: liver_vessels_labeled.nii.gz, portal_vein_branches.nii.gz,
    hepatic_veins.nii.gz (CT geometry), the QC into enhanced_liver_vessels_metadata.json,
    and the segmentation as liver_vessels_split.seg.nrrd. Returns the paths."""
    labels, affine = current_labels(segmentation_node)
    ref_img = nib.Nifti1Image(np.zeros(labels.shape, np.uint8), affine)
    out_dir = Path(out_dir)
    paths = write_split_files(out_dir, labels, ref_img)
    qc = get_qc(segmentation_node)
    meta = read_metadata(out_dir)
    meta["portal_hepatic_split_qc"] = qc
    meta["review"] = {"saved": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                      "manual_edits": int(qc.get("manual_edits", 0))}
    paths.append(write_json(meta, out_dir / OUTPUT_FILES["metadata"]))
    if seg_nrrd:
        paths.append(save_segmentation(segmentation_node, out_dir / "liver_vessels_split.seg.nrrd"))
    return paths
