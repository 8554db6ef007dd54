"""The job loop's main thread sleeps on a Doorbell instead of polling: it must wake at
once when a worker rings and when a stop signal arrives, whichever thread the signal
lands in, and a ring after close must touch no file."""

import os
import signal
import threading
import time

from drawpipe.engine.interrupts import Doorbell

LONG_WAIT_SECONDS = 30.0
# Far below LONG_WAIT_SECONDS: a wait that ended this soon was woken, not timed out.
WOKEN_WITHIN_SECONDS = 5.0


def timed_wait(doorbell: Doorbell) -> float:
    started = time.monotonic()
    doorbell.wait(LONG_WAIT_SECONDS)
    return time.monotonic() - started


def test_a_ring_from_another_thread_wakes_the_wait():
    doorbell = Doorbell()
    try:
        ringer = threading.Timer(0.2, doorbell.ring)
        ringer.start()
        waited = timed_wait(doorbell)
        ringer.join()
        assert 0.1 < waited < WOKEN_WITHIN_SECONDS
    finally:
        doorbell.close()


def test_rings_before_the_wait_are_kept_then_drained():
    doorbell = Doorbell()
    try:
        for _ in range(10_000):  # more than a pipe holds: ring never blocks
            doorbell.ring()
        assert timed_wait(doorbell) < WOKEN_WITHIN_SECONDS
        started = time.monotonic()
        doorbell.wait(0.3)  # drained by the first wait: this one times out
        assert time.monotonic() - started >= 0.25
    finally:
        doorbell.close()


def test_a_signal_sent_from_another_thread_wakes_the_wait():
    # The kernel may deliver a process signal to any thread; the wake-up fd catches it.
    received = []
    previous = signal.signal(signal.SIGUSR1, lambda number, frame: received.append(number))
    doorbell = Doorbell()
    try:
        with doorbell.rung_by_signals():
            sender = threading.Timer(0.2, os.kill, args=(os.getpid(), signal.SIGUSR1))
            sender.start()
            waited = timed_wait(doorbell)
            sender.join()
        assert waited < WOKEN_WITHIN_SECONDS
        assert received == [signal.SIGUSR1]
        assert signal.set_wakeup_fd(-1) == -1  # the previous wake-up fd is back
    finally:
        doorbell.close()
        signal.signal(signal.SIGUSR1, previous)


def test_a_ring_after_close_writes_to_no_file(tmp_path):
    doorbell = Doorbell()
    write_fd = doorbell._write_fd
    doorbell.close()
    # The process reuses the lowest free number: a file opened now may get the pipe's.
    path = tmp_path / "bystander"
    fds = [os.open(path, os.O_WRONLY | os.O_CREAT) for _ in range(2)]
    try:
        assert write_fd in fds  # the situation this test is about
        doorbell.ring()
        doorbell.close()  # twice is harmless
    finally:
        for fd in fds:
            os.close(fd)
    assert path.read_bytes() == b""
