"""Cohort test helpers: small case folders from the example data, and Ray process checks.

Every Ray process a test starts (the driver's local cluster, its agents, the actors)
inherits RAY_TMPDIR from the process that started Ray, so `ray_processes(tmpdir)` finds
exactly the processes of one test's Ray, not those of other sessions on the machine.
"""
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path


def make_cases(folder, example, names=("ct", "ct_copy"), dicom=False, mr=False, broken=False):
    """A cohort folder: copies of the example CT (one per name), optionally the DICOM series
    folder, the MR (a wrong-modality case for a CT task), a truncated NIfTI, a text file
    named like a NIfTI, and a non-image file (not a case). `example` is the conftest
    fixture that finds the example files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ct = example("example_ct_sm.nii.gz")
    for name in names:
        shutil.copyfile(ct, folder / f"{name}.nii.gz")
    if dicom:
        shutil.copytree(example("example_ct_dicom"), folder / "series")
    if mr:
        shutil.copyfile(example("example_mr_sm.nii.gz"), folder / "mr.nii.gz")
    if broken:
        data = Path(ct).read_bytes()
        (folder / "truncated.nii.gz").write_bytes(data[: len(data) // 2])
        (folder / "notes.nii.gz").write_text("not an image\n")
        (folder / "readme.txt").write_text("a file that is not a case\n")
    return folder


def ray_processes(tmpdir):
    """PIDs of live processes started under RAY_TMPDIR=tmpdir (zombies excluded)."""
    needle = f"RAY_TMPDIR={tmpdir}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            found.append(int(entry.name))
    return found


def wait_no_ray_processes(tmpdir, timeout=20.0):
    """[] once every process of that Ray has exited, else the PIDs still alive at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        left = ray_processes(tmpdir)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


@contextmanager
def private_ray_tmpdir():
    """A short RAY_TMPDIR (Ray's socket paths must stay under 108 characters) for one test's Ray;
    afterwards no process of it may be left (any left is ended, by PID, and reported)."""
    tmpdir = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    saved = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = tmpdir
    try:
        yield tmpdir
    finally:
        if saved is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = saved
        left = wait_no_ray_processes(tmpdir)
        for pid in left:
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        shutil.rmtree(tmpdir, ignore_errors=True)
        assert not left, f"Ray processes left running after the test: {left}"
