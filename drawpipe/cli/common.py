"""What the three scripts share at the edge: their resolved settings, printing errors, dry runs.

Only cli/ reads the command line, the environment and the config file (options.py
turns the settings table into flags and resolves them; config.py reads profiles);
the rest of the package takes explicit settings.
"""

import argparse
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from drawpipe.cli.options import resolve, resolve_share
from drawpipe.curate.takes import Freshness, Takes
from drawpipe.drawthings.client import ClientSettings
from drawpipe.engine.claims import ClaimStore
from drawpipe.engine.interrupts import STOP_SIGNALS_STATE
from drawpipe.engine.jobs import Job, job_done
from drawpipe.engine.loop import run_stage
from drawpipe.engine.notify import NotifySettings
from drawpipe.engine.progress import Summary
from drawpipe.engine.quarantine import QuarantineSettings
from drawpipe.engine.run import EngineSettings
from drawpipe.errors import DrawpipeError, Interrupted, ShareLost, UsageError
from drawpipe.files import default_cache_dir
from drawpipe.settings import DEFAULT_SERVER, SETTINGS

# The settings ClientSettings takes from the table (its backoff cap is not a setting).
CLIENT_SETTINGS = ("connect_timeout_seconds", "read_timeout_seconds", "retries",
                   "backoff_seconds", "server_process_name")

# The checkout (or, installed, the folder above the package): where the python -m
# commands look for drawpipe.toml, and their default root.
PROJECT_DIR = Path(__file__).resolve().parent.parent.parent


@dataclass(frozen=True)
class CommonSettings:
    """A stage's resolved settings: the table's defaults < profile < command-line flags."""

    root: Path
    servers: tuple[str | None, ...]  # (None,): one worker, no server (segment.py)
    client: ClientSettings
    lease_seconds: float
    poll_seconds: float
    seed_offset: int
    profile: str | None
    watch: bool
    watch_retry_seconds: float
    show_progress: bool | None  # False: --no-progress; None: a bar on a terminal
    dry_run: bool
    values: dict  # every setting of the table by name, as resolved for this command


def resolve_settings(args: argparse.Namespace, project_dir: Path, names, stdin=None,
                     stdout=None) -> CommonSettings:
    """A stage's settings from the share, the profile and the flags. ``names``: the
    settings the command took (its flags, drawpipe/settings.py); one it did not take
    keeps the table's default, and a command without the SERVER settings (segment.py)
    runs one worker with no server and no server process to sample."""
    share = resolve_share(args, project_dir, stdin, stdout)
    values = {name: setting.default for name, setting in SETTINGS.items()}
    values.update(resolve(args, names, share.profile))
    with_servers = "servers" in names
    servers = tuple(values["servers"]) if with_servers else (None,)
    for server in servers if with_servers else ():
        if not server.startswith(("http://", "https://")):
            raise UsageError(f"--server {server}: expected a URL like {DEFAULT_SERVER}")
    if values["max_consecutive_failures"] < 1:
        raise UsageError("--max-consecutive-failures must be 1 or more")
    client = ClientSettings(**{name: values[name] for name in CLIENT_SETTINGS})
    return CommonSettings(
        root=share.root,
        servers=servers,
        client=client,
        lease_seconds=values["lease_seconds"],
        poll_seconds=values["poll_seconds"],
        seed_offset=values["seed_offset"],
        profile=share.profile_name,
        watch=values["watch"],
        watch_retry_seconds=values["watch_retry_seconds"],
        show_progress=False if values["no_progress"] else None,
        dry_run=values["dry_run"],
        values=values,
    )


def script_main(run, parse_arguments, argv, project_dir: Path | None) -> int:
    """A script's main: parse ``argv`` (None: the command line), ``run(args, project_dir)``,
    print a package error as one line; the exit code. ``project_dir``: where
    drawpipe.toml is looked for and the default root (the checkout for the top-level
    scripts, the current folder for installed commands)."""
    return run_main(run, parse_arguments(sys.argv[1:] if argv is None else argv),
                    project_dir or Path.cwd())


def run_main(main, *args) -> int:
    """Call ``main(*args) -> exit code``; print a package error as one line, no traceback.

    SIGINT, SIGTERM and SIGHUP (those not ignored when the script started) all stop it
    the same way: see interrupts.py."""
    STOP_SIGNALS_STATE.install()
    try:
        return main(*args)
    except DrawpipeError as exc:
        _print_quietly(f"error: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        _print_quietly("interrupted")
        return Interrupted.exit_code


def _print_quietly(line: str) -> None:
    try:
        print(line, file=sys.stderr)
    except OSError:
        pass  # the terminal is gone (SIGHUP): nobody to tell


def run_and_summarise(stage, settings: CommonSettings, takes: Takes, out) -> Summary:
    """Run ``stage`` on the engine, keep this Mac's hashes whatever happens (the takes
    policy's cache) and print the summary; the Summary."""
    try:
        summary = run_stage(stage, engine_settings(settings))
    finally:
        takes.save()
    print_summary(summary, out)
    return summary


def engine_settings(settings: CommonSettings) -> EngineSettings:
    values = settings.values
    return EngineSettings(
        root=settings.root,
        servers=settings.servers,
        lease_seconds=settings.lease_seconds,
        poll_seconds=settings.poll_seconds,
        watch=settings.watch,
        watch_retry_seconds=settings.watch_retry_seconds,
        show_progress=settings.show_progress,
        status_seconds=values["status_seconds"],
        quarantine=QuarantineSettings(
            after_failures=values["max_consecutive_failures"],
            after_seconds=values["max_failing_seconds"],
            probe_seconds=values["probe_seconds"],
            retire_after_seconds=values["retire_after_seconds"]),
        notify=notify_settings(values),
    )


def notify_settings(values: dict) -> NotifySettings:
    """--notify URL (http or https), --notify-format, --notify-desktop; UsageError for a
    URL that cannot be one."""
    urls = tuple(values["notify_urls"])
    for url in urls:
        if not url.startswith(("http://", "https://")) or len(url.split("://", 1)[1]) == 0:
            raise UsageError(f"--notify {url}: expected an http:// or https:// URL (an ntfy "
                             "topic, a Slack or Discord incoming webhook, any JSON receiver)")
    return NotifySettings(urls=urls, format=values["notify_format"],
                          desktop=values["notify_desktop"])


@contextmanager
def share_errors(root: Path):
    """Outside the engine (dry runs, a first look): an OSError reading the share means
    the share failed; say so in one line (errors.ShareLost)."""
    try:
        yield
    except OSError as exc:
        raise ShareLost(root, exc.strerror or str(exc)) from None


def warning_printer():
    """A ``warn(line)`` printing each distinct warning once, above any progress bar."""
    seen = set()

    def warn(line: str) -> None:
        if line not in seen:
            seen.add(line)
            tqdm.write(f"warning: {line}", file=sys.stderr)

    return warn


def notice_printer():
    """A ``notice(line)`` printing a line above any progress bar."""
    def notice(line: str) -> None:
        tqdm.write(line, file=sys.stderr)

    return notice


def local_takes(root: Path) -> Takes:
    """The takes policy (curate/takes.py) for ``root``, with this Mac's hash cache in the
    local cache folder (never the share)."""
    return Takes(root, Freshness(default_cache_dir(os.environ)))


def print_rejected(rejected: list[str], out) -> None:
    """Inputs left out because their take was rejected in review."""
    if rejected:
        print(f"{len(rejected)} image(s) rejected in review left out (generate.py makes their "
              "next take)", file=out)


def print_summary(summary, out) -> None:
    for line in summary.lines():
        print(line, file=out)


def check_positive(value: int, what: str) -> None:
    if value < 1:
        raise UsageError(f"{what} must be a positive integer, got {value}")


# --------------------------------------------------------------------------- dry runs


def job_states(root: Path, stage, jobs: list[Job], lease_seconds: float) -> list[str]:
    """For --dry-run: "done", "to do" (its output is missing, or stale: rejected, or
    made from an input that changed since), or "claimed by <worker> (<age> s ago)"."""
    store = ClaimStore(root, stage.name, "dry-run", lease_seconds, read_only=True)
    states = []
    with share_errors(root):
        for job in jobs:
            states.append(_job_state(store, stage, job))
    return states


def _job_state(store: ClaimStore, stage, job: Job) -> str:
    if job_done(stage, job):
        return "done"
    holder = store.holder(job.key)
    if holder is None:
        return "to do"
    stale = ", stale: will be taken over" if holder["stale"] else ""
    return (f"claimed by {holder.get('worker', '?')} "
            f"({holder['age_seconds']:.0f} s ago{stale})")


def print_plan(groups: list, verb: str, claimed_word: str, out) -> tuple[int, int]:
    """For --dry-run: ``groups`` [(label or None, jobs, states)]. Prints, per labelled
    group, "  <label>: N to <verb>, D already done[, C <claimed_word>]", then each
    claimed job with who holds it; returns (to do, claimed included; done)."""
    total_to_do = total_done = 0
    for label, jobs, states in groups:
        done = states.count("done")
        to_do = states.count("to do")
        claimed = len(states) - done - to_do
        total_to_do += to_do + claimed
        total_done += done
        if label is not None:
            print(f"  {label}: {to_do} to {verb}, {done} already done"
                  + (f", {claimed} {claimed_word}" if claimed else ""), file=out)
        for job, state in zip(jobs, states):
            if state.startswith("claimed"):
                print(f"    {job.key}: {state}" if label is not None else f"  {job.key}: {state}",
                      file=out)
    return total_to_do, total_done
