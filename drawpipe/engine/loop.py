"""The job loop every stage shares: scan, claim, run, write atomically, log, release.

A stage (generate, upscale, segment) says which jobs exist and how to do one;
this module does the rest, the same way for all three:

- *Done means the output exists.* Each job's exact output path is ``stat``-ed
  (never a directory listing: macOS caches SMB listings), again right after
  its claim is won, and again just before the result is moved into place. A
  ``stat`` that fails for another reason than "no such file" is never read as
  "not done".
- Outputs are written to a scratch name in the same folder (the worker's name in
  it), flushed, fsync-ed and published into place, so a crash never leaves a partial
  file under a final name. A folder output is built under a scratch name and
  published as a whole.
- *Exactly once, even for a worker that falls asleep.* The lease decides who writes:
  after the scratch is flushed the worker checks that its claim is still its own and
  the output still missing, then publishes with an operation that never replaces an
  existing output (files.publish: a hard link, RENAME_NOREPLACE/RENAME_EXCL, or on a
  share that has neither a look just before the rename). If its lease lapsed and
  another worker took the job over, or the output appeared, the other worker's
  result is kept and a duplicate is logged. No request is sent for a job that is not
  ours: the stage calls WorkerContext.checkpoint before each request and recipe
  step, which checks the claim (and the heartbeat's "lost" flag) and the output.
- A take-over never hangs silently: a stale claim that someone keeps open (SMB: a
  worker that stalled with it open) is tried again after a growing pause, logged
  once a minute with the holder it waits for, and past ``blocked_after_seconds``
  reported blocked in the summary. Whoever takes a claim over removes the scratch
  files of the worker it took it from, whatever their age, and the clock file and run
  marker of a dead worker of this host.
- One worker thread per server (worker.py); any number of processes on any number of
  machines coordinate through claims (engine/claims.py). A worker does not leave while
  jobs held by others are unfinished: it waits for them to appear, or for their
  claims to go stale and takes them over.
- One bad job never stops the batch: it is logged as failed and the run goes on.
  A configuration error (HTTP 422, a bad template) stops everything at once.
  ``--watch`` tries a failed job again after a pause that doubles each time
  (``watch_retry_seconds``, capped), and never before the ``retry_after_seconds`` its
  backend asked for (errors.JobFailed: Draw Things' HTTP API may still be drawing a
  request whose answer was lost, and says twice the read timeout).
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
  left: outputs appear only when published) and cancels their requests where the
  backend can (gRPC: the server stops drawing). The signal handler only counts; the
  main thread watches the count. "interrupted" is said only when something was left
  undone (Summary.stopped_early).

- Energy (energy.py): when there is work, the run chooses this machine's meter, names it
  in its first lines ("energy: rapl (...) on host", or "energy: not measured on host:
  ..."), measures idle power for ``idle_seconds`` (a stop signal cuts it short) and
  logs each job's window, opened and closed with the job's stopwatch, in the energy
  columns of the stage's log; the window is the job's own ("local") only when its work
  runs on this machine (Worker.runs_here).
- *The night at a glance* (supervision.py): each process keeps a live status file on the
  share (status.py), obeys pause, drain and priority files (control.py), quarantines a
  server that keeps failing or does not answer at start beside others that do
  (quarantine.py), and sends messages when it ends, a worker retires, a server or the
  share is lost (notify.py).

Where things are: jobs.py (the job model, the stage protocol, outcomes), run.py (the
settings and what the workers of one process share), worker.py (one worker's passes
and jobs), progress.py (counts, the bar, the summary); this module starts the workers
and reacts to stop signals. The engine knows no server: a stage names the process to
sample and raises errors.JobFailed (``attempts``, ``retry_after_seconds``).
"""

import os
import threading
import time

from drawpipe.engine import status as states
from drawpipe.engine import supervision
from drawpipe.engine.claims import ClaimStore
from drawpipe.engine.energy import ENERGY_COLUMNS, EnergyMeter, choose_meter
from drawpipe.engine.interrupts import STOP_SIGNALS_STATE, StopSignals
from drawpipe.engine.jobs import Job, JobResult, Stage, WorkerContext, job_done
from drawpipe.engine.metrics import MetricsLog
from drawpipe.engine.progress import Progress, Summary
from drawpipe.engine.run import EngineSettings, Run
from drawpipe.engine.worker import Worker, worker_main
from drawpipe.errors import ServerNotAnswering, ShareLost, UsageError
from drawpipe.files import host_name, remove_quietly
from drawpipe.layout import logs_folder

# The engine's public face for the stages and the scripts (their homes: jobs.py, run.py).
__all__ = ["EngineSettings", "Job", "JobResult", "Stage", "Summary", "WorkerContext", "job_done",
           "run_stage"]


def run_stage(stage: Stage, settings: EngineSettings,
              signals: StopSignals = STOP_SIGNALS_STATE,
              meter: EnergyMeter | None = None) -> Summary:
    """Run ``stage`` to completion (or until interrupted); the Summary says how it went.

    ``meter``: the energy meter to use (its caller closes it); None: this machine's,
    chosen when there is work to do (engine/energy.py choose_meter, on the GPUs the
    stage names) and closed at the end.

    Raises UsageError for configuration problems (unwritable root, HTTP 422 ...) and
    ShareLost when the shared folder disappears under the run.
    """
    host = host_name()
    run = Run(stage, settings, host)
    workers = [
        Worker(run, index, server,
               ClaimStore(settings.root, stage.name, f"{host}-{os.getpid()}-{index}",
                          settings.lease_seconds))
        for index, server in enumerate(settings.servers)
    ]
    # Preflight first (e.g. GET / of every server): a configuration error must
    # stop the run before anything is written to the share. Nothing is held yet, so a
    # stop signal here ends the script at once (KeyboardInterrupt, see interrupts.py).
    # A server that gives no answer at all, beside others that do, starts quarantined
    # (engine/quarantine.py): it is tried again while the others work.
    asleep = []
    for worker in workers:
        try:
            worker.run_job = stage.make_worker(worker.server, worker.context())
        except ServerNotAnswering as exc:
            if not supervision.can_quarantine(worker):
                raise
            asleep.append((worker, exc))
        worker.process_to_sample = stage.process_to_sample(worker.server)
    if asleep and len(asleep) == len(workers):
        raise _none_answers([exc for _, exc in asleep])

    own_meter = False
    with signals.deferred():
        baseline = signals.count
        try:
            run.guard.establish()
            for worker in workers:
                worker.store.prepare()
            run.clock = workers[0].store.server_now
            run.metrics = MetricsLog(logs_folder(settings.root), stage.name, host,
                                     extra_columns=stage.extra_columns + ENERGY_COLUMNS)
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
            if settings.watch or len(already_done) < len(jobs):
                own_meter = meter is None
                _start_meter(run, meter, signals, baseline)
            run.progress = Progress(run.summary, already_done, settings.show_progress)
            for worker in workers:
                worker.status.set(states.LOOKING)
            for worker, exc in asleep:
                supervision.asleep_at_start(worker, exc)
            run.board.start()
            threads = [threading.Thread(target=worker_main, args=(worker,),
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
            supervision.run_ended(run)
            run.notifier.close()
            if own_meter:
                run.meter.close()
    if run.fatal is not None:
        raise run.fatal
    return run.summary


def _start_meter(run: Run, meter: EnergyMeter | None, signals: StopSignals,
                 baseline: int) -> None:
    """Choose this process's energy meter (or take the caller's), name it in the log,
    and measure idle power before the first job. A stop signal cuts the wait short
    (then no job starts)."""
    if meter is None:
        gpus = getattr(run.stage, "cuda_devices", None)
        meter = choose_meter(gpus() if gpus is not None else None, host=run.host)
    run.meter = meter
    run.board.energy_meter = meter.name  # the status file's (None: not measured)
    run.log(meter.describe(run.host))
    if not meter.measuring or run.settings.idle_seconds <= 0:
        return

    def wait(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        with run.doorbell.rung_by_signals():
            while signals.count == baseline and (left := deadline - time.monotonic()) > 0:
                run.doorbell.wait(left)

    idle_w = meter.measure_idle(run.settings.idle_seconds, wait=wait)
    if signals.count != baseline:
        run.stop.set()  # _wait_for_workers says why
    elif idle_w is not None:
        run.log(f"energy: idle {idle_w:.1f} W (over {run.settings.idle_seconds:g} s, before "
                "the first job)")
def _none_answers(errors: list[ServerNotAnswering]) -> ServerNotAnswering:
    """No server answered the preflight: the run cannot start (exit 2)."""
    if len(errors) == 1:
        return errors[0]
    return ServerNotAnswering(f"{errors[0]} (none of the {len(errors)} servers answers)")


def _finish(run: Run, workers: list[Worker]) -> None:
    """Release the claims, remove scratch of abandoned jobs, count what is left."""
    run.heartbeat.stop()
    run.heartbeat.release_all()
    for scratch in run.in_flight.abandoned_scratch():
        remove_quietly(scratch)
    run.board.close()  # a clean end: the status file goes (after a crash it goes silent)
    for worker in workers:
        worker.store.close()
        if worker.quarantine.active:
            run.summary.quarantined[worker.server] = worker.quarantine.reason
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
    run.summary.blocked = {key: reason for key, reason in run.summary.blocked.items()
                           if key in remaining}
    run.progress.close()


# The main thread wakes when rung (a worker returned, a fatal error, a signal). A ring
# between a check and the wait stays in the pipe, so none is lost; this timed wake-up
# is a last resort, rare enough to cost nothing (a wake-up costs ~5 ms of CPU on a VM).
MAIN_THREAD_WAKE_SECONDS = 10.0


def _wait_for_workers(run: Run, signals: StopSignals, baseline: int) -> None:
    """Wait until every worker has returned. One stop signal: finish the images in
    flight; two: abandon them. The handler only counts; this loop reacts."""
    seen = 0
    with run.doorbell.rung_by_signals():
        while not run.workers_done.is_set():
            if isinstance(run.fatal, ShareLost):
                # Nothing in flight can be delivered any more: do not wait for its answer.
                run.abandon_in_flight("the shared folder was lost")
                return
            received = signals.count - baseline
            if received != seen:
                seen = received
                if _react_to_stop_signal(run, signals, received):
                    return
            run.doorbell.wait(MAIN_THREAD_WAKE_SECONDS)


def _react_to_stop_signal(run: Run, signals: StopSignals, received: int) -> bool:
    """The first stop signal: no new jobs; the second: abandon the images in flight
    (returns True: stop waiting)."""
    run.summary.interrupted = True
    run.stop.set()
    busy = bool(run.in_flight.keys())
    if received == 1 and busy:
        run.log(f"stopping: finishing the images in flight ({signals.last_name}; "
                "a second Ctrl-C or stop signal abandons them)")
        return False
    if received == 1:
        run.log(f"stopping ({signals.last_name})")
        return False
    # Stop waiting for the jobs in flight. Nothing partial can be left (outputs appear
    # only by rename) once the writes under way (milliseconds) are over; releasing the
    # claims then lets any other worker redo those jobs now.
    cancelled = run.abandon_in_flight("a second stop signal abandoned it")
    if busy:
        run.log("abandoning the images in flight" + (
            f"; {cancelled} request(s) cancelled, so their servers stop drawing them"
            if cancelled else ""))
    return True
