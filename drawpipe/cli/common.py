"""What the three scripts share at the edge: common options, profiles, printing errors.

Only this module and the scripts read the command line, the environment and the
config file; the rest of the package takes explicit settings.
"""

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from drawpipe.cli import config
from drawpipe.drawthings.api import DEFAULT_PORT
from drawpipe.errors import DrawpipeError, Interrupted, UsageError
from drawpipe.engine.interrupts import STOP_SIGNALS_STATE
from drawpipe.drawthings.client import ClientSettings

DEFAULT_SERVER = f"http://127.0.0.1:{DEFAULT_PORT}"


@dataclass(frozen=True)
class CommonSettings:
    """The resolved settings: built-in defaults < profile < command-line flags."""

    root: Path
    servers: tuple[str, ...]
    client: ClientSettings
    lease_seconds: float
    poll_seconds: float
    server_process_name: str | None
    seed_offset: int
    profile: str | None


def add_common_arguments(parser: argparse.ArgumentParser, server_options: bool = True) -> None:
    """Options every script takes; ``server_options``: also those about Draw Things servers."""
    parser.add_argument("--root", metavar="FOLDER",
                        help="the (shared) folder holding GENERATIONS/, UPSCALED_IMAGES/, "
                             "CUTOUTS/, logs/ (default: the project folder)")
    parser.add_argument("--profile", metavar="NAME", help="a [profiles.NAME] of drawpipe.toml")
    parser.add_argument("--config", metavar="FILE",
                        help="config file (default: $DRAWPIPE_CONFIG, else drawpipe.toml "
                             "in the project folder)")
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
    )
    return CommonSettings(
        root=root.resolve(),
        servers=servers,
        client=client,
        lease_seconds=pick(args.lease_seconds, "lease_seconds", 120.0),
        poll_seconds=pick(args.poll_seconds, "poll_seconds", 5.0),
        server_process_name=pick(flag("server_process_name"), "server_process_name", "Draw Things"),
        seed_offset=pick(getattr(args, "seed_offset", None), "seed_offset", 0),
        profile=profile_name,
    )


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
