"""Real model zips for the weights tests, made from the test models (testmodels.py).

`zip_dataset` writes the official release layout (`DatasetXXX_name/<trainer>__.../...`),
optionally under an extra top folder or renamed (to stand in for a licensed dataset).
`assert_nothing_half_installed` is the check every failing case ends with.
"""
import shutil
import zipfile
from pathlib import Path


def zip_dataset(src_dataset, zip_path, top="", rename=None, compression=zipfile.ZIP_DEFLATED):
    """Add a dataset folder to a (new or existing) zip as `[top/]<name>/...`; returns the zip path."""
    src_dataset = Path(src_dataset)
    name = rename or src_dataset.name
    with zipfile.ZipFile(zip_path, "a", compression) as zf:
        for p in sorted(src_dataset.rglob("*")):
            if p.is_file():
                arc = "/".join(x for x in (top, name, p.relative_to(src_dataset).as_posix()) if x)
                zf.write(p, arc)
    return Path(zip_path)


def copy_dataset(test_weights, folder, dest_root, rename=None):
    dest = Path(dest_root) / (rename or folder)
    shutil.copytree(Path(test_weights) / folder, dest)
    return dest


def installed_datasets(weights_dir):
    return sorted(p.name for p in Path(weights_dir).glob("Dataset*"))


def assert_nothing_half_installed(weights_dir, allow_partial=True):
    """No model folder, no staging folder; only resumable partial files (and locks) in .downloads."""
    weights_dir = Path(weights_dir)
    if not weights_dir.is_dir():
        return
    assert installed_datasets(weights_dir) == [], f"model folder left in {weights_dir}"
    left = [p.name for p in weights_dir.iterdir() if p.name.startswith(".install-") or p.name.startswith(".write-")]
    assert left == [], f"temporary folders left: {left}"
    downloads = weights_dir / ".downloads"
    if downloads.is_dir():
        ok = (".lock", ".part", ".part.json") if allow_partial else (".lock",)
        stray = [p.name for p in downloads.iterdir() if not p.name.endswith(ok)]
        assert stray == [], f"unexpected files in .downloads: {stray}"
