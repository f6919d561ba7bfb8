"""The segmentation run: plan, stages, the nnU-Net adapter, geometry and postprocessing.

    segmenter       Segmenter.run(SegmentRequest) -> SegmentResult; segment(...) keyword API
    plan            RunPlan: which models run, in which order, on which region
    stages          a task in input geometry, with the official semantics
    inference       nnU-Net v2 prediction in memory (models kept loaded)
    geometry        crop, resampling, split: the official numerics
    postprocessing  label cleanup at model resolution, vertebrae, body masks
"""
from ..request import SegmentRequest, SegmentResult
from .segmenter import Segmenter, default_segmenter, segment

SegmentationResult = SegmentResult  # the name of the first release's API

__all__ = ["Segmenter", "SegmentRequest", "SegmentResult", "SegmentationResult", "default_segmenter", "segment"]
