"""Liver vessels: enhancement, portal/hepatic split, QC and review (no Qt).

    from SegmentationLogic.vessels import split_vessel_files, run_liver_vessels, split_vessels
    split_vessel_files("liver_vessels.nii.gz", "out", liver=..., portal_trunk=..., ivc=...)
    run_liver_vessels("ct.nii.gz", "out", split_portal_hepatic=True)   # needs the engine

Modules: skeleton (centreline graph), seeds (where each tree enters the liver), steps
(what a step from branch to branch costs), arborescence (the cheapest tree, generic),
trees (the portal and hepatic trees on the graph), voxels (the vessel voxels as a graph),
confidence (the per-voxel confidence map), split (the whole split), qc, enhancement, io,
workflow (files in, files out), review (corrections on label arrays; shown on Slicer nodes
by mrml.vessel_review), worker_commands (the review as engine-worker commands), cli (the
two subcommands).
"""


def __getattr__(name):
    # lazy: keeps scipy/scikit-image out of `import SegmentationLogic.vessels`
    if name in ("split_vessel_files", "run_liver_vessels"):
        from . import workflow

        return getattr(workflow, name)
    if name in ("split_vessels", "SplitResult"):
        from . import split

        return getattr(split, name)
    if name in ("VesselInputError",):
        from . import io

        return io.VesselInputError
    raise AttributeError(name)
