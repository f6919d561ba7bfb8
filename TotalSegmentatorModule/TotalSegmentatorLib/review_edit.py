"""A correction of the portal/hepatic split, as an Operation: the skeleton graph and the
split run in the engine worker, never on Slicer's GUI thread.

    op = ReviewEdit(worker, node, "vessels.reassign", point_ras=p, scope="subtree").start()
    ...poll...                       # op.result["qc"]; the node shows the edit once op succeeded

Steps: the node's labels are written to a temp NIfTI (a quick export on the GUI thread),
the worker computes the new labels into another file (a re-split also its confidence
map), and they replace the node's two segments in one step; the confidence overlay
follows (a re-split's new map; after a reassignment the changed voxels count as sure).
Cancel, a failure, or the node leaving the scene leave the node as it was; the temp
folder is removed in every case.
"""
import shutil
import tempfile
from pathlib import Path

import numpy as np

from SegmentationLogic.errors import SegmentationError, error_event

from .operation import Operation

NODE_REMOVED = "The vessel segmentation was removed from the scene, so the edit was stopped."


class ReviewEdit(Operation):
    def __init__(self, worker, segmentation_node, command, **fields):
        super().__init__({"vessels.reassign": "Reassigning the branch",
                          "vessels.resplit": "Splitting the vessels again"}.get(command, command))
        self.worker, self.node, self.command, self.fields = worker, segmentation_node, command, fields
        self.run = None
        self.tmpdir = None
        self.labels = None  # what the node showed when the edit started
        self._stopping = None  # the cancel error while the worker is stopping

    def start(self):
        from SegmentationLogic.mrml import vessel_review  # reads NIfTI: nibabel is installed on first use
        import nibabel as nib  # installed on first use, not at Slicer start-up

        self.tmpdir = Path(tempfile.mkdtemp(prefix="TotalSegmentator-review-edit-"))
        try:
            self._emit({"event": "progress", "stage": "review", "fraction": 0.0, "overall": 0.0,
                        "message": "Reading the segments"})
            self.labels, affine = vessel_review.current_labels(self.node)
            nib.save(nib.Nifti1Image(self.labels, affine), str(self.tmpdir / "labels.nii"))
            request = {"labels": str(self.tmpdir / "labels.nii"), "output": str(self.tmpdir / "edited.nii"),
                       "qc": vessel_review.get_qc(self.node), **self.fields}
            if self.command == "vessels.resplit":
                request["masks"] = vessel_review.support_masks(self.node)
                request["confidence_output"] = str(self.tmpdir / "confidence.nii")
            self.run = self.worker.submit(self.command, description=self.description, **request)
        except BaseException:
            self._cleanup()
            raise
        return self

    def _step(self):
        from SegmentationLogic.mrml import vessel_review  # reads NIfTI: nibabel is installed on first use
        if self.node.GetScene() is None and self._stopping is None:
            self.cancel(NODE_REMOVED)
            return
        for event in self.run.poll():
            self._emit(event)
        if not self.run.done:
            return
        if self._stopping is not None:
            self._end("cancelled", error=self._stopping)
            return
        if self.run.outcome != "succeeded":
            self._end(self.run.outcome, error=self.run.error)
            return
        import nibabel as nib  # installed on first use, not at Slicer start-up

        try:
            image = nib.load(self.run.result["labels"])
            confidence = self.run.result.get("confidence")  # a re-split's map; None: keep the node's, edited
            qc = vessel_review.apply_labels(self.node, np.asanyarray(image.dataobj), image.affine,
                                            self.run.result.get("qc") or {},
                                            confidence=nib.load(confidence) if confidence else None,
                                            previous=self.labels)
        except SegmentationError as e:
            self._end("failed", error=error_event(e))
            return
        self._end("succeeded", result={"event": "result", "qc": qc})

    def _stop(self, error):
        self._stopping = error
        if self.run is not None:
            self.run.cancel()
        if self.run is None or self.run.done:
            self._end("cancelled", error=error)
        # else the worker stops at its next progress report (or is killed after its grace): see _step

    def _end(self, outcome, result=None, error=None):
        self._cleanup()
        if error is not None:
            self._emit(error_event(error))
        self._finish(outcome, result=result, error=error)

    def _cleanup(self):
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None
