"""One process's run of a stage: its settings and the state its worker threads share.

    EngineSettings   how a run is set up: the root, one worker per server, the lease,
                     the pauses, --watch
    InFlight         the jobs this process has claimed and the writes under way; a
                     second stop signal abandons them
    Run              what the workers share: the plan, the stop flag and the first fatal
                     error, the share guard, the heartbeat, the metrics log, the progress,
                     the energy meter, jobs held back until a backend's
                     retry_after_seconds, each worker's way to cancel its request in
                     flight; the control files, the status file and the messages
                     (engine/supervision.py)
"""

import math
import os
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from drawpipe.engine.claims import Claim, ClaimStore, Heartbeat
from drawpipe.engine.energy import IDLE_START_SECONDS, EnergyMeter
from drawpipe.engine.control import ControlFiles
from drawpipe.engine.interrupts import Doorbell
from drawpipe.engine.jobs import Job, Stage, job_done
from drawpipe.engine.metrics import MetricsLog
from drawpipe.engine.notify import Message, Notifier, NotifySettings
from drawpipe.engine.progress import Progress, Summary
from drawpipe.engine.quarantine import QuarantineSettings
from drawpipe.engine.share import ShareGuard
from drawpipe.engine.status import StatusBoard
from drawpipe.errors import DrawpipeError, ShareLost
from drawpipe.settings import default


@dataclass(frozen=True)
class EngineSettings:
    root: Path
    servers: tuple[str | None, ...] = (None,)  # one worker thread each; None = no server
    lease_seconds: float = default("lease_seconds")
    poll_seconds: float = default("poll_seconds")  # wait between passes when others hold the rest
    watch: bool = False  # keep polling for new jobs until interrupted
    # --watch: a failed job is tried again after this pause, doubled after each failure.
    watch_retry_seconds: float = default("watch_retry_seconds")
    watch_retry_cap_seconds: float = 1800.0
    # CPU % and RAM readings while a request runs (10-60 s on a Mac). Each reading wakes
    # a thread, which on a VM costs milliseconds of CPU: sparse readings keep the client's
    # CPU per image low (bench/upscale.py).
    sample_interval_seconds: float = 2.0
    # Idle power is measured this long before the first job (engine/energy.py), so the
    # report can tell an image's net energy from the machine's baseline.
    idle_seconds: float = IDLE_START_SECONDS
    show_progress: bool | None = None  # None: a bar on a terminal, log lines otherwise
    # The night at a glance: each process's status file is rewritten this often
    # (engine/status.py); a server that keeps failing is quarantined (engine/quarantine.py:
    # after_failures also retires the worker of a stage with nothing to probe); messages
    # go to --notify URLs (engine/notify.py).
    status_seconds: float = default("status_seconds")
    quarantine: QuarantineSettings = QuarantineSettings()
    notify: NotifySettings = NotifySettings()

    @property
    def heartbeat_seconds(self) -> float:
        # Well inside the lease: several heartbeats may be missed before a claim goes stale.
        return max(0.2, self.lease_seconds / 6)

    @property
    def busy_give_up_seconds(self) -> float:
        # A file someone has open (SMB) is usually free again within seconds; one that
        # stays refused this long is recorded as failed, so a run without --watch ends.
        return max(60.0, 2 * self.lease_seconds)

    @property
    def blocked_after_seconds(self) -> float:
        # A stale claim that its stalled holder keeps open (SMB) cannot be deleted until
        # the holder wakes up or the server drops its session. Several leases of trying
        # (a pause that grows, a line a minute) before the job is reported blocked.
        return 5 * self.lease_seconds


# Back-to-back jobs leave no gap to measure idle power in: after this long, a worker
# pauses before its next job to measure it again (a few seconds an hour). A try that
# finds a job running, or is cut short, is not repeated for IDLE_RETRY_SECONDS.
IDLE_REFRESH_SECONDS = 3600.0
IDLE_RETRY_SECONDS = 600.0


class InFlight:
    """The jobs this process has claimed (key -> scratch path) and the output writes
    under way. After ``abandon`` nothing more is written."""

    def __init__(self, lock: threading.Lock):
        self._lock = lock
        self.scratch: dict[str, Path] = {}
        self.abandoned = False  # second stop signal: write nothing more
        self._writing = 0  # workers inside an output write (finished before abandoning)

    def start(self, key: str, scratch: Path) -> bool:
        """Mark ``key`` in flight (False: a worker of this process already has it)."""
        with self._lock:
            if key in self.scratch:
                return False
            self.scratch[key] = scratch
            return True

    def end(self, key: str) -> None:
        with self._lock:
            self.scratch.pop(key, None)

    def keys(self) -> set[str]:
        with self._lock:
            return set(self.scratch)

    def abandoned_scratch(self) -> list[Path]:
        """The scratch paths of the jobs abandoned in flight (none unless abandoned)."""
        with self._lock:
            return list(self.scratch.values()) if self.abandoned else []

    @contextmanager
    def writing(self):
        """Around an output write; raises Abandoned when the run was abandoned."""
        with self._lock:
            if self.abandoned:
                raise Abandoned
            self._writing += 1
        try:
            yield
        finally:
            with self._lock:
                self._writing -= 1

    def abandon(self, wait_seconds: float = 10.0) -> None:
        """Write nothing more, and wait (briefly: milliseconds) for the writes under way,
        so that nothing partial is left once the run ends."""
        with self._lock:
            self.abandoned = True
        deadline = time.monotonic() + wait_seconds
        while time.monotonic() < deadline:
            with self._lock:
                if not self._writing:
                    return
            time.sleep(0.01)


class Abandoned(Exception):
    """The run was abandoned (second stop signal) before this job's result was written."""


class Run:
    """State shared by the worker threads of one process."""

    def __init__(self, stage: Stage, settings: EngineSettings, host: str):
        self.stage = stage
        self.settings = settings
        self.host = host
        self.stop = threading.Event()  # no new jobs (a stop signal, a fatal error)
        self.fatal: DrawpipeError | None = None
        self.lock = threading.Lock()
        self.jobs: list[Job] = []
        self.in_flight = InFlight(self.lock)
        self.live_workers = len(settings.servers)
        self.workers_done = threading.Event()
        # Rung by workers as they return or hit a fatal error, and by stop signals.
        self.doorbell = Doorbell()
        # Jobs a backend said not to send again yet (JobFailed.retry_after_seconds): no
        # worker of this process sends them before this monotonic time.
        self.held_back: dict[str, float] = {}
        # claim store's worker name -> cancel(reason, claim or None) -> bool: that worker's
        # request in flight (of the job holding that claim) is no longer wanted (worker.py).
        self.cancellers: dict[str, Callable[[str, Claim | None], bool]] = {}
        self.guard = ShareGuard(settings.root, f"{host}-{os.getpid()}")
        self.metrics: MetricsLog | None = None
        self.summary = Summary(stage.name, watch=settings.watch)
        self.heartbeat = Heartbeat(settings.heartbeat_seconds, self.claim_lost)
        self.progress: Progress | None = None
        # The process's energy meter (engine/energy.py), chosen by run_stage when there is
        # work to do; until then one that measures nothing.
        self.meter = EnergyMeter(None, "not measured: no job has run")
        self._idle_tried_at = -math.inf
        # The night at a glance (engine/supervision.py): the control files every worker
        # obeys, this process's status file, the messages; the file server's clock once
        # the claims are ready (a ClaimStore's server_now).
        self.clock: Callable[[], float] | None = None
        self.control = ControlFiles(settings.root, host, os.getpid(), self.log)
        self.board = StatusBoard(settings.root, host, os.getpid(), stage.name,
                                 settings.lease_seconds, settings.status_seconds,
                                 self.server_now, self.status_fields, self.log)
        self.notifier = Notifier(settings.notify, self.log)
        self.announced: dict[str, bool] = {}  # waits said once (supervision._announce)

    def log(self, line: str) -> None:
        if self.progress is not None:
            self.progress.log(line)
        else:
            try:
                print(line, file=sys.stderr)
            except OSError:
                pass

    def server_now(self) -> float:
        """The file server's clock (epoch seconds); this Mac's before the claims are ready."""
        return self.clock() if self.clock is not None else time.time()

    def status_fields(self) -> dict:
        """The process-wide part of the status file (engine/status.py)."""
        summary = self.summary
        with self.progress.lock if self.progress is not None else self.lock:
            counts = summary.counts()
            blocked = dict(summary.blocked)
        return {"stopping": self.stop.is_set() and self.fatal is None, "counts": counts,
                "blocked": blocked}

    def notify(self, message: Message) -> None:
        """Send a message (--notify, --notify-desktop): queued, never waits, never raises."""
        self.notifier.send(message)

    def progress_count(self, resent: int = 0, retried: int = 0) -> None:
        if self.progress is not None:
            self.progress.count(resent, retried)

    def set_fatal(self, error: DrawpipeError) -> None:
        with self.lock:
            if self.fatal is None:
                self.fatal = error
        self.stop.set()
        self.doorbell.ring()

    def worker_returned(self) -> None:
        with self.lock:
            self.live_workers -= 1
            if self.live_workers == 0:
                self.workers_done.set()
        self.doorbell.ring()

    def hold_back(self, key: str, seconds: float) -> None:
        with self.lock:
            self.held_back[key] = time.monotonic() + seconds

    def held_back_now(self) -> set[str]:
        now = time.monotonic()
        with self.lock:
            return {key for key, until in self.held_back.items() if until > now}

    def claim_lost(self, store: ClaimStore, claim: Claim) -> None:
        """``claim`` was found no longer ours (by the heartbeat or a check): mark it, say
        so once; a share that is gone ends the run."""
        with self.lock:
            if claim.lost:
                return
            claim.lost = True
        reason = self.guard.lost_reason()
        if reason is not None:
            self.set_fatal(ShareLost(self.settings.root, reason))
            return
        # Found by the heartbeat while a request runs: a backend that can stop it does
        # now, rather than draw an image nobody will keep.
        cancel = self.cancellers.get(store.worker)
        cancelled = cancel is not None and cancel("its lease was lost: another worker has "
                                                  "the job", claim)
        self.log(f"warning: the claim {claim.path.name} is no longer ours (its lease expired "
                 "and another worker took it over, or it was deleted); our result will not "
                 "overwrite theirs" + ("; its request was cancelled, so the server stops "
                                       "drawing it" if cancelled else ""))

    def abandon_in_flight(self, reason: str) -> int:
        """Write nothing more (InFlight.abandon), and cancel every request in flight whose
        backend can stop: nobody will keep its image. The requests cancelled."""
        self.in_flight.abandon()
        return sum(bool(cancel(reason, None)) for cancel in list(self.cancellers.values()))

    def refresh_idle_power(self) -> None:
        """Between jobs: measure idle power again (``idle_seconds``, this worker waiting)
        when the meter's figure is older than IDLE_REFRESH_SECONDS, or missing, and no
        job of this process is running; tried at most once per IDLE_RETRY_SECONDS. With
        other workers busy it costs one counter read. (Any gap between jobs of two
        seconds or more refreshes it anyway: engine/energy.py.)"""
        meter = self.meter
        if not meter.measuring or self.settings.idle_seconds <= 0:
            return
        age = meter.idle_age_seconds()
        if age is not None and age < IDLE_REFRESH_SECONDS:
            return
        with self.lock:
            now = time.monotonic()
            if now - self._idle_tried_at < IDLE_RETRY_SECONDS:
                return
            self._idle_tried_at = now
        meter.measure_idle(self.settings.idle_seconds, wait=self.stop.wait)

    def replan(self) -> list[Job]:
        jobs = self.stage.plan()
        with self.lock:
            self.jobs = jobs
        return jobs

    def scan(self) -> tuple[list[Job], dict[str, OSError]]:
        """(jobs without output yet, {key: error} of outputs that could not be stat-ed);
        updates the progress counts."""
        jobs = self.jobs
        done, unknown = set(), {}
        for job in jobs:
            try:
                if job_done(self.stage, job):
                    done.add(job.key)
            except OSError as exc:
                unknown[job.key] = exc
        # Ours in flight may already be on disk; they are counted when recorded.
        others = done - self.in_flight.keys()
        self.progress.seen_done(others, len(jobs))
        return [job for job in jobs if job.key not in done and job.key not in unknown], unknown
