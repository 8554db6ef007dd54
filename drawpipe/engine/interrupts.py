"""Stop signals: SIGINT (Ctrl-C), SIGTERM (logout, shutdown, kill) and SIGHUP (the
terminal or ssh session closed), handled in one place for the whole process.

``cli.common.run_main`` installs one handler for the three. While the job loop holds the
share (``StopSignals.deferred()``) the handler only counts: it raises nothing, so no
exception can land inside a clean-up ``finally``, and takes no lock, so it cannot
deadlock with the code it interrupted. The loop's main thread, asleep on a
``Doorbell`` that signals also ring, watches ``count``: the first signal means no new
jobs, the images in flight finish, retries and their waits end; the second abandons
the images in flight. Outside the job loop (reading
the queue, preflight, loading a model) nothing needs finishing, so the handler
raises KeyboardInterrupt there, as Python's own does, and run_main ends the script
with "interrupted" and exit 130.

A signal that was ignored when the process started stays ignored: ``nohup`` ignores
SIGHUP, a background job of a non-interactive shell ignores SIGINT, and whoever
started the script that way meant it.
"""

import os
import select
import signal
import threading
from contextlib import contextmanager

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                     if hasattr(signal, name))


class StopSignals:
    """How many stop signals arrived (``count``) and which came last (``last_name``)."""

    def __init__(self):
        self.count = 0
        self.last_number: int | None = None
        self._deferring = 0  # > 0 while the job loop runs: record only
        self._previous: dict[int, object] = {}

    @property
    def last_name(self) -> str:
        return signal.Signals(self.last_number).name if self.last_number else "a signal"

    def install(self) -> None:
        """Handle every stop signal not ignored by inheritance. Main thread only (a
        Python rule for signal handlers); elsewhere it does nothing."""
        if threading.current_thread() is not threading.main_thread():
            return
        for number in STOP_SIGNALS:
            if number in self._previous or signal.getsignal(number) is signal.SIG_IGN:
                continue
            self._previous[number] = signal.signal(number, self._record)

    def uninstall(self) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    @property
    def installed(self) -> tuple[int, ...]:
        return tuple(self._previous)

    def _record(self, number, frame):
        # Runs in the main thread between two bytecodes of whatever it was doing:
        # plain attribute updates only.
        self.count += 1
        self.last_number = number
        if not self._deferring:
            raise KeyboardInterrupt

    @contextmanager
    def deferred(self):
        """Within: the handler only records. Installs the handlers for the block when
        nobody did (a library caller of run_stage), and removes them after."""
        installed_here = not self._previous
        if installed_here:
            self.install()
        self._deferring += 1
        try:
            yield self
        finally:
            self._deferring -= 1
            if installed_here:
                self.uninstall()


# The process's one: signal dispositions are per process.
STOP_SIGNALS_STATE = StopSignals()


class Doorbell:
    """Wakes a thread that waits for news from other threads and from stop signals,
    without polling: a pipe that ``ring()`` writes a byte to and ``wait()`` selects on.

    Why not a timed ``Event.wait`` loop: an image keeps the client waiting on Draw
    Things for a minute, which a 10 Hz poll turns into 600 wake-ups for nothing, and
    every wake-up costs CPU (bench/primitives.py: on a VM, 0.1 ms to several ms each).
    Nor can it react at once: a signal handler cannot set an Event (its lock is not
    reentrant), but the C-level handler writes to ``signal.set_wakeup_fd``'s pipe
    whichever thread the signal lands in: ``rung_by_signals()`` points it here.
    """

    def __init__(self):
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)  # set_wakeup_fd requires it; ring never blocks
        # A worker abandoned by a second signal may ring after close: it must not write
        # to a file descriptor number that the process has since given to another file.
        self._lock = threading.Lock()
        self._closed = False

    def ring(self) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                os.write(self._write_fd, b"\0")
            except BlockingIOError:
                pass  # the pipe is full: it is ringing already

    def wait(self, timeout_seconds: float) -> None:
        """Return when rung (since the last wait) or after ``timeout_seconds``."""
        select.select([self._read_fd], [], [], timeout_seconds)
        try:
            while os.read(self._read_fd, 4096):
                pass
        except BlockingIOError:
            pass  # drained

    @contextmanager
    def rung_by_signals(self):
        """Within: any signal with a Python handler also rings. Main thread only (a
        Python rule for set_wakeup_fd); elsewhere ``wait`` just times out as usual."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        try:
            yield self
        finally:
            signal.set_wakeup_fd(previous_fd)

    def close(self) -> None:
        """After the waiting (and ``rung_by_signals``) is over."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            os.close(self._read_fd)
            os.close(self._write_fd)
