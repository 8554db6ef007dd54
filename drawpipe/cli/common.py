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
from typing import Callable
from urllib.parse import urlsplit

from tqdm import tqdm

from drawpipe.cli.options import resolve, resolve_share
from drawpipe.curate.takes import Freshness, Takes
from drawpipe.drawthings.backends import ServerSettings, check_server_url, transport_of
from drawpipe.drawthings.client import ClientSettings
from drawpipe.drawthings.grpc_client import shared_secret_from_environment
from drawpipe.engine.claims import ClaimStore
from drawpipe.engine.interrupts import STOP_SIGNALS_STATE
from drawpipe.engine.jobs import Job, job_done
from drawpipe.engine.loop import run_stage
from drawpipe.engine.notify import NotifySettings
from drawpipe.engine.progress import Summary
from drawpipe.engine.quarantine import QuarantineSettings
from drawpipe.engine.run import EngineSettings
from drawpipe.errors import DrawpipeError, Interrupted, ShareLost, UsageError
from drawpipe.files import default_cache_dir, output_exists
from drawpipe.settings import SETTINGS

# The settings ClientSettings takes from the table (its backoff cap is not a setting).
CLIENT_SETTINGS = ("connect_timeout_seconds", "read_timeout_seconds", "retries",
                   "backoff_seconds", "server_process_name")

@dataclass(frozen=True)
class CommonSettings:
    """A stage's resolved settings: the table's defaults < profile < command-line flags."""

    root: Path
    servers: tuple[str | None, ...]  # (None,): one worker, no server (segment.py)
    server_settings: ServerSettings  # how the clients talk to the servers, either transport
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
    servers = tuple(map(server_url, values["servers"])) if with_servers else (None,)
    if values["max_consecutive_failures"] < 1:
        raise UsageError("--max-consecutive-failures must be 1 or more")
    client = ClientSettings(**{name: values[name] for name in CLIENT_SETTINGS})
    return CommonSettings(
        root=share.root,
        servers=servers,
        server_settings=server_settings(client, values, servers),
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


def server_url(text: str) -> str:
    """A --server as a run names it: "127.0.0.1:7860" or "mac-mini.local:7860" (no scheme)
    is taken as http://, as Draw Things serves its HTTP API; then backends.check_server_url
    (http(s)://HOST, grpc(s)://HOST[:PORT]); UsageError for anything else."""
    url = text if "://" in text else "http://" + text
    try:
        urlsplit(url).port  # ValueError when the port is not a number
    except ValueError:
        raise UsageError(f"--server {text}: the port is not a number") from None
    return check_server_url(url)


def server_settings(client: ClientSettings, values: dict, servers, environ=os.environ
                    ) -> ServerSettings:
    """The clients' settings; with a gRPC server among ``servers``, its shared secret read
    from the environment variable ``shared_secret_env`` names, and the certificate to
    trust checked (UsageError when either is missing)."""
    if not any(server and transport_of(server) == "grpc" for server in servers):
        return ServerSettings(client)
    secret, source = None, "the shared secret setting"
    name = values["shared_secret_env"]
    if name:
        secret = shared_secret_from_environment(name, environ)
        source = f"the environment variable {name}"
    certificate = values["certificate"]
    if certificate:
        certificate = Path(certificate).expanduser()
        if not certificate.is_file():
            raise UsageError(f"--certificate {certificate}: no such file (the certificate, PEM, "
                             "that grpcs:// servers are to be trusted by)")
    return ServerSettings(client, shared_secret=secret, shared_secret_source=source,
                          certificate_path=certificate or None,
                          tls_server_name=values["tls_server_name"])


def script_main(run, parse_arguments, argv, project_dir: Path | None) -> int:
    """A command's main: parse ``argv`` (None: the command line), ``run(args, project_dir)``,
    print a package error as one line; the exit code. ``project_dir``: where
    drawpipe.toml is looked for and the default root: the checkout for its top-level
    scripts (generate.py, ...), given by them; None for every other form (``drawpipe
    generate``, ``python -m drawpipe.report``, ``drawpipe-upscale``), which take the
    current folder, never the folder the package is installed in."""
    return run_main(run, parse_arguments(sys.argv[1:] if argv is None else argv),
                    project_dir or Path.cwd())


def program_name(python_m_form: str) -> str | None:
    """What a command's usage calls it: None under the drawpipe command (cli/commands.py
    sets sys.argv[0] to "drawpipe report", which argparse then shows), else
    ``python_m_form`` ("python -m drawpipe.report")."""
    return None if Path(sys.argv[0]).name.startswith("drawpipe") else python_m_form


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


def print_watching(folder: Path, settings: CommonSettings, out) -> None:
    """With --watch: one line saying what is watched and how to stop, so that a quiet
    terminal reads as waiting, not as stuck."""
    if settings.watch:
        print(f"watching {folder} for new images (every {settings.poll_seconds:g} s); Ctrl-C "
              "stops, after the images in flight", file=out, flush=True)


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
    """For --dry-run: "done", "to do" (its output is missing), "redo" (its output is
    there but not done: a rejected take, or made from an input that changed since: it is
    set aside to REJECTED/ and made again), or "claimed by <worker> (<age> s ago)"."""
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
        return "redo" if output_exists(job.output) else "to do"
    stale = ", stale: will be taken over" if holder["stale"] else ""
    return (f"claimed by {holder.get('worker', '?')} "
            f"({holder['age_seconds']:.0f} s ago{stale})")


@dataclass(frozen=True)
class PlanWords:
    """How a dry run names its counts: "N to <verb>", "R <redo>", "C <claimed>", and the
    line under each job to redo (``explain_redo(job)``)."""

    verb: str  # "make"
    claimed: str  # "claimed by other workers"
    redo: str  # "to re-make (rejected in review)"
    explain_redo: Callable[[Job], str]


@dataclass
class PlanCounts:
    to_do: int = 0  # missing, to redo and claimed included: what the run would still do
    redo: int = 0
    done: int = 0


def print_plan(groups: list, words: PlanWords, out, rejected: dict | None = None) -> PlanCounts:
    """For --dry-run: ``groups`` [(label or None, jobs, states)]. Prints, per labelled
    group, "  <label>: N to <verb>, R <redo>, D already done[, C <claimed>][, J rejected
    in review ...]", then each job to redo (why and what happens to it) and each claimed
    job with who holds it. ``rejected``: label -> how many inputs of that group are
    takes rejected in review, left out until generate.py makes their next take."""
    counts = PlanCounts()
    for label, jobs, states in groups:
        done = states.count("done")
        to_do = states.count("to do")
        redo = states.count("redo")
        claimed = len(states) - done - to_do - redo
        counts.to_do += to_do + redo + claimed
        counts.redo += redo
        counts.done += done
        waiting = (rejected or {}).get(label, 0)
        indent = "    " if label is not None else "  "
        if label is not None:
            print(f"  {label}: {to_do} to {words.verb}"
                  + (f", {redo} {words.redo}" if redo else "")
                  + f", {done} already done"
                  + (f", {claimed} {words.claimed}" if claimed else "")
                  + (f", {waiting} rejected in review (left out until generate.py makes "
                     "their next take)" if waiting else ""), file=out)
        for job, state in zip(jobs, states):
            if state == "redo":
                print(f"{indent}{job.key}: {words.explain_redo(job)}", file=out)
            elif state.startswith("claimed"):
                print(f"{indent}{job.key}: {state}", file=out)
    return counts


def made_again_from_a_new_input(job: Job) -> str:
    """upscale.py's and segment.py's reason to redo a job (PlanWords.explain_redo)."""
    return ("made from an older input: it will be set aside to REJECTED/ and made again "
            "from the one there now")
