"""Claims on a real folder, raced by real processes."""

import contextlib
import json
import os
import subprocess
import sys
import time

import pytest
from conftest import make_old

from drawpipe.engine.claims import ClaimStore

KEY = "GENERATIONS/France/family/France_family_1.png"


def claim_store(root, stage: str, worker: str, lease_seconds: float) -> ClaimStore:
    store = ClaimStore(root, stage, worker, lease_seconds=lease_seconds)
    store.prepare()
    return store


@contextlib.contextmanager
def immutable(path):
    """``path`` refuses unlink, rename and writes, even to root (chattr +i): the closest
    a local disk comes to SMB's "someone has it open" (EPERM)."""
    result = subprocess.run(["chattr", "+i", str(path)], capture_output=True)
    if result.returncode != 0:
        pytest.skip("needs chattr +i (root on a file system with the immutable attribute)")
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def make_stale(store: ClaimStore, key: str, age_seconds: float = 1000) -> None:
    make_old(store.claim_path(key), age_seconds)


def test_one_claim_per_job(tmp_path):
    first = claim_store(tmp_path, "generate", "a", lease_seconds=60)
    second = claim_store(tmp_path, "generate", "b", lease_seconds=60)
    claim = first.try_claim(KEY)
    assert claim is not None
    assert second.try_claim(KEY) is None
    owner = json.loads(claim.path.read_text())
    assert owner["worker"] == "a" and owner["pid"] == os.getpid()
    assert claim.path == tmp_path / ".claims" / "generate" / (KEY + ".claim")
    first.release(claim)
    assert not claim.path.exists()
    assert second.try_claim(KEY) is not None


def test_stale_claim_is_taken_over_and_the_loser_notices(tmp_path):
    crashed = claim_store(tmp_path, "generate", "crashed", lease_seconds=30)
    taker = claim_store(tmp_path, "generate", "taker", lease_seconds=30)
    old_claim = crashed.try_claim(KEY)
    assert taker.try_claim(KEY) is None  # fresh: respected
    make_stale(crashed, KEY)
    new_claim = taker.try_claim(KEY)
    assert new_claim is not None
    # The old owner's heartbeat and release must not touch the new owner's claim.
    assert crashed.heartbeat(old_claim) is False
    crashed.release(old_claim)
    assert taker.still_ours(new_claim)
    assert not list(new_claim.path.parent.glob("*.stale-*"))


def test_heartbeat_keeps_a_claim_fresh(tmp_path):
    store = claim_store(tmp_path, "generate", "a", lease_seconds=30)
    claim = store.try_claim(KEY)
    make_stale(store, KEY)
    assert store.heartbeat(claim) is True
    age_seconds = time.time() - claim.path.stat().st_mtime
    assert age_seconds < 5
    assert claim_store(tmp_path, "generate", "b", lease_seconds=30).try_claim(KEY) is None
    assert claim.path.read_bytes() == claim.content


def test_holder_reports_owner_and_staleness(tmp_path):
    store = claim_store(tmp_path, "upscale", "a", lease_seconds=30)
    assert store.holder(KEY) is None
    store.try_claim(KEY)
    assert store.holder(KEY)["stale"] is False
    make_stale(store, KEY)
    holder = store.holder(KEY)
    assert holder["worker"] == "a" and holder["stale"] is True and holder["age_seconds"] > 900


RACER = """
import sys, time
from pathlib import Path
from drawpipe.engine.claims import ClaimStore
root, worker, start_at = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
store = ClaimStore(root, "generate", worker, lease_seconds=30)
store.prepare()
while time.time() < start_at:
    pass
claim = store.try_claim(sys.argv[4])
print("won" if claim is not None else "lost")
"""


def test_stale_take_over_race_has_exactly_one_winner(tmp_path):
    for round_number in range(5):
        key = f"race/{round_number}.png"
        crashed = claim_store(tmp_path, "generate", "crashed", lease_seconds=30)
        crashed.try_claim(key)
        make_stale(crashed, key)
        start_at = time.time() + 1.5  # let every interpreter start, then go together
        racers = [
            subprocess.Popen([sys.executable, "-c", RACER, str(tmp_path), f"racer{i}",
                              str(start_at), key], stdout=subprocess.PIPE, text=True)
            for i in range(8)
        ]
        results = [racer.communicate(timeout=60)[0].strip() for racer in racers]
        assert results.count("won") == 1, results
        owner = json.loads(crashed.claim_path(key).read_text())
        assert owner["worker"].startswith("racer")
        assert sorted(p.name for p in crashed.claim_path(key).parent.iterdir()
                      if p.name.startswith(f"{round_number}.")) == [f"{round_number}.png.claim"]


def test_no_claim_without_the_claims_folder_and_never_the_root(tmp_path):
    """A share unmounted under its mount point: claims fail, nothing lands locally."""
    mount_point = tmp_path / "mount-point"
    mount_point.mkdir()
    store = ClaimStore(mount_point, "generate", "a", lease_seconds=60)
    with pytest.raises(FileNotFoundError):
        store.try_claim(KEY)
    assert list(mount_point.iterdir()) == []
    gone = ClaimStore(tmp_path / "gone", "generate", "a", lease_seconds=60)
    with pytest.raises(FileNotFoundError):
        gone.prepare()
    assert not (tmp_path / "gone").exists()


def test_the_take_over_lock_holds_a_token_and_only_its_owner_removes_it(tmp_path):
    stalled = claim_store(tmp_path, "generate", "stalled", lease_seconds=30)
    other = claim_store(tmp_path, "generate", "other", lease_seconds=30)
    lock = stalled.claim_path(KEY).with_name(stalled.claim_path(KEY).name + ".takeover")
    lock.parent.mkdir(parents=True)
    stalled_token = stalled._try_lock(lock)
    assert stalled_token is not None and lock.read_bytes() == stalled_token
    assert other._try_lock(lock) is None  # held and fresh
    make_old(lock, 1000)  # "stalled" slept past the lease inside its take-over
    assert other._try_lock(lock) is None  # breaks the stale lock; competes next pass
    assert not lock.exists()
    other_token = other._try_lock(lock)
    assert other_token is not None
    stalled._remove_if_ours(lock, stalled_token)  # "stalled" wakes up and cleans up
    assert lock.read_bytes() == other_token  # the lock it no longer owns stays
    other._remove_if_ours(lock, other_token)
    assert not lock.exists()
    assert sorted(p.name for p in lock.parent.iterdir()) == []


def test_a_stale_take_over_lock_left_by_a_dead_worker_delays_the_take_over_by_one_pass(tmp_path):
    dead = claim_store(tmp_path, "generate", "dead", lease_seconds=30)
    dead.try_claim(KEY)
    make_stale(dead, KEY)
    lock = dead.claim_path(KEY).with_name(dead.claim_path(KEY).name + ".takeover")
    lock.write_bytes(b"0123456789abcdef")
    make_old(lock, 1000)
    taker = claim_store(tmp_path, "generate", "taker", lease_seconds=30)
    assert taker.try_claim(KEY) is None
    claim = taker.try_claim(KEY)
    assert claim is not None and taker.still_ours(claim)
    assert sorted(p.name for p in claim.path.parent.iterdir()) == [claim.path.name]


def test_a_busy_claim_is_released_on_a_later_try(tmp_path):
    store = claim_store(tmp_path, "generate", "a", lease_seconds=30)
    claim = store.try_claim(KEY)
    with immutable(claim.path):
        store.release(claim)  # refused (EPERM): no exception, kept for later
        assert claim.path.exists()
        store.retry_releases()
        assert claim.path.exists()
    store.retry_releases()
    assert not claim.path.exists()


def test_a_busy_stale_claim_is_left_for_a_later_pass(tmp_path):
    dead = claim_store(tmp_path, "generate", "dead", lease_seconds=30)
    dead.try_claim(KEY)
    make_stale(dead, KEY)
    taker = claim_store(tmp_path, "generate", "taker", lease_seconds=30)
    with immutable(dead.claim_path(KEY)):
        assert taker.try_claim(KEY) is None  # cannot delete it now: no error, no claim
        assert not dead.claim_path(KEY).with_name(dead.claim_path(KEY).name
                                                  + ".takeover").exists()
    assert taker.try_claim(KEY) is not None


def test_a_claim_that_vanished_is_not_ours_any_more(tmp_path):
    store = claim_store(tmp_path, "generate", "a", lease_seconds=30)
    claim = store.try_claim(KEY)
    os.unlink(claim.path)
    assert store.heartbeat(claim) is False
    assert store.still_ours(claim) is False
    assert not claim.path.exists()  # the heartbeat never re-creates it
