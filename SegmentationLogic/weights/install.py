"""Installing model weights: from a zip or a folder, verified, atomically, nothing half-done.

Everything is staged in a hidden folder inside the weights folder (`.install-<pid>-*`, on
the same disk, so the final step is a rename): unpack or copy, find the dataset folders,
verify every model (verify.py), and only then rename each dataset folder into place.
A dataset that is already installed is replaced model folder by model folder, each only
after the new one verified; on any failure or cancel the staging folder is removed and
the installed weights are as they were.
"""
import contextlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
import zipfile
import zlib
from pathlib import Path

from ..catalogue import load_catalogue
from ..errors import InvalidWeightsError, WeightsFolderError
from ..progress import Reporter
from ..system.files import file_lock, zip_member_problem
from .locate import resolve_weights_dir
from .verify import DATASET_RE, SUBDIR_RE, verify_dataset_folder

STAGING_PREFIX = ".install-"
SKIPPED_NAMES = {"__MACOSX", ".DS_Store", "Thumbs.db"}
DISK_MARGIN = 64 * 1024 * 1024  # keep this much free beyond what we write
COPY_CHUNK = 1024 * 1024
LAYOUT = "DatasetXXX_name/<trainer>__<plans>__<configuration>/{dataset.json, plans.json, fold_N/checkpoint_final.pth}"


class CorruptArchiveError(InvalidWeightsError):
    """The file is not a readable zip archive (damaged or incomplete)."""


# -- the weights folder -------------------------------------------------------------------

def prepare_weights_dir(weights_dir):
    """Create the weights folder if needed and check we can write in it; return it as a Path."""
    weights_dir = Path(weights_dir)
    fix = ("Choose a folder you can write to (--weights_dir, or the TOTALSEG_WEIGHTS_PATH / TOTALSEG_HOME_DIR "
           "environment variables, or the module's 'Weights folder'), or fix its permissions.")
    try:
        weights_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=weights_dir)
        os.close(fd)
        os.unlink(probe)
    except FileExistsError:
        raise WeightsFolderError(f"The weights folder {weights_dir} is a file, not a folder.", fix) from None
    except OSError as e:
        raise WeightsFolderError(f"Cannot write to the weights folder {weights_dir}: {e.strerror or e}.",
                                 fix) from None
    return weights_dir


def check_free_space(folder, needed, what):
    free = shutil.disk_usage(folder).free
    if needed + DISK_MARGIN > free:
        raise WeightsFolderError(
            f"Not enough disk space for {what}: {needed / 1e9:.2f} GB needed, {free / 1e9:.2f} GB free in {folder}.",
            "Free some disk space, or choose a weights folder on a larger disk (TOTALSEG_WEIGHTS_PATH).")


def _pid_alive(pid):
    if os.name != "posix":
        return None  # unknown: no safe probe (os.kill(pid, 0) sends CTRL+C on Windows)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _staging_tag():
    """Host and pid in staging names: a weights folder on a network share may serve several machines."""
    host = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"
    return f"{host}-{os.getpid()}"


def remove_stale_staging(weights_dir, max_age_s=24 * 3600):
    """Remove staging folders left by a killed process (ours: dead pid; another host's: older than a day)."""
    host = _staging_tag().rsplit("-", 1)[0]
    for p in Path(weights_dir).glob(STAGING_PREFIX + "*"):
        m = re.match(re.escape(STAGING_PREFIX) + r"([A-Za-z0-9]+)-(\d+)-", p.name)
        alive = _pid_alive(int(m.group(2))) if m and m.group(1) == host else None
        try:
            old = time.time() - p.stat().st_mtime > max_age_s
        except OSError:
            continue
        if alive is False or (alive is None and old):
            shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def staging_dir(weights_dir):
    """A hidden temporary folder inside the weights folder, removed whatever happens."""
    path = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{_staging_tag()}-", dir=weights_dir))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# -- zip archives ------------------------------------------------------------------------

def open_zip(path):
    """Open a zip and refuse it, before anything is extracted, if any entry could escape its folder."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise CorruptArchiveError(
            f"{path} is not a valid zip archive ({e}): the file is damaged or incomplete.",
            "Download it again; check that the whole file was copied (its size should match the download page).") \
            from None
    bad = [(info.filename, why) for info in zf.infolist() if (why := zip_member_problem(info))]
    if bad:
        zf.close()
        shown = ", ".join(f"'{n}' ({why})" for n, why in bad[:3])
        raise InvalidWeightsError(
            f"{path} was refused: it contains {len(bad)} unsafe entr{'y' if len(bad) == 1 else 'ies'} that could "
            f"write outside the weights folder: {shown}. Nothing was extracted.",
            "Use the official release zip of the model; do not import archives from unknown sources.")
    return zf


def _wanted_members(zf):
    for info in zf.infolist():
        parts = info.filename.replace("\\", "/").split("/")
        if info.is_dir() or any(p in SKIPPED_NAMES for p in parts):
            continue
        yield info, [p for p in parts if p not in ("", ".")]


def extract_zip(path, dest, report):
    """Extract a (checked) zip into `dest` with progress and cancel; CRC errors are CorruptArchiveError."""
    dest = Path(dest)
    with open_zip(path) as zf:
        members = list(_wanted_members(zf))
        total = sum(info.file_size for info, _ in members) or 1
        check_free_space(dest, total, f"unpacking {Path(path).name}")
        done = 0
        try:
            for info, parts in members:
                target = dest.joinpath(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    while chunk := src.read(COPY_CHUNK):
                        out.write(chunk)
                        done += len(chunk)
                        report.check()
                report(done / total, f"unpacking {Path(path).name}")
        except (zipfile.BadZipFile, EOFError, zlib.error) as e:
            raise CorruptArchiveError(f"{path} is damaged ({e}).", "Download or copy the file again.") from None


def copy_models(found, ready, report):
    """Copy the model folders found in a source folder to ready/<dataset>/<model> (hidden files skipped)."""
    jobs = []  # (source file, target file)
    for dataset, models in found.items():
        for m in models:
            for p in sorted(m.rglob("*")):
                rel = p.relative_to(m)
                if p.is_file() and not any(x in SKIPPED_NAMES or x.startswith(".") for x in rel.parts):
                    jobs.append((p, ready / dataset / m.name / rel))
    total = sum(p.stat().st_size for p, _ in jobs) or 1
    check_free_space(ready.parent, total, "copying the weights")
    for dataset, models in found.items():
        (ready / dataset).mkdir(parents=True, exist_ok=True)
        for m in models:
            (ready / dataset / m.name).mkdir(exist_ok=True)
    done = 0
    for p, target in jobs:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "rb") as fin, open(target, "wb") as fout:
            while chunk := fin.read(COPY_CHUNK):
                fout.write(chunk)
                done += len(chunk)
                report.check()
        report(done / total, f"copying {target.relative_to(ready).parts[0]}")
    return {dataset: ready / dataset for dataset in found}


# -- finding datasets ---------------------------------------------------------------------

def _dataset_name_from_plans(model_folder):
    try:
        name = json.loads((model_folder / "plans.json").read_text(encoding="utf-8")).get("dataset_name")
    except (OSError, ValueError, AttributeError):
        name = None
    if not isinstance(name, str) or not DATASET_RE.match(name):
        raise InvalidWeightsError(
            f"The model folder {model_folder.name} is not inside a DatasetXXX_name folder and its plans.json does "
            f"not name its dataset.", f"Import the whole dataset folder (or its zip): {LAYOUT}.")
    return name


def find_datasets(root, max_depth=4, origin=None):
    """{dataset folder name: [model folders]} found under `root` (extra top folders are fine).

    A DatasetXXX_name folder counts with all its <trainer>__<plans>__<configuration>
    folders; a model folder outside one is attributed by its plans.json's dataset_name.
    """
    found = {}

    def walk(d, depth):
        if DATASET_RE.match(d.name):
            found.setdefault(d.name, [])
            for sub in sorted(d.iterdir()):
                if sub.is_dir() and SUBDIR_RE.match(sub.name):
                    _add(found, d.name, sub)
            return
        if SUBDIR_RE.match(d.name):
            _add(found, _dataset_name_from_plans(d), d)
            return
        if depth < max_depth:
            for sub in sorted(d.iterdir()):
                if sub.is_dir() and not sub.name.startswith(".") and sub.name not in SKIPPED_NAMES:
                    walk(sub, depth + 1)

    root = Path(root)
    if (root / "plans.json").is_file() and not SUBDIR_RE.match(root.name):
        raise InvalidWeightsError(
            f"{origin or root} holds a plans.json at its top level: model files must sit in a folder named "
            f"<trainer>__<plans>__<configuration>.",
            f"Import the dataset folder above it, laid out as {LAYOUT}.")
    walk(root, 0)
    return found


def _add(found, dataset, model_folder):
    names = [p.name for p in found.setdefault(dataset, [])]
    if model_folder.name in names:
        raise InvalidWeightsError(f"{dataset}/{model_folder.name} appears twice in what is imported.",
                                  "Import one copy of each model.")
    found[dataset].append(model_folder)


def gather_models(found, ready):
    """Move (same disk: rename) the model folders found into ready/<dataset>/<model>."""
    out = {}
    for dataset, models in found.items():
        target = ready / dataset
        target.mkdir(parents=True, exist_ok=True)
        for m in models:
            os.replace(m, target / m.name)
        out[dataset] = target
    return out


# -- installing -----------------------------------------------------------------------------

def _install_verified(staged, weights_dir):
    """Rename a verified staged dataset folder into the weights folder; return the installed path."""
    target = Path(weights_dir) / staged.name
    if target.exists() and not target.is_dir():
        raise WeightsFolderError(f"{target} is a file where the model folder should be.", f"Remove {target}.")
    if not target.exists():
        os.rename(staged, target)  # atomic: the model appears complete or not at all
        return target
    # Replace model folder by model folder; other models of the dataset stay untouched.
    trash = staged.parent / (staged.name + ".old")
    trash.mkdir()
    for model in sorted(p for p in staged.iterdir() if p.is_dir()):
        old = target / model.name
        if old.exists():
            os.rename(old, trash / model.name)
            try:
                os.rename(model, old)
            except OSError:
                os.rename(trash / model.name, old)  # put the previous model back
                raise
        else:
            os.rename(model, old)
    return target


def install_staged(datasets, weights_dir, required=None, report=None, origin=None):
    """Verify every staged dataset folder, then install them all.

    `required`: {dataset: {model folder: folds}} that must be present; `origin` names
    where the files came from in error messages (which never show the staging folder).
    """
    report = report or Reporter(None, "install")
    items = sorted(datasets.items())
    for i, (name, folder) in enumerate(items):
        def fold_progress(label, j, n, _i=i, _name=name):
            report((_i + j / max(n, 1)) / len(items), f"verifying {_name} {label}")
            report.check()

        try:
            verify_dataset_folder(folder, (required or {}).get(name), fold_progress)
        except InvalidWeightsError as e:
            cause = e.cause.replace(str(folder.parent) + os.sep, "")
            raise InvalidWeightsError(f"{cause.rstrip('.')} (in {origin})." if origin else cause, e.fix) from None
    report.check()  # last chance to cancel: from here on each dataset is one rename
    installed = []
    with file_lock(Path(weights_dir) / ".install.lock", report, "waiting for another weights install to finish"):
        for name, folder in items:
            installed.append(_install_verified(folder, weights_dir))
    report(1.0, "installed " + ", ".join(p.name for p in installed))
    return installed


def _catalogue_folds(datasets):
    """{dataset: {model folder: folds}} the catalogue expects, for the model folders being imported."""
    expected = {}
    for task in load_catalogue().tasks():
        for mode in task.modes.values():
            for m in mode.models:
                if m.folder in datasets and (datasets[m.folder] / m.subdir).is_dir():
                    expected.setdefault(m.folder, {})[m.subdir] = m.folds
    return expected


def _catalogue_warnings(names, report):
    known = {ds["folder"]: int(k) for k, ds in load_catalogue().datasets.items()}
    by_id = {i: f for f, i in known.items()}
    for name in names:
        if name not in known:
            ident = int(name[7:10])
            hint = f"; this version expects {by_id[ident]}" if ident in by_id else ""
            report.log(f"{name} is not used by any task of this version{hint}. Installed anyway.", "warning")


def _found_or_error(found, origin):
    if not found:
        raise InvalidWeightsError(f"No nnU-Net model found in {origin}.", f"Weights must be laid out as {LAYOUT}.")
    return found


def _install_found(datasets, weights_dir, report, origin, required):
    if required is None:  # an import: whatever it holds, checked against what the catalogue expects
        _catalogue_warnings(datasets, report)
        required = _catalogue_folds(datasets)
    return install_staged(datasets, weights_dir, required, report, origin=origin)


def install_zip(zip_path, weights_dir, report, origin, required=None, only=None, fix=None):
    """Unpack a weights zip into a staging folder, verify and install it; return the installed folders.

    `only`: the dataset folder that must be in the zip and the only one installed (a
    download; `fix` then says what to do when it is missing); `required`: {dataset:
    {model folder: folds}} that must be present (default: what the catalogue expects).
    """
    with staging_dir(weights_dir) as stage:
        (stage / "unpacked").mkdir()
        extract_zip(zip_path, stage / "unpacked", report.sub(0.0, 0.4))
        found = find_datasets(stage / "unpacked", origin=origin)
        if only is not None:
            if only not in found:
                raise InvalidWeightsError(
                    f"{Path(zip_path).name} (from {origin}) does not contain {only} "
                    f"(found: {', '.join(found) or 'no model'}).", fix or f"Weights must be laid out as {LAYOUT}.")
            found = {only: found[only]}
        datasets = gather_models(_found_or_error(found, origin), stage / "ready")
        return _install_found(datasets, weights_dir, report.sub(0.4, 1.0), origin, required)


def import_weights(path, weights_dir=None, progress=None):
    """Install weights from a zip or folder; return the installed dataset folders.

    Accepts the official release zips (DatasetXXX_name/<trainer>__<plans>__<config>/...),
    zips or folders with an extra top folder or several datasets, a whole weights folder
    of another installation, or a single model folder (dataset named by its plans.json).
    """
    report = Reporter(progress, "install")
    src = Path(path).expanduser().resolve()
    if not src.exists():
        raise InvalidWeightsError(f"{src} does not exist.", "Give the path of a weights zip file or folder.")
    weights_dir = prepare_weights_dir(resolve_weights_dir(weights_dir))
    if src.is_dir() and Path(os.path.realpath(src)).is_relative_to(os.path.realpath(weights_dir)):
        raise InvalidWeightsError(f"{src} is already inside the weights folder {weights_dir}.",
                                  "Nothing to import: it is used from there.")
    remove_stale_staging(weights_dir)
    report(0.0, f"importing {src.name}")
    if not src.is_dir():
        return install_zip(src, weights_dir, report, origin=src)
    with staging_dir(weights_dir) as stage:  # find the models in place, copy only them
        found = _found_or_error(find_datasets(src, origin=src), src)
        datasets = copy_models(found, stage / "ready", report.sub(0.0, 0.4))
        return _install_found(datasets, weights_dir, report.sub(0.4, 1.0), src, None)
