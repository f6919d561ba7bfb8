"""Every Slicer / MRML / CTK / Qt name the module and the MRML code use, found by reading the code.

An AST scan (no import) of the Slicer-facing code, and of the module's .ui files. Each
use is a `Use(path, line, kind, owner, name)`; `check(use, api, key)` says whether that
name exists in a Slicer version (Testing/data/slicer_api.json, the installed vtk module
for VTK's own classes, PySide6 for Qt's own classes). Testing/project/test_slicer_api.py
runs it; `python Testing/support/slicer_api_use.py` prints the report.

What is resolved, and how:
- `slicer.X`, `slicer.util.F`, `slicer.i18n.F`, `slicer.app.m`, `slicer.mrmlScene.M`,
  `slicer.modules.name`, `slicer.vtkClass.Static`, `from slicer... import X`: by name;
- `qt.X.Y`, `ctk.X.Y`, `vtk.X.Y`: the class and its member;
- `self.ui.<widget>.<member>` and `.connect("signal(...)", ...)`: the widget's class from
  the .ui, then its Slicer/CTK members and those of its Qt base class;
- a call `anything.Method(...)` with an upper-case initial (VTK's naming; this project's
  own methods are lower-case): it must be a method of SOME Slicer VTK class in that
  version, or of VTK itself;
- `self.m(...)` in a class derived from ScriptedLoadableModule*/VTKObservationMixin that
  does not define m, and `<parameter node wrapper>.m(...)`: the members Slicer's Python
  gives those classes.
"""
import ast
import functools
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COMPAT = "SegmentationLogic/mrml/compat.py"


def _imports_slicer(path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "slicer" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "slicer":
            return True
    return False


# Engine files that call Slicer objects handed to them without importing slicer.
CALLS_SLICER = ()


def scanned_files(repo=REPO):
    """The Slicer-facing Python code: the module, and every engine file that imports slicer (the MRML
    package) or calls Slicer objects."""
    engine = [p for p in sorted((repo / "SegmentationLogic").rglob("*.py"))
              if _imports_slicer(p) or str(p.relative_to(repo)) in CALLS_SLICER]
    return sorted((repo / "TotalSegmentatorModule").rglob("*.py")) + engine


def ui_files(repo=REPO):
    return sorted((repo / "Resources" / "UI").glob("*.ui"))


@dataclass(frozen=True)
class Use:
    path: str
    line: int
    kind: str    # python | class | member | app | modules | vtk_method | widget | signal | slm | wrapper | qt | ui_class | ui_property
    owner: str   # module, class or widget class the name belongs to
    name: str

    def where(self):
        return f"{self.path}:{self.line}"

    def label(self):
        return f"{self.owner}.{self.name}" if self.owner else self.name


# -- .ui ------------------------------------------------------------------------------------

def ui_widgets(path):
    """{object name: class} of a .ui file."""
    return {w.get("name"): w.get("class") for w in ET.parse(path).iter("widget")}


# Dynamic properties Slicer reads from .ui files (not Qt properties of the class).
DYNAMIC_PROPERTIES = {"SlicerParameterName": "parameterNodeWrapper binds the widget to this parameter (Slicer 5.2+)"}


def scan_ui(path, repo=REPO):
    rel = str(Path(path).relative_to(repo))
    uses = []
    text = Path(path).read_text(encoding="utf-8")
    lines = text.splitlines()

    def line_of(needle, start=0):
        for i in range(start, len(lines)):
            if needle in lines[i]:
                return i + 1
        return 0

    for widget in ET.parse(path).iter("widget"):
        cls, name = widget.get("class"), widget.get("name")
        line = line_of(f'name="{name}"')
        uses.append(Use(rel, line, "ui_class", "", cls))
        for prop in widget.findall("property"):
            uses.append(Use(rel, line, "ui_property", cls, prop.get("name")))
    return uses


# -- Python ---------------------------------------------------------------------------------

def dotted(node):
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return parts[::-1]
    if isinstance(node, ast.Call):  # qt.QSettings().value -> ["qt", "QSettings", "()", "value"]
        inner = dotted(node.func)
        if inner:
            return inner + ["()"] + parts[::-1]
    return None


@functools.lru_cache(maxsize=None)
def project_definitions(repo=REPO):
    """Names this project defines (functions, methods, classes): calls to them are not Slicer's."""
    names = set()
    for path in list(repo.glob("SegmentationLogic/**/*.py")) + list(repo.glob("TotalSegmentatorModule/**/*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
    return frozenset(names)


SLM_BASES = {"ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic",
             "ScriptedLoadableModuleTest"}
WRAPPER_HOLDERS = {"_parameterNode", "parameterNode"}  # attributes that hold a parameterNodeWrapper instance


class _Scanner(ast.NodeVisitor):
    def __init__(self, rel, widgets, own):
        self.rel, self.widgets, self.own = rel, widgets, own
        self.uses = []
        self.alias = {}           # local name -> ("module", "slicer.util") | ("class", "vtkMRMLScene")
        self.foreign = set()      # names bound to other imports (numpy, json, our modules)
        self.class_stack = []

    def add(self, node, kind, owner, name):
        self.uses.append(Use(self.rel, getattr(node, "lineno", 0), kind, owner, name))

    # imports
    def visit_Import(self, node):
        for a in node.names:
            top = a.name.split(".")[0]
            if top in ("slicer", "qt", "ctk", "vtk"):
                self.alias[a.asname or top] = ("module", a.name if a.asname else top)
            else:
                self.foreign.add(a.asname or top)

    def visit_ImportFrom(self, node):
        module = node.module or ""
        for a in node.names:
            local = a.asname or a.name
            if module == "slicer":
                if a.name.startswith(("vtk", "q")):
                    self.add(node, "class", "", a.name)
                    self.alias[local] = ("class", a.name)
                else:
                    self.add(node, "python", "slicer", a.name)
                    self.alias[local] = ("module", f"slicer.{a.name}")
            elif module.startswith("slicer."):
                self.add(node, "python", module, a.name)
                self.alias[local] = ("slicer-python", f"{module}.{a.name}")
            elif module in ("qt", "ctk", "vtk"):
                self.alias[local] = ("class", a.name)
                self.add(node, "qt" if module == "qt" else "class", module, a.name)
            else:
                self.foreign.add(local)

    def visit_ClassDef(self, node):
        bases = {b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else "" for b in node.bases}
        defined = {n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        self.class_stack.append((bases, defined))
        self.generic_visit(node)
        self.class_stack.pop()

    def visit_Attribute(self, node):
        parts = dotted(node)
        if parts and not getattr(node, "_inner", False):
            self.chain(node, parts)
        inner = node.value
        while isinstance(inner, ast.Attribute):
            inner._inner = True
            inner = inner.value
        self.generic_visit(node)

    def visit_Call(self, node):
        func = node.func
        if isinstance(func, ast.Attribute):
            parts = dotted(func)
            root = parts[0] if parts else None
            # slicer.util.X(...), vtk.vtkX(...) and the like are checked by name (chain()); here the methods
            # called on objects: nodes, segments, logics, VTK data.
            if func.attr[:1].isupper() and func.attr not in self.own and root not in self.foreign and \
                    root not in self.alias:
                self.add(node, "vtk_method", "", func.attr)
            if func.attr == "connect" and node.args and isinstance(node.args[0], ast.Constant) and \
                    isinstance(node.args[0].value, str) and "(" in node.args[0].value:
                signal = node.args[0].value.split("(")[0]
                owner = self.owner_of(parts[:-1]) if parts else None
                if owner:
                    self.add(node, "signal", owner, signal)
            if parts and len(parts) >= 2 and parts[-2] in WRAPPER_HOLDERS and func.attr[:1].islower():
                self.add(node, "wrapper", "parameterNodeWrapper", func.attr)
            if parts and parts[0] == "self" and len(parts) == 2 and self.class_stack:
                bases, defined = self.class_stack[-1]
                slm = sorted(b for b in bases if b in SLM_BASES or b == "VTKObservationMixin")
                if slm and func.attr not in defined and func.attr not in self.own:
                    self.add(node, "slm", "|".join(slm), func.attr)
        self.generic_visit(node)

    def owner_of(self, parts):
        """The Slicer/Qt class an object chain refers to, when it can be told."""
        if len(parts) == 3 and parts[:2] == ["self", "ui"] or len(parts) == 2 and parts[0] == "ui":
            return self.widgets.get(parts[-1])
        if parts == ["slicer", "app"]:
            return "qSlicerApplication"
        return None

    def chain(self, node, parts):
        root = parts[0]
        kind, target = self.alias.get(root, (None, None))
        if kind == "module":
            parts = target.split(".") + parts[1:]
        elif kind == "class":
            parts = ["slicer", target] + parts[1:] if target.startswith(("vtk", "q")) else ["ctk", target] + parts[1:]
        if parts[0] == "slicer" and len(parts) >= 2:
            second = parts[1]
            if second in ("util", "i18n") and len(parts) >= 3:
                self.add(node, "python", f"slicer.{second}", parts[2])
            elif second == "app" and len(parts) >= 3:
                self.add(node, "app", "qSlicerApplication", parts[2])
            elif second == "mrmlScene" and len(parts) >= 3:
                self.add(node, "member", "vtkMRMLScene", parts[2])
            elif second == "modules" and len(parts) >= 3:
                self.add(node, "modules", "", parts[2])
            elif second.startswith(("vtk", "q")) and second != "qt":
                self.add(node, "class", "", second)
                if len(parts) >= 3 and parts[2] != "()":
                    self.add(node, "member", second, parts[2])
            elif second not in ("()",):
                self.add(node, "python", "slicer", second)
        elif parts[0] in ("qt", "ctk", "vtk") and root in self.alias and len(parts) >= 2:
            self.add(node, "qt" if parts[0] == "qt" else "class", parts[0], parts[1])
            if len(parts) >= 3 and parts[2] != "()":
                self.add(node, "qt_member" if parts[0] == "qt" else "member", parts[1], parts[2])
        elif len(parts) >= 4 and parts[:2] == ["self", "ui"] and parts[3] != "()":
            owner = self.widgets.get(parts[2])
            if owner:
                self.add(node, "widget", owner, parts[3])


def scan(repo=REPO):
    widgets = {}
    for ui in ui_files(repo):
        widgets.update(ui_widgets(ui))
    own = project_definitions(repo)
    uses = []
    for path in scanned_files(repo):
        scanner = _Scanner(str(path.relative_to(repo)), widgets, own)
        scanner.visit(ast.parse(path.read_text(encoding="utf-8")))
        uses += scanner.uses
    for ui in ui_files(repo):
        uses += scan_ui(ui, repo)
    return sorted(set(uses), key=lambda u: (u.path, u.line, u.kind, u.owner, u.name))


# -- checking a use against a version -----------------------------------------------------------

@functools.lru_cache(maxsize=None)
def live_vtk_methods():
    """Every attribute of every class of the installed VTK (VTK's own API; Slicer 5.12/preview use 9.6, 5.10 9.5)."""
    import vtk

    names = set()
    for attr in dir(vtk):
        cls = getattr(vtk, attr, None)
        if isinstance(cls, type):
            names.update(dir(cls))
    return frozenset(names)


def qt_class(name):
    """The PySide6 class of that name (Qt itself; Slicer's PythonQt exposes the same Qt classes)."""
    from PySide6 import QtCore, QtGui, QtWidgets

    for module in (QtWidgets, QtGui, QtCore):
        if hasattr(module, name):
            return getattr(module, name)
    return None


def qt_members(name):
    cls = qt_class(name)
    if cls is None:
        return None
    meta = getattr(cls, "staticMetaObject", None)
    props = {str(meta.property(i).name()) for i in range(meta.propertyCount())} if meta is not None else set()
    # enum values: PythonQt has them on the class (qt.QLineEdit.Password); PySide6 on the enum type
    enums = {v for e in dir(cls) if isinstance(getattr(cls, e, None), type) for v in dir(getattr(cls, e))}
    return set(dir(cls)) | props | enums


# PythonQt adds these to every QObject wrapper (slot/signal connection by signature, properties by name).
PYTHONQT_QOBJECT = {"connect", "disconnect", "setProperty", "property", "className", "delete", "inherits"}


def widget_members(api, cls, key):
    members = api.members(cls, key)
    foreign = api.foreign_base(cls, key) if api.has_class(cls, key) else cls
    qt = qt_members(foreign) if foreign else None
    return members | (qt or set()) | PYTHONQT_QOBJECT


def check(use, api, key):
    """True if the name exists in that Slicer version."""
    kind, owner, name = use.kind, use.owner, use.name
    if kind == "python":
        if owner == "slicer":
            return name in api.python_names("slicer", key) or api.has_class(name, key)
        return name in api.python_names(owner, key)
    if kind == "class":
        if owner == "vtk":
            return name in dir(sys.modules.get("vtk") or __import__("vtk"))
        return api.has_class(name, key)
    if kind == "member":
        if owner in ("vtk",) or not api.has_class(owner, key) and owner.startswith("vtk") and not owner.startswith("vtkMRML"):
            import vtk
            return hasattr(getattr(vtk, owner, None), name) or name in live_vtk_methods()
        known = api.members(owner, key)
        foreign = api.foreign_base(owner, key)
        if foreign and foreign.startswith("vtk"):
            known = known | live_vtk_methods()
        return name in known
    if kind == "app":
        return name in widget_members(api, "qSlicerApplication", key) | (qt_members("QApplication") or set())
    if kind == "modules":
        return name.lower() in api.modules(key) or name.endswith("Instance")
    if kind == "vtk_method":
        return name in api.all_vtk_methods(key) or name in live_vtk_methods()
    if kind in ("widget", "signal"):
        return name in widget_members(api, owner, key)
    if kind == "slm":
        names = api.python_names("slicer.ScriptedLoadableModule", key) | api.python_names("slicer.util", key)
        if any(f"{base}.{name}" in names for base in owner.split("|")):
            return True
        # ScriptedLoadableModuleTest(unittest.TestCase): the table records the base
        import unittest
        return any(f"{base}(unittest.TestCase)" in names for base in owner.split("|")) and hasattr(unittest.TestCase, name)
    if kind == "wrapper":
        return f"wrapper.{name}" in api.python_names("slicer.parameterNodeWrapper", key)
    if kind == "qt":
        return qt_class(name) is not None or name == "Qt"
    if kind == "qt_member":
        if owner == "Qt":
            from PySide6 import QtCore
            return name in dir(QtCore.Qt) or any(name in dir(getattr(QtCore.Qt, e)) for e in dir(QtCore.Qt)
                                                 if isinstance(getattr(QtCore.Qt, e, None), type))
        return name in (qt_members(owner) or set())
    if kind == "ui_class":
        return api.has_class(name, key) if name.startswith(("q", "ctk")) and not name.startswith("Q") else \
            qt_class(name) is not None
    if kind == "ui_property":
        if name in DYNAMIC_PROPERTIES:
            return True
        return name in widget_members(api, owner, key)
    raise ValueError(f"unknown use kind {kind}")


def report(api, uses=None):
    """{use: [versions where it is missing]} for the uses missing somewhere."""
    uses = scan() if uses is None else uses
    out = {}
    for use in uses:
        missing = [key for key in api.versions if not check(use, api, key)]
        if missing:
            out[use] = missing
    return out


if __name__ == "__main__":
    from slicer_api import SlicerApi

    api = SlicerApi.load()
    uses = scan()
    print(f"{len(uses)} uses of {len({u.label() for u in uses})} names in {len(scanned_files())} files and "
          f"{len(ui_files())} .ui files")
    for use, missing in report(api, uses).items():
        print(f"{use.where()}: {use.kind} {use.label()} missing in {', '.join(api.describe(k) for k in missing)}")
