"""The settings table (drawpipe/settings.py) on the command line: flags, and what they resolve to.

    add_setting_arguments(parser, names, **help_values)   one flag per setting, by its kind
    resolve_share(args, project_dir)                      Share: the root and the chosen profile
    resolve(args, names, profile)                         name -> the value that rules

A value is, in this order: the flag the user gave, the chosen profile's value (only
settings a profile may set), the table's default. Flags are added with no default of
their own, so "not given" is always None (False for a switch).
"""

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from drawpipe.cli import config
from drawpipe.errors import UsageError
from drawpipe.settings import SETTINGS, help_text


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


# kind -> the add_argument keywords that read it (besides help and metavar)
_KIND_ARGUMENTS = {
    "folder": {},
    "file": {},
    "text": {},
    "process": {},
    "urls": {"action": "append"},
    "seconds": {"type": _positive_float},
    "count": {"type": _non_negative_int},
    "integer": {"type": int},
    "number": {"type": float},
    "switch": {"action": "store_true"},
    "choice": {},
}


def add_setting_arguments(parser: argparse.ArgumentParser, names, **help_values: str) -> None:
    """A flag for each setting in ``names``, in that order; ``help_values`` fill the
    help's other placeholders (``folder`` for --watch)."""
    for name in names:
        setting = SETTINGS[name]
        keywords = dict(_KIND_ARGUMENTS[setting.kind])
        if setting.metavar:
            keywords["metavar"] = setting.metavar
        if setting.choices:
            keywords["choices"] = setting.choices
        if setting.flag:
            keywords["dest"] = name
        parser.add_argument(setting.option, help=help_text(name, **help_values), **keywords)


@dataclass(frozen=True)
class Share:
    """The folder a command works on and the profile that was chosen."""

    root: Path  # resolved; it exists
    profile_name: str | None
    profile: dict  # the profile's settings; {} without one


def resolve_share(args: argparse.Namespace, project_dir: Path, stdin=None,
                  stdout=None) -> Share:
    """The profile (--profile, the only one, the default, else asked on a terminal) and
    the root (--root, else the profile's, else ``project_dir``); UsageError when the
    root is not a folder."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    path = config.find_config_file(args.config, os.environ.get("DRAWPIPE_CONFIG"), project_dir)
    profiles, default_profile = config.load_profiles(path) if path else ({}, None)

    def ask(names):
        if not stdin.isatty():
            return None
        stdout.write(f"Profiles in {path}:\n")
        return config.ask_profile_on_terminal(names, stdin, stdout)

    profile_name, profile = config.choose_profile(profiles, default_profile, args.profile, ask)
    root_text = resolve(args, ("root",), profile)["root"]
    root = Path(root_text).expanduser() if root_text else project_dir
    if not root.is_dir():
        # Say where the folder came from: a profile's root is fixed in the config file.
        origin = (f" (the root of profile '{profile_name}' in {path})"
                  if args.root is None and root_text else "")
        if root.exists():
            raise UsageError(f"root {root}{origin} is a file, not a folder: name the shared "
                             "folder that holds (or will hold) GENERATIONS/")
        raise UsageError(f"root folder {root}{origin} does not exist (is the share mounted?)")
    return Share(root.resolve(), profile_name, profile)


def resolve(args: argparse.Namespace, names, profile: dict) -> dict:
    """{name: value} for each setting in ``names``: the flag given, else the profile's
    value (settings a profile may set), else the table's default."""
    values = {}
    for name in names:
        setting = SETTINGS[name]
        given = getattr(args, name)
        if given is not None and given is not False:
            values[name] = given
        elif setting.profile and name in profile:
            values[name] = profile[name]
        else:
            values[name] = setting.default
    return values
