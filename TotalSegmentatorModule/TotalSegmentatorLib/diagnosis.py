"""Turn an engine that died without an error event into a cause and a fix.

The engine reports the errors it expects as an `error` event (cause + fix). When it
crashes instead (killed by the out-of-memory killer, a CUDA or numpy ABI failure, an
import error after a broken install), all we have is the exit status and the last
stderr lines: this module maps the known patterns onto advice a user can follow.
"""
import re
import signal

from SegmentationLogic.errors import error_event

# (kind, regex over the stderr tail, cause, fix) - first match wins, so specific before generic.
KNOWN_CAUSES = (
    ("memory", r"CUDA out of memory|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED|cuDNN error: CUDNN_STATUS_NOT_SUPPORTED",
     "The GPU ran out of memory.",
     "Use quality 'fast' or 'fastest', select fewer structures (ROI subset), close other programs that use the GPU, "
     "or choose the CPU as device."),
    ("memory", r"_ArrayMemoryError|MemoryError|Unable to allocate|std::bad_alloc|Cannot allocate memory",
     "The computer ran out of memory (RAM).",
     "Use quality 'fast' or 'fastest', crop the volume to the region of interest (Crop Volume module), "
     "or close other programs."),
    ("numpy-abi", r"compiled using NumPy 1\.x cannot be run in\s+NumPy 2|numpy\.core\.multiarray failed to import|"
                  r"numpy\.dtype size changed|_ARRAY_API not found",
     "A Python package was built for a different NumPy version than the one installed (NumPy 1 / 2 mismatch).",
     "Open Advanced > Reinstall dependencies, then restart Slicer."),
    ("cuda", r"no kernel image is available|CUDA driver version is insufficient|Found no NVIDIA driver|"
             r"Torch not compiled with CUDA enabled|CUDA error|cudaErrorNoDevice|NVIDIA driver on your system is too old",
     "PyTorch cannot use the GPU (driver, CUDA version or PyTorch build do not match).",
     "Choose 'CPU' as device, or reinstall PyTorch for your CUDA driver in the PyTorch Utils module and restart Slicer."),
    ("mps", r"MPS backend out of memory|not currently implemented for the MPS device",
     "The Apple GPU (MPS) cannot run this model.",
     "Choose 'CPU' as device."),
    ("license", r"[Ii]nvalid licen[cs]e|licen[cs]e (?:key|number) (?:is )?(?:missing|invalid|required)|requires a licen[cs]e",
     "The task needs a valid licence key.",
     "Enter your licence key in Advanced > Licence key (free for non-commercial use)."),
    ("download", r"SSLError|CERTIFICATE_VERIFY_FAILED|ConnectionError|Max retries exceeded|Name or service not known|"
                 r"getaddrinfo failed|HTTPError|ReadTimeout|ConnectTimeout|Temporary failure in name resolution",
     "Model weights could not be downloaded (offline, proxy or firewall).",
     "Check the internet connection or proxy settings, or download the weights zip elsewhere and use "
     "Advanced > Import weights."),
    ("disk", r"No space left on device|Disk quota exceeded",
     "The disk is full.",
     "Free disk space in the temporary folder and in the weights folder, then try again."),
    ("dependency", r"ModuleNotFoundError: No module named '([^']+)'|ImportError: (?:cannot import name|DLL load failed)",
     "A Python package the engine needs is missing or broken{detail}.",
     "Open Advanced > Reinstall dependencies, then restart Slicer."),
)

SIGNAL_NAMES = {-int(s): s.name for s in (getattr(signal, n, None) for n in ("SIGKILL", "SIGSEGV", "SIGABRT", "SIGBUS",
                                                                              "SIGTERM", "SIGILL", "SIGFPE")) if s}


def exit_description(returncode):
    if returncode is None:
        return "still running"
    if returncode < 0 and returncode in SIGNAL_NAMES:
        return f"killed by {SIGNAL_NAMES[returncode]}"
    if returncode == 3221225477 or returncode == -1073741819:  # Windows access violation
        return "crashed (access violation)"
    return f"exit code {returncode}"


def diagnose(returncode, stderr_lines):
    """{"kind", "type", "cause", "fix", "details"} for an engine that died without an error event."""
    text = "\n".join(stderr_lines or ())
    for kind, pattern, cause, fix in KNOWN_CAUSES:
        match = re.search(pattern, text, flags=0)
        if match:
            detail = f" ({match.group(1)})" if kind == "dependency" and match.groups() and match.group(1) else ""
            return _error(kind, cause.format(detail=detail), fix, returncode, stderr_lines)
    if returncode in (-9, 137):
        # SIGKILL nobody asked for: on Linux almost always the kernel's out-of-memory killer.
        return _error("memory", "The segmentation engine was killed by the system, most likely because the computer "
                      "ran out of memory.",
                      "Use quality 'fast' or 'fastest', select fewer structures (ROI subset), or close other programs.",
                      returncode, stderr_lines)
    last = next((line for line in reversed(stderr_lines or ()) if line.strip()), "")
    return _error("crash", f"The segmentation engine stopped unexpectedly ({exit_description(returncode)})"
                  + (f": {last.strip()}" if last else "."),
                  "See the log for details. If it happens again, reinstall dependencies (Advanced) and report the "
                  "last lines of the log.", returncode, stderr_lines)


def _error(kind, cause, fix, returncode, stderr_lines):
    return error_event(kind=kind, type="EngineCrash", cause=cause, fix=fix, returncode=returncode,
                       details=list(stderr_lines or ())[-20:])


def refine(error, stderr_lines):
    """An engine's "internal" error event (an unexpected exception) with a known cause gets its advice."""
    if not error or error.get("kind") != "internal":
        return error
    found = diagnose(None, list(stderr_lines or ()) + [error.get("cause", "")])
    if found["kind"] == "crash":
        return error
    return {**found, "type": error.get("type", found["type"]), "details": found["details"]}
