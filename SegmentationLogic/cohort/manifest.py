"""The output manifest: one JSON line per case, the record of what cohort runs did.

`OUT/cohort_manifest.jsonl`, one object per line:
  case, input, status (done | failed | cancelled), seconds (the engine's wall time),
  attempts (engine runs of the case in the run that wrote the line: more than one when a
  worker died), runs (engine runs of the case in all runs so far), error ({kind, type,
  cause, fix} or null), outputs ([{path relative to OUT, sha256, bytes, mtime_ns}]),
  request (the request fields that shape the outputs), engine (SegmentationLogic,
  nnunetv2 and torch versions), models ([{folder, checkpoints: {file: sha256}}]), note
  (e.g. that test models ran), device, host, finished (UTC).

Lines are appended as cases finish, each flushed and fsynced, so a crash loses at most
the line being written (a torn last line is ignored when reading); a case's last line
wins. At the end of a run the file is rewritten (temporary file + rename) with one line
per case, and `cohort_summary.csv` says the same for a spreadsheet.

A rerun skips a case whose last line is `done` for the same input and request while each
output is still there with its recorded SHA-256. A file whose size and modification time
match the record counts as unchanged without reading it (as make and rsync decide);
`verify=True` hashes every file again.
"""
import csv
import json
import os
import socket
from pathlib import Path

from ..system.files import sha256_file
from .errors import CohortError

MANIFEST_NAME = "cohort_manifest.jsonl"
SUMMARY_NAME = "cohort_summary.csv"
LOCK_NAME = ".cohort.lock"
SUMMARY_FIELDS = ("case", "status", "seconds", "attempts", "runs", "output", "sha256", "cause", "fix", "input",
                  "finished")


def describe_output(path, out_dir):
    """A manifest entry for a written file: path relative to the output folder, hash, size, time."""
    path = Path(path)
    stat = path.stat()
    try:
        rel = path.resolve().relative_to(Path(out_dir).resolve()).as_posix()
    except ValueError:  # not under OUT (cannot happen for cohort outputs; kept absolute to stay honest)
        rel = str(path)
    return {"path": rel, "sha256": sha256_file(path), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def outputs_intact(record, out_dir, verify=False):
    """(True, "") when every recorded output exists with its recorded content, else (False, why)."""
    outputs = record.get("outputs") or []
    if not outputs:
        return False, "no outputs recorded"
    for entry in outputs:
        path = Path(out_dir) / entry["path"]
        try:
            stat = path.stat()
        except OSError:
            return False, f"{entry['path']} is missing"
        unchanged = stat.st_size == entry.get("bytes") and stat.st_mtime_ns == entry.get("mtime_ns")
        if verify or not unchanged:
            if stat.st_size != entry.get("bytes") or sha256_file(path) != entry.get("sha256"):
                return False, f"{entry['path']} has changed since it was written"
    return True, ""


def is_done(record, case_input, request, out_dir, verify=False):
    """Whether a rerun may skip a case: done for this input and request, outputs intact."""
    if not record or record.get("status") != "done":
        return False
    if record.get("input") != str(case_input) or record.get("request") != request:
        return False
    return outputs_intact(record, out_dir, verify)[0]


class Manifest:
    """The JSON-lines manifest of one output folder.

    Only an index (case -> where its last line is) stays in memory; a record is read
    back when needed, so the driver's memory does not grow with the records' size."""

    def __init__(self, out_dir):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / MANIFEST_NAME
        self._index = {}  # case -> (offset, length) of its last line
        self._writer = self._reader = None

    def load(self):
        """Index the file; returns warnings about lines that could not be read."""
        self.close()
        self._index, warnings = {}, []
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            return warnings
        with f:
            offset = number = 0
            for number, line in enumerate(f, start=1):
                try:
                    self._index[json.loads(line)["case"]] = (offset, len(line))
                except (ValueError, KeyError, TypeError):
                    if line.strip():
                        torn = not line.endswith(b"\n")
                        warnings.append(f"{self.path.name} line {number} " + (
                            "was cut short (a run was stopped while writing it); that case runs again." if torn else
                            "is not a case record and was ignored."))
                offset += len(line)
        return warnings

    def cases(self):
        """Every case with a record, in the order each first appeared."""
        return list(self._index)

    def get(self, case):
        """The case's last record, or None."""
        where = self._index.get(case)
        if where is None:
            return None
        if self._reader is None:
            self._reader = open(self.path, "rb")
        self._reader.seek(where[0])
        return json.loads(self._reader.read(where[1]))

    def append(self, record):
        """Add one record as a line, on disk before this returns."""
        if self._writer is None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._writer = open(self.path, "ab")
            if self._writer.tell() and not self._ends_with_newline():
                self._writer.write(b"\n")  # after a torn line: never glue a record onto it
        line = (json.dumps(record, default=str) + "\n").encode("utf-8")
        offset = self._writer.tell()
        self._writer.write(line)
        self._writer.flush()
        os.fsync(self._writer.fileno())
        self._index[record["case"]] = (offset, len(line))

    def _ends_with_newline(self):
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def close(self):
        for handle in (self._writer, self._reader):
            if handle is not None:
                handle.close()
        self._writer = self._reader = None

    def rewrite(self, order):
        """Replace the file by one line per case (the cases in `order`, then any others;
        temporary file + rename), and write the summary CSV, one record at a time."""
        self.close()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path.touch()
        wanted = [c for c in order if c in self._index]
        known = set(wanted)
        wanted += [c for c in self._index if c not in known]
        tmp, index, offset = _temp_name(self.path), {}, 0
        csv_tmp = _temp_name(self.out_dir / SUMMARY_NAME)
        with open(self.path, "rb") as source, open(tmp, "wb") as out, \
                open(csv_tmp, "w", newline="", encoding="utf-8") as summary:
            rows = csv.DictWriter(summary, fieldnames=SUMMARY_FIELDS, lineterminator="\n")
            rows.writeheader()
            for case in wanted:
                start, length = self._index[case]
                source.seek(start)
                line = source.read(length)
                out.write(line if line.endswith(b"\n") else line + b"\n")
                index[case] = (offset, len(line) + (0 if line.endswith(b"\n") else 1))
                offset += index[case][1]
                rows.writerow(_summary_row(json.loads(line)))
            for handle in (out, summary):
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        os.replace(csv_tmp, self.out_dir / SUMMARY_NAME)
        self._index = index


def _summary_row(r):
    error, first = r.get("error") or {}, (r.get("outputs") or [{}])[0]
    return {"case": r["case"], "status": r.get("status"), "seconds": r.get("seconds"), "attempts": r.get("attempts"),
            "runs": r.get("runs"), "output": first.get("path", ""), "sha256": first.get("sha256", ""),
            "cause": error.get("cause", ""), "fix": error.get("fix", ""), "input": r.get("input"),
            "finished": r.get("finished")}


def _temp_name(path):
    return path.with_name(f".{path.name}.part{os.getpid()}")


class OutputLock:
    """One cohort run per output folder at a time (two would write the same cases twice)."""

    def __init__(self, out_dir):
        self.path = Path(out_dir) / LOCK_NAME
        self._handle = None

    def __enter__(self):
        try:
            import fcntl  # POSIX only (Windows has none): advisory file locks
        except ImportError:  # Windows: one run at a time is then the user's care
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "a+")
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._handle.seek(0)
            holder = self._handle.read().strip() or "another process"
            self._handle.close()
            self._handle = None
            raise CohortError(f"Another cohort run ({holder}) is writing to {self.path.parent}.",
                              "Wait for it to finish or stop it (Ctrl+C), or choose another output folder.") from None
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        self._handle.flush()
        return self

    def __exit__(self, *exc):
        if self._handle is not None:
            self._handle.close()  # closing releases the lock
            self._handle = None


def sweep_partials(folder, names=None):
    """Remove the temporary files that a killed write left in `folder` (`.NAME.partPID...`):
    of every file, or only of the final file names in `names`."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        name = entry.name
        if not name.startswith(".") or ".part" not in name or not entry.is_file(follow_symlinks=False):
            continue
        final, tail = name[1:].rsplit(".part", 1)
        if tail[:1].isdigit() and (names is None or final in names):
            try:
                os.unlink(entry.path)
                removed.append(entry.path)
            except OSError:
                pass
    return removed
