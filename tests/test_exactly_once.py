"""Exactly once, even for a worker that falls asleep: a real worker process stops itself
(SIGSTOP) at an exact point of a job (engine/faults.py: DRAWPIPE_STOP_AT), another worker
takes the job over once the sleeper's lease has lapsed, then the sleeper wakes up
(SIGCONT). Real scripts, real simulators, real files; run them on an SMB share with
pytest's --basetemp (README: Tests)."""

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from conftest import make_old, png_files, run_script, start_script, wait_for

from drawpipe.drawthings.simulator import Simulator, encode_png, render_scene
from drawpipe.engine.claims import ClaimStore
from drawpipe.png import read_text_chunks
from drawpipe.stages.generate import seed_for

LEASE = ["--lease-seconds", "2", "--poll-seconds", "0.1", "--no-progress"]
IMAGE = "GENERATIONS/Peru/family/Peru_family_1.png"
UPSCALED = "UPSCALED_IMAGES/Peru/family/Peru_family_1_upscaled.png"
SMALL_RECIPE_SIDE_PX = 512


def start_sleeper(script: str, share: Path, simulator, point: str, *args):
    """A worker that stops itself at ``point`` of its first job; (process, its tag)."""
    process = start_script(script, "--root", share, "--server", simulator.url, *LEASE, *args,
                           env={"DRAWPIPE_STOP_AT": point})
    wait_for(lambda: psutil.Process(process.pid).status() == psutil.STATUS_STOPPED
             or process.poll() is not None, timeout_seconds=60)
    assert process.poll() is None, process.communicate()
    return process


def wake(process):
    process.send_signal(signal.SIGCONT)
    out, err = process.communicate(timeout=120)
    return out, err


def posts(simulator) -> list[dict]:
    return [r for r in simulator.requests if r["method"] == "POST"]


def tag_of(path: Path) -> object:
    """The mask_blur a worker was given with --set: who made this image."""
    return json.loads(read_text_chunks(path)["drawpipe"])["request"]["mask_blur"]


def leftovers(share: Path) -> list[str]:
    """Scratch files, claims, take-over locks, run markers, clock files: none may stay."""
    found = [p for p in share.rglob(".*.tmp")]
    if (share / ".claims").exists():
        found += [p for p in (share / ".claims").rglob("*") if p.is_file()]
    return sorted(p.relative_to(share).as_posix() for p in found)


def small_recipe(tmp_path: Path) -> Path:
    from conftest import PROJECT_DIR
    recipe = json.loads((PROJECT_DIR / "payloads" / "creative_upscale.json").read_text())
    recipe["output_width"] = recipe["output_height"] = SMALL_RECIPE_SIDE_PX
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe))
    return path


def add_input(share: Path) -> Path:
    path = share / IMAGE
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.test.tmp")
    scratch.write_bytes(encode_png(render_scene(seed_for(path.stem), path.stem, 256, 256)))
    os.replace(scratch, path)
    return path


# --------------------------------------------------------------- publish without replacing


def test_a_sleeper_woken_between_its_last_check_and_the_publish_keeps_the_takers_image(share):
    with Simulator(latency_seconds=0.2) as sleepers, Simulator() as takers:
        sleeper = start_sleeper("generate.py", share, sleepers, "publish",
                                "--add", "Peru:family:1", "--set", "mask_blur=1")
        taker = run_script("generate.py", "--root", share, "--server", takers.url, *LEASE,
                           "--add", "Peru:family:1", "--set", "mask_blur=2")
        assert taker.returncode == 0 and "generate: 1 made" in taker.stdout, taker.stderr
        output = share / IMAGE
        theirs, inode = output.read_bytes(), output.stat().st_ino
        out, err = wake(sleeper)
    assert sleeper.returncode == 0, err
    assert output.read_bytes() == theirs and output.stat().st_ino == inode
    assert tag_of(output) == 2
    assert f"duplicate: {IMAGE}: another worker had it" in err
    assert "generate: 0 made, 0 already done, 1 made by other workers, 0 failed, 0 left of 1" \
        in out
    assert len(posts(sleepers)) == 1  # its image was drawn; it was never published
    assert leftovers(share) == []


def test_an_output_that_appears_between_the_last_check_and_the_publish_is_never_replaced(share):
    """No take-over: another worker's output lands in the very gap before the publish,
    which must refuse to replace it (link, RENAME_NOREPLACE, or a look just before)."""
    with Simulator() as simulator:
        sleeper = start_sleeper("generate.py", share, simulator, "publish",
                                "--add", "Peru:family:1", "--lease-seconds", "60")
        output = share / IMAGE
        output.write_bytes(b"theirs")
        out, err = wake(sleeper)
    assert sleeper.returncode == 0, err
    assert output.read_bytes() == b"theirs"
    assert f"duplicate: {IMAGE}: another worker had it" in err
    assert "0 made, 0 already done, 1 made by other workers" in out
    assert leftovers(share) == []


# --------------------------------------------------------------- no request for a job not ours


def test_a_sleeper_woken_after_a_take_over_sends_nothing(share):
    with Simulator() as sleepers, Simulator() as takers:
        sleeper = start_sleeper("generate.py", share, sleepers, "claimed",
                                "--add", "Peru:family:1", "--set", "mask_blur=1")
        taker = run_script("generate.py", "--root", share, "--server", takers.url, *LEASE,
                           "--add", "Peru:family:1", "--set", "mask_blur=2")
        assert taker.returncode == 0 and "generate: 1 made" in taker.stdout, taker.stderr
        out, err = wake(sleeper)
        sent = posts(sleepers)
    assert sleeper.returncode == 0, err
    assert sent == []
    assert f"duplicate: {IMAGE}: another worker had it" in err and "nothing was sent" in err
    assert "0 made, 0 already done, 1 made by other workers" in out
    assert tag_of(share / IMAGE) == 2 and len(posts(takers)) == 1
    assert leftovers(share) == []


def test_a_sleeper_woken_between_upscale_steps_never_sends_step_two(share, tmp_path):
    add_input(share)
    recipe = small_recipe(tmp_path)
    with Simulator() as sleepers, Simulator() as takers:
        sleeper = start_sleeper("upscale.py", share, sleepers, "request-2", "--recipe", recipe)
        taker = run_script("upscale.py", "--root", share, "--server", takers.url, *LEASE,
                           "--recipe", recipe)
        assert taker.returncode == 0 and "upscale: 1 made" in taker.stdout, taker.stderr
        made = (share / UPSCALED).read_bytes()
        out, err = wake(sleeper)
        sent = [r["init_size"][0] for r in posts(sleepers)]
        taken = [r["init_size"][0] for r in posts(takers)]
    assert sleeper.returncode == 0, err
    assert sent == [256]  # step 1 only: the refine step was never sent
    assert taken == [256, 512]
    assert (share / UPSCALED).read_bytes() == made
    assert f"duplicate: {UPSCALED}: another worker had it" in err
    assert "0 made, 0 already done, 1 made by other workers" in out
    assert leftovers(share) == []


# --------------------------------------------------------------- scratch of the dead


def test_a_worker_killed_after_writing_its_scratch_leaves_nothing_after_the_next_pass(share):
    with Simulator() as simulator:
        dying = start_sleeper("generate.py", share, simulator, "written", "--add", "Peru:family:1")
        scratch = list((share / IMAGE).parent.glob(".*.tmp"))
        assert len(scratch) == 1 and scratch[0].stat().st_size > 1000  # the whole image
        dying.kill()
        dying.wait()
        assert (share / ".claims").exists() and list((share / ".claims").glob(".run-*"))
        result = run_script("generate.py", "--root", share, "--server", simulator.url, *LEASE,
                            "--add", "Peru:family:1")
    assert result.returncode == 0, result.stderr
    assert "generate: 1 made" in result.stdout
    assert [p.relative_to(share).as_posix() for p in png_files(share)] == [IMAGE]
    assert leftovers(share) == []  # its scratch, its claim, its run marker and clock file


def test_a_scratch_file_of_a_live_worker_of_another_host_stays_until_it_is_a_lease_old(share):
    """Only the dead are cleaned up: a recent scratch of a worker that holds no claim and
    whose death cannot be known (another host) is left to its owner."""
    with Simulator() as simulator:
        folder = (share / IMAGE).parent
        folder.mkdir(parents=True)
        alive = folder / ".Peru_family_1.png.otherhost-4242-0.tmp"
        alive.write_bytes(b"being written")
        result = run_script("generate.py", "--root", share, "--server", simulator.url, *LEASE,
                            "--add", "Peru:family:1")
    assert result.returncode == 0, result.stderr
    assert alive.exists()


# --------------------------------------------------------------- a take-over SMB keeps waiting


def on_smb(path: Path) -> bool:
    """Whether ``path`` lies on an SMB mount (the FUSE client smbnetfs, or cifs)."""
    path_text, best = os.path.realpath(path), ("", "")
    with open("/proc/mounts") as mounts:
        for line in mounts:
            source, mount_point, kind = line.split()[:3]
            inside = path_text == mount_point or path_text.startswith(mount_point.rstrip("/") + "/")
            if inside and len(mount_point) > len(best[0]):
                best = (mount_point, f"{source} {kind}")
    return "smbnetfs" in best[1] or "cifs" in best[1]


@contextlib.contextmanager
def kept_from_deletion(path: Path):
    """On an SMB share: ``path`` held open, as by a worker that stalled while its heartbeat
    had its claim open (the server refuses to delete it: EBUSY). On a local disk, where an
    open file can be deleted: chattr +i, which refuses with EPERM, as SMB also may."""
    if on_smb(path):
        with open(path, "rb"):
            yield
        return
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("needs chattr +i (root on a file system with the immutable attribute)")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_a_stale_claim_held_open_is_waited_for_out_loud_then_reported_blocked(share):
    stalled = ClaimStore(share, "generate", "otherhost-77-0", lease_seconds=1)
    stalled.prepare()
    stalled.try_claim(IMAGE)
    claim = stalled.claim_path(IMAGE)
    make_old(claim, 100)
    with Simulator() as simulator, kept_from_deletion(claim):
        started = time.monotonic()
        result = run_script("generate.py", "--root", share, "--server", simulator.url,
                            "--add", "Peru:family:2", "--lease-seconds", "1", "--poll-seconds",
                            "0.1", "--no-progress")
        seconds = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    waiting = [line for line in result.stderr.splitlines() if line.startswith("waiting:")]
    assert len(waiting) == 1  # said once a minute at most, naming whom it waits for
    assert waiting[0].startswith(f"waiting: {IMAGE}: the stale claim of worker otherhost-77-0 "
                                 "(host ")
    assert "is held open on the share (" in waiting[0] and "cannot be taken over" in waiting[0]
    assert 5 <= seconds < 5 + 30  # five leases of trying, then reported, never a silent wait
    assert ("generate: 1 made, 0 already done, 0 made by other workers, 0 failed, 1 left of 2"
            in result.stdout)
    assert f"blocked: {IMAGE}: the stale claim of worker otherhost-77-0" in result.stdout
    assert ("1 blocked by a stale claim someone keeps open; run the same command again once "
            "it is free") in result.stdout
    assert "Traceback" not in result.stderr

    with Simulator() as simulator:  # once the claim is free, the next run takes it over
        again = run_script("generate.py", "--root", share, "--server", simulator.url,
                           "--add", "Peru:family:2", "--lease-seconds", "1", "--no-progress")
    assert again.returncode == 0 and "1 made, 1 already done" in again.stdout, again.stderr
    assert leftovers(share) == [".claims/generate/.clock-otherhost-77-0"]  # not known dead


def test_only_this_machines_dead_runs_lose_their_markers_at_once(share):
    """Two Macs may share a host name: a marker is known dead only when it names this
    host, its process is gone here, and this machine wrote it."""
    from drawpipe.engine.share import ShareGuard, this_machine
    from drawpipe.files import host_name

    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid whose process is gone
    claims = share / ".claims"
    claims.mkdir()
    ours = claims / f".run-{host_name()}-{gone.pid}-0000aaaa"
    ours.write_text(f"{gone.pid} 0 {this_machine()}\n")
    namesake = claims / f".run-{host_name()}-{gone.pid}-0000bbbb"
    namesake.write_text(f"{gone.pid} 0 0123456789ab\n")  # another Mac of the same name
    guard = ShareGuard(share, "test")
    guard.establish()
    assert not ours.exists() and namesake.exists()
    guard.close()
