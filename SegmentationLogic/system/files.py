"""Writing files so that nobody ever sees half of one.

Every file the engine writes goes to a hidden temporary name in its own folder (same
disk, so the last step is a rename) and is renamed over its final name only when it is
complete; on any error the temporary file is removed. Files get the permissions the
user's umask gives (0600 where `private`, e.g. the licence key), unlike `mkstemp`'s 0600
for everything, so a result can be read by the user's group as any other file they write.
"""
import contextlib
import hashlib
import json
import os
import re
import secrets
import stat
import tempfile
import time
from pathlib import Path

from ..errors import SegmentationError

if os.name == "nt":
    import msvcrt
else:
    import fcntl


class OutputPathError(SegmentationError):
    """An output path that must not be written (it would replace the input)."""

    kind = "output"


def refuse_overwriting(final, protected):
    """Raise OutputPathError if writing `final` would replace one of the `protected` files (the input)."""
    final = Path(final)
    for source in protected:
        if isinstance(source, (str, os.PathLike)) and Path(source).exists() and final.exists() \
                and os.path.samefile(final, source):
            raise OutputPathError(f"The output {final} is the input image: writing it would destroy the input.",
                                  "Choose another output file or folder.")


def reserve_temp(final, suffix="", private=False):
    """Create an empty hidden file beside `final` (folders made as needed) and return its path.

    `suffix` ends the name (nibabel picks compression from it: ".nii.gz")."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = final.with_name(f".{final.name}.{os.getpid()}-{secrets.token_hex(4)}.part{suffix}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp


@contextlib.contextmanager
def atomic_path(final, suffix="", private=False):
    """Yield a temporary path to write `final` to; it becomes `final` only if the block succeeds."""
    tmp = reserve_temp(final, suffix, private)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def sha256_file(path, chunk=1 << 20):
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _json_default(o):
    # numpy scalars and arrays, paths: what results hold besides plain Python values
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def json_safe(data):
    """`data` with numpy values and paths as plain JSON values (worker events, MRML node attributes)."""
    return json.loads(json.dumps(data, default=_json_default))


def dump_json(data, path, indent=4):
    """Write `data` as JSON to `path` as it is (the caller makes it atomic)."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=indent, default=_json_default)


def write_json(data, path, indent=4, private=False):
    """Write a JSON file atomically; returns its path."""
    with atomic_path(path, ".json", private) as tmp:
        dump_json(data, tmp, indent)
    return Path(path)


@contextlib.contextmanager
def file_lock(path, report=None, waiting_message=""):
    """Exclusive lock between processes (fcntl on POSIX, msvcrt on Windows); waits, honouring cancel.

    `report` (a progress Reporter) is checked for cancel and told `waiting_message` once."""
    path = Path(path)
    f = open(path, "a+b")
    try:
        told = False
        while True:
            try:
                if os.name == "nt":
                    f.seek(0)
                    msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
                else:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if report is not None:
                    report.check()
                    if not told and waiting_message:
                        report.log(waiting_message)
                        told = True
                time.sleep(0.2)
        yield
    finally:
        try:
            if os.name == "nt":
                f.seek(0)
                msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)
        except OSError:
            pass
        f.close()  # closing releases an flock


def zip_member_problem(info):
    """Why a zip entry must not be extracted (it could land outside the target folder), or None."""
    name = info.filename.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "an absolute path"
    if ".." in name.split("/"):
        return "a '..' path"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "a symbolic link"
    if info.flag_bits & 0x1:
        return "an encrypted file"
    return None


@contextlib.contextmanager
def temporary_dir(path):
    """Point tempfile (and child processes, through TMPDIR) at `path` while the block runs; the
    caller owns and removes the folder. None: leave both as they are."""
    if not path:
        yield
        return
    saved = (tempfile.tempdir, os.environ.get("TMPDIR"))
    tempfile.tempdir = str(path)
    os.environ["TMPDIR"] = str(path)
    try:
        yield
    finally:
        tempfile.tempdir = saved[0]
        if saved[1] is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved[1]
