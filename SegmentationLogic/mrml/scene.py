"""Scenes, module logics and files: the same calls in Slicer and in plain Python.

In Slicer the scene is `slicer.mrmlScene` and the module logics are Slicer's own. With
the `slicer-core` package (batch runs, tests) `new_scene()` makes a scene and binds the
logics this package needs to it, as Slicer does at start-up.
"""
from pathlib import Path

import vtk

import slicer

from ..errors import InputImageError, SceneImportError
from ..system.files import atomic_path

_HEADLESS = {}  # scene address -> (scene, application logic, {name: logic}) for slicer-core scenes


def in_slicer_app(scene):
    return getattr(slicer, "app", None) is not None and scene is getattr(slicer, "mrmlScene", None)


def _headless_logics(scene):
    """Module logics bound to a scene outside the Slicer application (slicer-core)."""
    key = scene.GetAddressAsString("vtkMRMLScene")
    if key not in _HEADLESS:
        app = slicer.vtkSlicerApplicationLogic()
        app.SetMRMLScene(scene)
        logics = {}
        # Colors first and under this name: volume display nodes look their colour table up there.
        for name, cls in (("Colors", slicer.vtkSlicerColorLogic), ("Volumes", slicer.vtkSlicerVolumesLogic),
                          ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic)):
            logic = cls()
            logic.SetMRMLApplicationLogic(app)
            logic.SetMRMLScene(scene)
            app.SetModuleLogic(name, logic)
            logics[name] = logic
        _HEADLESS[key] = (scene, app, logics)
    return _HEADLESS[key][2]


def module_logic(scene, name):
    """The logic of Slicer module `name` ("Volumes", "Segmentations", "Colors") for this scene."""
    if in_slicer_app(scene):
        return getattr(slicer.modules, name.lower()).logic()
    return _headless_logics(scene)[name]


def ensure_converter_rules():
    """Register the labelmap <-> surface conversion rules (Slicer's Segmentations module
    does this at start-up; slicer-core has none until someone registers them)."""
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    rules = factory.GetConverterRules()
    have = {rules[i].GetName() for i in range(len(rules))} if isinstance(rules, (list, tuple)) else set()
    for cls in (slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule,
                slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule):
        rule = cls()
        if rule.GetName() not in have:
            factory.RegisterConverterRule(rule)


def new_scene():
    """An empty MRML scene with the logics this package needs (for slicer-core, batch, tests)."""
    ensure_converter_rules()
    scene = slicer.vtkMRMLScene()
    _headless_logics(scene)
    return scene


def release_scene(scene):
    """Forget the logics new_scene() attached (lets the scene be freed)."""
    _HEADLESS.pop(scene.GetAddressAsString("vtkMRMLScene"), None)
    scene.Clear(1)


def singleton_parameter_node(scene, module_name):
    """The module's parameter node (a vtkMRMLScriptedModuleNode), created on first use, as
    ScriptedLoadableModuleLogic.getParameterNode does in Slicer."""
    node = scene.GetSingletonNode(module_name, "vtkMRMLScriptedModuleNode")
    if node is None:
        node = slicer.vtkMRMLScriptedModuleNode()
        node.SetSingletonTag(module_name)
        node.SetName(scene.GenerateUniqueName(module_name))
        node.SetAttribute("ModuleName", module_name)
        node = scene.AddNode(node)
    return node


# -- files -------------------------------------------------------------------------------
def load_volume(scene, path, name=None):
    """Load a NIfTI/NRRD/... file, or a folder holding one DICOM series, as a scalar volume node."""
    path = Path(path)
    files = vtk.vtkStringArray()
    if path.is_dir():
        members = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if not members:
            raise SceneImportError(f"The folder {path} holds no files.", "Choose a folder that contains a DICOM series.")
        for p in members:
            files.InsertNextValue(str(p))
        first = members[0]
    elif path.is_file():
        first = path
    else:
        raise SceneImportError(f"{path} does not exist.", "Check the path.")
    if name is None:
        name = path.name.split(".")[0] if path.is_file() else path.name
    node = module_logic(scene, "Volumes").AddArchetypeVolume(str(first), name, 0, files)
    if node is None or node.GetImageData() is None:
        raise SceneImportError(f"Slicer could not read {path} as an image.",
                               "Check that it is a NIfTI, NRRD or DICOM image and not damaged.")
    return node


def export_volume(volume_node, path):
    """Write a volume node to NIfTI/NRRD in its own frame (IJK to RAS; a parent transform is
    not applied: the result comes back into the same frame, under the same transform)."""
    if volume_node is None or volume_node.GetImageData() is None:
        raise InputImageError("The input volume has no image data.", "Select a loaded volume as input.")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(0)  # a temp file: speed over size
    if not storage.WriteData(volume_node):
        raise InputImageError(f"Could not write the input volume to {path}.",
                              "Check that the temporary folder is writable and has free space.")
    return Path(path)


def save_segmentation(node, path):
    """Write a segmentation node to `.seg.nrrd` (written to a temporary name, then renamed)."""
    path = Path(path)
    if not str(path).endswith(".seg.nrrd"):
        raise SceneImportError(f"{path.name}: a segmentation is saved as .seg.nrrd.",
                               "Use a file name ending in .seg.nrrd.")
    with atomic_path(path, ".seg.nrrd") as tmp:  # umask permissions, as every output
        storage = slicer.vtkMRMLSegmentationStorageNode()
        storage.SetFileName(str(tmp))
        storage.SetUseCompression(1)
        if not storage.WriteData(node):
            raise SceneImportError(f"Could not write {path}.", "Check free disk space and write permission.")
    return path


def load_segmentation(scene, path, name=None):
    """Read a `.seg.nrrd` into a new segmentation node."""
    ensure_converter_rules()
    path = Path(path)
    node = slicer.vtkMRMLSegmentationNode()
    if name is None:
        name = path.name[: -len(".seg.nrrd")] if path.name.endswith(".seg.nrrd") else path.stem
    node.SetName(name)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        raise SceneImportError(f"Could not read the segmentation {path}.", "Check that the file is a Slicer .seg.nrrd.")
    scene.AddNode(storage)
    scene.AddNode(node)
    node.SetAndObserveStorageNodeID(storage.GetID())
    node.CreateDefaultDisplayNodes()
    return node
