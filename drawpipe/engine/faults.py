"""Stalls placed exactly, for the tests: a worker process that stops itself (SIGSTOP) at
a named point, as a Mac falling asleep there would, so that a test can let another
worker take the job over and then wake the sleeper (SIGCONT).

    DRAWPIPE_STOP_AT=<point>[,<point>...]   the process stops the first time it reaches
                                            each point (read once, at import)

    claimed     the claim won and the output checked, just before the job runs
    request-N   before the N-th request of a job (its claim check included)
    activity    the first time a job says what it is doing (WorkerContext.activity: over
                gRPC, a progress message of the request in flight)
    written     the output's scratch file written and flushed, before the last claim check
    publish     after the last claim check, just before the output is moved into place

Outside the tests the variable is unset and a point costs one set lookup.
"""

import os
import signal
import threading

_POINTS = frozenset(point.strip() for point in os.environ.get("DRAWPIPE_STOP_AT", "").split(",")
                    if point.strip())
_reached: set[str] = set()
_lock = threading.Lock()


def stop_here(point: str) -> None:
    """Stop this process (all its threads, the heartbeat too) if ``point`` is set and
    reached for the first time; it goes on when it gets SIGCONT."""
    if point not in _POINTS:
        return
    with _lock:
        if point in _reached:
            return
        _reached.add(point)
    # Sent to this thread: it stops before its next instruction, the whole process with
    # it. (Sent to the process, another thread may take it and this one runs on a while.)
    signal.pthread_kill(threading.get_ident(), signal.SIGSTOP)
