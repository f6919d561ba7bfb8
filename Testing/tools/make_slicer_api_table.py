"""Regenerate Testing/data/slicer_api.json: the Slicer API a Python extension can call, per supported release.

Developer tool, not part of the product: Testing/project/test_slicer_api.py checks every
Slicer/MRML/CTK name the module and the MRML code use against the generated table.

    python Testing/tools/make_slicer_api_table.py [--slicer-git DIR] [--ctk-git DIR]

Read from Slicer's sources at 5.10 (v5.10.0), the newest 5.12.x tag and the preview (the
default branch), and from CTK at the commit each of them pins:
- C++ headers (Libs/, Base/, Modules/ of Slicer; Libs/ of CTK, tests excluded): for VTK
  classes (vtkMRML*, vtkSegment*, vtkSlicer*Logic, vtkOrientedImageData, ...) the public
  methods and the accessors of the vtk*Macro declarations; for Qt classes (qMRML*,
  qSlicer*, ctk*) the properties, signals, slots, Q_INVOKABLE methods and enum values
  PythonQt exposes (see cxx_header_api.py); the public base classes of both;
- Python: the top-level names of slicer/__init__.py (plus app, mrmlScene, modules and
  moduleNames, which the application sets), slicer.util, slicer.i18n, the classes and
  methods of slicer.ScriptedLoadableModule, the names slicer.parameterNodeWrapper exports;
- module names (slicer.modules.<name>): the folders of Modules/Loadable, Scripted and CLI.

Format (compact; names are grouped by the versions they exist in: "*" for all, else a
space-separated list of version keys): {"versions": {key: {slicer, ref, commit, ctk}},
"classes": {name: {"in": versions, "bases": [...], "methods"|"properties"|"signals"|"slots"|
"invokables"|"enums": {versions: [member, ...]}}}, "python": {module: {versions: [name]}},
"modules": {versions: [name]}}. Testing/support/slicer_api.py reads it.
"""
import argparse
import ast
import json
import re
import sys
from pathlib import Path

from cxx_header_api import parse_header
from slicer_sources import DEFAULT_CTK_GIT, DEFAULT_SLICER_GIT, Git, ctk_commit, supported_releases

REPO = Path(__file__).resolve().parents[2]
OUTPUT = REPO / "Testing" / "data" / "slicer_api.json"
MEMBER_KINDS = ("methods", "properties", "signals", "slots", "invokables", "enums")
APPLICATION_ATTRIBUTES = ("app", "mrmlScene", "modules", "moduleNames")  # set by the application (slicer/__init__.py)


def header_paths(git, ref, roots, prefixes):
    return [p for p in git.files(ref, *roots)
            if p.endswith(".h") and "/Testing/" not in p and p.rsplit("/", 1)[-1].startswith(prefixes)]


def read_classes(git, ref, roots, prefixes):
    classes = {}
    for path, text in git.read_many(ref, header_paths(git, ref, roots, prefixes)).items():
        for name, info in parse_header(text).items():
            if name.startswith(prefixes) and name not in classes:
                classes[name] = info
    return classes


def top_level_names(text):
    names = set()
    for node in ast.parse(text).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
                try:
                    names.update(ast.literal_eval(node.value))
                except ValueError:
                    pass
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names if a.name != "*")
    return names


def class_members(text):
    """{"Class": set(), "Class.member": ...} for the classes of a module (methods and attributes set in them)."""
    out = {}
    for node in ast.parse(text).body:
        if isinstance(node, ast.ClassDef):
            out[node.name] = True
            for base in node.bases:  # "Class(base)": members a class inherits from outside Slicer
                out[f"{node.name}({ast.unparse(base)})"] = True
            for item in ast.walk(node):
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item in node.body:
                    out[f"{node.name}.{item.name}"] = True
                elif isinstance(item, ast.Attribute) and isinstance(item.value, ast.Name) and \
                        item.value.id == "self" and isinstance(item.ctx, ast.Store):
                    out[f"{node.name}.{item.attr}"] = True
    return set(out)


def wrapper_members(text):
    """"wrapper.<name>" for what parameterNodeWrapper adds to a wrapped class (setattr(classtype, "name", ...))."""
    out = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("setattr", "checkedSetAttr") and \
                len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
            out.add(f"wrapper.{node.args[1].value}")
    return out


def read_python(git, ref):
    base = "Base/Python/slicer"
    files = git.read_many(ref, [p for p in git.files(ref, base) if p.endswith(".py")])
    package = {p: t for p, t in files.items() if p.startswith(f"{base}/parameterNodeWrapper/")}
    init = files[f"{base}/__init__.py"]
    submodules = {p[len(base) + 1:].split("/")[0].removesuffix(".py") for p in git.files(ref, base)
                  if not p.endswith((".in", "__init__.py")) and "/tests/" not in p}
    return {
        "slicer": top_level_names(init) | set(APPLICATION_ATTRIBUTES) | submodules,
        "slicer.util": top_level_names(files[f"{base}/util.py"]) | class_members(files[f"{base}/util.py"]),
        "slicer.i18n": top_level_names(files.get(f"{base}/i18n.py", "")),
        "slicer.ScriptedLoadableModule": class_members(files[f"{base}/ScriptedLoadableModule.py"]),
        "slicer.parameterNodeWrapper": set().union(*(top_level_names(t) | wrapper_members(t) for t in package.values())),
    }


def read_modules(git, ref):
    names = set()
    for kind in ("Loadable", "Scripted", "CLI"):
        for path in git.files(ref, f"Modules/{kind}"):
            parts = path.split("/")
            if len(parts) > 3 and not parts[2].startswith(("Testing", "CMake")):
                names.add(parts[2].lower())
    return names


def snapshot(slicer_git, ctk_git, release):
    classes = read_classes(slicer_git, release.ref, ["Libs", "Base", "Modules"], ("vtk", "qMRML", "qSlicer"))
    ctk = ctk_commit(slicer_git, release.ref)
    classes.update(read_classes(ctk_git, ctk, ["Libs"], ("ctk",)))
    return {"classes": classes, "python": read_python(slicer_git, release.ref),
            "modules": read_modules(slicer_git, release.ref), "ctk": ctk}


def versions_text(present, keys):
    return "*" if present == set(keys) else " ".join(k for k in keys if k in present)


def group_by_versions(names):
    """{name: versions} -> {versions: [names]} (most names exist in every version: "*")."""
    out = {}
    for name, versions in sorted(names.items()):
        out.setdefault(versions, []).append(name)
    return out


def merge(snapshots, keys):
    """One table: every class, member and name with the versions it exists in."""
    classes = {}
    for name in sorted(set().union(*(s["classes"] for s in snapshots.values()))):
        having = [k for k in keys if name in snapshots[k]["classes"]]
        newest = snapshots[having[-1]]["classes"][name]
        entry = {"in": versions_text(set(having), keys), "bases": newest["bases"]}
        for kind in MEMBER_KINDS:
            members = set().union(*(snapshots[k]["classes"][name][kind] for k in having))
            if members:
                entry[kind] = group_by_versions(
                    {m: versions_text({k for k in having if m in snapshots[k]["classes"][name][kind]}, keys)
                     for m in members})
        classes[name] = entry
    python = {}
    for module in snapshots[keys[-1]]["python"]:
        names = set().union(*(s["python"][module] for s in snapshots.values()))
        python[module] = group_by_versions(
            {n: versions_text({k for k in keys if n in snapshots[k]["python"][module]}, keys) for n in names})
    modules = group_by_versions({n: versions_text({k for k in keys if n in snapshots[k]["modules"]}, keys)
                                 for n in set().union(*(s["modules"] for s in snapshots.values()))})
    return classes, python, modules


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slicer-git", type=Path, default=DEFAULT_SLICER_GIT)
    parser.add_argument("--ctk-git", type=Path, default=DEFAULT_CTK_GIT)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    slicer_git, ctk_git = Git(args.slicer_git), Git(args.ctk_git)
    releases = supported_releases(slicer_git)
    keys = [r.name for r in releases]
    snapshots = {r.name: snapshot(slicer_git, ctk_git, r) for r in releases}
    classes, python, modules = merge(snapshots, keys)
    table = {
        "generated_by": "Testing/tools/make_slicer_api_table.py",
        "versions": {r.name: {"slicer": r.version, "ref": r.ref, "commit": r.commit, "date": r.date,
                              "ctk": snapshots[r.name]["ctk"]} for r in releases},
        "classes": classes, "python": python, "modules": modules,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(table, separators=(",", ":"), sort_keys=False) + "\n", encoding="utf-8")
    for key in keys:
        snap = snapshots[key]
        n_vtk = sum(1 for c in snap["classes"] if c.startswith("vtk"))
        n_qt = len(snap["classes"]) - n_vtk
        n_members = sum(len(c[k]) for c in snap["classes"].values() for k in MEMBER_KINDS)
        n_python = sum(len(v) for v in snap["python"].values())
        print(f"{key} ({table['versions'][key]['ref']}, Slicer {table['versions'][key]['slicer']}, CTK "
              f"{snap['ctk'][:8]}): {n_vtk} VTK classes, {n_qt} Qt classes, {n_members} members, "
              f"{n_python} Python names, {len(snap['modules'])} modules")
    print(f"wrote {args.output} ({args.output.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
