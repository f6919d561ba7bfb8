"""Fault injection for Testing/faults: run the real engine front doors in subprocesses and
check what a fault left behind.

    run = run_cli(["segment", "-i", ct, "-o", out], tmp_path)
    run.rc, run.stdout, run.stderr
    run.tmp_left    what is left in the run's own TMPDIR (must be nothing)
    run.orphans     processes still alive that carry the run's marker (its children)
    assert_error(run, ["cause words"], ["fix words"])    one ERROR line + Fix, no traceback

Every run gets a private TMPDIR and a unique marker in its environment; descendants
inherit both, so leftovers in temp and orphaned children are found without knowing
which processes a run starts. `digest(paths)` hashes files and folders before and after.

The machine itself is the fault where possible: `drop_file_access` (preexec) makes
permission bits apply to root too (the bounding set loses CAP_DAC_OVERRIDE and
CAP_DAC_READ_SEARCH before exec); `small_disk` mounts a real tmpfs of a given size
(root only: skipped otherwise), which `fill` fills to the brim and `read_only` remounts
read-only; `file_size_limit` sets RLIMIT_FSIZE (the kernel answers EFBIG).
"""
import contextlib
import ctypes
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
BATCH = REPO / "TotalSegmentatorModule" / "TotalSegmentatorScripts" / "batch.py"
MARK = "FAULTKIT_RUN"
FASTEST_MODEL = "Dataset298_TotalSegmentator_total_6mm_1559subj"  # the model of --fastest (task total)


@dataclass
class Run:
    rc: int
    stdout: str
    stderr: str
    tmp_left: list = field(default_factory=list)
    orphans: list = field(default_factory=list)
    seconds: float = 0.0

    def events(self):
        return [json.loads(line) for line in self.stdout.splitlines() if line.startswith("{")]


def engine_env(tmp_root, extra=None):
    """Environment of a fault run: our code first, a private TMPDIR, an isolated TotalSegmentator home."""
    tmp = Path(tmp_root) / "run-tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOTALSEG_")}
    env.update(PYTHONPATH=str(REPO), TMPDIR=str(tmp), TEMP=str(tmp), TMP=str(tmp), nnUNet_def_n_proc="1",
               TOTALSEG_HOME_DIR=str(Path(tmp_root) / "totalseg-home"), OMP_NUM_THREADS="1",
               **{MARK: uuid.uuid4().hex})
    env.update(extra or {})
    return env


def _marked(marker):
    """PIDs of live processes whose environment holds `marker` (a run's descendants)."""
    found = []
    needle = f"{MARK}={marker}".encode()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    with open(f"/proc/{pid}/stat") as s:
                        if s.read().split(") ")[-1][:1] != "Z":  # zombies are reaped by their parent
                            found.append(int(pid))
        except OSError:
            continue
    return found


def finish(proc, env, started, stdout, stderr):
    """A Run from a finished Popen: what is left in its TMPDIR, which marked processes live on."""
    time.sleep(0.1)  # let children that are going away go
    orphans = _marked(env[MARK])
    for pid in orphans:  # never leave them running, whatever the test says
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    tmp = Path(env["TMPDIR"])
    left = sorted(p.name for p in tmp.iterdir() if not _torch_cache(p)) if tmp.exists() else []
    return Run(proc.returncode, stdout, stderr, left, orphans, time.monotonic() - started)


def _torch_cache(path):
    """torch creates an empty TMPDIR/torchinductor_<user> folder when torch._dynamo is imported
    (nnU-Net imports it); it holds nothing of a run, and is not counted while it stays empty."""
    return path.name.startswith("torchinductor_") and path.is_dir() and not any(path.iterdir())


def run_cli(args, tmp_root, env=None, preexec=None, timeout=180, command=None):
    """Run `python -m SegmentationLogic ARGS` (or `command`) to the end; returns a Run."""
    env = engine_env(tmp_root, env)
    cmd = command or [sys.executable, "-m", "SegmentationLogic", *map(str, args)]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
                            preexec_fn=preexec)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"{cmd[:4]} did not end within {timeout} s:\n{err[-3000:]}") from None
    return finish(proc, env, started, out, err)


def run_batch(args, tmp_root, **kw):
    return run_cli(None, tmp_root, command=[sys.executable, str(BATCH), *map(str, args)], **kw)


def start_cli(args, tmp_root, env=None, command=None):
    """Start the CLI with JSON progress on stdout (line-buffered); returns (Popen, env)."""
    env = engine_env(tmp_root, env)
    cmd = command or [sys.executable, "-m", "SegmentationLogic", *map(str, args)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            bufsize=1, env=env, cwd=REPO)
    return proc, env


def wait_for_line(proc, predicate, timeout=120):
    """Read stdout lines until `predicate(line)`; returns the lines read (raises on EOF or timeout)."""
    lines, end = [], time.monotonic() + timeout
    os.set_blocking(proc.stdout.fileno(), True)
    while time.monotonic() < end:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"the process ended before the awaited line (rc {proc.wait()}):\n"
                                 f"{''.join(lines)[-2000:]}\n{proc.stderr.read()[-3000:]}")
        lines.append(line)
        if predicate(line):
            return lines
    raise AssertionError("the awaited line did not come")


def stage_event(*stages):
    """Predicate: a JSON progress event of one of `stages`."""
    def match(line):
        try:
            event = json.loads(line)
        except ValueError:
            return False
        return event.get("event") == "progress" and event.get("stage") in stages
    return match


def assert_error(run, cause=(), fix=(), rc=1, json_mode=False):
    """The run failed with exit code `rc` and one error (cause containing every word of
    `cause`, fix every word of `fix`, case-insensitive), and no traceback."""
    assert run.rc == rc, f"exit code {run.rc}, expected {rc}\n{run.stderr[-3000:]}"
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    if json_mode:
        errors = [e for e in run.events() if e.get("event") == "error"]
        assert len(errors) == 1, run.stdout[-2000:]
        text_cause, text_fix = errors[0]["cause"], errors[0]["fix"]
    else:
        lines = [line for line in run.stderr.splitlines() if line.startswith("ERROR: ")]
        assert len(lines) == 1, run.stderr[-3000:]
        text_cause = lines[0][len("ERROR: "):]
        fixes = [line.strip()[len("Fix: "):] for line in run.stderr.splitlines() if line.strip().startswith("Fix: ")]
        text_fix = fixes[0] if fixes else ""
    for word in cause:
        assert word.lower() in text_cause.lower(), f"{word!r} not in cause: {text_cause}"
    for word in fix:
        assert word.lower() in text_fix.lower(), f"{word!r} not in fix: {text_fix}"
    if fix:
        assert text_fix, "no fix given"
    return text_cause, text_fix


def assert_nothing_left(run, *folders, allowed=()):
    """No temp leftovers, no orphans, and no hidden (partial) files in `folders`."""
    assert run.tmp_left == [], f"left in TMPDIR: {run.tmp_left}"
    assert run.orphans == [], f"processes left running: {run.orphans}"
    for folder in folders:
        folder = Path(folder)
        if folder.exists():
            hidden = [p.name for p in folder.rglob(".*") if p.name not in allowed]
            assert hidden == [], f"hidden leftovers in {folder}: {hidden}"


def digest(*paths):
    """{path: sha256} of every file under `paths` (files or folders; missing ones map to None)."""
    out = {}
    for path in map(Path, paths):
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest() if f.exists() else None
    return out


def modes(root):
    """{relative path: permission bits} of everything under `root` (and root itself as ".")."""
    root = Path(root)
    out = {".": stat.S_IMODE(root.stat().st_mode)}
    for p in root.rglob("*"):
        out[str(p.relative_to(root))] = stat.S_IMODE(p.lstat().st_mode)
    return out


def listing(folder):
    """Every name under `folder` (relative), hidden ones included."""
    folder = Path(folder)
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else None


# -- the machine as the fault ------------------------------------------------------------------

def drop_file_access():
    """preexec_fn: without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH, permission bits bind root too."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def file_size_limit(n_bytes):
    """preexec_fn: no file may grow beyond `n_bytes` (writes fail with EFBIG; Python ignores SIGXFSZ)."""
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (n_bytes, n_bytes))
    return limit


@contextlib.contextmanager
def small_disk(folder, size="1m"):
    """A real tmpfs of `size` mounted on `folder` (created) for the block; skipped without root."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small file system needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0777", "tmpfs", str(folder)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def read_only(folder):
    """Remount the small disk at `folder` read-only (EROFS for every write)."""
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True, capture_output=True)


def fill(folder, leave=0):
    """Fill the disk holding `folder` until at most `leave` bytes are free (one filler file)."""
    filler = Path(folder) / "filler.bin"
    with open(filler, "ab") as f:
        with contextlib.suppress(OSError):
            while shutil.disk_usage(folder).free > leave:
                f.write(b"\0" * min(65536, max(shutil.disk_usage(folder).free - leave, 1)))
                f.flush()
    return filler


# -- damaged and awkward inputs -----------------------------------------------------------------

def patch_nifti1(src, dst, pixdim=None, qform_code=None, sform_code=None, srow_x=None):
    """Copy an uncompressed NIfTI-1 file, overwriting raw header fields in place (no library
    repairs anything on the way): pixdim[1:4], qform_code, sform_code, srow_x."""
    import struct

    raw = bytearray(Path(src).read_bytes())
    if pixdim is not None:
        values = list(struct.unpack_from("<8f", raw, 76))
        values[1:1 + len(pixdim)] = pixdim
        struct.pack_into("<8f", raw, 76, *values)
    if qform_code is not None:
        struct.pack_into("<h", raw, 252, qform_code)
    if sform_code is not None:
        struct.pack_into("<h", raw, 254, sform_code)
    if srow_x is not None:
        struct.pack_into("<4f", raw, 280, *srow_x)
    Path(dst).write_bytes(bytes(raw))
    return Path(dst)


def small_ct(path, example_ct):
    """The example CT written as a NIfTI-1 file with sform and qform (uncompressed when named .nii)."""
    import nibabel as nib

    src = nib.load(str(example_ct))
    img = nib.Nifti1Image(np.asanyarray(src.dataobj), src.affine)
    img.set_qform(src.affine, code=1)
    img.set_sform(src.affine, code=1)
    path = Path(path)
    nib.save(img, str(path))
    return path


def write_dicom_stack(folder, n=8, rows=24, cols=20, spacing=(1.5, 1.2), thickness=3.0, origin=(-20.0, -30.0, 0.0),
                      row_dir=(1, 0, 0), col_dir=(0, 1, 0), uid="", number=None, description="stack",
                      prefix="IM", pixel_spacing=None, position_override=None, seed=0):
    """`n` CT slices written with pydicom, uncompressed (independent of the engine's reader).

    `uid` "" leaves SeriesInstanceUID out (as anonymisers do); `pixel_spacing` overrides the
    PixelSpacing text; `position_override(k)` the ImagePositionPatient text of slice k."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    normal = np.cross(row_dir, col_dir)
    rng = np.random.default_rng(seed)
    study = generate_uid()
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"{prefix}{k:04d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.StudyInstanceUID, ds.ImageType = "CT", study, ["ORIGINAL", "PRIMARY", "AXIAL"]
        if uid:
            ds.SeriesInstanceUID = uid
        if number is not None:
            ds.SeriesNumber = number
        ds.SeriesDescription = description
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [float(v) for v in (*row_dir, *col_dir)]
        position = np.asarray(origin, float) + normal * thickness * k
        ds.ImagePositionPatient = [f"{v:.3f}" for v in position]
        if position_override is not None:
            ds.ImagePositionPatient = position_override(k)
        ds.PixelSpacing = pixel_spacing if pixel_spacing is not None else [spacing[0], spacing[1]]
        ds.SliceThickness = thickness
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = (rng.integers(0, 2000, (rows, cols)).astype(np.int16)).tobytes()
        ds.save_as(folder / f"{prefix}{k:04d}.dcm", enforce_file_format=True)
    return folder


def series_listing(cause):
    """The series lines of a "holds N series" error."""
    return [line.strip() for line in cause.splitlines()[1:] if re.match(r"\s*series ", line)]


# -- many pre-work faults in one interpreter --------------------------------------------------

_DRIVER = r"""
import contextlib, io, json, sys
from SegmentationLogic.cli import main
results = []
for argv in json.load(sys.stdin):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
    results.append({"rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue()})
sys.__stdout__.write(json.dumps(results))
"""


def run_cli_many(argvs, tmp_root, env=None, preexec=None, timeout=300):
    """Run the CLI's `main(argv)` for each argv in one subprocess (the same code path as
    `python -m SegmentationLogic`, one interpreter start for many faults that end before
    any work); returns a Run per argv, each with the shared TMPDIR and orphan scan."""
    env = engine_env(tmp_root, env)
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", _DRIVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=REPO, preexec_fn=preexec)
    out, err = proc.communicate(json.dumps([[str(a) for a in argv] for argv in argvs]), timeout=timeout)
    shared = finish(proc, env, started, out, err)
    assert proc.returncode == 0, err[-3000:]
    return [Run(r["rc"], r["stdout"], r["stderr"], shared.tmp_left, shared.orphans) for r in json.loads(out)]


def no_work_done(run):
    """Nothing was downloaded, predicted or written: no progress event of those stages (JSON mode)."""
    stages = {e.get("stage") for e in run.events() if e.get("event") == "progress"}
    assert not stages & {"download", "crop", "predict", "postprocess", "save"}, stages
