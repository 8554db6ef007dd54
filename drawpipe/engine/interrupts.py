"""Stop signals: SIGINT (Ctrl-C), SIGTERM (logout, shutdown, kill) and SIGHUP (the
terminal or ssh session closed), handled in one place for the whole process.

``cli.run_main`` installs one handler for the three. While the job loop holds the
share (``StopSignals.deferred()``) the handler only counts: it raises nothing, so no
exception can land inside a clean-up ``finally``, and takes no lock, so it cannot
deadlock with the code it interrupted. The loop's main thread watches ``count``:
the first signal means no new jobs, the images in flight finish, retries and their
waits end; the second abandons the images in flight. Outside the job loop (reading
the queue, preflight, loading a model) nothing needs finishing, so the handler
raises KeyboardInterrupt there, as Python's own does, and run_main ends the script
with "interrupted" and exit 130.

A signal that was ignored when the process started stays ignored: ``nohup`` ignores
SIGHUP, a background job of a non-interactive shell ignores SIGINT, and whoever
started the script that way meant it.
"""

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
