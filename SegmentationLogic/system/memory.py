"""How much memory there is: the one probe every check uses.

`available_memory()` is what this process may still allocate: the smallest of the
kernel's MemAvailable, a container's cgroup limit minus its usage (v2 and v1), and the
user's cap `TOTALSEG_MEMORY_LIMIT_GB` (for a machine shared with other work, and for
tests). Where /proc is missing (Windows, macOS) the OS's own figure is used. None means
unknown: a check that cannot know must not block a run.
"""
import os
import sys
from pathlib import Path

LIMIT_ENV = "TOTALSEG_MEMORY_LIMIT_GB"
_CGROUPS = (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # v2
            ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"))  # v1
_NO_LIMIT = 1 << 60  # cgroup v1 writes a huge number for "unlimited"


def _meminfo(field):
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room():
    for limit_file, usage_file in _CGROUPS:
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < _NO_LIMIT:
            return max(int(limit) - usage, 0)
        return None
    return None


def _user_limit():
    try:
        return float(os.environ[LIMIT_ENV]) * 2**30
    except (KeyError, ValueError):
        return None


def _windows_available():
    import ctypes  # Windows only

    class MemStatus(ctypes.Structure):
        _fields_ = [("dwLength", ctypes.c_ulong), ("dwMemoryLoad", ctypes.c_ulong),
                    ("ullTotalPhys", ctypes.c_ulonglong), ("ullAvailPhys", ctypes.c_ulonglong),
                    ("ullTotalPageFile", ctypes.c_ulonglong), ("ullAvailPageFile", ctypes.c_ulonglong),
                    ("ullTotalVirtual", ctypes.c_ulonglong), ("ullAvailVirtual", ctypes.c_ulonglong),
                    ("ullAvailExtendedVirtual", ctypes.c_ulonglong)]

    status = MemStatus()
    status.dwLength = ctypes.sizeof(MemStatus)
    return status.ullAvailPhys if ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)) else None


def _sysconf_pages(name):
    try:
        return os.sysconf(name) * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not on Windows, not every name everywhere
        return None


def _system_available():
    available = _meminfo("MemAvailable")
    if available is None and sys.platform == "win32":
        available = _windows_available()
    return available if available is not None else _sysconf_pages("SC_AVPHYS_PAGES")


def available_memory():
    """Bytes this process may still allocate (see the module docstring), or None if unknown."""
    limits = [v for v in (_system_available(), _cgroup_room(), _user_limit()) if v is not None]
    return int(min(limits)) if limits else None


def limit_note(available):
    """' (TOTALSEG_MEMORY_LIMIT_GB=2 caps it)' when the user's cap is what `available` is, else ''."""
    cap = _user_limit()
    return f" ({LIMIT_ENV}={os.environ[LIMIT_ENV]} caps it)" if cap is not None and available >= int(cap) else ""


def total_memory():
    """Bytes of RAM this machine has (for the device list), or None if unknown."""
    total = _meminfo("MemTotal")
    return total if total is not None else _sysconf_pages("SC_PHYS_PAGES")


def format_bytes(n):
    """'3.2 GiB' / '512 MiB' for messages."""
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"
