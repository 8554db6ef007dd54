"""One worker thread: pass after pass, claim a job that is not done, do it, deliver it.

    worker_main(worker)     the thread's body: the passes, until nothing is left to do
                            (or forever with --watch); a lost share ends the run
    Worker                  one thread's server, claim store, job runner and retry state

A pass scans the plan (exact-path ``stat`` of each output), then tries each job that
is not done: ``claim_and_do`` claims it (claims.py), checks again that it is not done,
runs the stage's job with its CPU and RAM sampled and its energy metered, writes the
result under a scratch name and moves it into place if the claim is still ours, logs
one metrics row, and releases the claim. What happened is an ``Outcome`` (jobs.py);
the pass acts on it: jobs claimed by others or refused by the share (SMB's "busy")
wait for a later pass, a server that fails job after job is quarantined (or retired,
when the stage cannot probe it). Before every claim, and at the top of every pass,
engine/supervision.py decides whether the worker may go on (pause, drain and priority
files, its server's quarantine) and keeps its line of the status file true.
"""

import math
import threading
import time
from pathlib import Path

from drawpipe.engine import status as states
from drawpipe.engine import supervision
from drawpipe.engine.claims import Claim, ClaimStore, HeldOpen, dead_here
from drawpipe.engine.energy import EnergyWindow
from drawpipe.engine.faults import stop_here
from drawpipe.engine.jobs import (Job, JobLost, JobResult, Outcome, RunJob, WorkerContext,
                                  job_done)
from drawpipe.engine.metrics import ResourceSampler
from drawpipe.engine.quarantine import Quarantine
from drawpipe.engine.run import Abandoned, Run
from drawpipe.errors import BadInput, JobDeferred, JobFailed, ShareLost, UsageError
from drawpipe.files import (describe_os_error, is_busy, make_folders_below, output_exists,
                            output_exists_quietly, publish, remove_abandoned_scratch,
                            remove_quietly, scratch_path, write_synced)


class Worker:
    """One worker thread's state: its server, claim store, runner and failed jobs."""

    def __init__(self, run: Run, index: int, server: str | None, store: ClaimStore):
        self.run = run
        self.index = index
        self.server = server
        self.store = store
        self.run_job: RunJob | None = None
        self.process_to_sample: str | None = None  # Stage.process_to_sample(server)
        # The job running now and its claim; requests checked (sent) for it so far.
        self.job: Job | None = None
        self.claim: Claim | None = None
        self.requests = 0
        # job key -> monotonic time it may be tried again (math.inf: not in this run)
        self.failed_here: dict[str, float] = {}
        self.failures: dict[str, int] = {}  # job key -> times it failed in this run
        self.busy_since: dict[str, float] = {}  # job key -> first share-side refusal
        # job key -> (first refusal, last pause): a stale claim someone keeps open
        self.held_open: dict[str, tuple[float, float]] = {}
        # The backend's cancel(reason) (WorkerContext.on_cancel), and the lock that keeps
        # a cancel from another thread to the job it was meant for.
        self.cancel_call = None
        self.job_lock = threading.Lock()
        run.cancellers[store.worker] = self.cancel
        # The night at a glance (engine/supervision.py): what the status file says of this
        # worker, its server's failures in a row and quarantine, the priority file its
        # pass was sorted by.
        self.status = run.board.worker(index, server)
        self.quarantine = Quarantine(run.settings.quarantine)
        self.pass_priority: tuple[int, int] | None = None

    @property
    def runs_here(self) -> bool:
        """Whether this worker's jobs do their work on this machine: no server, or one
        whose app is here (the stage names a process to sample). Only then is the energy
        measured here the jobs' own (engine/energy.py: "local", else "client-side")."""
        return self.server is None or self.process_to_sample is not None

    def context(self) -> WorkerContext:
        return WorkerContext(sleep=self.run.stop.wait, resent=self.resent,
                             server_now=self.store.server_now, checkpoint=self.checkpoint,
                             activity=self.activity, on_cancel=self.set_canceller)

    def set_canceller(self, cancel) -> None:
        self.cancel_call = cancel

    def cancel(self, reason: str, claim: Claim | None = None) -> bool:
        """Cancel the request in flight (from any thread), if the backend can: that of
        the job holding ``claim``, or of whatever job runs now when None. True when a
        request was stopped."""
        with self.job_lock:
            if self.job is None or self.cancel_call is None:
                return False
            if claim is not None and claim is not self.claim:
                return False
            return bool(self.cancel_call(reason))

    def activity(self, text: str | None) -> None:
        """What the current job is doing now (WorkerContext.activity), to the progress bar
        and this worker's line of the status file."""
        job = self.job
        if job is None or self.run.progress is None:
            return
        stop_here("activity")
        self.run.progress.activity(job.key, text)
        if text:
            self.status.note_activity(text)

    def resent(self, line: str) -> None:
        self.run.progress_count(resent=1)
        key = self.job.key if self.job is not None else None
        self.run.log(f"{key}: {line}" if key else line)

    def checkpoint(self) -> None:
        """Before each request of the current job: JobLost unless it is still ours,
        Abandoned after a second stop signal."""
        job, claim = self.job, self.claim
        if job is None or claim is None:
            return  # not inside a job (a preflight)
        self.requests += 1
        stop_here(f"request-{self.requests}")
        if self.run.in_flight.abandoned:
            raise Abandoned
        try:
            reason = self.why_not_ours(job, claim)
        except OSError as exc:
            if not is_busy(exc):
                raise
            return  # SMB's "busy" for a moment: the heartbeat and the last check still watch
        if reason is not None:
            raise JobLost(reason)

    def why_not_ours(self, job: Job, claim: Claim) -> str | None:
        """Why ``job`` is no longer this worker's, or None while it is. Reads the claim
        and stats the output (one round trip each on a share); OSError when they cannot
        be read now (busy, or the share failing)."""
        lost = self.why_claim_lost(claim)
        if lost is None and output_exists(job.output):
            return "its output appeared (another worker finished it)"
        return lost

    def why_claim_lost(self, claim: Claim) -> str | None:
        """Why the claim is no longer ours, or None while it is (reads the claim)."""
        if claim.lost or not self.store.still_ours(claim):
            self.run.claim_lost(self.store, claim)
            return "its claim is no longer ours (our lease lapsed and another worker took it over)"
        return None


def worker_main(worker: Worker) -> None:
    run = worker.run
    try:
        _worker_loop(worker)
        if worker.status.state not in (states.RETIRED, states.DRAINING):
            worker.status.set(states.FINISHED)
    except ShareLost as exc:
        run.set_fatal(exc)
    except OSError as exc:
        # The share itself failed outside any one job.
        reason = run.guard.lost_reason() or exc.strerror or str(exc)
        run.set_fatal(ShareLost(run.settings.root, reason))
    finally:
        run.worker_returned()


# Passes in a row whose scan or plan fails while the share looks fine, before the run
# calls the share lost: a hiccup is retried, a folder that keeps failing is not.
MAX_FAILED_PASSES = 5


def _worker_loop(worker: Worker) -> None:
    run, store, settings = worker.run, worker.store, worker.run.settings
    failed_passes = 0
    replan = False
    while not run.stop.is_set():
        run.guard.check()
        store.retry_releases()
        if not supervision.before_pass(worker):
            return  # drained, or retired after a long quarantine
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
        held_back = run.held_back_now()
        pending = [job for job in pending
                   if worker.failed_here.get(job.key, 0.0) <= now and job.key not in held_back]
        # Jobs refused by the share or failed on a busy file wait for a later pass.
        later = [until for until in worker.failed_here.values() if now < until < math.inf]
        unsettled = [key for key in unknown if worker.failed_here.get(key, 0.0) <= now]
        if not pending:
            if not settings.watch and not unsettled and not later:
                return  # everything is done, or failed here (a re-run retries those)
            supervision.waiting(worker, states.WAITING)
            run.stop.wait(settings.poll_seconds)
            replan = settings.watch
            continue
        worked = False
        waiting = bool(unknown)
        for job in supervision.ordered(worker, pending):
            run.refresh_idle_power()  # a wait a stop signal cuts short: checked next
            if run.stop.is_set():
                return
            if not supervision.may_claim(worker):
                break  # paused, draining, quarantined, or a new priority: a later pass
            outcome = _claim_and_do(worker, job)
            if outcome is Outcome.RETIRE:
                return
            if outcome is Outcome.QUARANTINE:
                break
            waiting = waiting or outcome.waits_for_a_later_pass
            # A job claimed by others or refused by the share was not worked on.
            worked = worked or outcome not in (Outcome.CLAIMED_BY_OTHERS, Outcome.BUSY)
        if not worked or waiting:
            # Everything left is claimed by others (or busy): wait for them to finish, or
            # for their claims to go stale so the next pass takes them over.
            supervision.waiting(worker, states.WAITING if worked else states.WAITING_FOR_OTHERS)
            run.stop.wait(settings.poll_seconds)
            replan = settings.watch


def _note_busy(worker: Worker, key: str, exc: OSError) -> bool:
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


# While a take-over waits for a stale claim someone keeps open, a line this often.
HELD_OPEN_LOG_SECONDS = 60.0


def _wait_for_held_open(worker: Worker, key: str, held: HeldOpen) -> None:
    """The stale claim of ``key`` cannot be deleted: someone keeps it open (on SMB, a
    worker that stalled while its heartbeat had it open). Try again after a pause that
    doubles up to a lease, say so once a minute naming the holder; past
    ``blocked_after_seconds`` report the job blocked, and give it up for this run
    unless --watch. Never a silent wait."""
    run, settings = worker.run, worker.run.settings
    now = time.monotonic()
    first, pause = worker.held_open.get(key, (now, 0.0))
    pause = min(max(settings.poll_seconds, 2 * pause), max(settings.poll_seconds,
                                                             settings.lease_seconds))
    worker.held_open[key] = (first, pause)
    waited = now - first
    reason = (f"the stale claim of {held.describe()} is held open on the share "
              f"({held.refusal.strerror or held.refusal}) and cannot be taken over")
    if waited >= settings.blocked_after_seconds:
        run.progress.blocked(key, f"{reason}; tried for {waited:.0f} s")
        if not settings.watch:
            worker.failed_here[key] = math.inf  # a later run tries again
            return
    worker.failed_here[key] = now + pause
    run.progress.log_once(key, "held open", f"waiting: {key}: {reason}; next try in "
                          f"{pause:g} s ({waited:.0f} s so far)",
                          every_seconds=HELD_OPEN_LOG_SECONDS)


# A job whose output the share refused to take (a busy target) is tried again on
# later passes of the same run, this many times in all.
MAX_SHARE_REFUSALS = 3


def _record_failure(worker: Worker, key: str, error: Exception | None) -> None:
    """When ``key`` may be tried again: not in this run, or with --watch after a pause
    that doubles each time (never sooner than a backend's retry_after_seconds); a
    refused write on the next pass (a few times)."""
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
    if isinstance(error, JobFailed) and error.retry_after_seconds is not None:
        pause = max(pause, error.retry_after_seconds)
    worker.failed_here[key] = time.monotonic() + pause


def _claim_and_do(worker: Worker, job: Job) -> Outcome:
    """Claim ``job`` and do it; RETIRE when this worker's server keeps failing."""
    run, store = worker.run, worker.store
    try:
        if job_done(run.stage, job):
            return Outcome.SKIPPED
    except OSError as exc:
        run.guard.check()
        _note_busy(worker, job.key, exc)
        return Outcome.BUSY
    # Marked before claiming, so a stop signal never misses a job being started.
    if not run.in_flight.start(job.key, scratch_path(job.output, store.worker)):
        return Outcome.CLAIMED_BY_OTHERS
    claim = None
    try:
        run.guard.check()
        try:
            taken = store.try_take(job.key)
        except OSError as exc:
            # Errors on .claims/ are the share's, never the job's or the server's.
            run.guard.check()
            _note_busy(worker, job.key, exc)
            return Outcome.BUSY
        if isinstance(taken, HeldOpen):
            _wait_for_held_open(worker, job.key, taken)
            return Outcome.BUSY
        if taken is None:
            return Outcome.CLAIMED_BY_OTHERS
        claim = taken
        run.heartbeat.hold(store, claim)
        run.guard.check()
        worker.busy_since.pop(job.key, None)
        if worker.held_open.pop(job.key, None) is not None:
            run.progress.unblocked(job.key)
        try:
            _remove_what_the_dead_left(worker, job, claim)
            # Won the claim; the job may have been finished since our scan.
            if output_exists(job.output):
                if job_done(run.stage, job):
                    return Outcome.SKIPPED
                run.stage.set_aside(job)  # a stale output: out of the way, then redo it
            claimed = getattr(run.stage, "claimed", None)
            if claimed is not None:
                job = claimed(job)
        except OSError as exc:
            run.guard.check()
            _note_busy(worker, job.key, exc)
            return Outcome.BUSY
        retrying = job.key in worker.failures
        stop_here("claimed")
        with worker.job_lock:
            worker.job, worker.claim, worker.requests = job, claim, 0
        worker.status.working(job.key)
        # The job's energy window, with its stopwatch (closed there; here if it ends early).
        window = run.meter.open_window(local=worker.runs_here)
        try:
            outcome = _do_job(worker, job, claim, window)
        finally:
            window.close()
            with worker.job_lock:
                worker.job = worker.claim = None
            worker.status.job_ended()
            run.progress.activity(job.key, None)
        if retrying and outcome is not Outcome.DEFERRED:
            run.progress_count(retried=1)
    finally:
        if claim is not None:
            run.heartbeat.drop(claim)
            try:
                store.release(claim)
            except OSError:
                run.guard.check()  # a busy claim is retried by retry_releases
        run.in_flight.end(job.key)
    if outcome is Outcome.DONE:
        worker.quarantine.succeeded()
        worker.failed_here.pop(job.key, None)
        worker.failures.pop(job.key, None)
    elif outcome is Outcome.FAILED:
        # A server that keeps failing is quarantined (or, with nothing to probe, retired).
        return supervision.after_failure(worker) or outcome
    return outcome


def _remove_what_the_dead_left(worker: Worker, job: Job, claim: Claim) -> None:
    """With the claim won: remove the job's scratch files of workers that will never
    publish them (the one whose stale claim we took over, whatever their age; dead
    processes of this host; any not touched for a lease), and, after a take-over from
    a dead worker of this host, its clock file and run marker."""
    run, store = worker.run, worker.store
    previous = claim.taken_over_from
    # File-server time, like claims: machines' clocks are never compared.
    remove_abandoned_scratch(job.output, store.server_now() - run.settings.lease_seconds,
                             lambda owner: owner == previous or dead_here(owner))
    if previous is not None and dead_here(previous):
        store.remove_abandoned_clocks()
        run.guard.remove_abandoned_markers()


def _do_job(worker: Worker, job: Job, claim: Claim, window: EnergyWindow) -> Outcome:
    """Run one claimed job and record it: DONE (output written, or a duplicate of
    another worker's), FAILED, BAD_INPUT, BUSY (the share refused a file) or DEFERRED.
    ``window``: the job's energy window, just opened. Raises ShareLost."""
    run, settings = worker.run, worker.run.settings
    store, run_job = worker.store, worker.run_job
    scratch = scratch_path(job.output, store.worker)
    started = time.monotonic()
    row = {"worker": store.worker, "stage": run.stage.name,
           "input": _relative(job.input, settings.root), "output": job.key, "seed": job.seed,
           "attempt": 1}
    error = None
    result = None
    lost = None
    fatal = False
    outcome = Outcome.FAILED
    failure = None
    sampler = ResourceSampler(settings.sample_interval_seconds, worker.process_to_sample)
    try:
        run.guard.check()
        make_folders_below(settings.root, job.output.parent)
        with sampler:
            result = run_job(job, scratch)
        row["attempt"] = result.attempts
        status = _deliver(worker, job, claim, result, scratch)
        outcome = Outcome.DONE
    except ShareLost:
        remove_quietly(scratch)
        raise
    except Abandoned:
        remove_quietly(scratch)
        return Outcome.FAILED
    except JobLost as exc:
        remove_quietly(scratch)
        row["attempt"] = max(worker.requests - 1, 0)  # the requests sent before it was lost
        status, lost = "duplicate", exc
    except JobDeferred as exc:
        remove_quietly(scratch)
        run.progress.log_once(job.key, "deferred", f"waiting: {job.key}: {exc}")
        return Outcome.DEFERRED
    except UsageError as exc:
        remove_quietly(scratch)
        run.set_fatal(exc)
        fatal = True  # raised once by run_stage, not counted as one job's failure
        status, error = "failed", str(exc)
    except JobFailed as exc:
        remove_quietly(scratch)
        row["attempt"] = exc.attempts
        if claim.lost:
            # Its lease was found lost while the request ran, and the backend's call was
            # cancelled for it (Run.claim_lost): the job is another worker's now.
            status, lost = "duplicate", JobLost(str(exc))
        else:
            status, error, failure = "failed", str(exc), exc
            outcome = Outcome.BAD_INPUT if isinstance(exc, BadInput) else Outcome.FAILED
            if exc.retry_after_seconds is not None:
                run.hold_back(job.key, exc.retry_after_seconds)
    except OSError as exc:
        remove_quietly(scratch)
        run.guard.check()  # a lost share stops the run; otherwise a busy file
        status, error, failure = "failed", describe_os_error(exc, job.output), exc
        outcome = Outcome.BUSY
    except Exception as exc:  # a bug in one job must not stop the night's batch
        remove_quietly(scratch)
        status, error = "failed", f"unexpected {type(exc).__name__}: {exc}"
    if run.in_flight.abandoned:
        return outcome
    if lost is not None:
        outcome = Outcome.DONE
        if row["attempt"] == 0:
            # Nothing was sent: no work to log, another worker has the job.
            run.progress.duplicate(job.key, output_exists_quietly(job.output),
                                   f"duplicate: {job.key}: another worker had it ({lost}); "
                                   "nothing was sent for it")
            return outcome
    seconds = time.monotonic() - started
    energy = window.close()
    if energy.error is not None:
        run.progress.log_once("", "energy", f"warning: {energy.error} (a job's energy is "
                              "left empty when its meter cannot be read; said once)")
    row.update(status=status, seconds=seconds, error=error, **energy.row())
    _append_row(run, row, sampler, result)
    if status == "failed":
        if not fatal:
            _record_failure(worker, job.key, failure)
            run.progress.failed(job.key, error)
            worker.status.failed_job(error)
        return outcome
    if status == "duplicate":
        run.progress.duplicate(job.key, output_exists_quietly(job.output),
                               f"duplicate: {job.key}: another worker had it (our lease "
                               "lapsed or it finished first); theirs is kept"
                               + ("; nothing more was sent for it" if lost else ""))
        return Outcome.DONE
    run.progress.made(job.key, f"{status}: {job.key} ({seconds:.1f} s)")
    worker.status.made()
    return Outcome.DONE


def _append_row(run: Run, row: dict, sampler: ResourceSampler, result: JobResult | None) -> None:
    """The job's metrics row: ``row`` with what the sampler measured and the stage's
    extra columns, appended to this host's log (a log that cannot be written is
    said, never a job's failure)."""
    usage = sampler.result()
    row.update(
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


def _deliver(worker: Worker, job: Job, claim: Claim, result: JobResult, scratch: Path) -> str:
    """Write the result under its scratch name, then publish it if the job is still
    ours: "done", or "duplicate" when another worker's result is there (kept).

    The lease decides who writes, and the output is never replaced: the claim is
    checked after the scratch is flushed, just before ``files.publish``, which refuses
    to move anything over an existing output (an output another worker finished, or
    the taker's, when this worker's lease lapsed while it slept between the check and
    the publish). Raises Abandoned after a second stop signal.
    """
    run = worker.run
    with run.in_flight.writing():
        run.guard.check()
        if not result.folder_built:
            write_synced(scratch, result.data)
        stop_here("written")
        # Only the claim: publish itself never replaces an output that appeared (it
        # returns None, the duplicate), so no look at the output here.
        if worker.why_claim_lost(claim) is not None:
            remove_quietly(scratch)
            return "duplicate"
        stop_here("publish")
        try:
            method = publish(scratch, job.output, folder=result.folder_built,
                             device=run.guard.device)
        except FileNotFoundError:
            # The worker that took the job over removed our scratch: theirs it is.
            if worker.why_not_ours(job, claim) is not None:
                return "duplicate"
            raise
        if method is None:
            return "duplicate"
        if method == "rename":
            run.progress.log_once("", "publish", PUBLISH_FALLBACK.format(folder=job.output.parent))
        return "done"


PUBLISH_FALLBACK = (
    "note: {folder} takes neither hard links nor a rename that refuses to replace "
    "(RENAME_NOREPLACE/RENAME_EXCL): each output is looked up just before its rename, "
    "which leaves a window of one round trip in which a worker that stalled could "
    "replace another's output")


def _relative(path: Path | None, root: Path) -> str:
    if path is None:
        return ""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)
