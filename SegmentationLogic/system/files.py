"""Writing files so that nobody ever sees half of one.

Every file the engine writes goes to a hidden temporary name in its own folder (same
disk, so the last step is a rename) and is renamed over its final name only when it is
complete; on any error (and on Ctrl+C, SIGTERM, SIGHUP: system/signals.py) the temporary
file is removed. Files get the permissions the user's umask gives (0600 where `private`,
e.g. the licence key), unlike `mkstemp`'s 0600 for everything, so a result can be read by
the user's group as any other file they write.

A failed write (disk full, read-only disk, no permission, file-size limit, a file where
a folder should be) is an `OutputPathError` naming the file, its cause and a fix
(`file_error`), never a traceback.
"""
import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import tempfile
import time
from pathlib import Path

from ..errors import InputImageError, OutputPathError

if os.name == "nt":
    import msvcrt
else:
    import fcntl

# errno -> (what happened to PATH, what to do) when writing; {path} is filled in
_WRITE_FAULTS = {
    errno.EACCES: ("Permission denied: cannot write {path}.",
                   "Choose an output folder you can write to, or ask its owner for write permission."),
    errno.EROFS: ("{path} is on a read-only file system (read-only mount, write-protected share or medium).",
                  "Write the output to a folder on a writable disk."),
    errno.ENOSPC: ("The disk is full: no space left to write {path}.",
                   "Free disk space there, or write the output to another disk."),
    errno.EFBIG: ("{path} would be larger than allowed here (a file-size limit such as 'ulimit -f', or the "
                  "file system's largest file).",
                  "Raise the limit (ulimit -f unlimited) or write the output to another file system."),
    errno.ENOTDIR: ("A part of the path {path} is a file, not a folder.",
                    "Choose an output path whose folders are folders (or remove the file in the way)."),
    errno.EISDIR: ("{path} is a folder, not a file.", "Give a file name, or choose another output."),
    errno.ENOENT: ("The folder of {path} does not exist (removed while the run was writing?).",
                   "Check the output path and run again."),
    errno.ENAMETOOLONG: ("The path is too long for this file system: {path}.", "Choose a shorter output path."),
    errno.EIO: ("Input/output error while writing {path}: the disk or network share failed.",
                "Check the disk or share (and its connection), then run again."),
}
_WRITE_FAULTS[errno.EPERM] = _WRITE_FAULTS[errno.EACCES]
if hasattr(errno, "EDQUOT"):
    _WRITE_FAULTS[errno.EDQUOT] = ("Your disk quota is used up: no space left to write {path}.",
                                   "Free space within your quota, or write the output to another disk.")

_READ_FAULTS = {
    errno.EACCES: ("Permission denied: cannot read {path}.",
                   "Give yourself read permission (e.g. chmod u+r), or copy the file to a folder of yours."),
    errno.ENOENT: ("{path} does not exist.", "Check the path."),
    errno.EISDIR: ("{path} is a folder, not a file.", "Give the file itself."),
    errno.ENOTDIR: ("A part of the path {path} is a file, not a folder.", "Check the path."),
    errno.EIO: ("Input/output error while reading {path}: the disk or network share failed.",
                "Check the disk or share (and its connection), then run again."),
}
_READ_FAULTS[errno.EPERM] = _READ_FAULTS[errno.EACCES]


def file_error(e, path=None, reading=False):
    """The SegmentationError for an OSError `e` met while writing (OutputPathError) or
    reading (InputImageError) `path`: cause and fix by errno. `reading=None`: not known
    (a fault no check anticipated), judged from the errno."""
    path = path if path is not None else (e.filename or "a file")
    if reading is None:
        reading = e.errno not in (errno.ENOSPC, errno.EROFS, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC))
    table = _READ_FAULTS if reading else _WRITE_FAULTS
    cls = InputImageError if reading else OutputPathError
    if e.errno in table:
        cause, fix = table[e.errno]
        return cls(cause.format(path=path), fix)
    doing = "read" if reading else "write"
    return cls(f"Cannot {doing} {path}: {e.strerror or e}.",
               "Check the path, its permissions and the free disk space, then run again.")


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
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise file_error(OSError(errno.ENOTDIR, "Not a directory"), final) from None
    except OSError as e:
        raise file_error(e, final) from None
    while True:
        tmp = final.with_name(f".{final.name}.{os.getpid()}-{secrets.token_hex(4)}.part{suffix}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o666)
        except FileExistsError:
            continue
        except OSError as e:
            raise file_error(e, final) from None
        os.close(fd)
        return tmp


@contextlib.contextmanager
def atomic_path(final, suffix="", private=False):
    """Yield a temporary path to write `final` to; it becomes `final` only if the block succeeds.

    An OSError while writing or renaming becomes an OutputPathError naming `final`."""
    tmp = reserve_temp(final, suffix, private)
    try:
        yield tmp
        os.replace(tmp, final)
    except OSError as e:
        raise file_error(e, final) from None
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
    caller owns and removes the folder. None: leave both as they are.

    When a signal stops the block (KeyboardInterrupt, Terminated), what it created in `path`
    is removed here, since the caller may be gone too; what was there before is left alone."""
    if not path:
        yield
        return
    saved = (tempfile.tempdir, os.environ.get("TMPDIR"))
    before = set(os.listdir(path)) if os.path.isdir(path) else set()
    tempfile.tempdir = str(path)
    os.environ["TMPDIR"] = str(path)
    try:
        yield
    except KeyboardInterrupt:
        for name in (set(os.listdir(path)) if os.path.isdir(path) else set()) - before:
            entry = Path(path) / name
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        raise
    finally:
        tempfile.tempdir = saved[0]
        if saved[1] is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved[1]
