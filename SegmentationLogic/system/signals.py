"""SIGTERM and SIGHUP end a run the way Ctrl+C (SIGINT) does.

`timeout`, `kill`, batch schedulers (Slurm, SGE, PBS), systemd, docker stop and a closed
terminal send SIGTERM or SIGHUP. Python's default for both is to die on the spot,
skipping every `finally`: an unpacked DICOM zip (patient data) would stay in the temp
folder and hidden partial files in the output folder. Inside `stop_on_signals()` they
raise `Terminated` (a KeyboardInterrupt) instead, so the same cleanup runs as for Ctrl+C,
and the front door (CLI, worker, batch script) exits with `exit_code(...)`:
128 + the signal number, as shells report a process a signal ended
(130 SIGINT, 129 SIGHUP, 143 SIGTERM).

Python runs the handler in the main thread between bytecodes, so a native call in
progress (one convolution, one slice decode) finishes first: usually well under a
second. Once the first signal arrived, later SIGINT/SIGTERM/SIGHUP are ignored so the
cleanup can finish; SIGKILL still stops the process at once (and leaves what it leaves).
`deferred()` holds these signals back for a few renames that must happen all or not at
all (a result's files appearing together).
"""
import contextlib
import signal
import threading

from ..errors import Terminated

HANDLED = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


def exit_code(error):
    """The exit status for a run stopped by `error` (Terminated or KeyboardInterrupt): 128 + signal."""
    return 128 + (error.signum if isinstance(error, Terminated) else int(signal.SIGINT))


@contextlib.contextmanager
def stop_on_signals():
    """While the block runs (main thread only), SIGTERM/SIGHUP raise Terminated and SIGINT
    KeyboardInterrupt; the previous handlers come back afterwards. A signal the process was
    started with ignored (nohup ignores SIGHUP) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {}

    def handler(signum, frame):
        for s in saved:  # the cleanup that follows must not be cut short by a second signal
            signal.signal(s, signal.SIG_IGN)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Terminated(signum, signal.Signals(signum).name)

    for s in HANDLED:
        if signal.getsignal(s) == signal.SIG_IGN:
            continue  # ignored on purpose by whoever started us (nohup, a background job): keep it so
        try:
            saved[s] = signal.signal(s, handler)
        except (OSError, ValueError):  # not settable here (embedded interpreter)
            pass
    try:
        yield
    finally:
        for s, previous in saved.items():
            signal.signal(s, previous if previous is not None else signal.SIG_DFL)


@contextlib.contextmanager
def deferred():
    """Hold SIGINT/SIGTERM/SIGHUP back while the block runs (POSIX); they arrive right after it."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
