"""``make demo``: the whole pipeline on the built-in simulator, end to end.

Starts ``python -m drawpipe.simulator`` on a free loopback port, then runs the
scripts exactly as a user would, into ``demo/`` in the current folder (the
checkout, under make): generate.py (a small queue), upscale.py (creative upscale to
2048 px) and segment.py (SAM cut-outs, when a SAM checkpoint is at hand), then the
report with its gallery (demo/report/index.html). Without the checkout's scripts
(an installed drawpipe) it runs ``python -m drawpipe generate`` and so on.
"""

import shlex
import subprocess
import sys
from pathlib import Path

from drawpipe.drawthings.simulator import start_process, stop_process
from drawpipe.inventory import scan_inventory
from drawpipe.layout import IMAGE_FOLDERS, LOGS_FOLDER, REPORT_FOLDER

CHECKOUT = Path(__file__).resolve().parent.parent  # generate.py & co. when a checkout
DEMO_FOLDER = "demo"
DEMO_QUEUE = ("France:family:2", "Japan:working:2", "Kenya:family:1")
SIMULATED_LATENCY_SECONDS = "0.05"


def run_step(title: str, command: list[str]) -> int:
    shown = " ".join(shlex.quote(part) for part in [Path(command[1]).name, *command[2:]])
    print(f"\n== {title}\n$ python {shown}", flush=True)
    return subprocess.call(command)


def script(name: str, *args: str) -> list[str]:
    """The checkout's ``name`` (generate.py), else the drawpipe command's form of it."""
    path = CHECKOUT / name
    if path.is_file():
        return [sys.executable, str(path), *args]
    return [sys.executable, "-m", "drawpipe", Path(name).stem, *args]


def main() -> int:
    demo_root = Path.cwd() / DEMO_FOLDER
    demo_root.mkdir(exist_ok=True)
    simulator, url = start_process("--latency", SIMULATED_LATENCY_SECONDS)
    print(f"simulated Draw Things at {url} (python -m drawpipe.simulator)")
    common = ["--root", str(demo_root), "--server", url, "--no-progress"]
    try:
        queue = [arg for spec in DEMO_QUEUE for arg in ("--add", spec)]
        code = run_step("generate: txt2img from the nation x category queue",
                        script("generate.py", *common, *queue))
        if code != 0:
            return code
        code = run_step("upscale: creative upscale to 2048 px", script("upscale.py", *common))
        if code != 0:
            return code
    finally:
        stop_process(simulator)
    code = run_step("segment: SAM cut-outs", script("segment.py", "--root", str(demo_root),
                                                   "--demo", "--no-progress"))
    if code != 0:
        return code
    code = run_step("report: progress, costs and the gallery",
                    [sys.executable, "-m", "drawpipe.report", "--root", str(demo_root), "--html"])
    if code != 0:
        return code
    print("\n" + closing_line(demo_root))
    return 0


def closing_line(demo_root: Path) -> str:
    """What the demo made and what running it again does; says so when segment.py had no
    checkpoint and skipped its step (then a second run does that step)."""
    made = [name + "/" for name in (*IMAGE_FOLDERS, LOGS_FOLDER, REPORT_FOLDER)
            if (demo_root / name).is_dir()]
    inventory = scan_inventory(demo_root)
    not_cut = inventory.count("upscaled") - inventory.count("cutouts_folder")
    if not_cut > 0:
        return (f"done, except the segment step ({not_cut} upscaled image(s) without cut-outs: "
                f"no SAM checkpoint, see above): see {demo_root} ({', '.join(made)}); once the "
                "checkpoint is there, run `make demo` again: it makes only the cut-outs")
    return (f"all done: see {demo_root} ({', '.join(made)}); "
            "run `make demo` again and nothing is redone")


if __name__ == "__main__":
    sys.exit(main())
