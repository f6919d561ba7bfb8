"""The engine's MRML side: the only code in SegmentationLogic that imports `slicer`.

Runs in the Slicer application (scene = slicer.mrmlScene) and in plain Python with the
`slicer-core` package (scene = scene.new_scene()). Functions take the scene or the nodes
they work on; nothing here imports Qt.

- compat.py               Slicer APIs that differ between the supported releases
- scene.py                scenes, module logics, loading/saving volumes and segmentations
- geometry.py             voxel lattices between numpy, VTK and MRML
- surfaces.py             closed surfaces of all labels in one SurfaceNets pass
- segmentation_import.py  a result -> segmentation node (names, terminology, colours, surfaces)
- terminology.py          our terminology contexts in Slicer's Terminologies logic
- vessel_review.py        the portal/hepatic split on segmentation nodes (show, correct, save)
"""
