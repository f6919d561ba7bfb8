"""A background process whose output is read without blocking the caller.

Slicer's GUI thread must never wait on a pipe: two reader threads move stdout and
stderr lines into a queue, and the caller drains it with `events()` from a QTimer (the
GUI) or a sleep loop (scripts, tests). Each stdout line that is a JSON object with an
"event" key is passed on as is (the engine's progress protocol); any other line, and
every stderr line, becomes a "log" event, so nothing a library prints is lost, and
bytes that are not UTF-8 (a non-English Windows locale) are replaced, never dropped.

The process runs in its own process group (POSIX: a new session; Windows: a new
process group), so `kill_tree()` can end it together with everything it started:
nnU-Net's worker processes, and on Slicer the `python-real` that the `PythonSlicer`
launcher starts.
"""
import collections
import json
import os
import queue
import signal
import subprocess
import threading

IS_WINDOWS = os.name == "nt"
STDERR_TAIL_LINES = 200


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


class BackgroundProcess:
    """Start a command in the background; read its events without blocking; kill its tree."""

    def __init__(self, argv, env=None, cwd=None, keep_stdin=False):
        self.argv = [str(a) for a in argv]
        self.env = env
        self.cwd = cwd
        self.keep_stdin = keep_stdin
        self.proc = None
        self._queue = queue.Queue()
        self._readers = []
        self._stderr_tail = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._text_tail = collections.deque(maxlen=STDERR_TAIL_LINES)  # every non-protocol line, both streams
        self._stdin_lock = threading.Lock()
        self.killed = False

    # -- life cycle --------------------------------------------------------------------
    def start(self):
        kwargs = {}
        if IS_WINDOWS:
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True  # own session and process group: killpg reaches every child
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.PIPE if self.keep_stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env, cwd=self.cwd, **kwargs)
        for stream, source in ((self.proc.stdout, "stdout"), (self.proc.stderr, "stderr")):
            t = threading.Thread(target=self._read, args=(stream, source), daemon=True,
                                 name=f"TotalSegmentator-{source}-{self.proc.pid}")
            t.start()
            self._readers.append(t)
        return self

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def _read(self, stream, source):
        try:
            for raw in iter(stream.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if not line:
                    continue
                if source == "stderr":
                    self._stderr_tail.append(line)
                event = parse_line(line, source)
                if event.get("source"):
                    self._text_tail.append(line)
                self._queue.put(event)
        except (OSError, ValueError):
            pass  # pipe closed under us by kill_tree()
        finally:
            try:
                stream.close()
            except OSError:
                pass

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    @property
    def finished(self):
        """The process has exited and all of its output has been read."""
        return (self.proc is not None and self.proc.poll() is not None
                and not any(t.is_alive() for t in self._readers))

    @property
    def returncode(self):
        return self.proc.poll() if self.proc else None

    def events(self):
        """Every event received since the last call (never blocks)."""
        out = []
        while True:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                return out

    def wait_event(self, timeout):
        """Block up to `timeout` s for one event (for scripts and tests, not the GUI)."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def stderr_tail(self, lines=30):
        return list(self._stderr_tail)[-lines:]

    def text_tail(self, lines=60):
        """Last plain-text lines of stdout and stderr together (what pip says about a failure)."""
        return list(self._text_tail)[-lines:]

    def send(self, obj):
        """Write one JSON line to the process's stdin (persistent worker). False if it is gone."""
        if not self.keep_stdin or not self.running:
            return False
        data = (json.dumps(obj) + "\n").encode("utf-8")
        with self._stdin_lock:
            try:
                self.proc.stdin.write(data)
                self.proc.stdin.flush()
                return True
            except (OSError, ValueError):
                return False

    def close_stdin(self):
        if self.proc is not None and self.proc.stdin:
            with self._stdin_lock:
                try:
                    self.proc.stdin.close()
                except OSError:
                    pass

    def kill_tree(self):
        """Kill the process and everything it started, at once. Non-blocking on POSIX."""
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
