"""What the Slicer and CTK widgets used in the module's .ui offer, as Qt sees them.

Slicer itself cannot run here, so the .ui test builds stand-ins with exactly these
Q_PROPERTYs, signals and slots, copied from the Slicer and CTK headers (qMRMLNodeComboBox.h,
qMRMLWidget.h, qSlicerWidget.h, qSlicerMarkupsPlaceWidget.h, qMRMLSegmentationShow3DButton.h,
ctkCollapsibleButton.h, ctkMenuButton.h, ctkPathLineEdit.h, ctkSearchBox.h). `base` is the
Qt (or Slicer) class each one really derives from.
"""

SLICER_WIDGETS = {
    "qMRMLWidget": {
        "base": "QWidget",
        "properties": [],
        "signals": ["mrmlSceneChanged(vtkMRMLScene*)"],
        "slots": ["setMRMLScene(vtkMRMLScene*)"],
        "methods": ["mrmlScene"],
    },
    "qSlicerWidget": {
        "base": "QWidget",
        "properties": [],
        "signals": ["mrmlSceneChanged(vtkMRMLScene*)"],
        "slots": ["setMRMLScene(vtkMRMLScene*)"],
        "methods": ["mrmlScene"],
    },
    "qMRMLNodeComboBox": {
        "base": "QWidget",
        "properties": ["currentNodeID", "nodeTypes", "showHidden", "showChildNodeTypes", "hideChildNodeTypes",
                       "baseName", "noneEnabled", "addEnabled", "removeEnabled", "editEnabled", "renameEnabled",
                       "interactionNodeSingletonTag", "selectNodeUponCreation", "noneDisplay", "sizeAdjustPolicy"],
        "signals": ["currentNodeChanged(vtkMRMLNode*)", "currentNodeChanged(bool)", "currentNodeIDChanged(QString)",
                    "nodeActivated(vtkMRMLNode*)", "nodeAdded(vtkMRMLNode*)", "nodeAddedByUser(vtkMRMLNode*)",
                    "nodeAddedByUserAction(vtkMRMLNode*)", "nodeAboutToBeRemoved(vtkMRMLNode*)",
                    "currentNodeRenamed(QString)", "nodeAboutToBeEdited(vtkMRMLNode*)"],
        "slots": ["setMRMLScene(vtkMRMLScene*)", "setCurrentNode(vtkMRMLNode*)", "setCurrentNodeID(QString)",
                  "setCurrentNodeIndex(int)", "removeCurrentNode()", "editCurrentNode()", "renameCurrentNode()"],
        "methods": ["currentNode", "mrmlScene", "addAttribute", "removeAttribute", "setNodeTypeLabel",
                    "addMenuAction"],
    },
    "ctkCollapsibleButton": {
        "base": "QAbstractButton",
        "properties": ["collapsed", "collapsedHeight", "flat", "contentsFrameShape", "contentsFrameShadow",
                       "contentsLineWidth", "contentsMidLineWidth", "buttonTextAlignment", "indicatorAlignment"],
        "signals": ["contentsCollapsed(bool)"],
        "slots": [],
        "methods": [],
    },
    "ctkMenuButton": {
        "base": "QPushButton",
        "properties": [],
        "signals": [],
        "slots": [],
        "methods": [],
    },
    "qMRMLSegmentationShow3DButton": {
        "base": "ctkMenuButton",
        "properties": ["locked"],
        "signals": [],
        "slots": ["setSegmentationNode(vtkMRMLSegmentationNode*)", "setLocked(bool)", "updateWidgetFromMRML()"],
        "methods": ["setSegmentationNode"],
    },
    "ctkSearchBox": {
        "base": "QLineEdit",
        "properties": ["showSearchIcon", "alwaysShowClearIcon", "searchIcon", "clearIcon"],
        "signals": [],
        "slots": [],
        "methods": [],
    },
    "ctkPathLineEdit": {
        "base": "QWidget",
        "properties": ["label", "filters", "currentPath", "options", "settingKey", "showBrowseButton",
                       "showHistoryButton", "sizeAdjustPolicy", "minimumContentsLength", "nameFilters"],
        "signals": ["validInputChanged(bool)", "currentPathChanged(QString)"],
        "slots": ["setCurrentPath(QString)", "browse()", "retrieveHistory()", "addCurrentPathToHistory()"],
        "methods": [],
    },
    "qSlicerMarkupsPlaceWidget": {
        "base": "qSlicerWidget",
        "properties": ["buttonsVisible", "deleteAllControlPointsOptionVisible", "unsetLastControlPointOptionVisible",
                       "unsetAllControlPointsOptionVisible", "placeMultipleMarkups", "nodeColor", "defaultNodeColor",
                       "currentNodeActive", "placeModeEnabled", "placeModePersistency",
                       "deleteAllMarkupsOptionVisible"],
        "signals": ["activeMarkupsPlaceModeChanged(bool)", "activeMarkupsFiducialPlaceModeChanged(bool)"],
        "slots": ["setCurrentNode(vtkMRMLNode*)", "setCurrentNodeActive(bool)", "setPlaceModeEnabled(bool)",
                  "setPlaceMultipleMarkups(PlaceMultipleMarkupsType)", "setButtonsVisible(bool)",
                  "deleteLastPoint()", "deleteAllPoints()"],
        "methods": ["currentMarkupsNode", "placeButton"],
    },
}


def class_chain(name):
    """[name, base, base's base, ...] down to a Qt class."""
    chain = [name]
    while name in SLICER_WIDGETS:
        name = SLICER_WIDGETS[name]["base"]
        chain.append(name)
    return chain


def stub_classes():
    """PySide6 stand-ins for the widgets above: their properties, signals and slots, and the
    little behaviour the module relies on (node selection, collapsing, paths)."""
    from PySide6 import QtCore, QtWidgets

    def generic(name, spec, base):
        namespace = {"__module__": name}
        for prop in spec["properties"]:
            def setter(self, value, _p=prop):
                self.setProperty(_p, value)
            namespace["set" + prop[0].upper() + prop[1:]] = setter
        for signal in spec["signals"]:
            namespace.setdefault(signal.split("(")[0], QtCore.Signal(object))
        for slot in spec["slots"] + spec["methods"]:
            namespace.setdefault(slot.split("(")[0], lambda self, *a, **k: None)
        return namespace

    def mrml_scene_widget(namespace):
        def setMRMLScene(self, scene):
            self._scene = scene
            self.mrmlSceneChanged.emit(scene)
        namespace.update(setMRMLScene=setMRMLScene, mrmlScene=lambda self: getattr(self, "_scene", None))

    behaviour = {}

    def node_combo(namespace):
        def setMRMLScene(self, scene):
            self._scene = scene

        def setCurrentNode(self, node):
            if node is not getattr(self, "_node", None):
                self._node = node
                self.currentNodeChanged.emit(node)
        namespace.update(setMRMLScene=setMRMLScene, setCurrentNode=setCurrentNode,
                         currentNode=lambda self: getattr(self, "_node", None),
                         mrmlScene=lambda self: getattr(self, "_scene", None))
    behaviour["qMRMLNodeComboBox"] = node_combo

    def collapsible(namespace):
        def setCollapsed(self, value):
            if bool(value) != bool(self.property("collapsed")):
                self.setProperty("collapsed", bool(value))
                self.contentsCollapsed.emit(bool(value))
        namespace.update(setCollapsed=setCollapsed, paintEvent=lambda self, event: None)
    behaviour["ctkCollapsibleButton"] = collapsible

    def path_line_edit(namespace):
        def setCurrentPath(self, path):
            if path != (self.property("currentPath") or ""):
                self.setProperty("currentPath", path)
                self.currentPathChanged.emit(path)
        namespace.update(setCurrentPath=setCurrentPath)
    behaviour["ctkPathLineEdit"] = path_line_edit

    def show3d(namespace):
        namespace.update(setSegmentationNode=lambda self, node: setattr(self, "_node", node),
                         segmentationNode=lambda self: getattr(self, "_node", None))
    behaviour["qMRMLSegmentationShow3DButton"] = show3d

    def place_widget(namespace):
        mrml_scene_widget(namespace)
        namespace.update(setCurrentNode=lambda self, node: setattr(self, "_node", node),
                         currentNode=lambda self: getattr(self, "_node", None))
    behaviour["qSlicerMarkupsPlaceWidget"] = place_widget
    behaviour["qMRMLWidget"] = mrml_scene_widget
    behaviour["qSlicerWidget"] = mrml_scene_widget

    classes = {}
    for name in sorted(SLICER_WIDGETS, key=lambda n: len(class_chain(n))):
        base_name = SLICER_WIDGETS[name]["base"]
        base = classes.get(base_name) or getattr(QtWidgets, base_name)
        namespace = generic(name, SLICER_WIDGETS[name], base)
        if name in behaviour:
            behaviour[name](namespace)
        classes[name] = type(name, (base,), namespace)
    return classes
