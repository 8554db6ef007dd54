"""What a run obeys and tells besides its jobs: the control files before every claim, its
servers' quarantine, each worker's state in the status file, and the messages.

    before_pass(worker) -> bool         at the top of every pass: False when the worker
                                        leaves (drained, or retired after a long quarantine);
                                        a quarantined server is probed when due
    ordered(worker, jobs)               the pass's order (.drawpipe/priority.json)
    may_claim(worker) -> bool           before every claim: not paused, drained or
                                        quarantined, and the priority the pass was sorted by
                                        still rules (a new one ends the pass)
    after_failure(worker) -> Outcome    QUARANTINE or RETIRE when the server keeps failing
    asleep_at_start(worker, error)      a server that gave no answer to the preflight
    waiting(worker, state, detail)      the worker waits: its state, said once in the log
    run_ended(run) / retired(worker)    messages (engine/notify.py)

Workers are engine/worker.py's; they lend ``run``, ``index``, ``server``, ``status``
(engine/status.py WorkerStatus), ``quarantine`` (engine/quarantine.py), ``run_job``,
``context()`` and ``pass_priority``. Every wait is said: in the log once when it starts
(and when it ends), and in the status file for as long as it lasts.
"""

from drawpipe.engine import status as states
from drawpipe.engine.control import PauseNote
from drawpipe.engine.jobs import Outcome
from drawpipe.engine.notify import Message
from drawpipe.engine.status import first_line
from drawpipe.errors import DrawpipeError, ServerUnreachable, ShareLost
from drawpipe.files import output_exists_quietly
from drawpipe.layout import CONTROL_FOLDER, DRAIN_FOLDER, PAUSE_FILE, report_folder

# A quarantined server that still does not answer is said in the log this often at most.
PROBE_LOG_SECONDS = 600.0


def can_quarantine(worker) -> bool:
    """A worker whose stage can probe its server (Stage.probe) is quarantined, not retired."""
    return worker.server is not None and getattr(worker.run.stage, "probe", None) is not None


def _name(worker) -> str:
    return worker.server or f"worker {worker.index}"


def _others(worker) -> str:
    return "; the other workers go on" if len(worker.run.settings.servers) > 1 else ""


def _message(run, event: str, text: str, **fields) -> Message:
    summary = run.summary
    counts = {**summary.counts(), "left": summary.remaining}
    report = report_folder(run.settings.root) / "index.html"
    try:
        report_path = str(report) if report.is_file() else None
    except OSError:
        report_path = None
    return Message(event=event, text=text, host=run.host, stage=run.stage.name, counts=counts,
                   report=report_path, root=str(run.settings.root), **fields)


def _announce(run, kind: str, active: bool, line: str | None) -> None:
    """Say ``line`` once when ``kind`` (a wait every worker of the run shares: "paused")
    starts or ends, whichever worker sees it first."""
    with run.lock:
        if run.announced.get(kind, False) == active:
            return
        run.announced[kind] = active
    if line:
        run.log(line)


# --------------------------------------------------------------------------- passes


def before_pass(worker) -> bool:
    """The top of a pass: False when the worker must leave now (drained, retired)."""
    run = worker.run
    control = run.control.read()
    if control.drained is not None:
        _drain(worker, control.drained)
        return False
    quarantine = worker.quarantine
    if quarantine.active:
        if quarantine.retire_due(run.settings.watch):
            retired(worker, f"{_name(worker)} did not answer for "
                            f"{quarantine.quarantined_seconds:.0f} s ({quarantine.reason})")
            return False
        if quarantine.probe_due:
            _probe(worker)
    return not run.stop.is_set()


def ordered(worker, jobs: list) -> list:
    """``jobs`` in the order this pass takes them; remembers which priority file it was."""
    priority = worker.run.control.read().priority
    worker.pass_priority = priority.version
    return priority.order(jobs, lambda job: output_exists_quietly(job.output))


def may_claim(worker) -> bool:
    """Before each claim: whether this worker may start a job now."""
    run = worker.run
    control = run.control.read()
    if control.paused is not None:
        _pause(worker, control.paused)
        return False
    _announce(run, "paused", False, f"resumed: {CONTROL_FOLDER}/{PAUSE_FILE} is gone")
    if control.drained is not None:
        return False  # the next pass leaves
    if worker.quarantine.active:
        _show_quarantine(worker)
        return False
    if control.priority.version != worker.pass_priority:
        _announce(run, f"priority {control.priority.version}", True,
                  f"priority: {control.priority.describe()} "
                  f"({CONTROL_FOLDER}/priority.json changed; the next pass takes it)"
                  if control.priority.problem is None else None)
        return False
    return True


def waiting(worker, state: str, detail: str = "") -> None:
    """The worker waits for a later pass (``state``: states.WAITING_FOR_OTHERS, ...), or,
    while quarantined or paused, for that to end."""
    paused = worker.run.control.read().paused
    if worker.quarantine.active:
        _show_quarantine(worker)
    elif paused is not None:
        _pause(worker, paused)
    else:
        worker.status.set(state, detail)


def _pause(worker, note: PauseNote) -> None:
    worker.status.set(states.PAUSED, note.describe())
    _announce(worker.run, "paused", True,
              f"{note.describe()}: {CONTROL_FOLDER}/{PAUSE_FILE} exists; no new job starts (those "
              "in flight finish) until it is removed: python -m drawpipe.status --resume")


def _drain(worker, name: str) -> None:
    run = worker.run
    worker.status.set(states.DRAINING, f"{CONTROL_FOLDER}/{DRAIN_FOLDER}/{name}")
    with run.lock:
        run.summary.drained = name
    _announce(run, "drained", True,
              f"draining: {CONTROL_FOLDER}/{DRAIN_FOLDER}/{name} exists; this run finishes what "
              "is in flight and exits 0, leaving the rest to the other Macs")


# --------------------------------------------------------------------------- quarantine


def after_failure(worker) -> Outcome | None:
    """A job failed against this worker's server: QUARANTINE (probe it until it answers)
    or RETIRE (nothing to probe) when it keeps failing, else None."""
    run = worker.run
    reason = worker.quarantine.failed()
    if reason is None:
        return None
    if can_quarantine(worker):
        _quarantine(worker, reason)
        return Outcome.QUARANTINE
    # A server that fails job after job is down or broken: stop sending it work rather
    # than burn the night failing every image in turn.
    run.log(f"stopped sending to {_name(worker)} after {reason}{_others(worker)}")
    retired(worker, reason)
    return Outcome.RETIRE


def _quarantine(worker, reason: str) -> None:
    run, quarantine = worker.run, worker.quarantine
    quarantine.start(reason)
    last = f" (last: {worker.status.last_error})" if worker.status.last_error else ""
    run.log(f"quarantined {_name(worker)}: {reason}{last}; no new job for it, GET / again in "
            f"{quarantine.pause_seconds:g} s{_others(worker)}")
    _show_quarantine(worker)
    run.notify(_message(run, "server_lost", f"{run.stage.name} on {run.host}: {_name(worker)} "
                        f"quarantined: {reason}{last}", server=worker.server,
                        error=worker.status.last_error or None))


def asleep_at_start(worker, error: DrawpipeError) -> None:
    """The server did not answer the preflight while others did: start quarantined."""
    run, quarantine = worker.run, worker.quarantine
    quarantine.start("no answer at start")
    quarantine.last_probe_error = first_line(str(error))
    run.log(f"warning: {first_line(str(error))}; the other servers start without it, and it "
            f"is tried again in {quarantine.pause_seconds:g} s")
    _show_quarantine(worker)
    run.notify(_message(run, "server_lost", f"{run.stage.name} on {run.host}: {_name(worker)} "
                        "does not answer at start; the other servers work meanwhile",
                        server=worker.server, error=first_line(str(error))))


def _show_quarantine(worker) -> None:
    quarantine = worker.quarantine
    detail = f"{quarantine.reason}; next GET / in {quarantine.seconds_to_probe:.0f} s"
    if quarantine.last_probe_error:
        detail += f" (last: {first_line(quarantine.last_probe_error, 100)})"
    worker.status.set(states.QUARANTINED, detail)


def _probe(worker) -> None:
    """Ask the quarantined server (Stage.probe); when it answers, make the worker's runner
    again (the preflight) and go on. A configuration error on the way back ends the run."""
    run, quarantine = worker.run, worker.quarantine
    try:
        run.stage.probe(worker.server)
        run_job = run.stage.make_worker(worker.server, worker.context())
    except ServerUnreachable as exc:
        quarantine.probe_failed(first_line(str(exc)))
        _show_quarantine(worker)
        run.progress.log_once(worker.server, "probe", f"quarantined: {_name(worker)} still does "
                              f"not answer ({first_line(str(exc))}); next GET / in "
                              f"{quarantine.pause_seconds:g} s", every_seconds=PROBE_LOG_SECONDS)
        return
    except DrawpipeError as exc:  # it answers, but this run cannot use it (a refused key)
        run.set_fatal(exc)
        return
    worker.run_job = run_job
    lasted = quarantine.recovered()
    worker.status.set(states.LOOKING)
    run.log(f"back: {_name(worker)} answers again after {lasted:.0f} s; its worker goes on")
    run.notify(_message(run, "server_back", f"{run.stage.name} on {run.host}: {_name(worker)} "
                        f"answers again after {lasted:.0f} s", server=worker.server))


def retired(worker, reason: str) -> None:
    """The worker stops for good; said in the summary and a message."""
    run = worker.run
    worker.status.set(states.RETIRED, reason)
    with run.lock:
        run.summary.retired[_name(worker)] = reason
    run.notify(_message(run, "worker_retired", f"{run.stage.name} on {run.host}: the worker of "
                        f"{_name(worker)} stopped: {reason}", server=worker.server,
                        error=worker.status.last_error or None))


# --------------------------------------------------------------------------- the end


def run_ended(run) -> None:
    """The end message: share_lost, or run_ended with how it ended."""
    summary, fatal = run.summary, run.fatal
    counts = (f"{summary.made} made, {summary.by_others} by other workers, "
              f"{len(summary.failed)} failed, {summary.remaining} left of {summary.total}")
    first_error = next(iter(summary.failed.values()), None)
    if isinstance(fatal, ShareLost):
        run.notify(_message(run, "share_lost", f"{run.stage.name} on {run.host}: {fatal}; "
                            f"{counts}", error=first_line(str(fatal))))
        return
    if fatal is not None:
        outcome, first_error = "error", str(fatal)
    elif summary.stopped_early:
        outcome = "stopped"
    elif summary.exit_code:  # failed jobs, or some left undone (not drained to others)
        outcome = "failed"
    elif summary.drained:
        outcome = "drained"
    else:
        outcome = "done"
    run.notify(_message(run, "run_ended", f"{run.stage.name} on {run.host}: {outcome}: {counts}",
                        outcome=outcome,
                        error=first_line(first_error) if first_error else None))
