"""The job model and the stage protocol: what a stage gives the engine, what it gets back.

    Job             one output to make: its key (root-relative path), paths, seed, context
    JobResult       what a job made (bytes, or a folder built at its scratch path), the
                    requests it took, the stage's extra metric values
    RunJob          run_job(job, scratch) -> JobResult: one worker's job runner
    WorkerContext   what the engine lends a worker: a wait that ends when the run stops,
                    re-send reports, the file server's clock, the checkpoint before a request,
                    where to say what the job in flight is doing, where to leave a cancel
    JobLost         raised by the checkpoint: the job is no longer this worker's
    Stage           plan(), make_worker(server, context), process_to_sample(server);
                    optionally is_current(job), set_aside(job), claimed(job),
                    cuda_devices() and probe(server)
    job_done        done means the output exists (and, for a stage that can tell, is current)
    Outcome         how one claim-and-do ended, as the worker loop acts on it

The engine knows no server: a stage's worker talks to whatever backend it has, and
tells the engine what happened only through its result or a JobFailed (errors.py),
whose ``attempts`` and ``retry_after_seconds`` any backend can set.
"""

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from drawpipe.files import output_exists


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
    attempts: int = 1  # requests sent for it (the most of any one step)
    extra: dict = field(default_factory=dict)  # values of the stage's extra metric columns


# run_job(job, scratch) -> JobResult. ``scratch``: a temporary path beside the output
# where a folder-shaped output may be built; file outputs just return bytes.
RunJob = Callable[[Job, Path], JobResult]


@dataclass(frozen=True)
class WorkerContext:
    """What the engine lends one worker of a stage (``Stage.make_worker``).

    ``sleep(seconds)``: a wait that returns True as soon as the run is stopping (give
    it to a client's re-send waits: they end early). ``resent(line)``: a request of the
    worker's current job is being sent again, and why: logged and counted.
    ``server_now()``: the file server's clock, epoch seconds (claims.ClaimStore.server_now),
    for ages of files on the share. ``checkpoint()``: call it just before every request
    (each step of a recipe, each re-send): it raises JobLost when the current job is no
    longer this worker's (its lease lapsed and another worker took the job over, or the
    output appeared), so nothing is sent for a job that is not ours; a backend that can
    cancel a call in flight cancels it when the checkpoint raises.

    ``activity(text)``: what the current job is doing now, in a few words ("step 2 of 2
    (refine): sampling 12/30"), shown beside the job on the progress bar; None clears it.
    ``on_cancel(cancel)``: a backend that can stop a call in flight gives its
    ``cancel(reason) -> bool`` (True: a request was stopped) here, once; the engine calls
    it, from another thread, when the job in flight is no longer wanted (its lease was
    found lost, a second stop signal, a lost share), and the call then raises a
    JobFailed the engine knows what to make of.
    """

    sleep: Callable[[float], bool]
    resent: Callable[[str], None]
    server_now: Callable[[], float]
    checkpoint: Callable[[], None]
    activity: Callable[[str | None], None] = lambda text: None
    on_cancel: Callable[[Callable[[str], bool]], None] = lambda cancel: None


class JobLost(Exception):
    """The job is no longer this worker's: its claim was taken over (our lease lapsed
    while this worker stalled) or deleted, or its output appeared. Raised by
    WorkerContext.checkpoint; the stage lets it through, the engine keeps the other
    worker's result."""


class Stage(Protocol):
    name: str  # "generate", "upscale", "segment": names the claims folder and CSV log
    extra_columns: tuple[str, ...]

    def plan(self) -> list[Job]:
        """Every job of the stage, done or not, in the order to do them."""

    def make_worker(self, server: str | None, context: WorkerContext) -> RunJob:
        """A job runner for one worker thread (e.g. with its own HTTP client)."""

    def process_to_sample(self, server: str | None) -> str | None:
        """The name of a process on this machine that does ``server``'s work (a local
        app), whose CPU and RAM are logged while a job runs; None for none. A server
        with such a process (or no server) does its work here: the energy measured
        here is then the job's own (worker.py Worker.runs_here)."""

    # Optional, for stages whose outputs can go stale (curate/takes.py):
    # is_current(job) -> bool: the output that exists is still the right one (its input
    #     has not changed, it was not rejected). Called while scanning; may raise OSError.
    # set_aside(job): move a stale output out of the way (into REJECTED/); called with
    #     the job's claim held, just before the job runs.
    # claimed(job) -> Job: the job as it runs, what it sends fixed now (its seed), with
    #     its claim held and any stale output set aside; the log records that job.
    # Optional, for a stage that runs its work on an NVIDIA GPU of this machine:
    # cuda_devices() -> tuple: the GPUs its jobs use in this process (UUIDs "GPU-...", or
    #     CUDA indices), () for none; the energy meter measures those (engine/energy.py
    #     choose_meter). Without it, every GPU this process can see.
    # Optional, for stages whose workers talk to a server that may go away:
    # probe(server) -> None: one cheap look (HTTP: GET /), raising errors.ServerUnreachable
    #     while the server does not answer. With it a server that keeps failing, or does
    #     not answer at start beside others that do, is quarantined and probed at a
    #     growing interval instead of retired (engine/quarantine.py).


def job_done(stage: Stage, job: Job) -> bool:
    """Done means the output exists and, for a stage that can tell, is current."""
    if not output_exists(job.output):
        return False
    is_current = getattr(stage, "is_current", None)
    return is_current is None or is_current(job)


class Outcome(enum.Enum):
    """How one claim-and-do of a job ended (worker.py), and so what the loop does next."""

    DONE = "done"  # the output written, or another worker's kept (a duplicate)
    SKIPPED = "skipped"  # done meanwhile: nothing run
    FAILED = "failed"  # failed; counts against the worker's server
    BAD_INPUT = "bad input"  # failed because of its input; says nothing about the server
    DEFERRED = "deferred"  # cannot start yet (its input is being written): a later pass
    BUSY = "busy"  # the share refused a file (someone has it open): a later pass
    CLAIMED_BY_OTHERS = "claimed by others"  # another live worker has it
    RETIRE = "retire"  # this worker's server keeps failing: stop using it
    QUARANTINE = "quarantine"  # ... and can be probed: stop claiming until it answers again

    @property
    def waits_for_a_later_pass(self) -> bool:
        return self in (Outcome.DEFERRED, Outcome.BUSY, Outcome.CLAIMED_BY_OTHERS)
