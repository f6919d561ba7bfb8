"""What produced a result: engine and library versions, and the models a request runs
(folder name and SHA-256 of each checkpoint), for the manifest's provenance columns."""
from importlib import metadata
from pathlib import Path

from .. import __version__
from ..pipeline import plan
from ..weights import folds_of, model_dir
from .manifest import sha256_file

MODEL_FILES = ("plans.json", "dataset.json")  # besides the checkpoints of the folds that run: they shape the output too


def required_models(options):
    """Every model a request with these SegmentRequest fields runs (crop models first): the run plan's."""
    return plan.required_models(options.get("task", "total"), options.get("quality", "normal"),
                                roi_subset=options.get("roi_subset"), body_seg=options.get("body_seg", False))


def engine_versions():
    versions = {"SegmentationLogic": __version__}
    for package in ("nnunetv2", "torch"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


class ModelHashes:
    """SHA-256 of model files, each read once per process (a real checkpoint is ~250 MB)."""

    def __init__(self):
        self._known = {}

    def file(self, path):
        path = Path(path)
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key not in self._known:
            self._known[key] = sha256_file(path)
        return self._known[key]

    def models(self, options, weights_dir=None):
        """[{"folder", "checkpoints": {relative file: sha256}}] of the models a request runs."""
        out = []
        for model in required_models(options):
            folder = Path(model_dir(model, weights_dir))
            files = [folder / f"fold_{n}" / "checkpoint_final.pth" for n in folds_of(model, weights_dir)]
            files += [folder / name for name in MODEL_FILES]
            out.append({"folder": folder.parent.name + "/" + folder.name,
                        "checkpoints": {f.relative_to(folder).as_posix(): self.file(f) for f in files if f.is_file()}})
        return out
