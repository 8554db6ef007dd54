"""The verdict store (drawpipe/curate/verdicts.py): per-host append-only files, merging,
takes pinned by SHA-256, and the bad input a shared folder brings: a line cut off
by a crash, two Macs disagreeing within a second, a verdict for an image since
removed. Real files in tmp_path; two "hosts" are two host names writing their own
files, as two Macs do on a share."""

import hashlib
import json
import os
import threading

import pytest

from drawpipe.curate.verdicts import append_verdict, load_verdicts, reviews_path
from drawpipe.errors import BadVerdict
from drawpipe.files import HashCache, file_sha256

IMAGE = "GENERATIONS/France/family/France_family_1.png"
OTHER = "GENERATIONS/France/family/France_family_2.png"
TAKE_1 = hashlib.sha256(b"take 1").hexdigest()
TAKE_2 = hashlib.sha256(b"take 2").hexdigest()


def at(seconds: float) -> str:
    """A verdict time text: 2026-05-01T10:00:00Z plus ``seconds``."""
    whole, fraction = divmod(round(seconds * 1_000_000), 1_000_000)
    minutes, second = divmod(whole, 60)
    return f"2026-05-01T10:{minutes:02d}:{second:02d}.{fraction:06d}Z"


def test_a_verdict_is_one_json_line_in_the_hosts_own_file(share):
    verdict = append_verdict(share, "mac-a", IMAGE, TAKE_1, "reject", "  six fingers ")
    lines = reviews_path(share, "mac-a").read_text().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record == {"image": IMAGE, "sha256": TAKE_1, "verdict": "reject",
                      "reason": "six fingers", "time": verdict.time, "host": "mac-a"}
    # UTC with microseconds: "2026-05-01T10:00:00.123456Z"
    assert len(verdict.time) == 27 and verdict.time.endswith("Z") and verdict.time[19] == "."
    assert os.listdir(share / "reviews") == ["mac-a.jsonl"]


def test_latest_verdict_wins_per_take_and_a_new_take_is_unreviewed(share):
    append_verdict(share, "mac-a", IMAGE, TAKE_1, "accept", now=at(0))
    append_verdict(share, "mac-b", IMAGE, TAKE_1, "reject", "wrong subject", now=at(30))
    append_verdict(share, "mac-a", OTHER, TAKE_1, "accept", now=at(10))
    index = load_verdicts(share)
    assert index.for_image(IMAGE, TAKE_1).verdict == "reject"
    assert index.for_image(IMAGE, TAKE_1).host == "mac-b"
    assert index.for_image(IMAGE, TAKE_2) is None  # the re-made take: not reviewed yet
    assert [(v.image, v.reason) for v in index.rejected()] == [(IMAGE, "wrong subject")]
    assert [v.image for v in index.accepted()] == [OTHER]
    assert index.problems == []
    # A later accept on another Mac overrides the reject.
    append_verdict(share, "mac-c", IMAGE, TAKE_1, "accept", now=at(60))
    assert load_verdicts(share).rejected() == []


def test_two_hosts_files_are_merged_and_neither_is_written_by_the_other(share):
    append_verdict(share, "mac-a", IMAGE, TAKE_1, "reject", now=at(1))
    append_verdict(share, "mac-b", OTHER, TAKE_2, "accept", now=at(2))
    assert len(reviews_path(share, "mac-a").read_text().splitlines()) == 1
    assert len(reviews_path(share, "mac-b").read_text().splitlines()) == 1
    index = load_verdicts(share)
    assert index.files == ["reviews/mac-a.jsonl", "reviews/mac-b.jsonl"]
    assert index.lines_read == 2
    assert {(v.image, v.host) for v in index.current.values()} == {(IMAGE, "mac-a"), (OTHER, "mac-b")}


def test_a_line_cut_off_by_a_crash_is_skipped_and_the_next_verdict_starts_a_new_line(share):
    append_verdict(share, "mac-a", IMAGE, TAKE_1, "accept", now=at(0))
    path = reviews_path(share, "mac-a")
    with open(path, "ab") as stream:  # the Mac died in the middle of its next write
        stream.write(b'{"image":"GENERATIONS/France/family/France_fam')
    index = load_verdicts(share)
    assert index.for_image(IMAGE, TAKE_1).verdict == "accept"
    assert index.lines_skipped == 1
    assert index.problems == ["reviews/mac-a.jsonl line 2: cut off (the Mac stopped while "
                              "writing it); skipped"]
    # After the restart the same host appends: its verdict must not be glued to the stump.
    append_verdict(share, "mac-a", OTHER, TAKE_1, "reject", now=at(5))
    index = load_verdicts(share)
    assert index.for_image(OTHER, TAKE_1).verdict == "reject"
    assert index.problems == ["reviews/mac-a.jsonl line 2: not JSON (cut off or damaged); skipped"]
    assert path.read_bytes().endswith(b"\n")


def test_malformed_lines_are_skipped_one_problem_each(share):
    path = reviews_path(share, "mac-a")
    path.parent.mkdir()
    good = {"image": IMAGE, "sha256": TAKE_1, "verdict": "reject", "reason": "", "time": at(0),
            "host": "mac-a"}
    lines = [json.dumps(good), "[1, 2]", json.dumps({**good, "verdict": "maybe"}),
             json.dumps({**good, "time": "yesterday"}), json.dumps({**good, "image": "/etc/passwd"}),
             json.dumps({key: value for key, value in good.items() if key != "sha256"}), ""]
    path.write_text("\n".join(lines) + "\n")
    index = load_verdicts(share)
    assert index.lines_read == 1 and index.lines_skipped == 5
    assert index.problems == [
        "reviews/mac-a.jsonl line 2: not a JSON object; skipped",
        "reviews/mac-a.jsonl line 3: verdict 'maybe' is not one of accept, reject; skipped",
        "reviews/mac-a.jsonl line 4: time 'yesterday' is not an ISO 8601 UTC time; skipped",
        "reviews/mac-a.jsonl line 5: image '/etc/passwd' is not under GENERATIONS/; skipped",
        "reviews/mac-a.jsonl line 6: no text sha256; skipped",
    ]


def test_two_macs_disagreeing_within_a_second_is_reported_and_settled_deterministically(share):
    # The same second, 0.4 s apart: the later stands, and the user is told.
    append_verdict(share, "mac-b", IMAGE, TAKE_1, "reject", now=at(10.2))
    append_verdict(share, "mac-a", IMAGE, TAKE_1, "accept", now=at(10.6))
    index = load_verdicts(share)
    assert index.for_image(IMAGE, TAKE_1).host == "mac-a"
    assert index.problems == [
        f"{IMAGE}: mac-b said reject and mac-a said accept within 0.400 s ({at(10.6)}); "
        "mac-a's accept stands as the later: review it again to settle it"]
    # The very same microsecond: the later host name wins, whatever order the files are read.
    append_verdict(share, "mac-z", OTHER, TAKE_1, "reject", now=at(20))
    append_verdict(share, "mac-c", OTHER, TAKE_1, "accept", now=at(20))
    index = load_verdicts(share)
    assert index.for_image(OTHER, TAKE_1).host == "mac-z"
    assert index.problems[1] == (
        f"{OTHER}: mac-c said accept and mac-z said reject within 0.000 s ({at(20)}); "
        "mac-z's reject stands as the later by host name: review it again to settle it")
    # Agreeing Macs, or verdicts further apart, are no problem.
    append_verdict(share, "mac-a", IMAGE, TAKE_2, "reject", now=at(30))
    append_verdict(share, "mac-b", IMAGE, TAKE_2, "reject", now=at(30.5))
    append_verdict(share, "mac-b", OTHER, TAKE_2, "accept", now=at(40))
    append_verdict(share, "mac-a", OTHER, TAKE_2, "reject", now=at(41.5))
    assert len(load_verdicts(share).problems) == 2


def test_a_verdict_for_an_image_that_no_longer_exists_is_one_line_and_kept(share):
    (share / "GENERATIONS/France/family").mkdir(parents=True)
    (share / IMAGE).write_bytes(b"png")
    append_verdict(share, "mac-a", IMAGE, TAKE_1, "accept")
    append_verdict(share, "mac-b", OTHER, TAKE_1, "reject")  # OTHER was deleted by hand
    index = load_verdicts(share)
    assert index.check_images(lambda image: (share / image).is_file()) == [OTHER]
    assert index.problems == [f"{OTHER}: reviewed (by mac-b) but no longer exists; its verdicts "
                              "are kept and ignored"]
    assert len(reviews_path(share, "mac-b").read_text().splitlines()) == 1


@pytest.mark.parametrize("arguments, message", [
    (("France_family_1.png", TAKE_1, "reject"),
     "'France_family_1.png' is not a generated image: expected a path like "
     "GENERATIONS/France/family/France_family_1.png"),
    (("GENERATIONS/../reviews/x.png", TAKE_1, "reject"),
     "'GENERATIONS/../reviews/x.png' is not a generated image: expected a path like "
     "GENERATIONS/France/family/France_family_1.png"),
    ((IMAGE, "abc", "reject"), "sha256 'abc' is not a hex SHA-256 (64 characters 0-9a-f)"),
    ((IMAGE, TAKE_1, "delete"), "verdict 'delete' is not one of accept, reject"),
])
def test_a_malformed_verdict_is_refused_before_anything_is_written(share, arguments, message):
    with pytest.raises(BadVerdict) as raised:
        append_verdict(share, "mac-a", *arguments)
    assert str(raised.value) == message
    assert not (share / "reviews").exists()


def test_threads_of_one_host_never_interleave_within_a_line(share):
    def review(n):
        for k in range(25):
            append_verdict(share, "mac-a", f"GENERATIONS/N/c/N_c_{n}_{k}.png", TAKE_1, "accept",
                           "x" * 1900 if k % 2 else "")
    threads = [threading.Thread(target=review, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    index = load_verdicts(share)
    assert index.lines_read == 100 and index.problems == []


def test_file_sha256_reads_an_unchanged_file_once(tmp_path):
    image = tmp_path / "a.png"
    image.write_bytes(b"first take")
    cache_dir = tmp_path / "cache"
    with HashCache(cache_dir) as cache:
        assert file_sha256(image, cache) == hashlib.sha256(b"first take").hexdigest()
    # Same size and mtime, other bytes: the cache answers, proving the file was not read.
    stat = image.stat()
    image.write_bytes(b"other take")
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = HashCache(cache_dir)  # a new process: read back from disk
    assert file_sha256(image, again) == hashlib.sha256(b"first take").hexdigest()
    # A real new take has a new mtime: hashed again.
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert file_sha256(image, again) == hashlib.sha256(b"other take").hexdigest()
    assert file_sha256(image) == hashlib.sha256(b"other take").hexdigest()
    # A damaged cache file is an empty cache, not an error.
    (cache_dir / "sha256.json").write_text("{not json")
    assert file_sha256(image, HashCache(cache_dir)) == hashlib.sha256(b"other take").hexdigest()
