"""The engine's structure rules (ARCHITECTURE.md), read from the source: no import cycles,
only the MRML package imports `slicer`, function-level imports only for heavy optional
dependencies and each with its reason, no test support inside the product."""
import ast
import functools
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ENGINE = REPO / "SegmentationLogic"

# Heavy or optional dependencies a function may import on first use (seconds to import, or
# not needed by most runs). Anything else is imported at the top of its module.
HEAVY = {"torch", "nnunetv2", "vtk", "vtkmodules", "SimpleITK", "pydicom", "highdicom", "slicer", "skimage",
         "ctypes", "fastapi", "uvicorn", "ray", "msvcrt", "fcntl", "xgboost", "radiomics",
         "dynamic_network_architectures", "acvl_utils"}  # nnU-Net's network and padding helpers import torch
# Lazy imports of the engine's own modules, each for a heavy dependency behind it.
LAZY_ENGINE_IMPORTS = {
    ("vessels/cli.py", "SegmentationLogic.vessels.workflow"): "scikit-image and scipy, only for the vessel commands",
    ("vessels/cli.py", "SegmentationLogic.vessels.qc"): "numpy, only when a vessel command runs",
    ("server/tokens.py", "SegmentationLogic.weights"): "numpy: the remote client runs without it",
    ("request.py", "numpy"): "the contract is imported by remote clients without numpy",
    ("weights/verify.py", "numpy"): "the remote client's default token file lies in the weights package's home",
    ("vessels/worker_commands.py", "SegmentationLogic.vessels.review"):
        "nibabel and scipy: the module's worker relays remote runs on a computer without them",
}
# Front doors import the engine inside the command that runs, so `--help`, `list-tasks`,
# `segment --server` and a worker relaying to a server start without numpy, nibabel or torch.
FRONT_DOORS = ("cli/", "worker.py", "server/cli.py", "cohort/cli.py", "tools/cli.py")
# Not shipped with Slicer (installed on the first Apply): the MRML code imported while the
# module loads, and the remote client (Slicer's Python is enough for it), may import it only
# where a result is read.
NOT_IN_SLICER = {"nibabel"}
SLICER_SIDE = ("mrml/", "server/client.py")
def engine_modules():
    """{dotted module name: (path, is package __init__)} of every engine source file."""
    out = {}
    for path in sorted(ENGINE.rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


MODULES = engine_modules()


def _absolute(module, is_package, node):
    if not node.level:
        return node.module or ""
    base = module.split(".")[: len(module.split(".")) - (0 if is_package else 1)]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


@functools.lru_cache(maxsize=None)
def imports(module):
    """[(imported module name, ast node, enclosing function or None)] of one engine module."""
    path, is_package = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    enclosing = {}
    for func in ast.walk(tree):
        if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(func):
                enclosing.setdefault(id(node), func)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node, enclosing.get(id(node))) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, is_package, node)
            for alias in node.names:  # `from . import x` imports the module x when there is one
                name = f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                out.append((name, node, enclosing.get(id(node))))
    return out


def _graph(key):
    graph = {}
    for module in MODULES:
        for name, _, _ in imports(module):
            if name in MODULES and name != module:
                a, b = key(module), key(name)
                if a and b and a != b:
                    graph.setdefault(a, set()).add(b)
    return graph


def _cycles(graph):
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_between_engine_modules():
    """Every import counts, at module level or in a function."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # the check works
    assert _cycles(_graph(lambda m: m)) == []


def test_no_import_cycle_between_engine_packages():
    """weights/, imaging/, pipeline/, outputs/, cli/, ... and the top-level modules depend one way.
    (The package's own __init__ is a lazy facade over everything and is left out.)"""
    def package(module):
        parts = module.split(".")
        return None if len(parts) == 1 else parts[1]

    assert _cycles(_graph(package)) == []


def test_only_the_mrml_package_imports_slicer():
    offenders = []
    for module, (path, _) in MODULES.items():
        rel = path.relative_to(ENGINE).as_posix()
        if rel.startswith("mrml/"):
            continue
        offenders += [f"{rel}:{node.lineno}" for name, node, _ in imports(module) if name.split(".")[0] == "slicer"]
    assert not offenders, f"only SegmentationLogic/mrml/ may import slicer: {offenders}"


def _has_reason(lines, node):
    """A comment on the import line, or just above the block of imports it belongs to."""
    first = node.lineno - 1
    while first > 0 and lines[first - 1].strip().startswith(("import ", "from ")):
        first -= 1
    block = lines[first:node.end_lineno]
    return any("#" in line for line in block) or (first > 0 and lines[first - 1].strip().startswith("#"))


def test_function_level_imports_are_heavy_dependencies_with_a_reason():
    offenders = []
    for module, (path, _) in MODULES.items():
        rel = path.relative_to(ENGINE).as_posix()
        lines = path.read_text(encoding="utf-8").splitlines()
        for name, node, func in imports(module):
            if func is None:
                continue
            if func.name == "__getattr__" and func.col_offset == 0:
                continue  # a package's lazy public API (PEP 562)
            top = name.split(".")[0]
            allowed = (top in HEAVY or (rel, name) in LAZY_ENGINE_IMPORTS
                       or rel.startswith(FRONT_DOORS) and top == "SegmentationLogic"
                       or rel.startswith(SLICER_SIDE) and top in NOT_IN_SLICER)
            if not allowed:
                offenders.append(f"{rel}:{node.lineno} imports {name} in {func.name}() (import it at the top)")
            elif not _has_reason(lines, node):
                offenders.append(f"{rel}:{node.lineno} imports {name} in {func.name}() without a comment saying why")
    assert not offenders, "\n".join(offenders)


def test_test_support_is_not_in_the_product():
    """Example data lookup, test models and fakes live in Testing/support, not in the engine."""
    assert not (ENGINE / "sample_data.py").exists()
    for module in MODULES:
        for name, node, _ in imports(module):
            assert name.split(".")[0] not in {"testmodels", "sample_data", "pytest"}, (module, node.lineno)


def _imported_engine_modules(path):
    """(line, dotted name) of every SegmentationLogic module a file imports by absolute name."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            names = [n for n in names if n in MODULES] or [node.module]
        for name in names:
            if name.split(".")[0] == "SegmentationLogic":
                yield node.lineno, name


def test_every_engine_import_names_a_module_that_exists():
    """A stale path (a module that moved) must fail here, even where an editable install of
    another checkout would still find the old file."""
    stale = [f"{path.relative_to(REPO)}:{node.lineno} {name}" for module, (path, _) in MODULES.items()
             for name, node, _ in imports(module) if name.split(".")[0] == "SegmentationLogic" and name not in MODULES]
    for path in sorted((REPO / "Testing").rglob("*.py")):
        stale += [f"{path.relative_to(REPO)}:{line} {name}" for line, name in _imported_engine_modules(path)
                  if name not in MODULES]
    assert not stale, stale
