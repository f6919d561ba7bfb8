"""TotalSegmentator-exact segmentation engine (no Qt): CLI, Python API and Slicer import.

Python API (heavy dependencies are imported on first use, so `import SegmentationLogic`
is cheap enough for Slicer start-up):

    from SegmentationLogic import segment, Segmenter
    result = segment("ct.nii.gz", task="total", quality="fast")    # arrays in memory
    result.labelmap       # nibabel image, official label values
    result.class_map      # {value: class name}

    segmenter = Segmenter(device="cuda")                     # keeps models loaded between calls
    segmenter.segment("ct.nii.gz", "out/seg.nii.gz", quality="fast", statistics=True)
    segmenter.run(SegmentRequest(input="ct.nii.gz", quality="fast"))   # the typed form

See README.md for the CLI (`python -m SegmentationLogic --help`) and ARCHITECTURE.md for
how the packages fit together.
"""
from .version import __version__  # noqa: F401

from .errors import SegmentationError  # noqa: F401


def __getattr__(name):
    # Lazy public API: keeps torch/nnU-Net out of `import SegmentationLogic`.
    if name in ("SegmentRequest", "SegmentResult"):
        from . import request

        return getattr(request, name)
    if name in ("segment", "Segmenter", "SegmentationResult"):
        from . import pipeline

        return getattr(pipeline, name)
    if name in ("load_catalogue",):
        from . import catalogue

        return getattr(catalogue, name)
    raise AttributeError(name)
