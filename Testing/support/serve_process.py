"""A real `python -m SegmentationLogic serve` in a subprocess on 127.0.0.1, for the server tests and benchmark.

    with ServeProcess(tmp_path, weights, tls=(cert, key)) as srv:
        srv.url, srv.token_file, srv.jobs_dir, srv.log_text()
        srv.kill()    # SIGKILL (a crash); srv.stop() is SIGTERM
"""
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# what a laptop client does not have (and the client must never import)
ENGINE_LIBRARIES = ("torch", "nnunetv2", "nibabel", "numpy", "scipy", "SimpleITK", "skimage", "fastapi", "uvicorn")


def blocked_python(code):
    """Python code run where the engine's libraries cannot be imported (as on a laptop without them)."""
    return f"import sys\nfor m in {ENGINE_LIBRARIES!r}:\n    sys.modules[m] = None\n{code}"


def laptop_environment(folder):
    """Environment variables under which a Python process (e.g. the module's engine worker) cannot import the
    engine's libraries, as on a laptop Slicer that has none of them: a sitecustomize.py in `folder` blocks them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(blocked_python(""))
    return {"PYTHONPATH": os.pathsep.join([str(folder), str(REPO), os.environ.get("PYTHONPATH", "")])}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    def __init__(self, folder, weights, tls=None, ca_cert=None, token="test-token-" + "x" * 24, extra=(),
                 timeout=60.0, max_upload_mb=64, jobs_dir=None, env=None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.token = token
        self.token_file = self.folder / "token"
        self.token_file.write_text(token + "\n")
        self.token_file.chmod(0o600)
        self.jobs_dir = Path(jobs_dir or self.folder / "jobs")
        self.port = free_port()
        self.tls, self.ca_cert = tls, ca_cert
        self.scheme = "https" if tls else "http"
        self.url = f"{self.scheme}://127.0.0.1:{self.port}"
        self.log_path = self.folder / "server.log"
        self.args = ["serve", "--port", str(self.port), "--token_file", str(self.token_file), "--device", "cpu",
                     "--weights_dir", str(weights), "--no_download", "--jobs_dir", str(self.jobs_dir),
                     "--timeout", str(timeout), "--max_upload_mb", str(max_upload_mb), *extra]
        if tls:
            self.args += ["--tls_cert", str(tls[0]), "--tls_key", str(tls[1])]
        self.env = dict(os.environ, PYTHONPATH=str(REPO), nnUNet_def_n_proc="1", **(env or {}))
        self.process = None

    def start(self, wait=180.0):
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen([sys.executable, "-m", "SegmentationLogic", *self.args], cwd=REPO,
                                        env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited with {self.process.returncode}:\n{self.log_text()}")
            if self._answers():
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"serve did not start in {wait} s:\n{self.log_text()}")

    def _answers(self):
        request = urllib.request.Request(self.url + "/v1/info", headers={"Authorization": f"Bearer {self.token}"})
        context = ssl.create_default_context(cafile=str(self.ca_cert)) if self.tls else None
        try:
            with urllib.request.urlopen(request, timeout=2, context=context) as r:
                return r.status == 200
        except OSError:
            return False

    def jobs(self):
        """What the server keeps of jobs right now (the names in its jobs folder)."""
        return sorted(p.name for p in self.jobs_dir.iterdir()) if self.jobs_dir.is_dir() else []

    def wait_no_jobs(self, timeout=15.0):
        deadline = time.monotonic() + timeout
        while self.jobs() and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.jobs()

    def log_text(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig=signal.SIGTERM, wait=30.0):
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(wait)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "_log", None):
            self._log.close()
        return self.process.returncode if self.process else None

    def kill(self):
        return self.stop(signal.SIGKILL)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
