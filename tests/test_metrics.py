import csv
import re
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest

from drawpipe.engine.metrics import (COMMON_COLUMNS, MetricsLog, ResourceSampler, find_process,
                                     format_time_utc, read_logs)
from drawpipe.files import host_name


def start_python(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)])


@pytest.fixture
def stop_later():
    """Processes a test starts; killed and reaped at the end whatever happens."""
    started: list[subprocess.Popen] = []
    yield started.append
    for process in started:
        process.kill()
        process.wait()


def busy_code(seconds: float, marker: str = "") -> str:
    return f"import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass  # {marker}\n"


def test_host_name_is_safe_for_a_file_name():
    assert re.fullmatch(r"[A-Za-z0-9_-]+", host_name())


def test_sampler_sees_a_busy_subprocess(stop_later):
    busy = start_python(busy_code(1.5))
    stop_later(busy)

    with ResourceSampler(interval_seconds=0.1) as sampler:
        time.sleep(0.6)
    usage = sampler.result()

    assert usage.samples >= 5
    assert usage.cpu_percent_peak > 0
    assert 0 < usage.cpu_percent_mean <= usage.cpu_percent_peak <= 100
    assert 0 < usage.ram_mb_mean <= usage.ram_mb_peak
    assert usage.server_cpu_seconds is None and usage.server_rss_mb is None


def test_a_job_shorter_than_the_interval_gets_one_cpu_figure():
    with ResourceSampler(interval_seconds=0.5) as sampler:
        time.sleep(0.05)
    usage = sampler.result()

    assert usage.samples == 2
    assert 0 <= usage.cpu_percent_mean <= 100
    assert usage.cpu_percent_peak == usage.cpu_percent_mean
    assert usage.ram_mb_peak > 0


def test_a_job_shorter_than_the_interval_still_gets_its_two_readings():
    # Stopping does not wait for the interval (bench/primitives.py times it).
    with ResourceSampler(interval_seconds=30) as sampler:
        pass
    assert sampler.result().samples == 2


def test_sampler_tracks_the_server_process(stop_later):
    marker = f"drawpipe-test-server-{uuid.uuid4().hex}"
    server = start_python(busy_code(20, marker))
    stop_later(server)

    found = find_process(marker)
    assert found is not None and found.pid == server.pid
    assert find_process(marker.upper()) is found  # case-insensitive, cached
    with ResourceSampler(interval_seconds=0.1, server_process_name=marker) as sampler:
        time.sleep(0.5)
    usage = sampler.result()

    assert 0.1 < usage.server_cpu_seconds < 2
    assert usage.server_rss_mb > 1

    server.kill()
    server.wait()
    with ResourceSampler(interval_seconds=0.1, server_process_name=marker) as sampler:
        time.sleep(0.05)
    usage = sampler.result()
    assert usage.server_cpu_seconds is None and usage.server_rss_mb is None
    assert usage.cpu_percent_mean is not None
    assert find_process(marker) is None


def test_server_exiting_mid_job_gives_none_figures(stop_later):
    marker = f"drawpipe-test-server-{uuid.uuid4().hex}"
    server = start_python(f"import time; time.sleep(0.3)  # {marker}")
    stop_later(server)

    with ResourceSampler(interval_seconds=0.1, server_process_name=marker) as sampler:
        server.wait()
        time.sleep(0.15)
    usage = sampler.result()

    assert usage.server_cpu_seconds is None and usage.server_rss_mb is None
    assert usage.cpu_percent_mean is not None and usage.samples >= 3


def test_no_process_matches():
    name = f"no-such-process-{uuid.uuid4().hex}"
    assert find_process(name) is None
    with ResourceSampler(interval_seconds=0.1, server_process_name=name) as sampler:
        time.sleep(0.02)
    usage = sampler.result()
    assert usage.server_cpu_seconds is None and usage.server_rss_mb is None


def test_time_utc_format():
    assert format_time_utc(0.5) == "1970-01-01T00:00:00.500Z"
    assert format_time_utc(1700000000.9996) == "2023-11-14T22:13:21.000Z"


def test_log_writes_the_header_once_and_rows_parse_back(tmp_path):
    logs_dir = tmp_path / "root" / "logs"
    log = MetricsLog(logs_dir, "upscale", "mac-a", extra_columns=("steps",))
    assert log.path == logs_dir / "upscale-mac-a.csv"
    assert log.columns == COMMON_COLUMNS + ("steps",)

    log.append({"time_utc": 1795356560.1234, "worker": "mac-a:1", "input": "A/b, c.png", "output": "o.png",
                "status": "done", "attempt": 1, "seconds": 12.34567, "seed": 4294967295,
                "cpu_percent_mean": 45.6789, "cpu_percent_peak": 99.95, "ram_mb_mean": 12000.04,
                "ram_mb_peak": 12100.06, "server_cpu_seconds": 7.1, "server_rss_mb": None, "steps": 2})
    log.append({"status": "failed", "attempt": 3, "error": "Timeout\nwhile reading\r\n" + "x" * 600})
    log.append({})

    lines = log.path.read_text().splitlines()
    assert lines[0] == ",".join(COMMON_COLUMNS + ("steps",))
    assert len(lines) == 4
    rows, skipped = read_logs(logs_dir, "upscale")
    assert skipped == 0
    first = next(row for row in rows if row["status"] == "done")
    assert first == {
        "time_utc": "2026-11-22T14:09:20.123Z", "host": "mac-a", "worker": "mac-a:1", "stage": "upscale",
        "input": "A/b, c.png", "output": "o.png", "status": "done", "attempt": "1", "seconds": "12.346",
        "seed": "4294967295", "cpu_percent_mean": "45.7", "cpu_percent_peak": "100.0", "ram_mb_mean": "12000.0",
        "ram_mb_peak": "12100.1", "server_cpu_seconds": "7.100", "server_rss_mb": "", "error": "", "steps": "2",
    }
    failed = next(row for row in rows if row["status"] == "failed")
    assert failed["error"].startswith("Timeout while reading x")
    assert len(failed["error"]) == 500 and failed["error"].endswith("...")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", failed["time_utc"])


def test_worker_threads_starting_a_log_write_one_header(tmp_path):
    # The workers of one run (one per --server) share one log; the first rows of a
    # fresh file race for its header.
    for attempt in range(100):
        log = MetricsLog(tmp_path / f"logs-{attempt}", "upscale", "mac-a")
        start = threading.Barrier(8)

        def append_one(worker: int) -> None:
            start.wait()
            log.append({"worker": f"mac-a:{worker}", "status": "done"})

        threads = [threading.Thread(target=append_one, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        lines = log.path.read_text().splitlines()
        assert lines.count(",".join(COMMON_COLUMNS)) == 1 and lines[0] == ",".join(COMMON_COLUMNS)
        assert len(lines) == 9


def test_log_refuses_unknown_columns_and_blobs(tmp_path):
    log = MetricsLog(tmp_path, "generate", "mac-a")
    with pytest.raises(ValueError, match=r"unknown metrics columns \['image'\]"):
        log.append({"image": "..."})
    with pytest.raises(ValueError, match="2001-character value"):
        log.append({"input": "A" * 2001})
    with pytest.raises(ValueError, match="must be letters"):
        MetricsLog(tmp_path, "generate", "../mac")
    assert not log.path.exists()


def test_log_with_an_older_header_is_rotated(tmp_path):
    old = tmp_path / "generate-mac-a.csv"
    old.write_text("time_utc,host,seconds\n2025-01-01T00:00:00.000Z,mac-a,3.5\n")
    log = MetricsLog(tmp_path, "generate", "mac-a")

    log.append({"time_utc": 1795356560.0, "status": "done"})

    rotated = [path for path in tmp_path.glob("generate-mac-a.*.csv")]
    assert len(rotated) == 1
    assert re.fullmatch(r"generate-mac-a\.\d{8}T\d{6}\.csv", rotated[0].name)
    assert rotated[0].read_text().startswith("time_utc,host,seconds\n")
    assert log.path.read_text().splitlines()[0] == ",".join(COMMON_COLUMNS)
    rows, skipped = read_logs(tmp_path, "generate")
    assert skipped == 0
    assert rows[0] == {"time_utc": "2025-01-01T00:00:00.000Z", "host": "mac-a", "seconds": "3.5"}
    assert rows[1]["status"] == "done" and rows[1]["time_utc"] == "2026-11-22T14:09:20.000Z"


def test_a_half_written_last_line_is_ended_before_the_next_row(tmp_path):
    MetricsLog(tmp_path, "generate", "mac-a").append({"status": "done", "input": "1.png"})
    log = MetricsLog(tmp_path, "generate", "mac-a")
    with open(log.path, "ab") as file:  # what a machine crash mid-write leaves
        file.write(b"2026-11-22T14:09:20.123Z,mac-a,w,generate,2.p")

    log.append({"status": "done", "input": "3.png"})  # the next run's first row

    assert log.path.read_bytes().count(b"\n") == 4
    rows, skipped = read_logs(tmp_path, "generate")
    assert [row["input"] for row in rows] == ["1.png", "3.png"]
    assert skipped == 1


def test_read_logs_merges_hosts_and_counts_broken_lines(tmp_path):
    a = MetricsLog(tmp_path, "upscale", "mac-a")
    b = MetricsLog(tmp_path, "upscale", "mac-b")
    a.append({"time_utc": 30.0, "input": "a1"})
    b.append({"time_utc": 10.0, "input": "b1"})
    a.append({"time_utc": 20.0, "input": "a2"})
    b.append({"time_utc": 40.0, "input": "b2"})
    MetricsLog(tmp_path, "generate", "mac-a").append({"input": "other stage"})
    with open(b.path, "a") as file:
        file.write("too,few,fields\n")
        file.write('"an unterminated quote,x\n')
        file.write("1970-01-01T00:00:50.000Z,mac-b,w,upscale,b3")  # cut off: no newline

    rows, skipped = read_logs(tmp_path, "upscale")

    assert [row["input"] for row in rows] == ["b1", "a2", "a1", "b2"]
    assert {row["host"] for row in rows} == {"mac-a", "mac-b"}
    assert skipped == 3
    assert read_logs(tmp_path / "missing", "upscale") == ([], 0)


APPENDER = """
import sys
from pathlib import Path
from drawpipe.engine.metrics import MetricsLog
log = MetricsLog(Path(sys.argv[1]), "generate", "mac-a")
worker = sys.argv[2]
for n in range(200):
    log.append({"worker": worker, "attempt": n, "input": "GENERATIONS/Nation/family/" + "x" * 300,
                "error": "e" * 400, "seconds": n / 7})
"""


def test_four_processes_append_whole_lines(tmp_path):
    appenders = [
        subprocess.Popen([sys.executable, "-c", APPENDER, str(tmp_path), f"w{k}"]) for k in range(4)
    ]
    assert [process.wait(timeout=60) for process in appenders] == [0, 0, 0, 0]

    rows, skipped = read_logs(tmp_path, "generate")

    assert skipped == 0
    assert len(rows) == 800
    assert {(row["worker"], row["attempt"]) for row in rows} == {
        (f"w{k}", str(n)) for k in range(4) for n in range(200)
    }
    with open(tmp_path / "generate-mac-a.csv", newline="") as file:
        assert all(len(fields) == len(COMMON_COLUMNS) for fields in csv.reader(file))
