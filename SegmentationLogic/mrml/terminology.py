"""Our terminology contexts in Slicer's Terminologies logic.

The module loads them at start-up (`slicer.app.startupCompleted`), as Slicer extensions
do, so Slicer's terminology selector resolves the codes, names and colours on our
segments; batch scripts and tests call `register_with_slicer` on their own logic.
"""
from .. import terminology
from . import compat


def register_with_slicer(terminologies_logic):
    """Load the type and region contexts into a vtkSlicerTerminologiesModuleLogic (once).

    Returns the two context names; raises RuntimeError if Slicer cannot read the files."""
    type_file, region_file = terminology.slicer_context_files()
    failed = []
    if not compat.is_terminology_context_loaded(terminologies_logic, terminology.CONTEXT_NAME):
        if not terminologies_logic.LoadTerminologyFromFile(str(type_file)):
            failed.append(type_file.name)
    if terminology.REGION_CONTEXT_NAME not in compat.loaded_region_context_names(terminologies_logic):
        if not compat.load_region_context(terminologies_logic, region_file):
            failed.append(region_file.name)
    if failed:
        raise RuntimeError(f"Slicer could not load the terminology files {', '.join(failed)} in {type_file.parent}.")
    return terminology.CONTEXT_NAME, terminology.REGION_CONTEXT_NAME
