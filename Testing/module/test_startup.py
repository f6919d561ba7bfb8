"""What the module does when Slicer loads it: the Slicer version it needs, another module of
the same name, the terminology contexts, and Reload (PySide6 + slicer-core stand-ins)."""
import importlib
import os
import sys
import types

import pytest

from SegmentationLogic.mrml import compat
from SegmentationLogic.mrml import scene as mrml_scene
from TotalSegmentatorLib import startup

import pythonqt  # noqa: E402


@pytest.fixture(scope="module")
def qt_app():
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    return pythonqt.QtWidgets.QApplication.instance() or pythonqt.QtWidgets.QApplication([])


@pytest.fixture
def scene():
    s = mrml_scene.new_scene()
    yield s
    mrml_scene.release_scene(s)


def test_supported_versions_and_what_an_older_slicer_is_told():
    for supported in ((5, 10), (5, 12), (5, 13), (6, 0), None):
        assert compat.version_problem(supported) is None
    text = compat.version_problem((5, 8))
    assert "5.10" in text and "5.8" in text and "preview" in text


def test_another_totalsegmentator_module_is_found_and_explained(tmp_path):
    ours, theirs, empty = tmp_path / "ours", tmp_path / "theirs", tmp_path / "empty"
    for folder in (ours, theirs, empty):
        folder.mkdir()
    (ours / "TotalSegmentator.py").write_text("# ours\n")
    (theirs / "TotalSegmentator.py").write_text("# the other extension\n")
    assert startup.name_clash([ours, empty], ours / "TotalSegmentator.py") is None
    message = startup.name_clash([ours, theirs, empty, theirs], ours / "TotalSegmentator.py")
    assert str(theirs / "TotalSegmentator.py") in message and message.count("TotalSegmentator.py") == 1
    assert "only one module of a name" in message and "Extensions Manager" in message


class _App:
    """What the module asks of `slicer.app` at load time."""

    def __init__(self, major, minor, search_paths=()):
        self.majorVersion, self.minorVersion = major, minor
        self.connections = []
        self._paths = list(search_paths)

    def connect(self, signal, slot):
        self.connections.append((signal, slot))

    def moduleManager(self):
        return types.SimpleNamespace(factoryManager=lambda: types.SimpleNamespace(searchPaths=self._paths))


def test_on_an_older_slicer_the_module_loads_and_says_what_it_needs(qt_app, monkeypatch, tmp_path, scene):
    import slicer

    pythonqt.install(monkeypatch, scene, tmp_path)
    monkeypatch.setattr(slicer, "app", _App(5, 8), raising=False)
    module = importlib.import_module("TotalSegmentator")
    assert "needs Slicer 5.10 or later; this is Slicer 5.8" in module.VERSION_PROBLEM
    parent = types.SimpleNamespace()
    module.TotalSegmentator(parent)
    assert module.VERSION_PROBLEM in parent.helpText and "Supported: Slicer 5.10, 5.12" in parent.helpText
    assert slicer.app.connections == [], "nothing else is set up"
    widget = module.TotalSegmentatorWidget()
    widget.setup()
    labels = [w.text() for w in widget.parent.findChildren(pythonqt.QtWidgets.QLabel)]
    assert labels == [module.VERSION_PROBLEM], "the panel says it instead of failing later"
    widget.cleanup()


def test_at_start_up_the_terminology_is_loaded_and_a_name_clash_is_reported(qt_app, monkeypatch, tmp_path, scene,
                                                                          caplog):
    import slicer

    from SegmentationLogic import terminology

    other = tmp_path / "other"
    other.mkdir()
    (other / "TotalSegmentator.py").write_text("# the other extension\n")
    pythonqt.install(monkeypatch, scene, tmp_path)
    monkeypatch.setattr(slicer, "app", _App(5, 12, [other]), raising=False)
    module = importlib.import_module("TotalSegmentator")
    assert module.VERSION_PROBLEM is None
    parent = types.SimpleNamespace()
    module.TotalSegmentator(parent)
    (signal, slot), = slicer.app.connections
    assert signal == "startupCompleted()"
    logic = slicer.modules.terminologies.logic()
    assert not compat.is_terminology_context_loaded(logic, terminology.CONTEXT_NAME)
    slot()  # Slicer has started
    assert compat.is_terminology_context_loaded(logic, terminology.CONTEXT_NAME)
    assert str(other / "TotalSegmentator.py") in caplog.text


@pytest.fixture
def restore_modules():
    """Put the library and engine modules of this session back after a Reload replaced them."""
    packages = ("TotalSegmentatorLib", "SegmentationLogic")
    saved = {name: module for name, module in sys.modules.items() if name.split(".")[0] in packages}
    yield
    for name in [n for n in sys.modules if n.split(".")[0] in packages]:
        del sys.modules[name]
    sys.modules.update(saved)


def test_reload_reloads_the_library_and_ends_the_worker(qt_app, monkeypatch, tmp_path, scene, restore_modules):
    pythonqt.install(monkeypatch, scene, tmp_path)
    module = importlib.import_module("TotalSegmentator")
    widget = module.TotalSegmentatorWidget()
    widget.setup()
    logic = module.sharedLogic()
    worker = logic._engine()
    worker.start()
    process = worker.process
    old_logic_module = sys.modules["TotalSegmentatorLib.logic"]
    reloaded = []
    monkeypatch.setattr(module.ScriptedLoadableModuleWidget, "onReload", lambda self: reloaded.append(True),
                        raising=False)
    widget.onReload()
    assert reloaded and "TotalSegmentatorLib.logic" not in sys.modules, "the library is imported afresh"
    assert importlib.import_module("TotalSegmentatorLib.logic") is not old_logic_module
    assert not process.running and module._sharedLogic is None
    widget.cleanup()
