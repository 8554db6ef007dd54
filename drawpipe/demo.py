"""``make demo``: the whole pipeline on the built-in simulator, end to end.

Starts ``python -m drawpipe.simulator`` on a free loopback port, then runs the
scripts exactly as a user would, into ``demo/`` in the project folder:
generate.py (a small queue), upscale.py (creative upscale to 2048 px) and
segment.py (SAM cut-outs, when a SAM checkpoint is at hand), then the report
with its gallery (demo/report/index.html).
"""

import shlex
import subprocess
import sys
from pathlib import Path

from drawpipe.cli.common import PROJECT_DIR
from drawpipe.drawthings.simulator import start_process, stop_process
from drawpipe.layout import IMAGE_FOLDERS, LOGS_FOLDER, REPORT_FOLDER

DEMO_ROOT = PROJECT_DIR / "demo"
DEMO_QUEUE = ("France:family:2", "Japan:working:2", "Kenya:family:1")
SIMULATED_LATENCY_SECONDS = "0.05"


def run_step(title: str, command: list[str]) -> int:
    shown = " ".join(shlex.quote(part) for part in [Path(command[1]).name, *command[2:]])
    print(f"\n== {title}\n$ python {shown}", flush=True)
    return subprocess.call(command, cwd=PROJECT_DIR)


def script(name: str, *args: str) -> list[str]:
    return [sys.executable, str(PROJECT_DIR / name), *args]


def main() -> int:
    DEMO_ROOT.mkdir(exist_ok=True)
    simulator, url = start_process("--latency", SIMULATED_LATENCY_SECONDS)
    print(f"simulated Draw Things at {url} (python -m drawpipe.simulator)")
    common = ["--root", str(DEMO_ROOT), "--server", url, "--no-progress"]
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
    code = run_step("segment: SAM cut-outs", script("segment.py", "--root", str(DEMO_ROOT),
                                                   "--demo", "--no-progress"))
    if code != 0:
        return code
    code = run_step("report: progress, costs and the gallery",
                    [sys.executable, "-m", "drawpipe.report", "--root", str(DEMO_ROOT), "--html"])
    if code != 0:
        return code
    made = [name + "/" for name in (*IMAGE_FOLDERS, LOGS_FOLDER, REPORT_FOLDER)
            if (DEMO_ROOT / name).is_dir()]
    print(f"\nall done: see {DEMO_ROOT} ({', '.join(made)}); "
          "run `make demo` again and nothing is redone")
    return 0


if __name__ == "__main__":
    sys.exit(main())
