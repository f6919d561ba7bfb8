"""The API table read from Slicer's headers agrees with real MRML (slicer-core) on the build under test.

An independent check of Testing/tools/make_slicer_api_table.py's header parser: slicer-core
5.12.4.0 is the 5.12 line, 5.13.x a preview build (not necessarily the preview commit the
table was read at). For every MRML name our code uses the table and the real classes must
agree; over all classes both ways at least 97% of the names must match (the rest: methods
Python's wrappers skip, and source differences between the wheel's commit and the tag).
"""
import pytest

import slicer_api_use as scan
import slicer_core_build
from slicer_api import SlicerApi

slicer = pytest.importorskip("slicer")
import vtk  # noqa: E402 (after slicer: the build under test brings it)


@pytest.fixture(scope="module")
def table_key():
    version, _ = slicer_core_build.build()
    key = {"5.12": "5.12", "5.13": "preview"}.get(".".join((version or "").split(".")[:2]))
    if key is None:
        pytest.skip(f"slicer-core {version} is no supported Slicer line")
    return key


def real_has(kind, owner, name):
    if kind == "class":
        return hasattr(slicer, name)
    if kind == "member":
        return hasattr(getattr(slicer, owner, None) or getattr(vtk, owner, None), name)
    return any(hasattr(getattr(slicer, c), name) for c in dir(slicer) if c.startswith("vtk")) or \
        name in scan.live_vtk_methods()


def test_table_and_real_mrml_agree_on_every_name_we_use(table_key):
    api = SlicerApi.load()
    uses = {(u.kind, u.owner, u.name) for u in scan.scan()
            if u.kind == "vtk_method" or u.kind in ("class", "member") and (u.owner or u.name).startswith("vtk")
            and u.owner != "vtk" and not (u.owner or u.name).startswith(("vtkCommand", "vtkMatrix"))}
    assert len(uses) > 80
    disagree = []
    for kind, owner, name in sorted(uses):
        use = scan.Use("", 0, kind, owner, name)
        table, real = scan.check(use, api, table_key), real_has(kind, owner, name)
        if table != real:
            disagree.append(f"{kind} {use.label()}: table says {table}, slicer-core {slicer_core_build.build()[0]} "
                            f"says {real}")
    assert not disagree, "\n".join(disagree)


def test_header_parser_finds_what_the_python_wrappers_expose(table_key):
    api = SlicerApi.load()
    declared = found = exposed = known = 0
    for name in api.table["classes"]:
        cls = getattr(slicer, name, None)
        if not name.startswith("vtk") or cls is None or not api.has_class(name, table_key):
            continue
        own = api._own(name, table_key, ("methods",))
        declared += len(own)
        found += len(own & set(dir(cls)))
        table_names = api.members(name, table_key, ("methods", "enums"))
        foreign = api.foreign_base(name, table_key)
        table_names |= set(dir(getattr(vtk, foreign, object))) if foreign else set()
        python_names = {m for m in dir(cls) if m[:1].isupper()}
        exposed += len(python_names)
        known += len(python_names & table_names)
    assert declared > 5000 and exposed > 20000
    assert found / declared > 0.97, f"{declared - found} of {declared} methods from the headers are not in Python"
    assert known / exposed > 0.97, f"{exposed - known} of {exposed} names Python has are not in the table"
