"""What the module checks when Slicer loads it: the Slicer version, and another module
named TotalSegmentator.

Slicer registers one module per name: of two `TotalSegmentator.py` files on its module
paths the first one found wins and the other is skipped without a message
(qSlicerAbstractModuleFactoryManager::registerModule, v5.10-v5.12, main). The other
TotalSegmentator extension (github.com/lassoan/SlicerTotalSegmentator, in the Extensions
Index under the same name) has a module of this name, so a user with both sees only one
and cannot tell which: `name_clash()` finds the other file and says what to do.
"""
import os


MODULE_FILE = "TotalSegmentator.py"


def other_modules(search_paths, ours):
    """Other `TotalSegmentator.py` module files on Slicer's module search paths (not `ours`)."""
    ours = os.path.normcase(os.path.realpath(ours))
    found = []
    for folder in search_paths:
        candidate = os.path.join(str(folder), MODULE_FILE)
        real = os.path.normcase(os.path.realpath(candidate))
        if os.path.isfile(candidate) and real != ours and real not in found:
            found.append(real)
    return found


def name_clash(search_paths, ours):
    """A message for the user when another TotalSegmentator module is installed, else None."""
    others = other_modules(search_paths, ours)
    if not others:
        return None
    return ("Another Slicer module named 'TotalSegmentator' is installed (" + ", ".join(others) + "), probably the "
            "other TotalSegmentator extension. Slicer loads only one module of a name: this one (whole-body "
            "segmentation with Cancel, ROI subset and liver-vessel review) is loaded now, the other one is not "
            "available. Keep one of them: uninstall the other in the Extensions Manager (or remove its folder "
            "from Application Settings > Modules > Additional module paths), then restart Slicer.")
