"""Before a run does any work: its outputs can be written, and nothing that must survive is in the way.

`check_outputs(files, inputs, overwrite, is_ours)` refuses, with cause and fix, before
weights are downloaded or a model runs:

- an output that is an input: the same file under another spelling, through a symbolic
  or hard link (compared by device and inode, not by name), or any file inside an input
  folder (a DICOM series folder, also the folder of a DICOM file given as input), even
  with --overwrite;
- an existing file the run did not create, unless `overwrite` or `is_ours(path)` says it
  is a result of ours (each front door decides what "ours" means: see outputs/ownership.py);
- a folder where a file goes, or a file where a folder is needed;
- a location that cannot be written: the nearest existing folder is probed by creating
  and removing a hidden file (permissions, ACLs, read-only mounts, network shares all
  answer truthfully to that, unlike os.access).

`check_free_space(folder, need)` compares an estimate of the output size with the free
space of the output's disk once the input's size is known (still before inference).
"""
import os
import secrets
import shutil
from pathlib import Path

from ..errors import OutputPathError
from .files import file_error

SHOWN = 5  # files named in a message; the rest are counted
SPACE_MARGIN = 1024 * 1024


def _identity(path):
    st = os.stat(path)
    return st.st_dev, st.st_ino


def protected(inputs):
    """(identities of input files, real paths of input folders) for `inputs` (paths; other objects skipped).

    A folder protects every file in it; a DICOM file is read as part of its folder's series,
    so that folder is protected too."""
    ids, folders = set(), []
    for source in inputs:
        if not isinstance(source, (str, os.PathLike)):
            continue
        path = Path(source).expanduser()
        if not path.exists():
            continue
        ids.add(_identity(path))
        folder = path if path.is_dir() else path.parent if _is_dicom(path) else None
        if folder is not None:
            folders.append(Path(os.path.realpath(folder)))
            for root, _, names in os.walk(folder):
                for name in names:
                    try:
                        ids.add(_identity(os.path.join(root, name)))
                    except OSError:
                        pass
    return ids, folders


def _is_dicom(path):
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _nearest_existing(path):
    """The deepest existing ancestor of `path` (itself if it exists); raises if a file is in the way."""
    p = Path(os.path.abspath(path))
    missing = []
    while not (p.exists() or p.is_symlink()):
        missing.append(p.name)
        p = p.parent
    if not p.is_dir():
        raise OutputPathError(
            f"Cannot write into {Path(path)}: {p} is a file, not a folder.",
            "Choose an output path whose folders are folders (or move the file in the way).")
    return p


def check_writable(folder):
    """Probe `folder` (existing) by creating and removing a hidden empty file."""
    probe = Path(folder) / f".totalseg-write-test-{os.getpid()}-{secrets.token_hex(3)}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        err = file_error(e, folder)
        raise OutputPathError(err.cause.replace("cannot write", "cannot write in"), err.fix) from None
    os.close(fd)
    os.unlink(probe)


def _listing(paths):
    shown = ", ".join(str(p) for p in paths[:SHOWN])
    return shown + (f" and {len(paths) - SHOWN} more" if len(paths) > SHOWN else "")


def check_outputs(files, inputs=(), overwrite=False, is_ours=None, folder=None, overwrite_hint="--overwrite"):
    """Refuse (OutputPathError) before any work if writing `files` would lose data or cannot work.

    `files`: every file the run will write; `folder`: an output folder that must be a
    folder (per-class output) even if no file lands in it yet; `is_ours(path)`: True for
    an existing file that is a known result of ours (replaced without asking);
    `overwrite_hint` names the option that allows replacing other files."""
    files = [Path(f) for f in files]
    ids, folders = protected(inputs)
    if folder is not None:
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise OutputPathError(f"The output {folder} is a file, but this output is a folder (one file per "
                                  "class or result).", "Give a folder name, or move the file away.")
    in_the_way = []
    for f in files:
        real = Path(os.path.realpath(f))
        for input_folder in folders:
            if real == input_folder or input_folder in real.parents:
                raise OutputPathError(
                    f"The output {f} is inside the input folder {input_folder}: results would be mixed into "
                    "the input series.", "Choose another output folder, outside the input folder.")
        if not (f.exists() or f.is_symlink()):
            continue
        if f.is_dir():
            raise OutputPathError(f"The output {f} is an existing folder, but a file goes there.",
                                  "Give a file name (e.g. a .nii.gz inside that folder), or choose another output.")
        if f.exists() and _identity(f) in ids:
            raise OutputPathError(
                f"The output {f} is the input image (the same file): writing it would destroy the input.",
                "Choose another output file or folder.")
        if not overwrite and not (is_ours is not None and f.exists() and is_ours(f)):
            in_the_way.append(f)
    if in_the_way:
        raise OutputPathError(
            f"{len(in_the_way)} output file(s) already exist and were not written by TotalSegmentator: "
            f"{_listing(in_the_way)}.",
            f"Choose another output, move those files away, or pass {overwrite_hint} to replace them.")
    probed = set()
    for f in files + ([folder] if folder is not None else []):
        base = _nearest_existing(f.parent if f != folder else f)
        if base not in probed:
            probed.add(base)
            check_writable(base)


def check_free_space(path, need, what="the results"):
    """Refuse if the disk that will hold `path` has less than `need` bytes (an estimate) free."""
    base = _nearest_existing(path)
    try:
        free = shutil.disk_usage(base).free
    except OSError:
        return  # cannot tell: the write itself will say
    if need + SPACE_MARGIN > free:
        raise OutputPathError(f"Not enough free disk space for {what} in {base}: about "
                              f"{_mb(need + SPACE_MARGIN)} needed, {_mb(free)} free.",
                              "Free disk space there, or write the output to another disk.")


def _mb(n):
    return f"{n / 1e6:.1f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"
