"""The Makefile finds a Python 3.11 or newer on PATH, or stops at once with one line.

macOS's own python3 is 3.9: given it, pip backtracks through gigabytes of torch wheels
for minutes before saying no. Fake interpreters on a PATH of their own stand in for the
Mac's: each logs how it was called, and the one that makes a venv leaves a fake
``.venv/bin/python`` that logs the install it is asked for.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import PROJECT_DIR

MAKE = shutil.which("make")
pytestmark = pytest.mark.skipif(MAKE is None, reason="make is not installed")

FAKE_PYTHON = """#!/bin/sh
echo "{name} $*" >> "{log}"
if [ "$1" = "--version" ]; then echo "Python {version}"; exit 0; fi
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
  "{mkdir}" -p "$3/bin"
  printf '#!/bin/sh\\necho "venv-python $*" >> "{log}"\\n' > "$3/bin/python"
  "{chmod}" +x "$3/bin/python"
  exit 0
fi
exit 1
"""


@pytest.fixture
def checkout(tmp_path) -> Path:
    """The Makefile and what it reads, in a folder of its own."""
    folder = tmp_path / "checkout"
    (folder / "tools").mkdir(parents=True)
    shutil.copy(PROJECT_DIR / "Makefile", folder)
    shutil.copy(PROJECT_DIR / "tools" / "find_python.sh", folder / "tools")
    (folder / "pyproject.toml").write_text("")
    return folder


def fake_path(tmp_path: Path, **versions: str) -> Path:
    """A folder for PATH holding only fake interpreters (name -> the version each reports)
    and touch."""
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    for name, version in versions.items():
        script = folder / name.replace("_", ".")
        script.write_text(FAKE_PYTHON.format(name=script.name, version=version,
                                             log=tmp_path / "calls.log",
                                             mkdir=shutil.which("mkdir"),
                                             chmod=shutil.which("chmod")))
        script.chmod(0o755)
    (folder / "touch").symlink_to(shutil.which("touch"))
    return folder


def make(checkout: Path, path: Path, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([MAKE, *arguments], cwd=checkout, env={"PATH": str(path)},
                          capture_output=True, text=True, timeout=60)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """make's one line, "Makefile:N: *** MESSAGE.  Stop.", as MESSAGE."""
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    match = re.fullmatch(r"Makefile:\d+: \*\*\* (.*)\.  Stop\.", line)
    assert match, line
    return match.group(1)


def calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


GET_PYTHON = ("on a Mac: brew install python@3.12, or the installer from "
              "https://www.python.org/downloads/macos/, then run make again")


def test_an_old_python3_stops_make_at_once_with_one_line(checkout, tmp_path):
    result = make(checkout, fake_path(tmp_path, python3="3.9.6"), "install")
    assert one_line_error(result) == (
        "drawpipe needs Python 3.11 or newer; tried python3.13 python3.12 python3.11 python3 "
        f"(python3 is 3.9.6); {GET_PYTHON}")
    assert calls(tmp_path) == ["python3 --version"]  # asked its version, nothing else
    assert not (checkout / ".venv").exists()


def test_a_newer_python_on_path_is_chosen_over_an_old_python3(checkout, tmp_path):
    result = make(checkout, fake_path(tmp_path, python3="3.9.6", python3_12="3.12.3"),
                  "install")
    assert result.returncode == 0, result.stderr
    assert calls(tmp_path) == [
        "python3.12 --version",
        "python3.12 -m venv .venv",
        # make demo's environment: what the demo and the scripts need, not the tests'
        "venv-python -m pip install --quiet -e .[segment,report,curate,energy,grpc]",
    ]


def test_python_named_on_the_command_line_is_checked_too(checkout, tmp_path):
    path = fake_path(tmp_path, python3_9="3.9.6", python3_12="3.12.3")
    result = make(checkout, path, "install", "PYTHON=python3.9")
    assert one_line_error(result) == (
        f"drawpipe needs Python 3.11 or newer; tried python3.9 (python3.9 is 3.9.6); {GET_PYTHON}")
    assert not (checkout / ".venv").exists()
    result = make(checkout, path, "install", "PYTHON=python3.11")  # not on PATH
    assert one_line_error(result) == (
        f"drawpipe needs Python 3.11 or newer; tried python3.11 (not on PATH); {GET_PYTHON}")
