"""Quiet interrupts for the long-running scripts: Ctrl-C and SIGTERM end a run with one line that
says what was kept and how to go on, and the exit status a shell expects (130, 143), instead of
pages of Ray, torch and worker tracebacks.

A script wraps its work in :func:`interruptible`::

    with interruptible() as stop:
        trainer.learn()
    ...
    if stop.signum:          # the work was interrupted
        return stop.exit(f"kept: ...; resume: python scripts/dream_train.py ... --resume")

On the first signal the handler hides this process's stdout and stderr (file descriptors 1 and 2,
so the noise of Ray's threads, of C++ code and of workers killed by the same Ctrl-C goes too),
then raises :class:`Interrupted` in the main thread; ``finally`` blocks still run, so pools shut
down and files are closed as usual. :meth:`Stop.exit` writes the one line to the real stderr. A
second signal while shutting down ends the process at once.

Ray's driver installs a C++ failure-signal handler for SIGTERM when it starts (the
``*** SIGTERM received at time=...`` dump): :func:`worldlab.ray_utils.init_ray` calls
:func:`reinstall` afterwards so that this module's handler stays in charge.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
"""what a shell reports for a process ended by the signal (128 + its number)."""
NAMES = {signal.SIGINT: "interrupted (Ctrl-C)", signal.SIGTERM: "terminated (SIGTERM)"}


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread by SIGINT or SIGTERM inside :func:`interruptible` (a
    ``KeyboardInterrupt``, so code that already cleans up after Ctrl-C does the same for SIGTERM)."""

    def __init__(self, signum: int) -> None:
        super().__init__(NAMES.get(signum, f"signal {signum}"))
        self.signum = signum


@dataclass
class Stop:
    """What :func:`interruptible` saw: ``signum`` (None: the work was not interrupted)."""

    signum: int | None = None
    _stderr: int | None = None

    @property
    def code(self) -> int:
        return EXIT_CODES.get(self.signum, 128 + (self.signum or 0)) if self.signum else 0

    def exit(self, message: str) -> int:
        """Write ``"<interrupted|terminated>: message"`` as the one line on the real stderr; returns
        the exit status (130 for Ctrl-C, 143 for SIGTERM)."""
        line = f"{NAMES.get(self.signum or 0, 'stopped')}: {message}\n".encode()
        fd = self._stderr if self._stderr is not None else 2
        try:
            os.write(fd, line)
        except OSError:
            pass
        return self.code


_active: Stop | None = None


def _handler(signum: int, frame: Any) -> None:
    stop = _active
    if stop is None:  # outside interruptible(): behave as Python would
        raise KeyboardInterrupt
    if stop.signum is not None:  # a second signal while shutting down: stop now
        os._exit(EXIT_CODES.get(signum, 128 + signum))
    stop.signum = signum
    _silence(stop)
    raise Interrupted(signum)


def _silence(stop: Stop) -> None:
    """Point fds 1 and 2 at /dev/null, keeping a copy of the real stderr for the one line."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    try:
        stop._stderr = os.dup(2)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        os.close(null)
    except OSError:
        pass


def reinstall() -> None:
    """Take SIGINT and SIGTERM back after a library (Ray's driver) installed its own handlers;
    a no-op outside :func:`interruptible` or off the main thread."""
    if _active is None:
        return
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _handler)
        signal.signal(signal.SIGTERM, _handler)


@contextmanager
def interruptible() -> Iterator[Stop]:
    """Turn SIGINT and SIGTERM into a quiet :class:`Interrupted` for the block (see the module doc);
    the exception is caught here and recorded in the yielded :class:`Stop`."""
    global _active
    stop = Stop()
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    _active = stop
    reinstall()
    try:
        yield stop
    except KeyboardInterrupt:
        if stop.signum is None:  # a KeyboardInterrupt raised some other way
            stop.signum = signal.SIGINT
            _silence(stop)
    finally:
        _active = None
        for s, h in old.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
