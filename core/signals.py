"""SIGINT and SIGTERM in a command, at every point of its life.

- While it works: raised as exceptions in the main thread (KeyboardInterrupt, :class:`Terminated`),
  so that temporary outputs are removed on the way out.
- While a finished set of outputs is renamed into place: held back until the last rename is done
  (:func:`held`), so that the set is replaced whole, then raised as usual.
- Once the command is done, while the interpreter exits (PyTorch's teardown takes a second): the
  process ends with the command's own status, not killed silently after its work was complete
  (:func:`exiting`). Until the exit handlers have run, a signal ends it at once with a line that
  says so; in the interpreter's last teardown, where Python runs no signal handlers, the two
  signals are ignored and it ends by itself.

A SIGINT that the parent ignored (a background job) stays ignored.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path


class Terminated(BaseException):
    """SIGTERM, raised in the main thread. A BaseException, so that no ``except Exception`` on the
    way (session creation, export) swallows it."""


_held = 0  # depth of held() blocks in the main thread
_pending: int | None = None  # the first signal that arrived while held
_finished = False  # this process's own command is done; what is left is the interpreter's exit


def _raise_for(signum: int) -> None:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated()


def _handle(signum: int, frame: object) -> None:
    global _pending
    if _held:
        _pending = _pending or signum
        return
    _raise_for(signum)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def held() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block is done, then are raised as usual. Only the main
    thread's blocks hold them (that is where Python runs signal handlers)."""
    global _held, _pending
    if not _in_main_thread():
        yield
        return
    _held += 1
    try:
        yield
    finally:
        _held -= 1
        if _held == 0 and _pending is not None:
            signum, _pending = _pending, None
            _raise_for(signum)


def _ours(signum: int, previous: object) -> bool:
    """Whether a command should take ``signum`` over from ``previous``: SIGTERM always; SIGINT only
    from Python's default handler (an ignored Ctrl-C stays ignored)."""
    return signum == signal.SIGTERM or previous is signal.default_int_handler


@contextlib.contextmanager
def raised_as_exceptions() -> Iterator[None]:
    """For the duration of a command: SIGINT and SIGTERM as exceptions (held inside :func:`held`);
    the previous handlers come back afterwards."""
    global _held, _pending
    if not _in_main_thread():
        yield
        return
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(signum)
        if _ours(signum, handler):
            previous[signum] = signal.signal(signum, _handle)
    _held, _pending = 0, None
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def exiting(prog_name: str, status: int, flush: Callable[[], None]) -> None:
    """Where ``prog_name`` is this process's own program (its console script, not a caller that runs
    the command in-process), a SIGINT or SIGTERM from now on ends the process at once with the
    command's ``status``, after one line saying that the command had finished."""
    global _finished
    if not _in_main_thread() or Path(sys.argv[0]).stem != prog_name:
        return
    _finished = True

    def finish(signum: int, frame: object) -> None:
        with contextlib.suppress(Exception):
            flush()
            outcome = "had finished its work" if status == 0 else f"had already failed (exit {status})"
            os.write(2, f"{prog_name}: {signal.Signals(signum).name} while exiting; the command {outcome}\n".encode())
        os._exit(status)

    for signum in (signal.SIGINT, signal.SIGTERM):
        if _ours(signum, signal.getsignal(signum)):
            signal.signal(signum, finish)


def _ignore_in_teardown() -> None:
    """The last exit handler (registered first; they run in reverse): past it Python resets its own
    handlers to the default, which would kill a finished command silently, so both are ignored."""
    if _finished:
        for signum in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(signum) is not signal.SIG_IGN:
                signal.signal(signum, signal.SIG_IGN)


atexit.register(_ignore_in_teardown)
