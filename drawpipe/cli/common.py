"""What the three scripts share at the edge: common options, profiles, printing errors.

Only this module and the scripts read the command line, the environment and the
config file; the rest of the package takes explicit settings.
"""

import argparse
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from drawpipe.cli import config
from drawpipe.curate.takes import Freshness
from drawpipe.drawthings.api import DEFAULT_PORT
from drawpipe.drawthings.client import ClientSettings
from drawpipe.engine.claims import ClaimStore
from drawpipe.engine.interrupts import STOP_SIGNALS_STATE
from drawpipe.engine.jobs import Job, job_done
from drawpipe.engine.run import EngineSettings
from drawpipe.errors import DrawpipeError, Interrupted, ShareLost, UsageError
from drawpipe.files import default_cache_dir

DEFAULT_SERVER = f"http://127.0.0.1:{DEFAULT_PORT}"


@dataclass(frozen=True)
class CommonSettings:
    """The resolved settings: built-in defaults < profile < command-line flags."""

    root: Path
    servers: tuple[str, ...]
    client: ClientSettings
    lease_seconds: float
    poll_seconds: float
    seed_offset: int
    profile: str | None


def add_share_arguments(parser: argparse.ArgumentParser) -> None:
    """Which folder, and the profile that may name it: every command takes these."""
    parser.add_argument("--root", metavar="FOLDER",
                        help="the (shared) folder holding GENERATIONS/, UPSCALED_IMAGES/, "
                             "CUTOUTS/, logs/ (default: the project folder)")
    parser.add_argument("--profile", metavar="NAME", help="a [profiles.NAME] of drawpipe.toml")
    parser.add_argument("--config", metavar="FILE",
                        help="config file (default: $DRAWPIPE_CONFIG, else drawpipe.toml "
                             "in the project folder)")


def add_common_arguments(parser: argparse.ArgumentParser, server_options: bool = True) -> None:
    """Options every script takes; ``server_options``: also those about Draw Things servers."""
    add_share_arguments(parser)
    parser.add_argument("--lease-seconds", type=_positive_float, metavar="S",
                        help="a claim not refreshed for this long is taken over (default 120)")
    parser.add_argument("--poll-seconds", type=_positive_float, metavar="S",
                        help="wait between passes while others hold the remaining jobs "
                             "(default 5)")
    parser.add_argument("--dry-run", action="store_true",
                        help="show what would be done, what is done, what is claimed; "
                             "contact no server, write nothing")
    parser.add_argument("--no-progress", action="store_true",
                        help="log one line per job instead of a progress bar")
    if server_options:
        add_server_arguments(parser)


def add_watch_arguments(parser: argparse.ArgumentParser, folder: str) -> None:
    """--watch and how it retries failed jobs (upscale.py, segment.py)."""
    parser.add_argument("--watch", action="store_true",
                        help=f"keep polling {folder} for new images until Ctrl-C")
    parser.add_argument("--watch-retry-seconds", type=_positive_float, metavar="S",
                        help="with --watch, a failed job is tried again after S seconds, "
                             "doubling each time up to 30 minutes (default 60)")


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", action="append", metavar="URL", dest="servers",
                        help=f"Draw Things API server; repeat for one worker per server "
                             f"(default: {DEFAULT_SERVER})")
    parser.add_argument("--connect-timeout-seconds", type=_positive_float, metavar="S")
    parser.add_argument("--read-timeout-seconds", type=_positive_float, metavar="S",
                        help="how long one request may take (default 1800)")
    parser.add_argument("--retries", type=_non_negative_int, metavar="N",
                        help="retries of a transient failure before a job fails (default 4)")
    parser.add_argument("--backoff-seconds", type=_positive_float, metavar="S",
                        help="first wait before a retry; doubles each time, capped at 60 "
                             "(default 2)")
    parser.add_argument("--server-process-name", metavar="NAME",
                        help="process whose CPU and RAM are logged when the server is local "
                             "(default 'Draw Things')")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got '{text}'") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got '{text}'")
    return value


def _non_negative_int(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got '{text}'")
    return int(text)


def resolve_settings(args: argparse.Namespace, project_dir: Path, stdin=None,
                     stdout=None) -> CommonSettings:
    """Merge built-in defaults, the chosen profile and the flags the user set."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    path = config.find_config_file(args.config, os.environ.get("DRAWPIPE_CONFIG"), project_dir)
    profiles, default = config.load_profiles(path) if path else ({}, None)

    def ask(names):
        if not stdin.isatty():
            return None
        stdout.write(f"Profiles in {path}:\n")
        return config.ask_profile_on_terminal(names, stdin, stdout)

    profile_name, profile = config.choose_profile(profiles, default, args.profile, ask)

    def pick(flag_value, key, fallback):
        if flag_value is not None:
            return flag_value
        return profile.get(key, fallback)

    def flag(name):
        return getattr(args, name, None)  # segment.py has no server options

    root_text = args.root if args.root is not None else profile.get("root")
    root = Path(root_text).expanduser() if root_text else project_dir
    if not root.is_dir():
        raise UsageError(f"root folder {root} does not exist (is the share mounted?)")
    servers = tuple(flag("servers") or profile.get("servers") or [DEFAULT_SERVER])
    for server in servers:
        if not server.startswith(("http://", "https://")):
            raise UsageError(f"--server {server}: expected a URL like {DEFAULT_SERVER}")
    defaults = ClientSettings()
    client = ClientSettings(
        connect_timeout_seconds=pick(flag("connect_timeout_seconds"), "connect_timeout_seconds",
                                     defaults.connect_timeout_seconds),
        read_timeout_seconds=pick(flag("read_timeout_seconds"), "read_timeout_seconds",
                                  defaults.read_timeout_seconds),
        retries=pick(flag("retries"), "retries", defaults.retries),
        backoff_seconds=pick(flag("backoff_seconds"), "backoff_seconds", defaults.backoff_seconds),
        backoff_cap_seconds=defaults.backoff_cap_seconds,
        server_process_name=pick(flag("server_process_name"), "server_process_name",
                                 defaults.server_process_name),
    )
    return CommonSettings(
        root=root.resolve(),
        servers=servers,
        client=client,
        lease_seconds=pick(args.lease_seconds, "lease_seconds", 120.0),
        poll_seconds=pick(args.poll_seconds, "poll_seconds", 5.0),
        seed_offset=pick(getattr(args, "seed_offset", None), "seed_offset", 0),
        profile=profile_name,
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


def engine_settings(settings: CommonSettings, args, servers=None) -> EngineSettings:
    return EngineSettings(
        root=settings.root,
        servers=tuple(servers if servers is not None else settings.servers),
        lease_seconds=settings.lease_seconds,
        poll_seconds=settings.poll_seconds,
        watch=getattr(args, "watch", False),
        **({"watch_retry_seconds": args.watch_retry_seconds}
           if getattr(args, "watch_retry_seconds", None) is not None else {}),
        show_progress=False if args.no_progress else None,
    )


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


def local_freshness() -> Freshness:
    """This Mac's hash cache for curate/takes.py, in the local cache folder (never the share)."""
    return Freshness(default_cache_dir(os.environ))


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
