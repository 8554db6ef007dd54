"""The job loop every stage shares: scan, claim, run, write atomically, log, release.

A stage (generate, upscale, segment) says which jobs exist and how to do one;
this module does the rest, the same way for all three:

- *Done means the output exists.* Each job's exact output path is ``stat``-ed
  (never a directory listing: macOS caches SMB listings), again right after
  its claim is won, and again just before the result is moved into place. A
  ``stat`` that fails for another reason than "no such file" is never read as
  "not done".
- Outputs are written to a temporary name in the same folder, flushed, fsync-ed
  and renamed into place, so a crash never leaves a partial file under a final
  name. A folder output is built under a temporary name and renamed as a whole.
- *The lease decides who writes.* Just before the rename the worker checks that
  its claim is still its own; if its lease lapsed and another worker took the job
  over, or the output appeared meanwhile (a folder output's rename then fails with
  EEXIST/ENOTEMPTY), the other worker's result is kept and a duplicate is logged.
- One worker thread per server; any number of processes on any number of
  machines coordinate through claims (engine/claims.py). A worker does not leave while
  jobs held by others are unfinished: it waits for them to appear, or for their
  claims to go stale and takes them over.
- One bad job never stops the batch: it is logged as failed and the run goes on.
  A configuration error (HTTP 422, a bad template) stops everything at once.
  ``--watch`` tries a failed job again after a pause that doubles each time
  (``watch_retry_seconds``, capped), and a job whose request the server may still
  be drawing (errors.MaybeStillDrawing) not before twice the read timeout.
- *The share can disappear* (share.py): every pass, around every claim and before
  every write the run checks that the root is still the share it started on; when
  it is not, the run stops with errors.ShareLost and writes nothing anywhere. The
  engine never creates the root: a share unmounted under its mount point must not
  turn into folders on the local disk. Errors on one file while the share is fine
  (SMB's "busy": someone has it open) are not a job's failure and never retire a
  worker: that job waits for a later pass (for ``busy_give_up_seconds`` at most).
- Signals (interrupts.py): the first SIGINT, SIGTERM or SIGHUP stops new jobs, cuts
  re-send waits short, lets the images in flight finish, releases the claims and
  prints the summary; the second abandons the images in flight (nothing partial is
  left: outputs appear only by rename). The signal handler only counts; the main
  thread watches the count.
"""

import errno
import math
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from tqdm import tqdm

from drawpipe.engine.claims import Claim, ClaimStore
from drawpipe.engine.interrupts import STOP_SIGNALS_STATE, Doorbell, StopSignals
from drawpipe.engine.metrics import MetricsLog, ResourceSampler
from drawpipe.engine.share import ShareGuard
from drawpipe.errors import (BadInput, DrawpipeError, Interrupted, JobDeferred, JobFailed,
                             MaybeStillDrawing, ShareLost, UsageError)
from drawpipe.files import (describe_os_error, host_name, make_folders_below, output_exists,
                            remove_abandoned_scratch, remove_quietly, scratch_path,
                            write_atomically)
from drawpipe.layout import logs_folder
from drawpipe.settings import default


@dataclass(frozen=True)
class Job:
    key: str  # output path relative to the root, "/"-separated; also names the claim
    output: Path  # final output path: a file, or a folder for folder-shaped outputs
    input: Path | None = None  # the input file, for stages that transform one
    seed: int | None = None
    context: object = None  # stage-specific (e.g. nation, category, prompt)


@dataclass
class JobResult:
    """What a job produced: ``data`` to write as the output file, or a finished folder
    built at the ``scratch`` path the job was given."""

    data: bytes | None = None
    folder_built: bool = False
    attempts: int = 1
    extra: dict = field(default_factory=dict)  # values of the stage's extra metric columns


# run_job(job, scratch) -> JobResult. ``scratch``: a temporary path beside the output
# where a folder-shaped output may be built; file outputs just return bytes.
RunJob = Callable[[Job, Path], JobResult]


@dataclass(frozen=True)
class WorkerContext:
    """What the engine lends one worker of a stage (``Stage.make_worker``).

    ``sleep(seconds)``: a wait that returns True as soon as the run is stopping (give
    it to SdapiClient: re-send waits end early). ``resent(line)``: a request of the
    worker's current job is being sent again, and why (SdapiClient's ``on_resend``):
    logged and counted. ``server_now()``: the file server's clock, epoch seconds
    (claims.ClaimStore.server_now), for ages of files on the share.
    """

    sleep: Callable[[float], bool]
    resent: Callable[[str], None]
    server_now: Callable[[], float]


class Stage(Protocol):
    name: str  # "generate", "upscale", "segment": names the claims folder and CSV log
    extra_columns: tuple[str, ...]

    def plan(self) -> list[Job]:
        """Every job of the stage, done or not, in the order to do them."""

    def make_worker(self, server: str | None, context: WorkerContext) -> RunJob:
        """A job runner for one worker thread (e.g. with its own HTTP client)."""

    # Optional, for stages whose outputs can go stale (curate/takes.py):
    # is_current(job) -> bool: the output that exists is still the right one (its input
    #     has not changed, it was not rejected). Called while scanning; may raise OSError.
    # set_aside(job): move a stale output out of the way (into REJECTED/); called with
    #     the job's claim held, just before the job runs.
    # claimed(job) -> Job: the job as it runs, what it sends fixed now (its seed), with
    #     its claim held and any stale output set aside; the log records that job.


def job_done(stage: Stage, job: Job) -> bool:
    """Done means the output exists and, for a stage that can tell, is current."""
    if not output_exists(job.output):
        return False
    is_current = getattr(stage, "is_current", None)
    return is_current is None or is_current(job)


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
    server_process_name: str | None = default("server_process_name")
    # CPU % and RAM readings while a request runs (10-60 s on a Mac). Each reading wakes
    # a thread, which on a VM costs milliseconds of CPU: sparse readings keep the client's
    # CPU per image low (bench/upscale.py).
    sample_interval_seconds: float = 2.0
    max_consecutive_failures: int = 3  # a worker whose server keeps failing retires
    show_progress: bool | None = None  # None: a bar on a terminal, log lines otherwise

    @property
    def heartbeat_seconds(self) -> float:
        # Well inside the lease: several heartbeats may be missed before a claim goes stale.
        return max(0.2, self.lease_seconds / 6)

    @property
    def busy_give_up_seconds(self) -> float:
        # A file someone has open (SMB) is usually free again within seconds; one that
        # stays refused this long is recorded as failed, so a run without --watch ends.
        return max(60.0, 2 * self.lease_seconds)


@dataclass
class Summary:
    stage: str
    total: int = 0  # jobs in the plan
    already_done: int = 0  # outputs present when the run started
    made: int = 0  # outputs this process wrote
    by_others: int = 0  # outputs other workers wrote during this run
    failed: dict = field(default_factory=dict)  # job key -> last error
    interrupted: bool = False
    remaining: int = 0  # jobs without output at the end
    resent: int = 0  # requests sent again after a transient failure (sdapi)
    retried: int = 0  # jobs tried again after they had failed in this run (--watch)

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return Interrupted.exit_code
        return JobFailed.exit_code if self.failed or self.remaining else 0

    def lines(self) -> list[str]:
        lines = [
            f"{self.stage}: {self.made} made, {self.already_done} already done, "
            f"{self.by_others} made by other workers, {len(self.failed)} failed, "
            f"{self.remaining} left of {self.total}"
        ]
        if self.resent or self.retried:
            lines.append(f"retries: {self.resent} request(s) re-sent, {self.retried} failed "
                         "job(s) tried again")
        if self.failed:
            lines.append(f"{len(self.failed)} failed; run the same command again to retry them")
        if self.interrupted:
            lines.append("interrupted; run the same command again to continue")
        return lines


class _Heartbeat:
    """One thread refreshing every claim this process holds."""

    def __init__(self, interval_seconds: float, on_lost: Callable[[ClaimStore, Claim], None]):
        self._interval_seconds = interval_seconds
        self._on_lost = on_lost
        self._held: dict[int, tuple[ClaimStore, Claim]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def start(self):
        self._thread.start()

    def stop(self):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def hold(self, store: ClaimStore, claim: Claim) -> None:
        with self._lock:
            self._held[id(claim)] = (store, claim)

    def drop(self, claim: Claim) -> None:
        with self._lock:
            self._held.pop(id(claim), None)

    def release_all(self) -> None:
        with self._lock:
            held, self._held = list(self._held.values()), {}
        for store, claim in held:
            try:
                store.release(claim)
            except OSError:
                pass  # a failing share: the claim goes stale after its lease

    def _loop(self):
        while not self._stop.wait(self._interval_seconds):
            with self._lock:
                held = list(self._held.values())
            for store, claim in held:
                try:
                    alive = store.heartbeat(claim)
                except OSError:
                    alive = True  # busy or a hiccup; try again next beat
                if not alive:
                    self.drop(claim)
                    self._on_lost(store, claim)


class _Progress:
    """The one progress bar (or log lines when not on a terminal) and the counts."""

    def __init__(self, summary: Summary, already_done: set[str], enabled: bool | None):
        self.summary = summary
        self.lock = threading.Lock()
        self.done_keys = set(already_done)  # present at the start: not "made by others"
        # initial=: what was done before must not inflate the rate and the ETA.
        self.bar = tqdm(total=summary.total, initial=len(already_done), unit="img",
                        desc=summary.stage,
                        disable=not enabled if enabled is not None else not sys.stderr.isatty(),
                        dynamic_ncols=True, smoothing=0.1)
        self.log_successes = self.bar.disable

    def log(self, line: str) -> None:
        try:
            tqdm.write(line, file=sys.stderr)
        except OSError:
            pass  # the terminal is gone (SIGHUP): nobody to tell

    def seen_done(self, keys: set[str], total: int) -> None:
        """A scan found these outputs present: count the new ones as made by others."""
        with self.lock:
            new = keys - self.done_keys
            self.summary.by_others += len(new)
            self.done_keys |= new
            self.summary.total = total
            self.bar.total = total
            self._refresh()

    def made(self, key: str, line: str) -> None:
        with self.lock:
            if key not in self.done_keys:
                self.done_keys.add(key)
                self.summary.made += 1
            self.summary.failed.pop(key, None)
            self._refresh()
        if self.log_successes:
            self.log(line)

    def duplicate(self, key: str, output_present: bool, line: str) -> None:
        """Another worker finished (or holds) the job we also did: theirs is kept."""
        with self.lock:
            if output_present and key not in self.done_keys:
                self.done_keys.add(key)
                self.summary.by_others += 1
            self.summary.failed.pop(key, None)
            self._refresh()
        self.log(line)

    def failed(self, key: str, error: str) -> None:
        with self.lock:
            self.summary.failed[key] = error
            self._refresh()
        self.log(f"failed: {key}: {error}")

    def count(self, resent: int = 0, retried: int = 0) -> None:
        with self.lock:
            self.summary.resent += resent
            self.summary.retried += retried

    def _refresh(self):
        self.bar.n = len(self.done_keys)
        self.bar.set_postfix_str(
            f"new={self.summary.made} others={self.summary.by_others} "
            f"failed={len(self.summary.failed)}", refresh=False)
        try:
            self.bar.refresh()
        except OSError:
            pass

    def close(self):
        try:
            self.bar.close()
        except OSError:
            pass


class _Abandoned(Exception):
    """The run was abandoned (second stop signal) before this job's result was written."""


class _Worker:
    """One worker thread's state: its server, claim store, runner and failed jobs."""

    def __init__(self, run: "_Run", index: int, server: str | None, store: ClaimStore):
        self.run = run
        self.index = index
        self.server = server
        self.store = store
        self.run_job: RunJob | None = None
        self.current_key: str | None = None
        # job key -> monotonic time it may be tried again (math.inf: not in this run)
        self.failed_here: dict[str, float] = {}
        self.failures: dict[str, int] = {}  # job key -> times it failed in this run
        self.busy_since: dict[str, float] = {}  # job key -> first share-side refusal
        self.consecutive_failures = 0

    def context(self) -> WorkerContext:
        return WorkerContext(sleep=self.run.stop.wait, resent=self.resent,
                             server_now=self.store.server_now)

    def resent(self, line: str) -> None:
        self.run.progress_count(resent=1)
        key = self.current_key
        self.run.log(f"{key}: {line}" if key else line)


class _Run:
    """State shared by the worker threads of one process."""

    def __init__(self, stage: Stage, settings: EngineSettings, host: str):
        self.stage = stage
        self.settings = settings
        self.host = host
        self.stop = threading.Event()  # no new jobs (a stop signal, a fatal error)
        self.fatal: DrawpipeError | None = None
        self.lock = threading.Lock()
        self.jobs: list[Job] = []
        self.in_flight: dict[str, Path] = {}  # job key -> its scratch path
        self.live_workers = len(settings.servers)
        self.workers_done = threading.Event()
        # Rung by workers as they return or hit a fatal error, and by stop signals.
        self.doorbell = Doorbell()
        self.deferred_logged: set[str] = set()
        # Jobs the server may still be drawing (MaybeStillDrawing): no worker of this
        # process sends them before this monotonic time.
        self.held_back: dict[str, float] = {}
        self.abandoned = False  # second stop signal: write nothing more
        self.writing = 0  # workers inside an output write (finished before abandoning)
        self.guard = ShareGuard(settings.root, f"{host}-{os.getpid()}")
        self.metrics: MetricsLog | None = None
        self.summary = Summary(stage.name)
        self.heartbeat = _Heartbeat(settings.heartbeat_seconds, self._claim_lost)
        self.progress: _Progress | None = None

    def log(self, line: str) -> None:
        if self.progress is not None:
            self.progress.log(line)
        else:
            try:
                print(line, file=sys.stderr)
            except OSError:
                pass

    def progress_count(self, resent: int = 0, retried: int = 0) -> None:
        if self.progress is not None:
            self.progress.count(resent, retried)

    def set_fatal(self, error: DrawpipeError) -> None:
        with self.lock:
            if self.fatal is None:
                self.fatal = error
        self.stop.set()
        self.doorbell.ring()

    def _claim_lost(self, store: ClaimStore, claim: Claim) -> None:
        reason = self.guard.lost_reason()
        if reason is not None:
            self.set_fatal(ShareLost(self.settings.root, reason))
            return
        self.log(f"warning: the claim {claim.path.name} is no longer ours (its lease expired "
                 "and another worker took it over, or it was deleted); our result will not "
                 "overwrite theirs")

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
        with self.lock:
            # Ours in flight may already be on disk; they are counted when recorded.
            others = done - set(self.in_flight)
        self.progress.seen_done(others, len(jobs))
        return [job for job in jobs if job.key not in done and job.key not in unknown], unknown


def run_stage(stage: Stage, settings: EngineSettings,
              signals: StopSignals = STOP_SIGNALS_STATE) -> Summary:
    """Run ``stage`` to completion (or until interrupted); the Summary says how it went.

    Raises UsageError for configuration problems (unwritable root, HTTP 422 ...) and
    ShareLost when the shared folder disappears under the run.
    """
    host = host_name()
    run = _Run(stage, settings, host)
    workers = [
        _Worker(run, index, server,
                ClaimStore(settings.root, stage.name, f"{host}-{os.getpid()}-{index}",
                           settings.lease_seconds))
        for index, server in enumerate(settings.servers)
    ]
    # Preflight first (e.g. GET / of every server): a configuration error must
    # stop the run before anything is written to the share. Nothing is held yet, so a
    # stop signal here ends the script at once (KeyboardInterrupt, see interrupts.py).
    for worker in workers:
        worker.run_job = stage.make_worker(worker.server, worker.context())

    with signals.deferred():
        baseline = signals.count
        try:
            run.guard.establish()
            for worker in workers:
                worker.store.prepare()
            run.metrics = MetricsLog(logs_folder(settings.root), stage.name, host,
                                     extra_columns=stage.extra_columns)
        except OSError as exc:
            run.guard.close()
            raise UsageError(
                f"cannot write to {settings.root} ({exc.strerror or exc}): check that the "
                "folder exists and the share is mounted read-write") from None
        try:
            try:
                jobs = run.replan()
                already_done = {job.key for job in jobs if job_done(stage, job)}
            except OSError as exc:
                run.guard.check()
                raise ShareLost(settings.root, exc.strerror or str(exc)) from None
            run.summary.total = len(jobs)
            run.summary.already_done = len(already_done)
            run.progress = _Progress(run.summary, already_done, settings.show_progress)
            threads = [threading.Thread(target=_worker_main, args=(worker,),
                                        name=f"worker-{worker.index}", daemon=True)
                       for worker in workers]
            run.heartbeat.start()
            for thread in threads:
                thread.start()
            _wait_for_workers(run, signals, baseline)
            if signals.count > baseline:
                run.summary.interrupted = True  # also a signal that came as the run ended
        finally:
            _finish(run, workers)
    if run.fatal is not None:
        raise run.fatal
    return run.summary


def _finish(run: _Run, workers: list[_Worker]) -> None:
    """Release the claims, remove scratch of abandoned jobs, count what is left."""
    run.heartbeat.stop()
    run.heartbeat.release_all()
    with run.lock:
        abandoned_scratch = list(run.in_flight.values()) if run.abandoned else []
    for scratch in abandoned_scratch:
        remove_quietly(scratch)
    for worker in workers:
        worker.store.close()
    share_reason = run.guard.lost_reason()
    run.guard.close()
    run.doorbell.close()
    if run.progress is None:
        return
    if share_reason is None:
        try:
            remaining = {job.key for job in run.jobs if not job_done(run.stage, job)}
        except OSError:
            remaining = {job.key for job in run.jobs}
    else:
        remaining = {job.key for job in run.jobs} - run.progress.done_keys
    run.summary.remaining = len(remaining)
    run.summary.failed = {key: error for key, error in run.summary.failed.items()
                          if key in remaining}
    run.progress.close()


# The main thread wakes when rung (a worker returned, a fatal error, a signal). A ring
# between a check and the wait stays in the pipe, so none is lost; this timed wake-up
# is a last resort, rare enough to cost nothing (a wake-up costs ~5 ms of CPU on a VM).
MAIN_THREAD_WAKE_SECONDS = 10.0


def _wait_for_workers(run: _Run, signals: StopSignals, baseline: int) -> None:
    """Wait until every worker has returned. One stop signal: finish the images in
    flight; two: abandon them. The handler only counts; this loop reacts."""
    seen = 0
    with run.doorbell.rung_by_signals():
        while not run.workers_done.is_set():
            if isinstance(run.fatal, ShareLost):
                # Nothing in flight can be delivered any more: do not wait for its answer.
                _abandon(run)
                return
            received = signals.count - baseline
            if received != seen:
                seen = received
                if _react_to_stop_signal(run, signals, received):
                    return
            run.doorbell.wait(MAIN_THREAD_WAKE_SECONDS)


def _react_to_stop_signal(run: _Run, signals: StopSignals, received: int) -> bool:
    """The first stop signal: no new jobs; the second: abandon the images in flight
    (returns True: stop waiting)."""
    run.summary.interrupted = True
    run.stop.set()
    with run.lock:
        busy = bool(run.in_flight)
    if received == 1 and busy:
        run.log(f"stopping: finishing the images in flight ({signals.last_name}; "
                "a second Ctrl-C or stop signal abandons them)")
        return False
    if received == 1:
        run.log(f"stopping ({signals.last_name})")
        return False
    _abandon(run)
    if busy:
        run.log("abandoning the images in flight")
    return True


def _abandon(run: _Run) -> None:
    """Stop waiting for the jobs in flight. Nothing partial can be left (outputs appear
    only by rename) once the writes under way (milliseconds) are over; releasing the
    claims then lets any other worker redo those jobs now."""
    with run.lock:
        run.abandoned = True
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with run.lock:
            if not run.writing:
                return
        time.sleep(0.01)


def _worker_main(worker: _Worker) -> None:
    run = worker.run
    try:
        _worker_loop(worker)
    except ShareLost as exc:
        run.set_fatal(exc)
    except OSError as exc:
        # The share itself failed outside any one job.
        reason = run.guard.lost_reason() or exc.strerror or str(exc)
        run.set_fatal(ShareLost(run.settings.root, reason))
    finally:
        with run.lock:
            run.live_workers -= 1
            if run.live_workers == 0:
                run.workers_done.set()
        run.doorbell.ring()


# Passes in a row whose scan or plan fails while the share looks fine, before the run
# calls the share lost: a hiccup is retried, a folder that keeps failing is not.
MAX_FAILED_PASSES = 5


def _worker_loop(worker: _Worker) -> None:
    run, store, settings = worker.run, worker.store, worker.run.settings
    failed_passes = 0
    replan = False
    while not run.stop.is_set():
        run.guard.check()
        store.retry_releases()
        try:
            if replan:
                run.replan()
                replan = False
            pending, unknown = run.scan()
            failed_passes = 0
        except OSError as exc:
            run.guard.check()
            failed_passes += 1
            if failed_passes >= MAX_FAILED_PASSES:
                raise
            run.log(f"warning: cannot look at the shared folder ({exc.strerror or exc}); "
                    "trying again")
            run.stop.wait(settings.poll_seconds)
            continue
        now = time.monotonic()
        if unknown:
            run.guard.check()  # outputs that cannot be stat-ed: a lost share, or busy
            for key, exc in unknown.items():
                if worker.failed_here.get(key, 0.0) <= now:
                    _note_busy(worker, key, exc)
        with run.lock:
            held_back = {key for key, until in run.held_back.items() if until > now}
        pending = [job for job in pending
                   if worker.failed_here.get(job.key, 0.0) <= now and job.key not in held_back]
        # Jobs refused by the share or failed on a busy file wait for a later pass.
        later = [until for until in worker.failed_here.values() if now < until < math.inf]
        unsettled = [key for key in unknown if worker.failed_here.get(key, 0.0) <= now]
        if not pending:
            if not settings.watch and not unsettled and not later:
                return  # everything is done, or failed here (a re-run retries those)
            run.stop.wait(settings.poll_seconds)
            replan = settings.watch
            continue
        worked = False
        waiting = bool(unknown)
        for job in pending:
            if run.stop.is_set():
                return
            outcome = _claim_and_do(worker, job)
            if outcome == "claimed by others":
                waiting = True
                continue
            if outcome in ("deferred", "busy"):
                waiting = True
            worked = worked or outcome not in ("busy",)
            if outcome == "retire":
                return
        if not worked or waiting:
            # Everything left is claimed by others (or busy): wait for them to finish, or
            # for their claims to go stale so the next pass takes them over.
            run.stop.wait(settings.poll_seconds)
            replan = settings.watch


def _note_busy(worker: _Worker, key: str, exc: OSError) -> bool:
    """A share-side error on ``key`` while the share is fine: try again on a later pass;
    after ``busy_give_up_seconds`` of refusals record it failed. True when given up."""
    run = worker.run
    first = worker.busy_since.setdefault(key, time.monotonic())
    if time.monotonic() - first < run.settings.busy_give_up_seconds:
        return False
    worker.busy_since.pop(key, None)
    _record_failure(worker, key, None)
    run.progress.failed(key, f"{describe_os_error(exc, run.settings.root / key)} — still "
                             f"refused after {run.settings.busy_give_up_seconds:g} s")
    return True


# A job whose output the share refused to take (a busy target) is tried again on
# later passes of the same run, this many times in all.
MAX_SHARE_REFUSALS = 3


def _record_failure(worker: _Worker, key: str, error: Exception | None) -> None:
    """When ``key`` may be tried again: not in this run, or with --watch after a pause
    that doubles each time; a refused write on the next pass (a few times)."""
    settings = worker.run.settings
    count = worker.failures.get(key, 0) + 1
    worker.failures[key] = count
    if isinstance(error, OSError) and count < MAX_SHARE_REFUSALS:
        worker.failed_here[key] = time.monotonic() + settings.poll_seconds
        return
    if not settings.watch:
        worker.failed_here[key] = math.inf
        return
    pause = min(settings.watch_retry_seconds * 2 ** (count - 1), settings.watch_retry_cap_seconds)
    if isinstance(error, MaybeStillDrawing):
        pause = max(pause, error.resend_after_seconds)
    worker.failed_here[key] = time.monotonic() + pause


def _claim_and_do(worker: _Worker, job: Job) -> str:
    """Claim ``job`` and do it. Returns "done", "failed", "bad_input", "deferred",
    "busy" (share-side refusal: a later pass), "claimed by others", "skipped" (done
    meanwhile) or "retire" (this worker's server keeps failing: stop using it)."""
    run, store = worker.run, worker.store
    try:
        if job_done(run.stage, job):
            return "skipped"
    except OSError as exc:
        run.guard.check()
        _note_busy(worker, job.key, exc)
        return "busy"
    with run.lock:
        if job.key in run.in_flight:
            return "claimed by others"
        # Marked before claiming, so a stop signal never misses a job being started.
        run.in_flight[job.key] = scratch_path(job.output, store.worker)
    claim = None
    try:
        run.guard.check()
        try:
            claim = store.try_claim(job.key)
        except OSError as exc:
            # Errors on .claims/ are the share's, never the job's or the server's.
            run.guard.check()
            _note_busy(worker, job.key, exc)
            return "busy"
        if claim is None:
            return "claimed by others"
        run.heartbeat.hold(store, claim)
        run.guard.check()
        worker.busy_since.pop(job.key, None)
        try:
            # Won the claim; the job may have been finished since our scan.
            if output_exists(job.output):
                if job_done(run.stage, job):
                    return "skipped"
                run.stage.set_aside(job)  # a stale output: out of the way, then redo it
            # File-server time, like claims: machines' clocks are never compared.
            remove_abandoned_scratch(job.output, store.server_now() - run.settings.lease_seconds)
            claimed = getattr(run.stage, "claimed", None)
            if claimed is not None:
                job = claimed(job)
        except OSError as exc:
            run.guard.check()
            _note_busy(worker, job.key, exc)
            return "busy"
        retrying = job.key in worker.failures
        worker.current_key = job.key
        try:
            outcome = _do_job(worker, job, claim)
        finally:
            worker.current_key = None
        if retrying and outcome != "deferred":
            run.progress_count(retried=1)
    finally:
        if claim is not None:
            run.heartbeat.drop(claim)
            try:
                store.release(claim)
            except OSError:
                run.guard.check()  # a busy claim is retried by retry_releases
        with run.lock:
            run.in_flight.pop(job.key, None)
    if outcome == "done":
        worker.consecutive_failures = 0
        worker.failed_here.pop(job.key, None)
        worker.failures.pop(job.key, None)
        return outcome
    if outcome in ("deferred",):
        return outcome
    if outcome == "share":
        return "busy"
    if outcome == "failed":
        worker.consecutive_failures += 1
        if worker.consecutive_failures >= run.settings.max_consecutive_failures:
            # A server that fails job after job is down or broken: stop sending it
            # work rather than burn the night failing every image in turn.
            run.log(f"stopped sending to {worker.server or 'this worker'} after "
                    f"{worker.consecutive_failures} failed jobs in a row"
                    + ("; the other workers go on" if len(run.settings.servers) > 1 else ""))
            return "retire"
    return outcome


def _do_job(worker: _Worker, job: Job, claim: Claim) -> str:
    """Run one claimed job and record it. Returns "done" (output written, found, or a
    duplicate of another worker's), "failed" (counts against the server), "bad_input"
    (failed because of its input), "share" (the share refused a file: a later pass) or
    "deferred" (try again on a later pass). Raises ShareLost."""
    run, settings = worker.run, worker.run.settings
    store, run_job, server = worker.store, worker.run_job, worker.server
    scratch = scratch_path(job.output, store.worker)
    started = time.monotonic()
    row = {"worker": store.worker, "stage": run.stage.name,
           "input": _relative(job.input, settings.root), "output": job.key, "seed": job.seed,
           "attempt": 1}
    error = None
    result = None
    fatal = False
    outcome = "failed"
    failure = None
    sampler = ResourceSampler(settings.sample_interval_seconds,
                              settings.server_process_name if _is_local(server) else None)
    try:
        run.guard.check()
        make_folders_below(settings.root, job.output.parent)
        with sampler:
            result = run_job(job, scratch)
        row["attempt"] = result.attempts
        status = _deliver(worker, job, claim, result, scratch)
        outcome = "done"
    except ShareLost:
        remove_quietly(scratch)
        raise
    except _Abandoned:
        remove_quietly(scratch)
        return "failed"
    except JobDeferred as exc:
        remove_quietly(scratch)
        if job.key not in run.deferred_logged:
            run.deferred_logged.add(job.key)
            run.log(f"waiting: {job.key}: {exc}")
        return "deferred"
    except UsageError as exc:
        remove_quietly(scratch)
        run.set_fatal(exc)
        fatal = True  # raised once by run_stage, not counted as one job's failure
        status, error = "failed", str(exc)
    except JobFailed as exc:
        remove_quietly(scratch)
        row["attempt"] = getattr(exc, "attempts", 1)
        status, error, failure = "failed", str(exc), exc
        outcome = "bad_input" if isinstance(exc, BadInput) else "failed"
        if isinstance(exc, MaybeStillDrawing):
            with run.lock:
                run.held_back[job.key] = time.monotonic() + exc.resend_after_seconds
    except OSError as exc:
        remove_quietly(scratch)
        run.guard.check()  # a lost share stops the run; otherwise a busy file
        status, error, failure = "failed", describe_os_error(exc, job.output), exc
        outcome = "share"
    except Exception as exc:  # a bug in one job must not stop the night's batch
        remove_quietly(scratch)
        status, error = "failed", f"unexpected {type(exc).__name__}: {exc}"
    if run.abandoned:
        return outcome
    seconds = time.monotonic() - started
    usage = sampler.result()
    row.update(
        status=status, seconds=seconds, error=error,
        cpu_percent_mean=usage.cpu_percent_mean, cpu_percent_peak=usage.cpu_percent_peak,
        ram_mb_mean=usage.ram_mb_mean, ram_mb_peak=usage.ram_mb_peak,
        server_cpu_seconds=usage.server_cpu_seconds, server_rss_mb=usage.server_rss_mb,
        **(result.extra if result is not None else {}),
    )
    row["host"] = run.host
    try:
        run.guard.check()
        run.metrics.append(row)
    except OSError as exc:
        run.log(f"warning: cannot append to {run.metrics.path}: {exc.strerror}")
    if status == "failed":
        if not fatal:
            _record_failure(worker, job.key, failure)
            run.progress.failed(job.key, error)
        return outcome
    if status == "duplicate":
        run.progress.duplicate(job.key, output_exists_quietly(job.output),
                               f"duplicate: {job.key}: another worker had it (our lease "
                               "lapsed or it finished first); theirs is kept")
        return "done"
    run.progress.made(job.key, f"{status}: {job.key} ({seconds:.1f} s)")
    return "done"


def output_exists_quietly(path: Path) -> bool:
    try:
        return output_exists(path)
    except OSError:
        return False


def _deliver(worker: _Worker, job: Job, claim: Claim, result: JobResult, scratch: Path) -> str:
    """Move the result into place if the job is still ours: "done" or "duplicate".

    The lease decides who writes: a claim that is no longer ours (our lease lapsed and
    another worker took the job over) or an output already there means another
    worker's result, which is kept. Raises _Abandoned after a second stop signal.
    """
    run = worker.run
    with run.lock:
        if run.abandoned:
            raise _Abandoned
        run.writing += 1
    try:
        run.guard.check()
        if not worker.store.still_ours(claim) or output_exists(job.output):
            remove_quietly(scratch)
            return "duplicate"
        if result.folder_built:
            try:
                os.replace(scratch, job.output)
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    # Someone renamed theirs into place between our check and our rename.
                    remove_quietly(scratch)
                    return "duplicate"
                raise
        else:
            write_atomically(job.output, result.data, worker.store.worker)
        return "done"
    finally:
        with run.lock:
            run.writing -= 1


def _relative(path: Path | None, root: Path) -> str:
    if path is None:
        return ""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


_LOCAL_HOSTS = ("localhost", "127.", "[::1]", "0.0.0.0")


def _is_local(server: str | None) -> bool:
    """Whether the server runs on this machine (then its process can be sampled)."""
    if server is None:
        return True
    host_part = server.split("://", 1)[-1]
    return host_part.startswith(_LOCAL_HOSTS)
