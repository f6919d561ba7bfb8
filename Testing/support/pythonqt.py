"""Run the module's widget outside Slicer: a small PythonQt look-alike on PySide6.

Slicer's Python sees Qt through PythonQt, which differs from PySide in a few ways the
widget code relies on: Qt properties are attributes (`label.text = "x"`, `list.count`),
signals are connected by signature (`button.connect("clicked(bool)", slot)`) and slots get
only as many arguments as they take. `Wrapped` gives a PySide object that behaviour.

`install(monkeypatch, scene, tmp_path)` provides what TotalSegmentator.py imports from the
application - `qt`, `ctk`, `slicer.ScriptedLoadableModule`, `slicer.parameterNodeWrapper`, `slicer.i18n`,
`slicer.util.loadUI` / `childWidgetVariables` / dialogs, `slicer.mrmlScene` - on top of
the real slicer-core package (real MRML scene and nodes). The panel is built from the
module's .ui by pyside6-uic with the Slicer/CTK widget stand-ins of slicer_widgets.py.
Dialogs are recorded in `Host.dialogs` and answered with `Host.answers`.

This tests the widget's wiring (which controls appear, what Apply runs, what Cancel and
errors do) with the real logic, engine and MRML; it cannot test Slicer's own widgets.
"""
import contextlib
import inspect
import json
import os
import subprocess
import sys
import types
import typing
import unittest
from pathlib import Path

from PySide6 import QtCore, QtGui, QtWidgets

from slicer_widgets import SLICER_WIDGETS, stub_classes

REPO = Path(__file__).resolve().parents[2]


def _unwrap(value):
    return value._obj if isinstance(value, Wrapped) else value


def _wrap(value):
    return Wrapped(value) if isinstance(value, QtCore.QObject) and not isinstance(value, Wrapped) else value


def _positional_count(func):
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return None
    return len([p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)])


def _adapt(slot):
    """PythonQt calls a slot with as many of the signal's arguments as it accepts."""
    n = _positional_count(slot)

    def call(*args):
        args = [_wrap(a) for a in args]
        return slot(*(args if n is None else args[:n]))
    return call


def _stub_properties(obj):
    names = set()
    for cls in type(obj).__mro__:
        names |= set(SLICER_WIDGETS.get(cls.__name__, {}).get("properties", []))
    return names


def _qt_properties(obj):
    mo = obj.metaObject()
    return {mo.property(i).name() for i in range(mo.propertyCount())} | _stub_properties(obj)


class Wrapped:
    """A PySide QObject seen the PythonQt way."""

    __slots__ = ("_obj",)

    def __init__(self, obj):
        object.__setattr__(self, "_obj", obj)

    def __eq__(self, other):
        return _unwrap(other) is self._obj

    def __hash__(self):
        return id(self._obj)

    def __bool__(self):
        return True

    def __getattr__(self, name):
        obj = self._obj
        if name in _qt_properties(obj):
            return obj.property(name)
        attr = getattr(obj, name)
        if isinstance(attr, QtCore.SignalInstance) or not callable(attr):
            return attr

        def method(*args, **kwargs):
            return _wrap(attr(*[_unwrap(a) for a in args], **{k: _unwrap(v) for k, v in kwargs.items()}))
        return method

    def __setattr__(self, name, value):
        obj = self._obj
        setter = getattr(obj, "set" + name[0].upper() + name[1:], None)
        if name in _qt_properties(obj):
            if setter is not None:
                setter(_unwrap(value))
            elif not obj.setProperty(name, _unwrap(value)):
                raise AttributeError(f"cannot set {name}")
        else:
            raise AttributeError(f"PythonQt: {type(obj).__name__} has no property {name}")

    def connect(self, signature, slot):
        signal = getattr(self._obj, signature.split("(")[0])
        signal.connect(_adapt(slot))

    def className(self):
        return self._obj.metaObject().className()

    def inherits(self, name):
        return self._obj.inherits(name)


# -- qt, ctk ------------------------------------------------------------------------------

def _qt_module(settings_file, host):
    qt = types.ModuleType("qt")
    for name in ("QListWidgetItem", "QTableWidgetItem", "QLineEdit", "QWidget", "QMessageBox", "QLabel"):
        setattr(qt, name, getattr(QtWidgets, name))
    # PythonQt's static dialogs return the text alone; here they return the test's answer.
    qt.QFileDialog = types.SimpleNamespace(
        getOpenFileName=lambda *a: host.answer("file", a), getExistingDirectory=lambda *a: host.answer("folder", a))
    qt.QInputDialog = types.SimpleNamespace(getText=lambda *a: host.answer("text", a))
    qt.Qt = QtCore.Qt
    qt.QIcon = QtGui.QIcon

    def QTimer():
        return Wrapped(QtCore.QTimer())

    def QSettings():
        return QtCore.QSettings(str(settings_file), QtCore.QSettings.IniFormat)
    qt.QTimer, qt.QSettings = QTimer, QSettings
    return qt


def _ctk_module():
    ctk = types.ModuleType("ctk")
    ctk.ctkPathLineEdit = types.SimpleNamespace(Dirs=0x1, Files=0x2)
    return ctk


# -- parameter node ------------------------------------------------------------------------

def parameterNodeWrapper(cls):
    """Enough of Slicer's parameterNodeWrapper: typed parameters stored in a real
    vtkMRMLScriptedModuleNode, widgets bound through their SlicerParameterName property."""
    hints = typing.get_type_hints(cls)
    defaults = {name: getattr(cls, name, None) for name in hints}

    def is_node_type(t):
        return isinstance(t, type) and t.__name__.startswith("vtkMRML")

    class Wrapper:
        allParameters = hints

        def __init__(self, node):
            object.__setattr__(self, "parameterNode", node)
            object.__setattr__(self, "_guis", {})

        def __getattr__(self, name):
            if name not in hints:
                raise AttributeError(name)
            node, t = self.parameterNode, hints[name]
            if is_node_type(t):
                return node.GetNodeReference(name)
            text = node.GetParameter(name)
            if not text:
                default = defaults[name]
                return list(default or []) if typing.get_origin(t) is list else default
            if typing.get_origin(t) is list:
                return json.loads(text)
            if t is bool:
                return text == "true"
            return text

        def __setattr__(self, name, value):
            if name not in hints:
                raise AttributeError(f"{name} is not a parameter")
            node, t = self.parameterNode, hints[name]
            if is_node_type(t):
                node.SetNodeReferenceID(name, value.GetID() if value is not None else None)
            elif typing.get_origin(t) is list:
                node.SetParameter(name, json.dumps(list(value)))
            elif t is bool:
                node.SetParameter(name, "true" if value else "false")
            else:
                node.SetParameter(name, str(value))

        def connectGui(self, ui):
            bindings = []
            for widget in vars(ui).values():
                name = widget.property("SlicerParameterName")
                if name:
                    bindings.append((name, widget))

            def to_gui(*_):
                for name, widget in bindings:
                    if widget.inherits("qMRMLNodeComboBox"):
                        widget.setCurrentNode(getattr(self, name))
                    else:
                        widget.checked = bool(getattr(self, name))
            for name, widget in bindings:
                if widget.inherits("qMRMLNodeComboBox"):
                    widget.connect("currentNodeChanged(vtkMRMLNode*)", lambda n, k=name: setattr(self, k, n))
                else:
                    widget.connect("toggled(bool)", lambda on, k=name: setattr(self, k, on))
            to_gui()
            tag = self.parameterNode.AddObserver("ModifiedEvent", to_gui)
            self._guis[tag] = bindings
            return tag

        def disconnectGui(self, tag):
            if tag in self._guis:
                self.parameterNode.RemoveObserver(tag)
                del self._guis[tag]

        def AddObserver(self, event, callback, priority=0.0):
            return self.parameterNode.AddObserver(event, callback, priority)

        def RemoveObserver(self, tag):
            self.parameterNode.RemoveObserver(tag)

        def StartModify(self):
            return self.parameterNode.StartModify()

        def EndModify(self, was):
            return self.parameterNode.EndModify(was)

    Wrapper.__name__ = cls.__name__
    return Wrapper


# -- the host ---------------------------------------------------------------------------------

class Host:
    """What the Slicer application provides to the module, for one test."""

    def __init__(self, scene):
        self.scene = scene
        self.dialogs = []  # (kind, text)
        self.answers = {"confirm": True}
        self._ui_class = None

    def load_ui(self, path):
        if self._ui_class is None:
            out = Path(os.environ.get("TMPDIR", "/tmp")) / "ui_totalsegmentator_emulated.py"
            uic = Path(sys.executable).with_name("pyside6-uic")
            subprocess.run([str(uic), str(path), "-o", str(out)], check=True)
            namespace = {}
            exec(compile(out.read_text(), str(out), "exec"), namespace)
            out.unlink()
            self._ui_class = namespace["Ui_TotalSegmentator"]
        top = sys.modules["qMRMLWidget"].qMRMLWidget()
        self._ui_class().setupUi(top)
        return Wrapped(top)

    @staticmethod
    def child_widget_variables(widget):
        ui = types.SimpleNamespace()
        for child in _unwrap(widget).findChildren(QtWidgets.QWidget):
            if child.objectName():
                setattr(ui, child.objectName(), Wrapped(child))
        return ui

    def answer(self, kind, args):
        self.dialogs.append((kind, " | ".join(str(a) for a in args[1:3])))
        return self.answers.get(kind, "")

    def error_display(self, text, **kwargs):
        self.dialogs.append(("error", text + ("\n" + kwargs["detailedText"] if kwargs.get("detailedText") else "")))

    @contextlib.contextmanager
    def try_with_error_display(self, message=None, show=True, waitCursor=False):
        """As slicer.util.tryWithErrorDisplay: show the error, then re-raise (PythonQt prints it)."""
        try:
            yield
        except Exception as e:
            if show:
                self.error_display(f"{message}\n\n{e}" if message else str(e))
            raise

    def confirm(self, text, **kwargs):
        self.dialogs.append(("confirm", text))
        return self.answers["confirm"]


def install(monkeypatch, scene, tmp_path):
    """Make `import TotalSegmentator` and its widget work on PySide6 + slicer-core; returns the Host."""
    import slicer
    import slicer.util

    host = Host(scene)
    for name, cls in stub_classes().items():
        module = types.ModuleType(name)
        setattr(module, name, cls)
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setitem(sys.modules, "qt", _qt_module(tmp_path / "settings.ini", host))
    monkeypatch.setitem(sys.modules, "ctk", _ctk_module())

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent or QtWidgets.QWidget()
            self.parent.isEntered = True
            if self.parent.layout() is None:
                QtWidgets.QVBoxLayout(self.parent)
            self.layout = Wrapped(self.parent.layout())

        def setup(self):
            pass

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def __init__(self, methodName="runTest"):
            super().__init__(methodName)
            self.messages = []

        def delayDisplay(self, message, msec=None):
            self.messages.append(message)

    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", types.SimpleNamespace(
        ScriptedLoadableModule=ScriptedLoadableModule, ScriptedLoadableModuleWidget=ScriptedLoadableModuleWidget,
        ScriptedLoadableModuleTest=ScriptedLoadableModuleTest))
    monkeypatch.setitem(sys.modules, "slicer.parameterNodeWrapper",
                        types.SimpleNamespace(parameterNodeWrapper=parameterNodeWrapper))
    monkeypatch.setitem(sys.modules, "slicer.i18n", types.SimpleNamespace(tr=lambda text: text,
                                                                         translate=lambda context, text: text))
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    # the application's Terminologies module logic, real (slicer-core), as Slicer gives it to modules
    terminologies = slicer.vtkSlicerTerminologiesModuleLogic()
    monkeypatch.setattr(slicer, "modules", types.SimpleNamespace(
        terminologies=types.SimpleNamespace(logic=lambda: terminologies)), raising=False)
    monkeypatch.setattr(slicer, "qSlicerMarkupsPlaceWidget", sys.modules["qSlicerMarkupsPlaceWidget"]
                        .qSlicerMarkupsPlaceWidget, raising=False)
    monkeypatch.setattr(slicer.util, "loadUI", host.load_ui)
    monkeypatch.setattr(slicer.util, "childWidgetVariables", host.child_widget_variables)
    monkeypatch.setattr(slicer.util, "errorDisplay", host.error_display)
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", host.confirm)
    monkeypatch.setattr(slicer.util, "tryWithErrorDisplay", host.try_with_error_display)
    for name in ("TotalSegmentator", "TotalSegmentatorLib.sections"):  # they import this test's `qt`
        monkeypatch.delitem(sys.modules, name, raising=False)
    if "TotalSegmentatorLib" in sys.modules:
        monkeypatch.delattr(sys.modules["TotalSegmentatorLib"], "sections", raising=False)
    return host
