"""Qt-free parts of the TotalSegmentator Slicer module.

Everything here runs in Slicer, in plain Python and with slicer-core (real MRML without
Qt), so it is tested outside Slicer: the background runner (process, runner,
diagnosis), first-run dependencies, the lists the panel shows (choices), and a
segmentation job from volume node to segmentation node (job). The widget in
TotalSegmentator.py only wires these to Qt.
"""
