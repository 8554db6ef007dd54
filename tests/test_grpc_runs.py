"""The scripts with ``--server grpc://`` and ``grpcs://``, beside ``http://`` in one run: real
script processes against the gRPC simulator (grpcio on loopback) and the HTTP simulator.
The transport itself (tensors, the request, the client's errors) is tests/test_grpc.py's."""

import csv
import fcntl
import io
import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import numpy as np
import psutil
from conftest import (FAST_RETRY_ARGS, PROJECT_DIR, png_files, run_script, script_command,
                      start_script, wait_for)
from PIL import Image
from test_upscale import small_recipe  # the bundled recipe declaring 512 px, for 256 px inputs

from drawpipe.drawthings.grpc_simulator import GrpcSimulator
from drawpipe.drawthings.signposts import PHASE_COLUMNS
from drawpipe.drawthings.simulator import Simulator
from drawpipe.png import read_text_chunks

# Small images keep the tensors (fpzip, both ways) cheap: 256 px generated, 512 px upscaled.
SMALL = ["--set", "width=256", "--set", "height=256", "--set", "hires_fix=false",
         "--set", "steps=6"]
IMAGE = "GENERATIONS/Peru/family/Peru_family_1.png"
TEMPLATE = PROJECT_DIR / "drawpipe/bundled/payloads/txt2img.json"


def generate(share: Path, *args, **kwargs):
    return run_script("generate.py", "--root", share, *FAST_RETRY_ARGS, "--poll-seconds", "0.1",
                      *args, **kwargs)


def upscale(share: Path, *args, **kwargs):
    return run_script("upscale.py", "--root", share, *FAST_RETRY_ARGS, "--poll-seconds", "0.1",
                      *args, **kwargs)


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def log_rows(share: Path, stage: str) -> list[dict]:
    rows = []
    for path in sorted((share / "logs").glob(f"{stage}-*.csv")):
        rows += list(csv.DictReader(io.StringIO(path.read_text())))
    return rows


def generations(simulator: GrpcSimulator) -> list[dict]:
    return [r for r in simulator.requests if r["method"] == "GenerateImage"]


def last_line(result) -> str:
    return result.stderr.strip().splitlines()[-1]


def leftovers(share: Path) -> list[str]:
    """Scratch files and claims: none may stay."""
    found = list(share.rglob(".*.tmp"))
    if (share / ".claims").exists():
        found += [p for p in (share / ".claims").rglob("*.claim")]
    return sorted(p.relative_to(share).as_posix() for p in found)


# --------------------------------------------------------------------------- end to end


def test_generate_and_upscale_over_grpc_and_http_in_one_run_give_the_same_pixels(share, tmp_path):
    """One worker per server, one server of each transport; the same pixels as a run on
    HTTP alone, file by file; the gRPC jobs log the seconds per stage of their requests."""
    recipe = small_recipe(tmp_path)
    alone = tmp_path / "http-alone"
    alone.mkdir()
    with Simulator(latency_seconds=1.0) as http, GrpcSimulator(latency_seconds=0.3) as grpc_server:
        both = ("--server", http.url, "--server", grpc_server.url)
        made = generate(share, *both, "--add", "Peru:family:2", *SMALL)
        assert made.returncode == 0, made.stderr
        assert "generate: 2 made, 0 already done" in made.stdout
        upscaled = upscale(share, *both, "--recipe", recipe)
        assert upscaled.returncode == 0, upscaled.stderr
        assert "upscale: 2 made, 0 already done" in upscaled.stdout
        for run, args in ((generate, ("--add", "Peru:family:2", *SMALL)),
                          (upscale, ("--recipe", recipe))):
            result = run(alone, "--server", http.url, *args)
            assert result.returncode == 0, result.stderr
        grpc_calls = generations(grpc_server)
    outputs = png_files(share / "GENERATIONS") + png_files(share / "UPSCALED_IMAGES")
    assert [p.relative_to(share).as_posix() for p in outputs] == [
        "GENERATIONS/Peru/family/Peru_family_1.png", "GENERATIONS/Peru/family/Peru_family_2.png",
        "UPSCALED_IMAGES/Peru/family/Peru_family_1_upscaled.png",
        "UPSCALED_IMAGES/Peru/family/Peru_family_2_upscaled.png"]
    for path in outputs:
        assert np.array_equal(pixels(path), pixels(alone / path.relative_to(share))), path
        assert "drawpipe" in read_text_chunks(path)  # provenance, whichever transport made it
    assert {r["status"] for r in grpc_calls} == {"ok"}
    for stage in ("generate", "upscale"):
        rows = log_rows(share, stage)
        assert {row["server"] for row in rows} == {http.url, grpc_server.url}, stage
        for row in rows:
            timed = [column for column in PHASE_COLUMNS if row[column]]
            if row["server"] == http.url:
                assert timed == []  # HTTP tells nothing of the kind
            else:
                assert {"text_encoding_seconds", "sampling_seconds", "decoding_seconds",
                        "transfer_seconds"} <= set(timed)
                assert float(row["sampling_seconds"]) > 0
    report = subprocess.run([sys.executable, "-m", "drawpipe.report", "--root", str(share),
                             "--html"],
                            capture_output=True, text=True, cwd=PROJECT_DIR, timeout=120)
    assert report.returncode == 0, report.stderr
    assert report.stdout.count("where the time went on gRPC servers") == 2
    assert "host       images  text encoding" in report.stdout
    page = (share / "report" / "index.html").read_text()  # the same tables on the page
    assert page.count("where the time went on gRPC servers") == 2
    assert "<th>host</th><th>images</th><th>text encoding</th>" in page


def test_a_file_a_grpc_server_lacks_stops_the_run_before_anything_is_sent(share, tmp_path):
    recipe = small_recipe(tmp_path)
    with Simulator() as http, \
            GrpcSimulator(missing_files=["sd_xl_refiner_1.0_f16.ckpt",
                                         "4x_ultrasharp_f16.ckpt"]) as grpc_server:
        made = generate(share, "--server", http.url, "--server", grpc_server.url,
                        "--add", "Peru:family:2")
        upscaled = upscale(share, "--server", grpc_server.url, "--recipe", recipe)
        sent_http = [r for r in http.requests if r["method"] == "POST"]
        sent_grpc = generations(grpc_server)
        asked = [r for r in grpc_server.requests if r["method"] == "FilesExist"]
    assert made.returncode == 2, made.stderr
    assert last_line(made) == (
        f"error: {grpc_server.url} has no refiner file sd_xl_refiner_1.0_f16.ckpt, which "
        f"{TEMPLATE} names: download it in Draw Things, or put it in gRPCServerCLI's models "
        "folder; nothing was sent")
    assert upscaled.returncode == 2, upscaled.stderr
    assert last_line(upscaled) == (
        f"error: {grpc_server.url} has no upscaler file 4x_ultrasharp_f16.ckpt, which {recipe}: "
        "step 1 (upscale 2x) names: download it in Draw Things, or put it in gRPCServerCLI's "
        "models folder; nothing was sent")
    assert "Traceback" not in made.stderr + upscaled.stderr
    assert sent_http == [] and sent_grpc == []  # not even the HTTP server's worker began
    assert len(asked) == 2 and "sd_xl_base_1.0_f16.ckpt" in asked[0]["files"]
    assert png_files(share / "GENERATIONS") == [] and leftovers(share) == []


# --------------------------------------------------------------------------- progress


def run_on_a_terminal(args: list, timeout_seconds: float = 120) -> tuple[int, str, str]:
    """A script with its stderr on a pseudo-terminal 250 columns wide (so it draws its
    progress bar, as on a user's terminal): (exit code, stdout, what the terminal got)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 250, 0, 0))
    process = subprocess.Popen(script_command(*args), stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=slave, cwd=PROJECT_DIR)
    os.close(slave)
    terminal = bytearray()
    deadline = time.monotonic() + timeout_seconds
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the script closed its end
                    break
                if not chunk:
                    break
                terminal += chunk
            elif process.poll() is not None:
                break
        out = process.communicate(timeout=30)[0].decode()
    finally:
        os.close(master)
    return process.returncode, out, terminal.decode(errors="replace")


def test_each_images_step_reaches_the_progress_bar(share):
    with GrpcSimulator(latency_seconds=1.5) as grpc_server:
        code, out, terminal = run_on_a_terminal(
            ["generate.py", "--root", share, "--server", grpc_server.url, "--add", "Peru:family:1",
             *SMALL[:-2], "--set", "steps=8"])
    assert code == 0, terminal
    assert "generate: 1 made" in out
    # The bar, redrawn as the server streams: which image, which stage, step k of N.
    shown = [f"Peru_family_1.png: sampling {k}/8" for k in range(9)]
    assert all(line in terminal for line in shown), terminal[-2000:]
    assert "Peru_family_1.png: text encoded" in terminal
    assert "Peru_family_1.png: image decoded" in terminal
    assert "Traceback" not in terminal


def test_an_upscale_steps_progress_names_the_recipe_step(share, tmp_path):
    recipe = small_recipe(tmp_path)
    path = share / IMAGE
    path.parent.mkdir(parents=True)
    with GrpcSimulator(latency_seconds=1.0) as grpc_server:
        made = generate(share, "--server", grpc_server.url, "--add", "Peru:family:1", *SMALL)
        assert made.returncode == 0, made.stderr
        code, out, terminal = run_on_a_terminal(
            ["upscale.py", "--root", share, "--server", grpc_server.url, "--recipe", recipe])
    assert code == 0, terminal
    assert "Peru_family_1_upscaled.png: step 1 of 2 (upscale 2x): upscaled" in terminal
    assert "Peru_family_1_upscaled.png: step 2 of 2 (refine 2048): sampling 1/" in terminal
    (row,) = log_rows(share, "upscale")
    assert float(row["upscaling_seconds"]) > 0 and float(row["sampling_seconds"]) > 0


# --------------------------------------------------------------------------- cancel


def start_stopped_at_first_progress(share: Path, server_url: str, *args) -> subprocess.Popen:
    """generate.py that stops itself (SIGSTOP, engine/faults.py) the first time its
    request in flight reports progress: the call is open on the server."""
    process = start_script("generate.py", "--root", share, "--server", server_url,
                           "--no-progress", "--poll-seconds", "0.1", "--add", "Peru:family:1",
                           *SMALL, *args, env={"DRAWPIPE_STOP_AT": "activity"})
    wait_for(lambda: psutil.Process(process.pid).status() == psutil.STATUS_STOPPED
             or process.poll() is not None, timeout_seconds=60)
    assert process.poll() is None, process.communicate()
    return process


def test_a_second_ctrl_c_cancels_the_request_on_the_grpc_server(share):
    with GrpcSimulator(latency_seconds=60) as grpc_server:
        worker = start_stopped_at_first_progress(share, grpc_server.url)
        worker.send_signal(signal.SIGCONT)
        woken = time.monotonic()
        for _ in range(2):
            time.sleep(0.3)
            worker.send_signal(signal.SIGINT)
        out, err = worker.communicate(timeout=60)
        (call,) = wait_for(lambda: generations(grpc_server))
    assert worker.returncode == 130, err
    assert time.monotonic() - woken < 30  # not the 60 s the image takes
    assert ("abandoning the images in flight; 1 request(s) cancelled, so their servers stop "
            "drawing them") in err and "Traceback" not in err
    assert call["status"] == "cancelled" and call["cancelled_at"].startswith("sampling")
    assert call["chunks"] == 0
    assert png_files(share) == [] and leftovers(share) == []
    assert log_rows(share, "generate") == []  # an abandoned image is not logged


def test_a_lease_found_lost_cancels_the_request_on_the_grpc_server(share):
    """The sleeper's lease lapses while its request is open; another worker takes the job
    over and makes the image; woken, the sleeper's heartbeat finds the claim lost and
    cancels the call at once: no second image is drawn to the end, nothing is written."""
    lease = ["--lease-seconds", "2"]
    with GrpcSimulator(latency_seconds=60) as sleepers, Simulator() as takers:
        sleeper = start_stopped_at_first_progress(share, sleepers.url, *lease,
                                                  "--set", "mask_blur=1")
        taker = generate(share, "--server", takers.url, *lease, "--add", "Peru:family:1",
                         *SMALL, "--set", "mask_blur=2")
        assert taker.returncode == 0 and "generate: 1 made" in taker.stdout, taker.stderr
        theirs = (share / IMAGE).read_bytes()
        sleeper.send_signal(signal.SIGCONT)
        woken = time.monotonic()
        out, err = sleeper.communicate(timeout=60)
        (call,) = wait_for(lambda: generations(sleepers))
    assert sleeper.returncode == 0, err
    assert time.monotonic() - woken < 30  # cancelled, not drawn to the end (60 s)
    assert call["status"] == "cancelled" and call["chunks"] == 0
    assert (share / IMAGE).read_bytes() == theirs
    assert json.loads(read_text_chunks(share / IMAGE)["drawpipe"])["request"]["mask_blur"] == 2
    assert ("its request was cancelled, so the server stops drawing it") in err
    assert f"duplicate: {IMAGE}: another worker had it" in err
    assert "0 made, 0 already done, 1 made by other workers" in out
    rows = log_rows(share, "generate")  # the taker's, then the sleeper's: its request was sent
    assert [(row["status"], row["attempt"]) for row in rows] == [("done", "1"), ("duplicate", "1")]
    assert leftovers(share) == []


# --------------------------------------------------------------------------- bad input


def test_tls_and_the_shared_secret_through_the_scripts(share, tmp_path):
    """grpcs:// with the server's certificate and the secret from an environment
    variable; each thing missing or wrong is one line and exit 2 before any job."""
    variable = "DRAWPIPE_TEST_DT_SECRET"
    with GrpcSimulator(tls=True, shared_secret="s3cret-value") as grpc_server:
        url, trust = grpc_server.url, ["--certificate", grpc_server.certificate_path]
        cases = [
            ([], {}, f"error: {url}: its TLS certificate is not one Draw Things' root certificate "
                     "signed for the name \"localhost\": give the certificate it serves (or its "
                     "root) to trust instead"),
            (trust, {}, f"error: {url} needs a shared secret: put the one it was started with "
                        "(gRPCServerCLI --shared-secret, or the app's API Server settings) in an "
                        "environment variable and name it with --shared-secret-env NAME (or "
                        "shared_secret_env in the profile)"),
            (trust + ["--shared-secret-env", variable], {variable: "wrong"},
             f"error: {url} refused the shared secret from the environment variable {variable}: "
             "set it to the one the server was started with"),
            (trust + ["--shared-secret-env", variable], {},
             f"error: the environment variable {variable} is not set: export {variable}=SECRET "
             "(the secret the server was started with: gRPCServerCLI --shared-secret, or the "
             "app's API Server settings)"),
            (["--certificate", tmp_path / "none.pem"], {},
             f"error: --certificate {tmp_path / 'none.pem'}: no such file (the certificate, PEM, "
             "that grpcs:// servers are to be trusted by)"),
        ]
        for args, env, message in cases:
            result = generate(share, "--server", url, "--add", "Peru:family:1", *SMALL, *args,
                              env={variable: "", **env})
            assert (result.returncode, last_line(result)) == (2, message), result.stderr
        made = generate(share, "--server", url, "--add", "Peru:family:1", *SMALL, *trust,
                        "--shared-secret-env", variable, env={variable: "s3cret-value"})
        calls = generations(grpc_server)
    assert made.returncode == 0, made.stderr
    assert [call["status"] for call in calls] == ["ok"]  # nothing before the right settings
    everything = made.stdout + made.stderr + (share / "logs").joinpath(
        os.listdir(share / "logs")[0]).read_text() + json.dumps(read_text_chunks(share / IMAGE))
    assert "s3cret-value" not in everything


def test_a_secret_in_the_profile_is_refused_and_a_variable_named_there_is_read(share, tmp_path):
    config = tmp_path / "drawpipe.toml"
    with GrpcSimulator(shared_secret="from-profile") as grpc_server:
        config.write_text(f'[profiles.gpu]\nservers = ["{grpc_server.url}"]\n'
                          'shared_secret = "from-profile"\n')
        refused = generate(share, "--config", config, "--add", "Peru:family:1", *SMALL)
        config.write_text(f'[profiles.gpu]\nservers = ["{grpc_server.url}"]\n'
                          'shared_secret_env = "DRAWPIPE_TEST_PROFILE_SECRET"\n')
        made = generate(share, "--config", config, "--add", "Peru:family:1", *SMALL,
                        env={"DRAWPIPE_TEST_PROFILE_SECRET": "from-profile"})
    assert (refused.returncode, last_line(refused)) == (2, (
        f"error: {config}: profile 'gpu': 'shared_secret' cannot be kept in the config file, which "
        "others can often read: export the secret in an environment variable and name that "
        "variable with shared_secret_env"))
    assert made.returncode == 0, made.stderr


def test_a_server_of_the_other_protocol_is_named_in_one_line(share):
    with Simulator() as http, GrpcSimulator() as grpc_server, GrpcSimulator(tls=True) as tls:
        http_address = http.url.split("://")[1]
        grpc_address = grpc_server.url.split("://")[1]
        tls_address = tls.url.split("://")[1]
        cases = [
            (f"http://{tls_address}", f"error: http://{tls_address} serves TLS, not plain HTTP: "
             f"a gRPC server over TLS (gRPCServerCLI's default) is --server grpcs://{tls_address}"),
            (f"http://{grpc_address}", f"error: http://{grpc_address} speaks gRPC, not Draw "
             f"Things' HTTP API: use --server grpc://{grpc_address}, or set the app's API Server "
             "to HTTP"),
            (f"grpc://{http_address}", f"error: grpc://{http_address} speaks HTTP/1.1, not gRPC: "
             "it is Draw Things' HTTP API server; use --server "
             f"http://{http_address}, or set the app's API Server to gRPC"),
            (f"grpcs://{grpc_address}", f"error: grpcs://{grpc_address} serves gRPC without TLS: "
             f"use grpc://{grpc_address}"),
            ("ftp://127.0.0.1:7860", "error: --server ftp://127.0.0.1:7860: expected a URL like "
             "http://127.0.0.1:7860 (Draw Things' HTTP API), grpc://HOST:7859 (its gRPC API) or "
             "grpcs://HOST:7859 (gRPC over TLS)"),
        ]
        for server, message in cases:
            result = generate(share, "--server", server, "--add", "Peru:family:1")
            assert (result.returncode, last_line(result)) == (2, message), result.stderr
        # Nothing drawn: the probes ask what each port speaks (a GET /), nothing more.
        assert generations(grpc_server) == [] and generations(tls) == []
        assert [r for r in http.requests if r["method"] == "POST"] == []


def test_transient_answers_are_re_sent_and_a_wrong_size_fails_the_job(share):
    with GrpcSimulator() as grpc_server:
        grpc_server.queue_faults(["empty", "ok", "wrong_size"])
        result = generate(share, "--server", grpc_server.url, "--add", "Peru:family:2", *SMALL)
    assert result.returncode == 1, result.stderr
    assert (f"GENERATIONS/Peru/family/Peru_family_1.png: re-sending (attempt 2 of 3, after 0.05 s) "
            f"because: {grpc_server.url}: the server ended the call without an image") in result.stderr
    assert (f"failed: GENERATIONS/Peru/family/Peru_family_2.png: {grpc_server.url}: the image is "
            "128x128 px, expected 256x256: the server's settings and the request disagree (not "
            "re-sent)") in result.stderr
    assert "generate: 1 made, 0 already done, 0 made by other workers, 1 failed" in result.stdout
    assert [(row["status"], row["attempt"]) for row in log_rows(share, "generate")] == [
        ("done", "2"), ("failed", "1")]


def test_a_recipe_step_gRPC_would_refuse_stops_the_run_naming_the_step(share, tmp_path):
    def fix_step_two_at_256(recipe):
        recipe["steps"][1]["payload"].update(width=256, height=256)
        recipe["output_width"] = recipe["output_height"] = 256

    recipe = small_recipe(tmp_path, fix_step_two_at_256)
    with GrpcSimulator() as grpc_server:
        made = generate(share, "--server", grpc_server.url, "--add", "Peru:family:1", *SMALL)
        assert made.returncode == 0, made.stderr
        result = upscale(share, "--server", grpc_server.url, "--recipe", recipe)
        calls = generations(grpc_server)
    assert result.returncode == 2, result.stderr
    assert last_line(result) == (
        f"error: {grpc_server.url}: Draw Things would refuse step 2 (refine 2048) of recipe.json "
        "(init_images height doesn't match 512 from the parameter 256) — fix the recipe and run "
        "again; nothing was sent")
    assert len(calls) == 2  # the image, then the upscale's step 1; step 2 never sent


def test_a_read_timeout_cancels_the_call_and_it_is_re_sent_at_once(share):
    """Unlike HTTP's (the app may still be drawing: not sent again by this run), a gRPC
    call that stays silent is cancelled, so it is re-sent after the usual backoff."""
    with GrpcSimulator(latency_seconds=30) as grpc_server:
        result = generate(share, "--server", grpc_server.url, "--add", "Peru:family:1", *SMALL,
                          "--read-timeout-seconds", "0.5")
        calls = wait_for(lambda: len(generations(grpc_server)) == 3 and generations(grpc_server))
    assert result.returncode == 1, result.stderr
    timed_out = (f"{grpc_server.url}: no message within 0.5 s; the call was cancelled, so the "
                 "server stopped drawing it")
    assert f"re-sending (attempt 2 of 3, after 0.05 s) because: {timed_out}" in result.stderr
    assert f"failed: {IMAGE}: {timed_out}" in result.stderr
    assert [(call["status"], call["signposts"]) for call in calls] == [("cancelled", [])] * 3
    assert [(row["status"], row["attempt"]) for row in log_rows(share, "generate")] == [
        ("failed", "3")]
