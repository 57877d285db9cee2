"""Ctrl-C and SIGTERM acted on where it is safe: after a training step (with a checkpoint), never inside an import,
never in a worker process before it trains.

A KeyboardInterrupt raised while a module is being imported leaves libraries half-initialised: seen here, an
``iclab train`` interrupted during its start-up aborted in C++ (``pybind11::error_already_set``), and a
process whose numpy import was interrupted failed later with an unrelated AttributeError. A KeyboardInterrupt
raised inside a finaliser (``__del__``, a ``weakref.finalize`` callback run by the garbage collector) is printed
as "Exception ignored" and lost: seen here, ``iclab demo`` interrupted while it measured its memory went on
training. :func:`interrupts_outside_imports` makes SIGINT wait until the import is over (it is checked again
every 50 ms) and raises one that a finaliser swallowed again 50 ms later,
:func:`stop_requests` lets a loop finish its step instead, and worker processes start with SIGINT ignored
(:func:`sigint_ignored`).
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

RECHECK_SECONDS = 0.05


def _importing(frame: FrameType | None) -> bool:
    """Whether ``frame`` or one of its callers is importing a module."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


@contextmanager
def interrupts_outside_imports() -> Iterator[dict]:
    """While active (in the main thread; elsewhere nothing changes), SIGINT raises KeyboardInterrupt only outside
    imports: one that arrives during an import is raised as soon as the import is over, and one that a finaliser
    swallowed (Python reports it to ``sys.unraisablehook``) is raised again 50 ms later. The yielded dict records
    that SIGINT arrived (key "signal"), for a caller to recognise an error that a library made of the
    KeyboardInterrupt (safetensors, for one, reports a file it was reading as unreadable)."""
    request: dict = {}
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        request["signal"] = "SIGINT"
        if _importing(frame):
            signal.setitimer(signal.ITIMER_REAL, RECHECK_SECONDS)
            return
        raise KeyboardInterrupt

    previous_hook = sys.unraisablehook

    def unraisable(report: sys.UnraisableHookArgs) -> None:
        if report.exc_type is not None and issubclass(report.exc_type, KeyboardInterrupt):
            signal.setitimer(signal.ITIMER_REAL, RECHECK_SECONDS)
        else:
            previous_hook(report)

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGALRM)}
    for sig in previous:
        signal.signal(sig, interrupt)
    sys.unraisablehook = unraisable
    try:
        yield request
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        sys.unraisablehook = previous_hook
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def stop_requests() -> Iterator[dict]:
    """While active, SIGINT/SIGTERM only record their name in the yielded dict (key "signal"), so the loop
    can finish its step and checkpoint; outside the main thread nothing is installed."""
    request: dict = {}
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def record(signum: int, _frame: object) -> None:
        request["signal"] = signal.Signals(signum).name

    for sig in previous:
        signal.signal(sig, record)
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def sigint_ignored() -> Iterator[None]:
    """SIGINT ignored meanwhile (in the main thread; elsewhere nothing changes): a process started now inherits
    it, so that Ctrl-C reaches it only where it listens (:func:`stop_requests`)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
