"""``drawpipe.toml``: named profiles, one per machine or setup.

Replaces the first version's hard-coded "MacBook/MacMini" folder paths::

    default_profile = "studio"          # optional

    [profiles.studio]
    root = "~/Shared/dataset"            # the shared folder holding GENERATIONS/ etc.
    servers = ["http://127.0.0.1:7860"]  # one worker per server
    read_timeout_seconds = 1800
    server_process_name = "Draw Things"
    shared_secret_env = "DRAW_THINGS_SECRET"  # gRPC servers: the variable holding the secret

Found at ``--config FILE``, else ``$DRAWPIPE_CONFIG``, else ``drawpipe.toml`` in the
project folder (the checkout for its own scripts, the current folder for every other
form: cli/common.py script_main). Command-line flags override the chosen profile. Which settings a
profile may hold, and of what kind: drawpipe/settings.py (``profile=True``).
"""

import difflib
import tomllib
from pathlib import Path

from drawpipe.errors import InputFileError, UsageError
from drawpipe.settings import PROFILE_SETTINGS as PROFILE_NAMES
from drawpipe.settings import SETTINGS

CONFIG_FILE_NAME = "drawpipe.toml"

# A profile value's kind (drawpipe/settings.py) -> (accepted Python types, what to tell the user)
_PROFILE_KINDS = {
    "folder": ((str,), "a folder path"),
    "file": ((str,), "a file path"),
    "text": ((str,), "text"),
    "urls": ((list,), "a list of URLs"),
    "seconds": ((int, float), "a number of seconds"),
    "count": ((int,), "a whole number"),
    "integer": ((int,), "a whole number"),
    "number": ((int, float), "a number"),
    "process": ((str,), "a process name"),
    "choice": ((str,), "one of"),  # the setting's choices follow
}
# Keys a profile must not hold, and why (the file is often readable by everyone, copied
# from Mac to Mac, kept in git).
REFUSED_KEYS = {
    "shared_secret": "cannot be kept in the config file, which others can often read: export "
                     "the secret in an environment variable and name that variable with "
                     "shared_secret_env",
}
# setting -> (accepted Python types, what to tell the user), for every setting a profile may set
PROFILE_SETTINGS: dict[str, tuple[tuple[type, ...], str]] = {
    name: _PROFILE_KINDS[SETTINGS[name].kind] for name in PROFILE_NAMES}


def find_config_file(explicit: str | None, environment_value: str | None,
                     project_dir: Path) -> Path | None:
    """The config file to read, or None when there is none (profiles are optional)."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise UsageError(f"{explicit}: no such config file")
        return path
    if environment_value:
        path = Path(environment_value).expanduser()
        if not path.is_file():
            raise UsageError(f"{environment_value}: no such config file (from $DRAWPIPE_CONFIG)")
        return path
    path = project_dir / CONFIG_FILE_NAME
    return path if path.is_file() else None


def load_profiles(path: Path) -> tuple[dict[str, dict], str | None]:
    """({profile name: settings}, default profile name or None), validated."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise InputFileError(f"{path}: invalid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(f"{path}: cannot read it ({exc})") from None
    unknown_top = sorted(set(data) - {"profiles", "default_profile"})
    if unknown_top:
        raise InputFileError(
            f"{path}: unknown entry '{unknown_top[0]}' (expected [profiles.NAME] tables "
            "and an optional default_profile)"
        )
    profiles = data.get("profiles", {})
    if not isinstance(profiles, dict):
        raise InputFileError(f"{path}: 'profiles' must be tables like [profiles.studio]")
    for name, settings in profiles.items():
        _check_profile(path, name, settings)
    default = data.get("default_profile")
    if default is not None and default not in profiles:
        raise InputFileError(f"{path}: default_profile '{default}' is not a [profiles.{default}] table")
    return profiles, default


def _check_profile(path: Path, name: str, settings) -> None:
    where = f"{path}: profile '{name}'"
    if not isinstance(settings, dict):
        raise InputFileError(f"{where} must be a table")
    for key, value in settings.items():
        if key in REFUSED_KEYS:
            raise InputFileError(f"{where}: '{key}' {REFUSED_KEYS[key]}")
        if key not in PROFILE_SETTINGS:
            close = difflib.get_close_matches(key, PROFILE_SETTINGS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise InputFileError(f"{where}: unknown setting '{key}'{hint}")
        types, description = PROFILE_SETTINGS[key]
        choices = SETTINGS[key].choices
        if choices:
            description = f"{description} {', '.join(choices)}"
        if (not isinstance(value, types) or isinstance(value, bool)
                or (choices and value not in choices)):
            raise InputFileError(f"{where}: '{key}' must be {description}")
        if SETTINGS[key].kind == "urls" and not all(isinstance(item, str) for item in value):
            raise InputFileError(f"{where}: '{key}' must be {description}")
    # (each server is text: the loop above checked every "urls" setting)
    if "servers" in settings and not settings["servers"]:
        raise InputFileError(f"{where}: 'servers' must be a non-empty list of URLs")


def choose_profile(profiles: dict[str, dict], default: str | None, name: str | None,
                   ask) -> tuple[str | None, dict]:
    """Pick the profile: ``name`` if given, the only one, the default, else ``ask``.

    ``ask(names) -> str | None`` asks the user (only when stdin is a terminal);
    None means nobody can be asked, which is a usage error with several profiles.
    """
    if name is not None:
        if name not in profiles:
            known = ", ".join(sorted(profiles)) or "none"
            raise UsageError(f"unknown profile '{name}' (profiles: {known})")
        return name, profiles[name]
    if not profiles:
        return None, {}
    if len(profiles) == 1:
        (only,) = profiles
        return only, profiles[only]
    if default is not None:
        return default, profiles[default]
    chosen = ask(sorted(profiles))
    if chosen is None:
        raise UsageError(
            f"several profiles ({', '.join(sorted(profiles))}): choose one with --profile NAME"
        )
    return chosen, profiles[chosen]


def ask_profile_on_terminal(names: list[str], answers, out) -> str | None:
    """Numbered choice on a terminal; re-asks on a bad answer, None at end of input."""
    for number, name in enumerate(names, 1):
        out.write(f"  {number}. {name}\n")
    while True:
        out.write("Profile (number or name): ")
        out.flush()
        line = answers.readline()
        if not line:
            return None
        answer = line.strip()
        if answer in names:
            return answer
        if answer.isdigit() and 1 <= int(answer) <= len(names):
            return names[int(answer) - 1]
        out.write(f"'{answer}' is not one of the profiles above\n")
