"""A background process whose output is read without threads and without ever blocking.

Slicer's PythonQt keeps the GIL while Qt waits, so a Python reader thread runs only
while the main thread runs Python (a timer callback): it cannot be trusted to empty a
pipe, and a full pipe stops the engine. Here the process writes stdout and stderr into
two files in a private folder; `events()` reads what was appended since the last call
(a plain file read: it never waits), from a QTimer in the GUI or a sleep loop in
scripts. The process can write as much as it likes while nobody reads, and nothing it
said is lost. The folder is removed when the process is done.

Each stdout line that is a JSON object with an "event" key is passed on as is (the
engine's progress protocol); any other line, and every stderr line, becomes a "log"
event. Bytes that are not UTF-8 (a non-English Windows locale) are replaced, never dropped.

The process runs in its own process group (POSIX: a new session; Windows: a new
process group), so `kill_tree()` ends it together with everything it started:
nnU-Net's worker processes, and on Slicer the `python-real` that the `PythonSlicer`
launcher starts.
"""
import collections
import json
import os
import shutil
import signal
import subprocess
import tempfile

IS_WINDOWS = os.name == "nt"
TAIL_LINES = 200
READ_LIMIT = 1 << 20  # bytes per stream and poll


def parse_line(line, source="stdout"):
    """One output line as a protocol event."""
    if source == "stdout" and line.startswith("{"):
        try:
            event = json.loads(line)
        except ValueError:
            event = None
        if isinstance(event, dict) and "event" in event:
            return event
    return {"event": "log", "level": "stderr" if source == "stderr" else "info", "message": line, "source": source}


def _posix_children():
    """{parent pid: [child pids]} for every process we can see (Linux /proc, else `ps`)."""
    children = collections.defaultdict(list)
    if os.path.isdir("/proc/self"):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    stat = f.read().decode("utf-8", "replace")
            except OSError:
                continue  # exited meanwhile
            # "pid (comm) state ppid ...": comm may contain spaces or ')' - split at the last ')'
            fields = stat[stat.rfind(")") + 2:].split()
            children[int(fields[1])].append(int(entry))
        return children
    out = subprocess.run(["ps", "-A", "-o", "pid=,ppid="], capture_output=True, text=True, check=False).stdout
    for row in out.splitlines():
        parts = row.split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            children[int(parts[1])].append(int(parts[0]))
    return children


def descendants(pid):
    """Every process below `pid` (children, grandchildren, ...), POSIX only."""
    if IS_WINDOWS:
        return []
    tree = _posix_children()
    found, stack = [], [pid]
    while stack:
        for child in tree.get(stack.pop(), ()):
            if child not in found:
                found.append(child)
                stack.append(child)
    return found


def pid_alive(pid):
    """True while `pid` exists and is not a zombie."""
    if IS_WINDOWS:
        out = subprocess.run(["tasklist", "/FI", f"PID eq {pid}", "/NH"], capture_output=True, text=True,
                             check=False, creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0)).stdout
        return str(pid) in out
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().split(b") ")[-1][:1] != b"Z"
    except FileNotFoundError:
        return False
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _OutputFile:
    """A file the process appends to; read incrementally, split into lines."""

    def __init__(self, path, source):
        self.path, self.source = path, source
        self._reader = None
        self._partial = b""
        self.at_end = False  # the last read reached the end of what is written

    def read_lines(self, final=False, limit=READ_LIMIT):
        """Complete lines appended since the last call (at most `limit` bytes: a timer tick stays short).
        final: the writer has exited, so a last line without a newline is complete too."""
        if self._reader is None:
            self._reader = open(self.path, "rb")
        chunk = self._reader.read(limit)
        self.at_end = len(chunk) < limit
        lines = (self._partial + chunk).split(b"\n")
        self._partial = b"" if final and self.at_end else lines.pop()
        return [raw.decode("utf-8", "replace").rstrip("\r") for raw in lines if raw.strip()]

    def close(self):
        if self._reader is not None:
            self._reader.close()
            self._reader = None


class BackgroundProcess:
    """Start a command in the background; read its events without blocking; kill its tree."""

    def __init__(self, argv, env=None, cwd=None, keep_stdin=False, output_dir=None):
        """output_dir: where the output files go (the caller removes it); default: a private temp folder."""
        self.argv = [str(a) for a in argv]
        self.env = env
        self.cwd = cwd
        self.keep_stdin = keep_stdin
        self.proc = None
        self.killed = False
        self._output_dir = output_dir
        self._folder = None  # our own output folder, removed when done
        self._outputs = []
        self._drained = False
        self._stderr_tail = collections.deque(maxlen=TAIL_LINES)
        self._text_tail = collections.deque(maxlen=TAIL_LINES)  # every non-protocol line, both streams

    # -- life cycle --------------------------------------------------------------------
    def start(self):
        kwargs = {}
        if IS_WINDOWS:
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True  # own session and process group: killpg reaches every child
        if self._output_dir is None:
            self._folder = tempfile.mkdtemp(prefix="TotalSegmentator-output-")
        folder = self._output_dir or self._folder
        streams = {}
        try:
            for source in ("stdout", "stderr"):
                fd, path = tempfile.mkstemp(prefix=f"{source}-", suffix=".txt", dir=folder)
                os.close(fd)
                streams[source] = open(path, "wb")
                self._outputs.append(_OutputFile(path, source))
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.PIPE if self.keep_stdin else subprocess.DEVNULL,
                stdout=streams["stdout"], stderr=streams["stderr"], env=self.env, cwd=self.cwd, **kwargs)
        except BaseException:
            self._remove_folder()
            raise
        finally:
            for stream in streams.values():
                stream.close()  # the child holds its own copies
        return self

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    @property
    def finished(self):
        """The process has exited and everything it wrote has been read (by `events()`)."""
        return self._drained

    @property
    def returncode(self):
        return self.proc.poll() if self.proc else None

    def events(self):
        """Every event the process wrote since the last call (never blocks)."""
        if self._drained or self.proc is None:
            return []
        exited = self.proc.poll() is not None  # before reading: all it wrote before exiting is in the files
        out = []
        for output in self._outputs:
            for line in output.read_lines(final=exited):
                if output.source == "stderr":
                    self._stderr_tail.append(line)
                event = parse_line(line, output.source)
                if event.get("source"):
                    self._text_tail.append(line)
                out.append(event)
        if exited and all(output.at_end for output in self._outputs):
            self._drained = True
            self._remove_folder()
        return out

    def stderr_tail(self, lines=30):
        return list(self._stderr_tail)[-lines:]

    def text_tail(self, lines=60):
        """Last plain-text lines of stdout and stderr together (what pip says about a failure)."""
        return list(self._text_tail)[-lines:]

    def send(self, obj):
        """Write one JSON line to the process's stdin (persistent worker). False if it is gone."""
        if not self.keep_stdin or not self.running:
            return False
        try:
            self.proc.stdin.write((json.dumps(obj) + "\n").encode("utf-8"))
            self.proc.stdin.flush()
            return True
        except (OSError, ValueError):
            return False

    def close_stdin(self):
        if self.proc is not None and self.proc.stdin:
            try:
                self.proc.stdin.close()
            except OSError:
                pass

    def kill_tree(self):
        """Kill the process and everything it started, at once; its output folder goes too."""
        if self.proc is None:
            return
        self.killed = True
        pid = self.proc.pid
        if IS_WINDOWS:
            subprocess.run(["taskkill", "/PID", str(pid), "/T", "/F"], capture_output=True, check=False,
                           creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
        else:
            # Listed before the kill: once the parent dies its children are re-parented and
            # can no longer be found by walking the tree (some may have left our group).
            below = descendants(pid) if self.proc.poll() is None else []
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            for child in below:
                try:
                    os.kill(child, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self.close_stdin()
        self._drained = True
        self._remove_folder()

    def _remove_folder(self):
        for output in self._outputs:
            output.close()
        if self._folder:
            shutil.rmtree(self._folder, ignore_errors=True)  # Windows: a killed child may hold it a moment
            self._folder = None

    def __del__(self):
        try:
            self._remove_folder()
        except Exception:
            pass
