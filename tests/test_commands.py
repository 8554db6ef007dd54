"""The drawpipe command and an installed drawpipe's folders.

``drawpipe COMMAND`` runs every command under one name (cli/commands.py), beside the
checkout's scripts and the ``python -m`` forms. An installed drawpipe (``pip install
--target`` into a folder of its own, run from elsewhere) works on the current folder,
never on the folder it is installed in.
"""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROJECT_DIR

from drawpipe.curate.review import LISTENING
from drawpipe.curate.verdicts import append_verdict
from drawpipe.drawthings.simulator import encode_png, render_scene
from drawpipe.files import file_sha256

IMAGE = "GENERATIONS/Peru/family/Peru_family_1.png"


def files_under(folder: Path) -> set[str]:
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*")}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """drawpipe installed with ``pip install --target`` (no dependencies: they come from
    this environment, behind it on the path), from a copy of the sources."""
    source = tmp_path_factory.mktemp("source")
    shutil.copytree(PROJECT_DIR / "drawpipe", source / "drawpipe", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(PROJECT_DIR / name, source / name)
    target = tmp_path_factory.mktemp("site")
    result = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                             "--no-build-isolation", "--target", str(target), str(source)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return target


@pytest.fixture
def share_with_an_image(share) -> Path:
    path = share / IMAGE
    path.parent.mkdir(parents=True)
    path.write_bytes(encode_png(render_scene(1, "installed", 64, 64)))
    append_verdict(share, "mac-a", IMAGE, file_sha256(path), "accept")
    return share


def run_installed(target: Path, cwd: Path, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *command], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(target)})


def test_an_installed_drawpipe_works_on_the_current_folder_not_its_own(installed,
                                                                       share_with_an_image,
                                                                       tmp_path):
    share = share_with_an_image
    before = files_under(installed)
    probe = run_installed(installed, share, "-c", "import drawpipe; print(drawpipe.__file__)")
    assert probe.stdout.startswith(str(installed)), probe  # the installed copy runs

    report = run_installed(installed, share, "-m", "drawpipe.report", "--html")
    assert report.returncode == 0, report.stderr
    assert "in the folder: 1 generated" in report.stdout
    assert (share / "report" / "index.html").is_file()

    out = tmp_path / "dataset"
    export = run_installed(installed, share, "-m", "drawpipe", "export", "--out", str(out))
    assert export.returncode == 0, export.stderr
    assert (out / IMAGE).is_file()

    review = subprocess.Popen([sys.executable, "-m", "drawpipe.review", "--port", "0"], cwd=share,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(installed)})
    try:
        first = review.stdout.readline()
        assert first.startswith(f"1 generated image in {share}, 1 reviewed"), (
            first + review.stderr.read() if review.poll() is not None else first)
        while not (line := review.stdout.readline()).startswith(LISTENING):
            assert line, review.stderr.read()
    finally:
        review.send_signal(signal.SIGTERM)
        review.communicate(timeout=30)
    assert files_under(installed) == before  # nothing written where drawpipe is installed


def test_the_console_command_runs_each_command(installed, share_with_an_image):
    drawpipe = installed / "bin" / "drawpipe"
    result = subprocess.run([str(drawpipe), "report"], cwd=share_with_an_image,
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(installed)})
    assert result.returncode == 0, result.stderr
    assert "in the folder: 1 generated" in result.stdout


def drawpipe(*arguments, cwd=PROJECT_DIR) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "drawpipe", *map(str, arguments)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_the_drawpipe_command_lists_its_commands_and_refuses_others():
    listing = drawpipe("--help")
    assert listing.returncode == 0
    names = [line.split()[0] for line in listing.stdout.splitlines() if line.startswith("  ")]
    assert names == ["generate", "upscale", "segment", "report", "review", "export", "simulator",
                     "status"]
    typo = drawpipe("repot")
    assert typo.returncode == 2
    assert typo.stderr == ("error: unknown command 'repot' (did you mean 'report'?); commands: "
                           "generate, upscale, segment, report, review, export, simulator, status\n")
    bare = drawpipe()
    assert bare.returncode == 2 and bare.stderr.startswith("usage: drawpipe COMMAND")


def test_a_command_under_drawpipe_is_the_same_command(share):
    help_text = drawpipe("generate", "--help").stdout
    assert help_text.startswith("usage: drawpipe generate ")
    assert "--list-nations" in help_text
    nations = drawpipe("generate", "--list-nations", "--root", share)
    assert nations.returncode == 0 and "Peru" in nations.stdout
    bad = drawpipe("report", "--root", share / "missing")
    assert bad.returncode == 2
    assert bad.stderr.startswith(f"error: root folder {share / 'missing'} does not exist")
    assert drawpipe("upscale", "--help").stdout.startswith("usage: drawpipe upscale ")
    assert drawpipe("review", "--help").stdout.startswith("usage: drawpipe review ")


def test_the_demo_says_when_its_segment_step_was_skipped(share):
    from drawpipe.demo import closing_line

    upscaled = share / "UPSCALED_IMAGES/Peru/family/Peru_family_1_upscaled.png"
    upscaled.parent.mkdir(parents=True)
    upscaled.write_bytes(encode_png(render_scene(1, "demo", 64, 64)))
    line = closing_line(share)
    assert line == (f"done, except the segment step (1 upscaled image(s) without cut-outs: no SAM "
                    f"checkpoint, see above): see {share} (UPSCALED_IMAGES/); once the checkpoint "
                    "is there, run `make demo` again: it makes only the cut-outs")
    folder = share / "CUTOUTS/Peru/family/Peru_family_1_upscaled"
    folder.mkdir(parents=True)
    (folder / "cutouts.json").write_text('{"cutouts": []}')
    assert closing_line(share) == (f"all done: see {share} (UPSCALED_IMAGES/, CUTOUTS/); run "
                                   "`make demo` again and nothing is redone")
