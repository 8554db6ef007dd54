"""The job loop every stage shares: scan, claim, run, write atomically, log, release.

A stage (generate, upscale, segment) says which jobs exist and how to do one;
this module does the rest, the same way for all three:

- *Done means the output exists.* Each job's exact output path is ``stat``-ed
  (never a directory listing: macOS caches SMB listings), again right after
  its claim is won, and again just before the result is moved into place.
- Outputs are written to a temporary name in the same folder, flushed, fsync-ed
  and renamed into place, so a crash never leaves a partial file under a final
  name. A folder output is built under a temporary name and renamed as a whole.
- One worker thread per server; any number of processes on any number of
  machines coordinate through claims (claims.py). A worker does not leave while
  jobs held by others are unfinished: it waits for them to appear, or for their
  claims to go stale and takes them over.
- One bad job never stops the batch: it is logged as failed and the run goes on.
  A configuration error (HTTP 422, a bad template) stops everything at once.
- Ctrl-C (or SIGTERM): the images in flight finish, claims are released, the
  summary is printed. A second Ctrl-C abandons the images in flight.
"""

import errno
import glob
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from tqdm import tqdm

from .claims import ClaimStore
from .errors import BadInput, DrawpipeError, Interrupted, JobDeferred, JobFailed, UsageError
from .metrics import MetricsLog, ResourceSampler, host_name


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


class Stage(Protocol):
    name: str  # "generate", "upscale", "segment": names the claims folder and CSV log
    extra_columns: tuple[str, ...]

    def plan(self) -> list[Job]:
        """Every job of the stage, done or not, in the order to do them."""

    def make_worker(self, server: str | None) -> RunJob:
        """A job runner for one worker thread (e.g. with its own HTTP client)."""


@dataclass(frozen=True)
class EngineSettings:
    root: Path
    servers: tuple[str | None, ...] = (None,)  # one worker thread each; None = no server
    lease_seconds: float = 120.0
    poll_seconds: float = 5.0  # wait between passes when others hold the remaining jobs
    watch: bool = False  # keep polling for new jobs until interrupted
    server_process_name: str | None = "Draw Things"
    sample_interval_seconds: float = 0.5
    max_consecutive_failures: int = 3  # a worker whose server keeps failing retires
    show_progress: bool | None = None  # None: a bar on a terminal, log lines otherwise

    @property
    def heartbeat_seconds(self) -> float:
        # Well inside the lease: several heartbeats may be missed before a claim goes stale.
        return max(0.2, self.lease_seconds / 6)


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
        if self.failed:
            lines.append(f"{len(self.failed)} failed; run the same command again to retry them")
        if self.interrupted:
            lines.append("interrupted; run the same command again to continue")
        return lines


def scan_inputs(folder: Path, suffixes: tuple[str, ...] = (".png",)) -> list[Path]:
    """Every file under ``folder`` with one of ``suffixes``, sorted; hidden files and
    folders (temporary names, .claims) are skipped. Missing folder: empty list.

    A listing can be a minute old on SMB; that only delays discovery (a later pass
    or --watch finds new files), never decides whether a job is done.
    """
    found = []
    for directory, folders, files in os.walk(folder):
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        for name in files:
            if not name.startswith(".") and name.lower().endswith(suffixes):
                found.append(Path(directory) / name)
    return sorted(found)


def output_exists(path: Path) -> bool:
    """Exact-path check (stat), never a listing: SMB listings may be a minute old."""
    return os.path.lexists(path)


def scratch_path(output: Path, worker: str) -> Path:
    """Temporary name beside ``output``: same folder, so the final rename is atomic.
    Leading dot: scanners skip it."""
    return output.with_name(f".{output.name}.{worker}.tmp")


def remove_abandoned_scratch(output: Path, modified_before: float) -> None:
    """Delete temporary files or folders a killed worker left beside ``output``.

    Called once the job's claim is ours: one not modified since ``modified_before``
    (epoch seconds, a lease ago) is nobody's.
    """
    for scratch in output.parent.glob(f".{glob.escape(output.name)}.*.tmp"):
        try:
            if scratch.stat().st_mtime < modified_before:
                remove_quietly(scratch)
        except FileNotFoundError:
            pass


def write_atomically(path: Path, data: bytes, worker: str) -> None:
    """Write ``data`` to ``path`` via a flushed temporary file and ``os.replace``.

    On any error (disk full, share gone) the temporary file is removed and the
    OSError propagates; ``path`` itself is never touched until the data is safe.
    """
    temporary = scratch_path(path, worker)
    try:
        with open(temporary, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        remove_quietly(temporary)
        raise


def remove_quietly(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError:
        pass


def describe_os_error(exc: OSError, path: Path) -> str:
    if exc.errno == errno.ENOSPC:
        return f"disk full writing {path}"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {path}: {exc.strerror}"
    return f"{exc.strerror or exc} writing {path}"


class _Heartbeat:
    """One thread refreshing every claim this process holds."""

    def __init__(self, interval_seconds: float, on_lost: Callable[[str], None]):
        self._interval_seconds = interval_seconds
        self._on_lost = on_lost
        self._held: dict[int, tuple[ClaimStore, object]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def start(self):
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join()

    def hold(self, store: ClaimStore, claim) -> None:
        with self._lock:
            self._held[id(claim)] = (store, claim)

    def drop(self, claim) -> None:
        with self._lock:
            self._held.pop(id(claim), None)

    def release_all(self) -> None:
        with self._lock:
            held, self._held = list(self._held.values()), {}
        for store, claim in held:
            store.release(claim)

    def _loop(self):
        while not self._stop.wait(self._interval_seconds):
            with self._lock:
                held = list(self._held.values())
            for store, claim in held:
                try:
                    alive = store.heartbeat(claim)
                except OSError:
                    alive = True  # the share hiccuped; try again next beat
                if not alive:
                    self.drop(claim)
                    self._on_lost(claim.path.name)


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
        tqdm.write(line, file=sys.stderr)

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

    def failed(self, key: str, error: str) -> None:
        with self.lock:
            self.summary.failed[key] = error
            self._refresh()
        self.log(f"failed: {key}: {error}")

    def _refresh(self):
        self.bar.n = len(self.done_keys)
        self.bar.set_postfix_str(
            f"new={self.summary.made} others={self.summary.by_others} "
            f"failed={len(self.summary.failed)}", refresh=False)
        self.bar.refresh()

    def close(self):
        self.bar.close()


class _Run:
    """State shared by the worker threads of one process."""

    def __init__(self, stage: Stage, settings: EngineSettings, host: str):
        self.stage = stage
        self.settings = settings
        self.host = host
        self.stop = threading.Event()  # no new jobs (Ctrl-C, fatal error)
        self.fatal: DrawpipeError | None = None
        self.lock = threading.Lock()
        self.jobs: list[Job] = []
        self.in_flight: set[str] = set()
        self.live_workers = len(settings.servers)
        self.workers_done = threading.Event()
        self.deferred_logged: set[str] = set()
        self.metrics = MetricsLog(settings.root / "logs", stage.name, self.host,
                                  extra_columns=stage.extra_columns)
        self.summary = Summary(stage.name)
        self.heartbeat = _Heartbeat(settings.heartbeat_seconds, self._claim_lost)
        self.progress: _Progress | None = None

    def _claim_lost(self, name: str):
        self.progress.log(f"warning: the claim {name} was taken over by another worker "
                          "(lease expired); its output will not overwrite theirs")

    def replan(self) -> list[Job]:
        jobs = self.stage.plan()
        with self.lock:
            self.jobs = jobs
        return jobs

    def scan(self) -> list[Job]:
        """Jobs without output yet; updates the progress counts."""
        jobs = self.jobs
        done = {job.key for job in jobs if output_exists(job.output)}
        with self.lock:
            # Ours in flight may already be on disk; they are counted when recorded.
            others = done - self.in_flight
        self.progress.seen_done(others, len(jobs))
        return [job for job in jobs if job.key not in done]


def run_stage(stage: Stage, settings: EngineSettings) -> Summary:
    """Run ``stage`` to completion (or until interrupted); the Summary says how it went.

    Raises UsageError for configuration problems (unwritable root, HTTP 422 ...).
    """
    # Preflight first (e.g. GET / of every server): a configuration error must
    # stop the run before anything is written to the share.
    runners = [stage.make_worker(server) for server in settings.servers]
    host = host_name()
    stores = [
        ClaimStore(settings.root, stage.name, f"{host}-{os.getpid()}-{index}",
                   settings.lease_seconds)
        for index in range(len(settings.servers))
    ]
    try:
        stores[0].prepare()
        run = _Run(stage, settings, host)  # creates logs/
    except OSError as exc:
        raise UsageError(
            f"cannot write to {settings.root} ({exc.strerror or exc}): check that the folder "
            "exists and the share is mounted read-write"
        ) from None
    jobs = run.replan()
    already_done = {job.key for job in jobs if output_exists(job.output)}
    run.summary.total = len(jobs)
    run.summary.already_done = len(already_done)
    run.progress = _Progress(run.summary, already_done, settings.show_progress)

    threads = [
        threading.Thread(target=_worker_main, args=(run, store, runner, server),
                         name=f"worker-{index}", daemon=True)
        for index, (store, runner, server) in enumerate(zip(stores, runners, settings.servers))
    ]
    run.heartbeat.start()
    previous_sigterm = _sigterm_as_interrupt()
    try:
        for thread in threads:
            thread.start()
        _wait_for_workers(run)
    finally:
        run.heartbeat.stop()
        run.heartbeat.release_all()
        signal.signal(signal.SIGTERM, previous_sigterm)
        for store in stores:
            store.close()
        remaining = {job.key for job in run.jobs if not output_exists(job.output)}
        run.summary.remaining = len(remaining)
        run.summary.failed = {key: error for key, error in run.summary.failed.items()
                              if key in remaining}
        run.progress.close()
    if run.fatal is not None:
        raise run.fatal
    return run.summary


def _sigterm_as_interrupt():
    """SIGTERM (e.g. the machine shutting down) stops like Ctrl-C does."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)


def _wait_for_workers(run: _Run) -> None:
    """Wait until every worker has returned; Ctrl-C once: finish in flight, twice: abandon."""
    interrupts = 0
    while True:
        try:
            # An Event, not Thread.join(): a KeyboardInterrupt inside join() can leave a
            # live thread reported as finished, and its image would be lost.
            if run.workers_done.wait(0.2):
                return
        except KeyboardInterrupt:
            interrupts += 1
            run.summary.interrupted = True
            run.stop.set()
            with run.lock:
                busy = bool(run.in_flight)
            if interrupts == 1 and busy:
                run.progress.log("stopping: finishing the images in flight "
                                 "(press Ctrl-C again to abandon them)")
            else:
                # Abandon: nothing partial can be left (outputs appear only by rename);
                # releasing the claims lets any other worker redo those jobs now.
                if busy:
                    run.progress.log("abandoning the images in flight")
                return


def _worker_main(run: _Run, store: ClaimStore, run_job: RunJob, server: str | None) -> None:
    try:
        _worker_loop(run, store, run_job, server)
    except OSError as exc:
        # The share itself failed (unmounted, server gone) outside any one job.
        with run.lock:
            if run.fatal is None:
                run.fatal = UsageError(
                    f"lost the shared folder {run.settings.root} ({exc.strerror or exc}): "
                    "check the share is mounted, then run the same command again")
        run.stop.set()
    finally:
        with run.lock:
            run.live_workers -= 1
            if run.live_workers == 0:
                run.workers_done.set()


def _worker_loop(run: _Run, store: ClaimStore, run_job: RunJob, server: str | None) -> None:
    failed_here: set[str] = set()  # never retried by this worker in this run
    consecutive_failures = 0
    while not run.stop.is_set():
        pending = [job for job in run.scan() if job.key not in failed_here]
        if not pending:
            # Everything is done, or failed here (a re-run retries those).
            if not run.settings.watch:
                return
            run.stop.wait(run.settings.poll_seconds)
            run.replan()
            continue
        worked = False
        deferred_this_pass = False
        for job in pending:
            if run.stop.is_set():
                return
            if output_exists(job.output):
                continue
            with run.lock:
                if job.key in run.in_flight:
                    continue
                # Marked before claiming, so a Ctrl-C never misses a job being started.
                run.in_flight.add(job.key)
            try:
                claim = store.try_claim(job.key)
            except OSError as exc:
                claim = None
                failed_here.add(job.key)
                run.progress.failed(job.key, describe_os_error(exc, store.claim_path(job.key)))
            if claim is None:
                with run.lock:
                    run.in_flight.discard(job.key)
                continue
            run.heartbeat.hold(store, claim)
            try:
                # Won the claim; the job may have been finished since our scan.
                if output_exists(job.output):
                    continue
                # File-server time, like claims: machines' clocks are never compared.
                remove_abandoned_scratch(
                    job.output, store.server_now() - run.settings.lease_seconds)
                worked = True
                outcome = _do_job(run, store.worker, run_job, job, server)
                if outcome == "deferred":
                    deferred_this_pass = True
                    continue
            finally:
                run.heartbeat.drop(claim)
                store.release(claim)
                with run.lock:
                    run.in_flight.discard(job.key)
            if outcome == "done":
                consecutive_failures = 0
            else:
                failed_here.add(job.key)
                # A bad input says nothing about the server; only server failures count.
                if outcome == "failed":
                    consecutive_failures += 1
                if consecutive_failures >= run.settings.max_consecutive_failures:
                    # A server that fails job after job is down or broken: stop sending
                    # it work rather than burn the night failing every image in turn.
                    run.progress.log(f"stopped sending to {server or 'this worker'} after "
                                     f"{consecutive_failures} failed jobs in a row"
                                     + ("; the other workers go on"
                                        if len(run.settings.servers) > 1 else ""))
                    return
        if not worked or deferred_this_pass:
            # Everything left is claimed by others: wait for them to finish, or for their
            # claims to go stale so the next pass takes them over.
            run.stop.wait(run.settings.poll_seconds)


def _do_job(run: _Run, worker: str, run_job: RunJob, job: Job, server: str | None) -> str:
    """Run one claimed job and record it. Returns "done" (output written or found),
    "failed", "bad_input" (failed because of its input) or "deferred" (try again on a
    later pass)."""
    settings = run.settings
    scratch = scratch_path(job.output, worker)
    started = time.monotonic()
    row = {"worker": worker, "stage": run.stage.name, "input": _relative(job.input, settings.root),
           "output": job.key, "seed": job.seed, "attempt": 1}
    error = None
    result = None
    fatal = False
    outcome = "failed"
    sampler = ResourceSampler(settings.sample_interval_seconds,
                              settings.server_process_name if _is_local(server) else None)
    try:
        job.output.parent.mkdir(parents=True, exist_ok=True)
        with sampler:
            result = run_job(job, scratch)
        row["attempt"] = result.attempts
        if output_exists(job.output):
            # Someone finished it while we worked (our lease lapsed): theirs stays.
            remove_quietly(scratch)
            error = None
            status = "duplicate"
        else:
            if result.folder_built:
                os.replace(scratch, job.output)
            else:
                write_atomically(job.output, result.data, worker)
            status = "done"
    except JobDeferred as exc:
        remove_quietly(scratch)
        if job.key not in run.deferred_logged:
            run.deferred_logged.add(job.key)
            run.progress.log(f"waiting: {job.key}: {exc}")
        return "deferred"
    except UsageError as exc:
        remove_quietly(scratch)
        with run.lock:
            if run.fatal is None:
                run.fatal = exc
        run.stop.set()
        fatal = True  # raised once by run_stage, not counted as one job's failure
        status, error = "failed", str(exc)
    except JobFailed as exc:
        remove_quietly(scratch)
        row["attempt"] = getattr(exc, "attempts", 1)
        status, error = "failed", str(exc)
        outcome = "bad_input" if isinstance(exc, BadInput) else "failed"
    except OSError as exc:
        remove_quietly(scratch)
        status, error = "failed", describe_os_error(exc, job.output)
    except Exception as exc:  # a bug in one job must not stop the night's batch
        remove_quietly(scratch)
        status, error = "failed", f"unexpected {type(exc).__name__}: {exc}"
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
        run.metrics.append(row)
    except OSError as exc:
        run.progress.log(f"warning: cannot append to {run.metrics.path}: {exc.strerror}")
    if status == "failed":
        if not fatal:
            run.progress.failed(job.key, error)
        return outcome
    run.progress.made(job.key, f"{status}: {job.key} ({seconds:.1f} s)")
    return "done"


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
