"""Claims on a real folder, raced by real processes."""

import json
import os
import subprocess
import sys
import time

from drawpipe.claims import ClaimStore

KEY = "GENERATIONS/France/family/France_family_1.png"


def make_stale(store: ClaimStore, key: str, age_seconds: float = 1000) -> None:
    path = store.claim_path(key)
    old = time.time() - age_seconds
    os.utime(path, (old, old))


def test_one_claim_per_job(tmp_path):
    first = ClaimStore(tmp_path, "generate", "a", lease_seconds=60)
    second = ClaimStore(tmp_path, "generate", "b", lease_seconds=60)
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
    crashed = ClaimStore(tmp_path, "generate", "crashed", lease_seconds=30)
    taker = ClaimStore(tmp_path, "generate", "taker", lease_seconds=30)
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
    store = ClaimStore(tmp_path, "generate", "a", lease_seconds=30)
    claim = store.try_claim(KEY)
    make_stale(store, KEY)
    assert store.heartbeat(claim) is True
    age_seconds = time.time() - claim.path.stat().st_mtime
    assert age_seconds < 5
    assert ClaimStore(tmp_path, "generate", "b", lease_seconds=30).try_claim(KEY) is None
    assert claim.path.read_bytes() == claim.content


def test_holder_reports_owner_and_staleness(tmp_path):
    store = ClaimStore(tmp_path, "upscale", "a", lease_seconds=30)
    assert store.holder(KEY) is None
    store.try_claim(KEY)
    assert store.holder(KEY)["stale"] is False
    make_stale(store, KEY)
    holder = store.holder(KEY)
    assert holder["worker"] == "a" and holder["stale"] is True and holder["age_seconds"] > 900


RACER = """
import sys, time
from pathlib import Path
from drawpipe.claims import ClaimStore
root, worker, start_at = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
store = ClaimStore(root, "generate", worker, lease_seconds=30)
store.server_now()
while time.time() < start_at:
    pass
claim = store.try_claim(sys.argv[4])
print("won" if claim is not None else "lost")
"""


def test_stale_take_over_race_has_exactly_one_winner(tmp_path):
    for round_number in range(5):
        key = f"race/{round_number}.png"
        crashed = ClaimStore(tmp_path, "generate", "crashed", lease_seconds=30)
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
