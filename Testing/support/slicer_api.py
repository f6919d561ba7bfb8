"""The Slicer API table (Testing/data/slicer_api.json, made by Testing/tools/make_slicer_api_table.py).

`SlicerApi.load()` answers, per supported version ("5.10", "5.12", "preview"): does this
class exist, what can Python call on it (with its Slicer/CTK base classes), which names
do slicer.util, slicer.ScriptedLoadableModule, ... define.
"""
import functools
import json
from pathlib import Path

TABLE = Path(__file__).resolve().parents[1] / "data" / "slicer_api.json"
QT_KINDS = ("properties", "signals", "slots", "invokables", "enums", "methods")


def _in(versions, key):
    return versions == "*" or key in versions.split()


class SlicerApi:
    def __init__(self, table):
        self.table = table
        self.versions = list(table["versions"])

    @classmethod
    @functools.lru_cache(maxsize=None)
    def load(cls, path=TABLE):
        return cls(json.loads(Path(path).read_text(encoding="utf-8")))

    def describe(self, key):
        v = self.table["versions"][key]
        return f"{key} ({v['ref']} = Slicer {v['slicer']})"

    def has_class(self, name, key):
        entry = self.table["classes"].get(name)
        return entry is not None and _in(entry["in"], key)

    def _own(self, name, key, kinds):
        entry = self.table["classes"].get(name, {})
        out = set()
        for kind in kinds:
            for versions, members in entry.get(kind, {}).items():
                if _in(versions, key):
                    out.update(members)
        return out

    def bases(self, name, key):
        """The class and its ancestors that the table knows (Slicer, CTK), nearest first; then the first foreign one."""
        chain, todo = [], [name]
        while todo:
            current = todo.pop(0)
            if current in chain:
                continue
            chain.append(current)
            if self.has_class(current, key):
                todo.extend(self.table["classes"][current]["bases"])
        return chain

    def members(self, name, key, kinds=QT_KINDS + ("methods",)):
        """What Python can call on `name` in that version, inherited members included (table classes only)."""
        out = set()
        for cls in self.bases(name, key):
            out |= self._own(cls, key, kinds)
        return out

    @functools.lru_cache(maxsize=None)
    def all_vtk_methods(self, key):
        """Every method of every VTK class of Slicer in that version."""
        out = set()
        for name in self.table["classes"]:
            if name.startswith("vtk"):
                out |= self._own(name, key, ("methods", "enums"))
        return out

    def python_names(self, module, key):
        return {n for versions, names in self.table["python"].get(module, {}).items() if _in(versions, key)
                for n in names}

    def modules(self, key):
        return {n for versions, names in self.table["modules"].items() if _in(versions, key) for n in names}

    def foreign_base(self, name, key):
        """The first base class outside the table (QWidget, vtkObject, ...), or None."""
        return next((c for c in self.bases(name, key) if not self.has_class(c, key)), None)
