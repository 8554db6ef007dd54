"""``make demo``: the whole pipeline on the built-in simulator, end to end.

Starts ``python -m drawpipe.simulator`` on a free loopback port, then runs the
scripts exactly as a user would, into ``demo/`` in the current folder (the
checkout, under make): generate.py (a small queue), upscale.py (creative upscale to
2048 px) and segment.py (SAM cut-outs, when a SAM checkpoint is at hand), then the
report with its gallery (demo/report/index.html). Without the checkout's scripts
(an installed drawpipe) it runs ``python -m drawpipe generate`` and so on.

``--transport grpc`` (``make demo DEMO_TRANSPORT=grpc``) runs generate.py and upscale.py
against the gRPC simulator instead (``python -m drawpipe.simulator --grpc``, TLS with its
own certificate and a shared secret, as gRPCServerCLI serves by default): the same
images, with each request's stages in the logs and the report.
"""

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from drawpipe.drawthings.simulator import start_process, stop_process
from drawpipe.inventory import scan_inventory
from drawpipe.layout import IMAGE_FOLDERS, LOGS_FOLDER, REPORT_FOLDER

CHECKOUT = Path(__file__).resolve().parent.parent  # generate.py & co. when a checkout
DEMO_FOLDER = "demo"
DEMO_QUEUE = ("France:family:2", "Japan:working:2", "Kenya:family:1")
SIMULATED_LATENCY_SECONDS = "0.05"
# The demo's gRPC simulator wants this secret; the scripts read it from the variable.
SECRET_VARIABLE = "DRAWPIPE_DEMO_SECRET"
DEMO_SECRET = "demo-secret"


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


def start_simulator(transport: str, scratch: Path) -> tuple[subprocess.Popen, list[str]]:
    """(the simulator's process, the scripts' server options) for ``transport``;
    ``scratch``: a folder for the gRPC simulator's certificate."""
    if transport == "grpc":
        from drawpipe.drawthings import grpc_simulator  # grpcio: only for this transport

        os.environ[SECRET_VARIABLE] = DEMO_SECRET  # the scripts inherit it, never see it
        certificate = scratch / "grpc-simulator.pem"
        process, url, _ = grpc_simulator.start_process(
            "--latency", SIMULATED_LATENCY_SECONDS, "--tls", "--certificate-out", certificate,
            "--shared-secret-env", SECRET_VARIABLE)
        print(f"simulated Draw Things gRPC server at {url} (python -m drawpipe.simulator --grpc)")
        return process, ["--server", url, "--certificate", str(certificate),
                         "--shared-secret-env", SECRET_VARIABLE]
    process, url = start_process("--latency", SIMULATED_LATENCY_SECONDS)
    print(f"simulated Draw Things at {url} (python -m drawpipe.simulator)")
    return process, ["--server", url]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m drawpipe.demo",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--transport", choices=("http", "grpc"), default="http",
                        help="Draw Things' API the demo drives (default http)")
    arguments = parser.parse_args(argv)
    demo_root = Path.cwd() / DEMO_FOLDER
    demo_root.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="drawpipe-demo-") as scratch:
        code = generate_and_upscale(arguments.transport, demo_root, Path(scratch))
    if code != 0:
        return code
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


def generate_and_upscale(transport: str, demo_root: Path, scratch: Path) -> int:
    """generate.py, then upscale.py, against a simulator of ``transport``; the exit code."""
    simulator, server_options = start_simulator(transport, scratch)
    common = ["--root", str(demo_root), *server_options, "--no-progress"]
    try:
        queue = [arg for spec in DEMO_QUEUE for arg in ("--add", spec)]
        code = run_step("generate: txt2img from the nation x category queue",
                        script("generate.py", *common, *queue))
        if code != 0:
            return code
        return run_step("upscale: creative upscale to 2048 px", script("upscale.py", *common))
    finally:
        stop_process(simulator)


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
