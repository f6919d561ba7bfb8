"""The portal/hepatic split on Slicer segmentation nodes: show, inspect, correct, save.

    node = load_split(scene, "out/liver_vessels_labeled.nii.gz", ct_node, qc=metadata)
    labels, affine = current_labels(node)                      # what the user sees, as an array
    apply_labels(node, new_labels, affine, qc)                 # show an edit (from the worker)
    qc = reassign_branch(node, point_ras, scope="branch")      # in-process edits, for scripts
    qc = rerun_split(node, ivc="out/inferior_vena_cava.nii.gz", portal_points_ras=[p1])
    pieces = unsure_pieces(node); jump_slices(scene, pieces[0]["centroid_ras"])   # where to look
    save_review(node, "out")                                   # NIfTI files, metadata, .seg.nrrd

The edits themselves are `vessels.review` (label arrays); the Slicer module runs them in
its engine worker and calls `current_labels` / `apply_labels` around them. The node
carries its state as attributes (QC and the split's inputs as JSON, the reference
volume's ID), so it survives a scene save and needs no global registry. Each edit
replaces both segments in one step (same segment IDs): a failed edit leaves the node as
it was.

The split's confidence map (liver_vessels_split_confidence.nii.gz: 0.5 a coin toss to
1.0 sure on vessel voxels, 0 elsewhere) is shown as the place to look:
- a scalar volume "Split confidence" on the CT's grid (window 0.5-1.0, red = unsure to
  green = sure, voxels outside the vessels transparent), overlaid on the slice views;
- a segmentation "<split>: unsure" with one segment "Unsure (< 0.75)", outlined in 2D;
- its connected pieces, largest first, with their centres (`unsure_pieces`), to jump to.
Both nodes are node references of the split's node (roles below), so they survive a scene
save. A re-split brings its own map; a manual reassignment sets the voxels it changed to
1.0 (the surgeon decided them), and the QC's confidence figures follow the map.
"""
import datetime
import json
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib  # the vessel files are NIfTI (the module imports this file only after the first Apply)
import numpy as np
import vtk

import slicer

from ..vessels import qc as qc_module
from ..vessels.confidence import UNSURE_BELOW, unsure_mask
from ..vessels.confidence import unsure_pieces as pieces_of
from ..vessels.io import OUTPUT_FILES, json_safe, read_metadata, write_json, write_split_files
from ..vessels.review import (CLASS_IDS, COLORS, HEPATIC, PORTAL, SEGMENT_NAMES, SUPPORT_KEYS, ReviewError, qc_rows,
                              reassign, resplit, terminology_string, warnings)
from . import compat, geometry
from .scene import save_segmentation
from .segmentation_import import import_labelmap

ATTR_QC = "LiverVessels.QC"
ATTR_INPUTS = "LiverVessels.Inputs"
ATTR_REFERENCE = "LiverVessels.ReferenceVolumeID"
ATTR_PIECES = "LiverVessels.UnsurePieces"
ROLE_CONFIDENCE = "LiverVesselsConfidence"  # node reference: the "Split confidence" volume
ROLE_UNSURE = "LiverVesselsUnsure"          # node reference: the segmentation with the unsure segment
CONFIDENCE_NAME = "Split confidence"
UNSURE_ID = "split_unsure"
UNSURE_NAME = f"Unsure (< {UNSURE_BELOW:g})"
UNSURE_COLOR = (1.0, 0.55, 0.0)  # orange: apart from both classes' colours and from the map's red
COLORS_NAME = "TotalSegmentator split confidence"
OVERLAY_OPACITY = 0.5

__all__ = ["load_split", "current_labels", "apply_labels", "reassign_branch", "rerun_split", "support_masks",
           "get_qc", "qc_rows", "warnings", "save_review", "ReviewError", "ATTR_REFERENCE", "confidence_array",
           "confidence_volume", "unsure_node", "set_confidence", "unsure_pieces", "show_confidence_overlay",
           "jump_slices", "CONFIDENCE_NAME", "UNSURE_NAME"]


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


def load_split(scene, labeled_path_or_array, reference_volume_node, segmentation_node=None, qc=None,
               confidence=None):
    """Show a split as segments "Portal vein branches" and "Hepatic veins" (standard
    terminology, colours, closed surfaces) and return the segmentation node.

    labeled_path_or_array: liver_vessels_labeled.nii.gz (1 portal, 2 hepatic), a nibabel
    image, or an array in the reference volume's IJK order. qc: the split's QC dict, or
    the whole enhanced_liver_vessels_metadata.json content (its inputs are kept for re-runs).
    confidence: the split's confidence map (path, nibabel image or array in the reference
    volume's IJK order); default: liver_vessels_split_confidence.nii.gz beside the labelled
    file, where there is one. An existing `segmentation_node` is replaced in one step.
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
    if confidence is None and isinstance(labeled_path_or_array, (str, Path)):
        beside = Path(labeled_path_or_array).with_name(OUTPUT_FILES["confidence"])
        confidence = beside if beside.is_file() else None
    confidence = None if confidence is None else _on_reference_grid(confidence, reference_volume_node)
    node = _import(scene, image, reference_volume_node, segmentation_node)
    metadata = qc or {}
    split_qc = metadata.get("portal_hepatic_split_qc", metadata)
    if not split_qc:  # counts only; seed figures unknown
        split_qc = qc_module.split_qc(data, data > 0, None, None, True)
    _set_json(node, ATTR_QC, split_qc)
    if "inputs" in metadata:
        _set_json(node, ATTR_INPUTS, metadata["inputs"])
    if confidence is not None:
        set_confidence(node, confidence)
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


def apply_labels(node, labels, affine, qc, confidence=None, previous=None):
    """Show edited labels (0/1/2 on the reference grid) and store their QC on the node.

    confidence: the map of a new split (a re-split); None after a manual edit: the node's map
    with the voxels whose class changed set to 1.0 (`previous`: the labels before the edit,
    default the node's own). The QC's confidence figures then describe that map."""
    labels = np.asarray(labels, dtype=np.uint8)
    if confidence is None:
        confidence = confidence_array(node)
        if confidence is not None:
            before = current_labels(node)[0] if previous is None else np.asarray(previous)
            confidence[(labels != before) & (labels > 0)] = 1.0  # the surgeon decided these
    else:
        confidence = _on_reference_grid(confidence, _reference(node))
    _import(node.GetScene(), nib.Nifti1Image(labels, affine), _reference(node), node)
    if confidence is not None:
        qc = qc_module.with_confidence(qc, confidence, labels)
    _set_json(node, ATTR_QC, qc)
    if confidence is not None:
        set_confidence(node, confidence, labels)
    return get_qc(node)


def reassign_branch(segmentation_node, point_ras, scope="branch", to=None):
    """Flip the branch at `point_ras`, or its subtree (scope="subtree"), to the other class
    (or to `to`); in this process. Returns the updated QC (also stored on the node)."""
    before, affine = current_labels(segmentation_node)
    labels, qc = reassign(before, affine, point_ras, scope=scope, to=to, qc=get_qc(segmentation_node))
    return apply_labels(segmentation_node, labels, affine, qc, previous=before)


def rerun_split(segmentation_node, vessels=None, liver=None, portal_trunk=None, ivc=None, portal_points_ras=(),
                hepatic_points_ras=(), use_skeleton=True, min_component_size=20):
    """Split again with the user's seed points (RAS mm), in this process. Support masks
    (paths or arrays) default to the files recorded when the split was loaded. Returns the new QC."""
    labels, affine = current_labels(segmentation_node)
    given = {"liver": liver, "portal_trunk": portal_trunk, "ivc": ivc}
    masks = {k: v if v is not None else support_masks(segmentation_node)[k] for k, v in given.items()}
    labels, qc, confidence = resplit(labels, affine, masks=masks, portal_points_ras=portal_points_ras,
                                     hepatic_points_ras=hepatic_points_ras, vessels=vessels,
                                     qc=get_qc(segmentation_node), use_skeleton=use_skeleton,
                                     min_component_size=min_component_size)
    return apply_labels(segmentation_node, labels, affine, qc, confidence=confidence)


def save_review(segmentation_node, out_dir, seg_nrrd=True):
    """Write the reviewed split: liver_vessels_labeled.nii.gz, portal_vein_branches.nii.gz,
    hepatic_veins.nii.gz, the confidence map as it stands after the review
    (liver_vessels_split_confidence.nii.gz; where the split has one), all in CT geometry,
    the QC into enhanced_liver_vessels_metadata.json, and the segmentation as
    liver_vessels_split.seg.nrrd. Returns the paths."""
    labels, affine = current_labels(segmentation_node)
    ref_img = nib.Nifti1Image(np.zeros(labels.shape, np.uint8), affine)
    out_dir = Path(out_dir)
    paths = write_split_files(out_dir, labels, ref_img, confidence=confidence_array(segmentation_node))
    qc = get_qc(segmentation_node)
    meta = read_metadata(out_dir)
    meta["portal_hepatic_split_qc"] = qc
    meta["review"] = {"saved": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                      "manual_edits": int(qc.get("manual_edits", 0))}
    paths.append(write_json(meta, out_dir / OUTPUT_FILES["metadata"]))
    if seg_nrrd:
        paths.append(save_segmentation(segmentation_node, out_dir / "liver_vessels_split.seg.nrrd"))
    return paths


# ---------------------------------------------------------------------------------------
# the confidence map: where to look

def _on_reference_grid(confidence, reference_volume_node):
    """The map (path, nibabel image or array) as a float32 array in the reference volume's IJK order."""
    dims = tuple(reference_volume_node.GetImageData().GetDimensions())
    if isinstance(confidence, (str, Path)):
        if not Path(confidence).is_file():
            raise ReviewError(f"The confidence map {confidence} does not exist.",
                              "Load the liver_vessels_split_confidence.nii.gz written with this split, or none.")
        confidence = nib.load(str(confidence))
    if hasattr(confidence, "affine"):
        data, affine = np.asanyarray(confidence.dataobj).astype(np.float32), np.asarray(confidence.affine, float)
        aligned, aligned_affine, offset = geometry.align_to_reference(data, affine, reference_volume_node)
        if aligned.shape != dims or offset.any() or not np.allclose(aligned_affine,
                                                                    geometry.ijk_to_ras(reference_volume_node)):
            raise ReviewError("The confidence map is not on the CT's voxel grid.",
                              "Load the confidence map written with this split (same CT).")
        confidence = aligned
    confidence = np.array(confidence, dtype=np.float32)
    if confidence.shape != dims:
        raise ReviewError(f"The confidence map has shape {confidence.shape}, the CT {dims}.",
                          "Pass the map in the CT's voxel order, or the confidence NIfTI file.")
    return confidence


def confidence_volume(segmentation_node):
    """The "Split confidence" volume node of a split, or None."""
    return segmentation_node.GetNodeReference(ROLE_CONFIDENCE)


def unsure_node(segmentation_node):
    """The segmentation holding the "Unsure (< 0.75)" segment of a split, or None."""
    return segmentation_node.GetNodeReference(ROLE_UNSURE)


def confidence_array(segmentation_node):
    """The split's confidence map as it stands (a copy, in the CT's IJK order), or None."""
    volume = confidence_volume(segmentation_node)
    if volume is None or volume.GetImageData() is None:
        return None
    return np.array(slicer.util.arrayFromVolume(volume).transpose(2, 1, 0), dtype=np.float32)


def unsure_pieces(segmentation_node):
    """The unsure places, largest first (see vessels.confidence.unsure_pieces); [] without a map."""
    return _get_json(segmentation_node, ATTR_PIECES, []) or []


def _colors(scene):
    """Red (0.5, a coin toss) through orange (0.75) to green (1.0, sure): one table per scene."""
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode")):
        node = scene.GetNthNodeByClass(i, "vtkMRMLColorTableNode")
        if node.GetName() == COLORS_NAME:
            return node
    table = slicer.vtkMRMLColorTableNode()
    table.SetName(COLORS_NAME)
    table.SetTypeToUser()
    table.SetNumberOfColors(256)
    stops = np.array([[0.0, 0.85, 0.1, 0.1], [0.5, 1.0, 0.55, 0.0], [1.0, 0.1, 0.7, 0.25]])
    for i in range(256):
        r, g, b = (np.interp(i / 255.0, stops[:, 0], stops[:, c]) for c in (1, 2, 3))
        table.SetColor(i, f"{0.5 + i / 510.0:.3f}", r, g, b, 1.0)
    scene.AddNode(table)
    return table


def set_confidence(segmentation_node, confidence, labels=None):
    """Show `confidence` (float array in the CT's IJK order) for a split: the "Split confidence"
    volume and the "Unsure (< 0.75)" segment, both created on first use and updated after;
    the unsure pieces are stored on the split's node. `labels`: the split's labels (default:
    read from the node)."""
    scene = segmentation_node.GetScene()
    ct = _reference(segmentation_node)
    confidence = np.asarray(confidence, dtype=np.float32)
    affine = geometry.ijk_to_ras(ct)
    volume = confidence_volume(segmentation_node)
    if volume is None or volume.GetScene() is None:
        volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode",
                                         scene.GenerateUniqueName(f"{segmentation_node.GetName()} {CONFIDENCE_NAME}"))
        segmentation_node.SetNodeReferenceID(ROLE_CONFIDENCE, volume.GetID())
    volume.SetIJKToRASMatrix(geometry.numpy_to_matrix(affine))
    slicer.util.updateVolumeFromArray(volume, np.ascontiguousarray(confidence.transpose(2, 1, 0)))
    volume.SetAndObserveTransformNodeID(ct.GetTransformNodeID())
    if volume.GetDisplayNode() is None:
        volume.CreateDefaultDisplayNodes()
    display = volume.GetDisplayNode()
    display.SetAndObserveColorNodeID(_colors(scene).GetID())
    display.SetAutoWindowLevel(0)
    display.SetWindowLevelMinMax(0.5, 1.0)
    display.SetAutoThreshold(0)
    display.SetThreshold(0.25, 1.0)  # 0 = not a vessel: transparent in the overlay
    display.SetApplyThreshold(1)
    display.SetInterpolate(0)        # voxels, as the split decided them

    unsure = unsure_node(segmentation_node)
    mask = unsure_mask(confidence).astype(np.uint8)
    unsure = import_labelmap(scene, SimpleNamespace(dataobj=mask, affine=affine), {1: UNSURE_ID},
                             reference_volume_node=ct, segmentation_node=unsure if unsure is not None and
                             unsure.GetScene() is not None else None, create_surfaces=False, include_empty=True,
                             name=f"{segmentation_node.GetName()}: unsure")
    segmentation_node.SetNodeReferenceID(ROLE_UNSURE, unsure.GetID())
    segment_id = unsure.GetSegmentation().GetNthSegmentID(0)
    segment = unsure.GetSegmentation().GetSegment(segment_id)
    compat.set_auto_generated(segment, name=False, color=False)
    segment.SetName(UNSURE_NAME)
    segment.SetColor(*UNSURE_COLOR)
    compat.set_segment_terminology(segment, "")  # a place to look, not an anatomical structure
    unsure_display = unsure.GetDisplayNode()
    if unsure_display is not None:  # outlined over the vessels; no surface hiding them in 3D
        unsure_display.SetSegmentVisibility2DFill(segment_id, False)
        unsure_display.SetSegmentVisibility2DOutline(segment_id, True)
        unsure_display.SetSegmentVisibility3D(segment_id, False)
    labels = current_labels(segmentation_node)[0] if labels is None else labels
    _set_json(segmentation_node, ATTR_PIECES, pieces_of(confidence, labels, affine))
    return volume


def show_confidence_overlay(segmentation_node, show=True, opacity=OVERLAY_OPACITY):
    """Overlay the split's confidence on every slice view (foreground layer), or take it off.
    Returns how many views changed."""
    volume = confidence_volume(segmentation_node)
    scene = segmentation_node.GetScene()
    if volume is None or scene is None:
        return 0
    changed = 0
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        if show:
            composite.SetForegroundVolumeID(volume.GetID())
            composite.SetForegroundOpacity(opacity)
            changed += 1
        elif composite.GetForegroundVolumeID() == volume.GetID():
            composite.SetForegroundVolumeID(None)
            changed += 1
    return changed


def jump_slices(scene, point_ras):
    """Centre every slice view on a point (RAS mm), e.g. an unsure piece's centre."""
    r, a, s = (float(v) for v in point_ras)
    slicer.vtkMRMLSliceNode.JumpAllSlices(scene, r, a, s, slicer.vtkMRMLSliceNode.CenteredJumpSlice)
