"""The panel (.ui) and the widget code agree, and Qt can load the .ui.

Slicer is not available here, so:
- Qt's own tools check the .ui: pyside6-uic compiles it, and the generated code is run
  against real Qt widgets, with stand-ins for the Slicer/CTK widgets that have exactly the
  properties, signals and slots of the real ones (Testing/support/slicer_widgets.py). A misspelt
  property, a wrong signal in <connections>, a broken layout fails here.
- The widget code is read (AST): every `self.ui.X` it touches exists in the .ui with the
  class the code expects; every `connect("signal(...)")` names a real signal of that
  class; every attribute it uses exists, used the PythonQt way (Qt properties as
  attributes, methods called).
- Parameter-node bindings (SlicerParameterName) name real parameters of a fitting type.
"""
import ast
import os
import subprocess
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from slicer_widgets import SLICER_WIDGETS, class_chain, stub_classes

REPO = Path(__file__).resolve().parents[2]
UI_FILE = REPO / "Resources" / "UI" / "TotalSegmentator.ui"
MODULE_FILE = REPO / "TotalSegmentatorModule" / "TotalSegmentator.py"
# the panel's sections are wired like the widget itself, on the same `self.ui`
PANEL_FILES = (MODULE_FILE, REPO / "TotalSegmentatorModule" / "TotalSegmentatorLib" / "sections.py")

from PySide6 import QtCore, QtWidgets  # noqa: E402 (test dependency: Qt itself checks the .ui)


# -- the .ui ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ui_tree():
    return ET.parse(UI_FILE)  # well-formed XML or a ParseError


@pytest.fixture(scope="module")
def ui_widgets(ui_tree):
    names = [(w.get("name"), w.get("class")) for w in ui_tree.iter("widget")]
    duplicates = {n for n, _ in names if [m for m, _ in names].count(n) > 1}
    assert not duplicates, f"widget names must be unique: {duplicates}"
    return dict(names)


def qt_class(name):
    return getattr(QtWidgets, name, None)


def inherits(cls, wanted):
    if wanted in class_chain(cls):
        return True
    qt = qt_class(class_chain(cls)[-1])
    return qt is not None and any(k.__name__ == wanted for k in qt.__mro__)


def test_ui_is_a_designer_file_with_known_classes(ui_tree, ui_widgets):
    root = ui_tree.getroot()
    assert root.tag == "ui" and root.get("version") == "4.0"
    assert root.findtext("class") == "TotalSegmentator"
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == "TotalSegmentator"
    declared = {c.findtext("class"): c.findtext("extends") for c in root.iter("customwidget")}
    for name, cls in ui_widgets.items():
        assert qt_class(cls) is not None or cls in declared, f"{name}: unknown widget class {cls}"
    for cls, extends in declared.items():
        assert cls in SLICER_WIDGETS, f"custom widget {cls} not known"
        assert qt_class(extends) is not None or extends in declared, f"{cls} extends unknown {extends}"
        assert inherits(cls, extends), f"{cls} does not derive from {extends}"


@pytest.fixture(scope="module")
def qt_app():
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    return QtWidgets.QApplication.instance() or QtWidgets.QApplication([])


def test_qt_compiles_and_builds_the_panel(qt_app, tmp_path, ui_widgets, monkeypatch):
    uic = Path(sys.executable).with_name("pyside6-uic")
    generated = tmp_path / "ui_totalsegmentator.py"
    out = subprocess.run([str(uic) if uic.exists() else "pyside6-uic", str(UI_FILE), "-o", str(generated)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    stubs = stub_classes()
    for name, cls in stubs.items():
        module = types.ModuleType(name)
        setattr(module, name, cls)
        monkeypatch.setitem(sys.modules, name, module)
    messages = []
    QtCore.qInstallMessageHandler(lambda mode, context, message: messages.append(message))
    try:
        namespace = {}
        exec(compile(generated.read_text(), str(generated), "exec"), namespace)
        top = stubs["qMRMLWidget"]()
        namespace["Ui_TotalSegmentator"]().setupUi(top)  # AttributeError on any unknown property
    finally:
        QtCore.qInstallMessageHandler(None)
    assert not messages, messages
    built = {w.objectName(): w for w in top.findChildren(QtWidgets.QWidget)}
    for name, cls in ui_widgets.items():
        if name != "TotalSegmentator":
            assert name in built and type(built[name]).__name__ == cls, name
    assert built["applyButton"].text() == "Apply"
    assert built["inputVolumeSelector"].property("nodeTypes") == ["vtkMRMLScalarVolumeNode"]
    assert built["outputSegmentationSelector"].property("noneDisplay") == "Create new segmentation on Apply"


def test_scene_reaches_every_mrml_widget(ui_tree, ui_widgets):
    connected = {c.findtext("receiver") for c in ui_tree.iter("connection")
                 if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
                 and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    needs_scene = {n for n, c in ui_widgets.items() if n != "TotalSegmentator"
                   and "setMRMLScene(vtkMRMLScene*)" in all_slots(c)}
    assert needs_scene and needs_scene == connected


# -- the widget code ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def module_ast():
    """The widget and its sections as one tree (line numbers in messages: see both files)."""
    trees = [ast.parse(path.read_text(encoding="utf-8")) for path in PANEL_FILES]
    return ast.Module(body=[node for tree in trees for node in tree.body], type_ignores=[])


def class_node(tree, name):
    return next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == name)


@pytest.fixture(scope="module")
def declared_widgets(module_ast):
    widget = class_node(module_ast, "TotalSegmentatorWidget")
    for stmt in widget.body:
        if isinstance(stmt, ast.Assign) and stmt.targets[0].id == "UI_WIDGETS":
            return ast.literal_eval(stmt.value)
    raise AssertionError("UI_WIDGETS not found")


def ui_uses(tree):
    """[(widget name, attribute or None, call args or None, line)] for every self.ui.<name>[.<attr>]."""
    uses = []
    parents = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
    def ui_name(node):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "ui"
                and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"):
            return node.attr
        return None

    aliases = {}  # (function, local name) -> widget name, for `combo = self.ui.deviceComboBox`
    for func in ast.walk(tree):
        if isinstance(func, ast.FunctionDef):
            for node in ast.walk(func):
                if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                    if ui_name(node.value):
                        aliases[(func, node.targets[0].id)] = ui_name(node.value)
            for node in ast.walk(func):
                if isinstance(node, ast.Name) and (func, node.id) in aliases:
                    node._ui_alias = aliases[(func, node.id)]
    for node in ast.walk(tree):
        name = ui_name(node) or getattr(node, "_ui_alias", None)
        if name:
            parent = parents.get(node)
            attr, call = None, None
            if isinstance(parent, ast.Attribute) and parent.value is node:
                attr = parent.attr
                grand = parents.get(parent)
                if isinstance(grand, ast.Call) and grand.func is parent:
                    call = grand.args
            uses.append((name, attr, call, node.lineno))
    return uses


def qt_meta(cls_name):
    cls = qt_class(class_chain(cls_name)[-1])
    mo = cls.staticMetaObject
    props = {mo.property(i).name() for i in range(mo.propertyCount())}
    signals, methods = set(), set()
    for i in range(mo.methodCount()):
        m = mo.method(i)
        sig = m.methodSignature().data().decode()
        (signals if m.methodType() == QtCore.QMetaMethod.MethodType.Signal else methods).add(sig)
    return cls, props, signals, methods


def all_signals(cls_name):
    _, _, signals, _ = qt_meta(cls_name)
    for name in class_chain(cls_name):
        signals |= set(SLICER_WIDGETS.get(name, {}).get("signals", []))
    return signals


def all_slots(cls_name):
    slots = set()
    for name in class_chain(cls_name):
        slots |= set(SLICER_WIDGETS.get(name, {}).get("slots", []))
    return slots


def all_properties(cls_name):
    _, props, _, _ = qt_meta(cls_name)
    for name in class_chain(cls_name):
        props |= set(SLICER_WIDGETS.get(name, {}).get("properties", []))
    return props


def has_method(cls_name, attr):
    cls, _, _, methods = qt_meta(cls_name)
    if attr in ("connect", "disconnect") or callable(getattr(cls, attr, None)):
        return True
    names = {m.split("(")[0] for m in methods}
    for name in class_chain(cls_name):
        spec = SLICER_WIDGETS.get(name, {})
        names |= {s.split("(")[0] for s in spec.get("slots", []) + spec.get("methods", [])}
    return attr in names


def test_code_touches_only_declared_widgets_of_the_right_class(module_ast, declared_widgets, ui_widgets):
    used = {name for name, _, _, _ in ui_uses(module_ast)}
    widget = class_node(module_ast, "TotalSegmentatorWidget")
    for stmt in widget.body:
        if isinstance(stmt, ast.Assign) and stmt.targets[0].id == "QUALITY_BUTTONS":
            used |= set(ast.literal_eval(stmt.value).values())  # reached through getattr(self.ui, name)
    assert used - set(declared_widgets) == set(), "widgets used but not declared in UI_WIDGETS"
    assert set(declared_widgets) - used == set(), "declared but unused (stale) widgets"
    for name, expected in declared_widgets.items():
        assert name in ui_widgets, f"{name} is not in the .ui"
        assert inherits(ui_widgets[name], expected), f"{name}: .ui has {ui_widgets[name]}, code expects {expected}"


def test_connected_signals_exist(module_ast, ui_widgets):
    checked = 0
    for name, attr, args, line in ui_uses(module_ast):
        if attr == "connect" and args and isinstance(args[0], ast.Constant):
            signature = args[0].value
            assert signature in all_signals(ui_widgets[name]), \
                f"line {line}: {ui_widgets[name]} {name} has no signal {signature}"
            checked += 1
    assert checked >= 15


def test_attributes_exist_and_are_used_the_pythonqt_way(module_ast, ui_widgets):
    problems = []
    for name, attr, call, line in ui_uses(module_ast):
        if attr is None:
            continue
        cls = ui_widgets[name]
        is_property = attr in all_properties(cls)
        if call is not None and is_property:  # PythonQt returns the property's value: calling it fails
            problems.append(f"line {line}: {name}.{attr} is a Qt property (PythonQt: no call)")
        elif call is None and not is_property and attr != "connect":
            problems.append(f"line {line}: {name}.{attr} is not a property of {cls}")
        elif call is not None and not (is_property or has_method(cls, attr)):
            problems.append(f"line {line}: {cls} has no method {attr}")
    assert not problems, "\n".join(problems)


def test_parameter_bindings_name_real_parameters(ui_tree, module_ast):
    params = {}
    for stmt in class_node(module_ast, "TotalSegmentatorParameterNode").body:
        if isinstance(stmt, ast.AnnAssign):
            params[stmt.target.id] = ast.unparse(stmt.annotation)
    bound = {}
    for w in ui_tree.iter("widget"):
        for p in w.findall("property"):
            if p.get("name") == "SlicerParameterName":
                bound[p.findtext("string")] = w.get("class")
    assert bound, "no widget is bound to the parameter node"
    fits = {"qMRMLNodeComboBox": lambda t: t.startswith("vtkMRML"), "QCheckBox": lambda t: t == "bool"}
    for param, cls in bound.items():
        assert param in params, f"{param} bound in the .ui but not a parameter"
        assert fits[cls](params[param]), f"{param}: {params[param]} cannot bind to {cls}"
