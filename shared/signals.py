"""SIGTERM and SIGINT as a clean stop: the handler raises `Stopped` in the main thread, so every
`finally` and context manager on the way out runs (staging folders removed, half-made output
removed) and the command exits 128 + the signal's number (143 / 130), never killed mid-write.

`Stopped` derives from BaseException, like KeyboardInterrupt, so no `except Exception` on the
way swallows it. A second signal while stopping is ignored: the cleanup is not interrupted.
"""

import contextlib
import signal
import threading

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(BaseException):
    """Raised in the main thread when SIGTERM / SIGINT arrives."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


_deferring = {"depth": 0, "pending": None}  # signals_deferred: how deep, and a signal held back


def _raise_stopped(signum, _frame):
    for sig in STOP_SIGNALS:  # the cleanup that follows is not interrupted again
        signal.signal(sig, signal.SIG_IGN)
    if _deferring["depth"]:
        _deferring["pending"] = signum
        return
    raise Stopped(signum)


@contextlib.contextmanager
def stop_on_signals():
    """While inside (main thread only; elsewhere a no-op): SIGTERM / SIGINT raise Stopped.
    The previous handlers come back on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _raise_stopped) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def signals_deferred():
    """A stop signal that comes while inside (a few renames that must all happen or none) is
    acted on only when the block is done. (Python runs signal handlers in the main thread, so
    a flag does this; a signal mask would not, with other threads in the process.)"""
    _deferring["depth"] += 1
    try:
        yield
    finally:
        _deferring["depth"] -= 1
        pending = _deferring["pending"]
        if not _deferring["depth"] and pending is not None:
            _deferring["pending"] = None
            raise Stopped(pending)
