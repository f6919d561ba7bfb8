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
