"""Compute devices: parse what the user asked for, and list what this machine has.

Accepted names: auto, cpu, cuda, cuda:N, gpu, gpu:N (the official spelling), mps.
`auto` takes the first CUDA GPU, else Apple's GPU, else the CPU. Asking for a device that
is not there is an error that says what is available, not a silent fall-back to the CPU
(the official tool falls back with a printed note, easy to miss in a GUI).
"""
import contextlib
import multiprocessing
import os
import re

from ..errors import DeviceError
from .memory import total_memory

_PATTERN = re.compile(r"^(auto|cpu|mps|cuda|gpu)(?::(\d+))?$")
THREADS_ENV = "TOTALSEG_NUM_THREADS"  # a process's share of the cores (cohort actors, shared machines)


def _torch():
    import torch  # heavy (seconds): only when a device is really resolved or listed

    return torch


def _mps_available(torch):
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def available_devices():
    """[{"id", "name", "memory_gb"}] for the GUI's device list, CPU last."""
    torch = _torch()
    out = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            out.append({"id": f"cuda:{i}", "name": props.name, "memory_gb": round(props.total_memory / 2**30, 1)})
    if _mps_available(torch):
        out.append({"id": "mps", "name": "Apple GPU (Metal)", "memory_gb": None})
    ram = total_memory()
    out.append({"id": "cpu", "name": f"CPU ({os.cpu_count()} cores)",
                "memory_gb": round(ram / 2**30, 1) if ram else None})
    return out


def parse_device(name="auto"):
    """(kind, index) of a device name, checked for spelling only (no torch import)."""
    text = str(name or "auto").strip().lower()
    m = _PATTERN.match(text)
    if not m or (m.group(2) is not None and m.group(1) in ("auto", "cpu", "mps")):
        raise DeviceError(f"Unknown device '{name}'.", "Use auto, cpu, cuda, cuda:N (or gpu, gpu:N) or mps.")
    return m.group(1), m.group(2)


def resolve_device(name="auto"):
    """A torch.device for a device name, or DeviceError with the devices that exist."""
    kind, index = parse_device(name)
    torch = _torch()
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda:0")
        if _mps_available(torch):
            return torch.device("mps")
        return torch.device("cpu")
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "mps":
        if not _mps_available(torch):
            raise DeviceError("Apple GPU (mps) requested, but it is not available on this machine.",
                              _choices_hint())
        return torch.device("mps")
    # cuda / gpu
    idx = int(index) if index is not None else 0
    if not torch.cuda.is_available():
        raise DeviceError(f"CUDA GPU '{name}' requested, but no CUDA GPU is available "
                          f"(torch {torch.__version__} {'has no CUDA support' if not torch.version.cuda else 'sees none'}).",
                          _choices_hint())
    count = torch.cuda.device_count()
    if idx >= count:
        raise DeviceError(f"GPU {idx} requested, but this machine has {count} CUDA GPU(s) (0..{count - 1}).",
                          _choices_hint())
    return torch.device(f"cuda:{idx}")


def _choices_hint():
    ids = ", ".join(d["id"] for d in available_devices())
    return f"Use one of the available devices: {ids} (or 'auto')."


def cpu_threads():
    """Threads torch uses on the CPU: $TOTALSEG_NUM_THREADS when set (e.g. a cohort actor's
    share of a machine), else every core, as the official tool."""
    value = os.environ.get(THREADS_ENV, "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    return multiprocessing.cpu_count()


@contextlib.contextmanager
def thread_settings(device):
    """Thread settings as the official tool while a run uses `device`: all cores (or
    $TOTALSEG_NUM_THREADS) for torch on the CPU, one with CUDA (mps: left as it is); the
    caller's settings again afterwards.

    nnU-Net then caps the threads of the prediction itself at nnUNet_def_n_proc (default 8),
    as it does under the official tool, so results and speed are comparable."""
    torch = _torch()
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads())
    elif device.type == "cuda":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def deterministic_algorithms(device, deterministic=False):
    """GPU algorithm choice for one run; the caller's settings again afterwards.

    As nnU-Net's predictor, a CUDA run lets cuDNN benchmark its convolution algorithms
    (fastest, but the choice, and with it the last bits of the fp16 logits, may change
    from process to process). `deterministic=True` turns that off and asks torch for
    deterministic algorithms (cuDNN, cuBLAS workspace), so the same input and weights give
    the same labelmap run after run on the same GPU and software. On the CPU the engine's
    results are reproducible either way (they depend only on the thread count, which is
    nnU-Net's); the flag is accepted and changes nothing there."""
    torch = _torch()
    cudnn = torch.backends.cudnn
    saved = (cudnn.benchmark, cudnn.deterministic)
    saved_algorithms = (torch.are_deterministic_algorithms_enabled(),
                        torch.is_deterministic_algorithms_warn_only_enabled())
    if device.type == "cuda":
        if deterministic:
            # cuBLAS reads this when it creates its handle: a fresh process (CLI, worker) sees it in time
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        cudnn.benchmark = not deterministic
        cudnn.deterministic = deterministic
    # only when asked: the call imports torch's compiler stack (a second of start-up)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        cudnn.benchmark, cudnn.deterministic = saved
        if deterministic:
            torch.use_deterministic_algorithms(saved_algorithms[0], warn_only=saved_algorithms[1])
