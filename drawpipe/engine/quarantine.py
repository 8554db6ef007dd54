"""A server that keeps failing, or does not answer at start, is quarantined, not hammered.

    QuarantineSettings   when a server is quarantined, how it is probed, when its worker retires
    Quarantine           one worker's record: failures in a row, and while quarantined when
                         to probe next (monotonic seconds; no I/O here)

A worker's server is quarantined when its jobs fail ``after_failures`` times in a row
(refused, 5xx, timeouts: Outcome.FAILED, never a bad input or a busy file), or keep
failing for ``after_seconds`` since the first failure of the streak. It then claims no
new job; its stage's ``probe(server)`` (HTTP: ``GET /``) is tried after ``probe_seconds``,
the pause doubling up to ``probe_cap_seconds``; when the server answers, the worker's
runner is made again (the preflight: the app may have restarted with other settings)
and it goes on by itself. A server that is quarantined again soon after (each quarantine
before the next job done) starts with a longer pause, so a server that answers ``GET /``
but fails every job is not hammered either. A server that does not answer at start,
beside others that do, starts quarantined. Without --watch, a worker whose server has
not answered for ``retire_after_seconds`` retires, so that the run can end; with
--watch it keeps probing. Stages without ``probe`` (no server to ask) retire their
worker after ``after_failures`` failures in a row, as before.
"""

import time
from dataclasses import dataclass
from typing import Callable

from drawpipe.settings import default


@dataclass(frozen=True)
class QuarantineSettings:
    after_failures: int = default("max_consecutive_failures")
    after_seconds: float = default("max_failing_seconds")
    probe_seconds: float = default("probe_seconds")
    probe_cap_seconds: float = 600.0
    retire_after_seconds: float = default("retire_after_seconds")


class Quarantine:
    """One worker's failures in a row and quarantine. ``now``: a monotonic clock."""

    def __init__(self, settings: QuarantineSettings,
                 now: Callable[[], float] = time.monotonic):
        self.settings = settings
        self._now = now
        self.failures = 0  # jobs failed in a row
        self.failing_since: float | None = None  # the first failure of the streak
        self.active = False
        self.since: float | None = None  # quarantined since
        self.reason = ""  # why it was quarantined
        self.last_probe_error = ""
        self.next_probe_at = 0.0
        self.pause_seconds = 0.0
        self.rounds = 0  # quarantines since the last job done

    def succeeded(self) -> None:
        """A job was done: the streak and the rounds are over."""
        self.failures = 0
        self.failing_since = None
        self.rounds = 0

    def failed(self) -> str | None:
        """Count a failed job; the reason to stop using the server now, or None."""
        now = self._now()
        self.failures += 1
        if self.failing_since is None:
            self.failing_since = now
        if self.failures >= self.settings.after_failures:
            return f"{self.failures} failed jobs in a row"
        failing = now - self.failing_since
        if self.failures > 1 and failing >= self.settings.after_seconds:
            return f"its jobs kept failing for {failing:.0f} s ({self.failures} in a row)"
        return None

    def start(self, reason: str) -> None:
        """Quarantine the server: the first probe after a pause that grows with each
        quarantine since the last job done."""
        self.rounds += 1
        self.active = True
        self.since = self._now()
        self.reason = reason
        self.last_probe_error = ""
        self.pause_seconds = min(self.settings.probe_seconds * 2 ** (self.rounds - 1),
                                 self.settings.probe_cap_seconds)
        self.next_probe_at = self.since + self.pause_seconds

    @property
    def probe_due(self) -> bool:
        return self.active and self._now() >= self.next_probe_at

    @property
    def seconds_to_probe(self) -> float:
        return max(0.0, self.next_probe_at - self._now())

    @property
    def quarantined_seconds(self) -> float:
        return self._now() - self.since if self.active and self.since is not None else 0.0

    def probe_failed(self, error: str) -> None:
        self.last_probe_error = error
        self.pause_seconds = min(self.pause_seconds * 2, self.settings.probe_cap_seconds)
        self.next_probe_at = self._now() + self.pause_seconds

    def recovered(self) -> float:
        """The server answers again: out of quarantine; how long it lasted (seconds)."""
        lasted = self.quarantined_seconds
        self.active = False
        self.failures = 0
        self.failing_since = None
        return lasted

    def retire_due(self, watch: bool) -> bool:
        """Quarantined for longer than ``retire_after_seconds`` (never with --watch)."""
        return (not watch and self.active
                and self.quarantined_seconds >= self.settings.retire_after_seconds)
