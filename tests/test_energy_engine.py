"""The energy meter wired into the job loop: a stage run in this process with a RAPL meter
read from a powercap tree built in a temporary folder (tests/powercap.py), whose jobs
raise the tree's counters as a CPU drawing power would; a run without a meter; and
generate.py end to end on whatever meter this machine has."""

import csv
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from conftest import run_script
from powercap import set_energy, two_socket_machine

from drawpipe.engine.energy import ENERGY_COLUMNS, EnergyMeter, RaplCounter
from drawpipe.engine.interrupts import StopSignals
from drawpipe.engine.jobs import Job, JobResult
from drawpipe.engine.loop import run_stage
from drawpipe.engine.metrics import COMMON_COLUMNS, MetricsLog, read_logs
from drawpipe.engine.run import EngineSettings, Run
from drawpipe.errors import TransientError
from drawpipe.files import host_name

PACKAGE_UJ = {"intel-rapl:0": 1_000_000, "intel-rapl:1": 3_000_000}
DRAM_UJ = 2_000_000  # intel-rapl:0:2


class DrawingStage:
    """Jobs OUT/<n>; job n raises package 0 by n J and its DRAM by n/10 J while it runs
    (the tree's counters are the machine's: what a job "draws" is what its window
    reads). ``servers``: server -> the process to sample (None: remote)."""

    name = "drawing"
    extra_columns = ("note",)

    def __init__(self, root: Path, powercap: Path, count: int, servers=None, fail=()):
        self.root, self.powercap, self.count = root, powercap, count
        self.servers = servers or {}
        self.fail = set(fail)
        self.package_uj, self.dram_uj = PACKAGE_UJ["intel-rapl:0"], DRAM_UJ
        self.lock = threading.Lock()

    def plan(self):
        return [Job(key=f"OUT/{n}", output=self.root / "OUT" / str(n))
                for n in range(1, self.count + 1)]

    def process_to_sample(self, server):
        return self.servers.get(server)

    def make_worker(self, server, context):
        def run(job: Job, scratch: Path) -> JobResult:
            n = int(job.key.rpartition("/")[2])
            with self.lock:
                self.package_uj += n * 1_000_000
                self.dram_uj += n * 100_000
                set_energy(self.powercap, "intel-rapl:0", self.package_uj)
                set_energy(self.powercap, "intel-rapl:0:2", self.dram_uj)
            if job.key in self.fail:
                raise TransientError("the backend gave up", attempts=2)
            return JobResult(data=job.key.encode(), extra={"note": "ok"})

        return run


def settings(root: Path, **changes) -> EngineSettings:
    values = {"root": root, "lease_seconds": 30.0, "poll_seconds": 0.05, "show_progress": False,
              "sample_interval_seconds": 0.05, "idle_seconds": 0.2}
    values.update(changes)
    return EngineSettings(**values)


def logged(root: Path) -> list[dict]:
    return read_logs(root / "logs", DrawingStage.name)[0]


@pytest.fixture
def powercap(tmp_path) -> Path:
    return two_socket_machine(tmp_path / "powercap")


@pytest.fixture
def rapl(powercap) -> EnergyMeter:
    meter = EnergyMeter(RaplCounter(powercap))
    yield meter
    meter.close()


def test_each_job_logs_its_own_windows_energy_and_the_idle_power(share, powercap, rapl, capsys):
    stage = DrawingStage(share, powercap, 3, fail={"OUT/2"})
    summary = run_stage(stage, settings(share), signals=StopSignals(), meter=rapl)

    assert (summary.made, list(summary.failed)) == (2, ["OUT/2"])
    err = capsys.readouterr().err
    assert f"energy: rapl (RAPL: package-0, dram, package-1, dram) on {host_name()}\n" in err
    assert "energy: idle 0.0 W (over 0.2 s, before the first job)\n" in err  # nothing drew
    header = (share / "logs" / f"drawing-{host_name()}.csv").read_text().splitlines()[0]
    assert header == ",".join(COMMON_COLUMNS + ("note",) + ENERGY_COLUMNS)
    rows = {row["output"]: row for row in logged(share)}
    for n in (1, 2, 3):
        row = rows[f"OUT/{n}"]
        assert (row["energy_meter"], row["energy_scope"]) == ("rapl", "local")
        assert float(row["energy_j"]) == pytest.approx(1.1 * n)
        assert float(row["energy_cpu_j"]) == pytest.approx(n)
        assert float(row["energy_dram_j"]) == pytest.approx(0.1 * n)
        assert row["energy_gpu_j"] == row["energy_ane_j"] == ""  # RAPL has no such component
        assert float(row["idle_w"]) == 0.0
    assert rows["OUT/2"]["status"] == "failed"  # a failed job drew power too


def test_a_remote_servers_jobs_are_client_side_a_local_ones_local(share, powercap, rapl):
    stage = DrawingStage(share, powercap, 2, servers={"http://127.0.0.1:7860": "Draw Things",
                                                      "http://10.0.0.5:7860": None})
    run_stage(stage, settings(share, servers=("http://10.0.0.5:7860",)), signals=StopSignals(),
              meter=rapl)
    stage.count = 4
    run_stage(stage, settings(share, servers=("http://127.0.0.1:7860",)), signals=StopSignals(),
              meter=rapl)

    scopes = {row["output"]: row["energy_scope"] for row in logged(share)}
    assert scopes == {"OUT/1": "client-side", "OUT/2": "client-side",
                      "OUT/3": "local", "OUT/4": "local"}


def test_without_a_meter_the_log_says_why_and_the_columns_stay_empty(share, powercap, capsys):
    stage = DrawingStage(share, powercap, 2)
    meter = EnergyMeter(None, "not measured on mac-x: no powercap in this kernel")
    summary = run_stage(stage, settings(share), signals=StopSignals(), meter=meter)

    assert summary.made == 2
    err = capsys.readouterr().err
    assert "energy: not measured on mac-x: no powercap in this kernel\n" in err
    assert "energy: idle" not in err
    for row in logged(share):
        assert all(row[column] == "" for column in ENERGY_COLUMNS)


def test_a_run_with_nothing_to_do_chooses_no_meter_and_waits_for_nothing(share, powercap, rapl,
                                                                           capsys):
    stage = DrawingStage(share, powercap, 2)
    run_stage(stage, settings(share), signals=StopSignals(), meter=rapl)
    capsys.readouterr()
    started = time.monotonic()
    summary = run_stage(stage, settings(share, idle_seconds=30.0), signals=StopSignals(),
                        meter=rapl)
    assert summary.already_done == 2 and time.monotonic() - started < 10
    assert "energy:" not in capsys.readouterr().err


def test_a_stop_signal_cuts_the_idle_measurement_short_and_starts_no_job(share, powercap, rapl):
    stage = DrawingStage(share, powercap, 2)
    sender = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    started = time.monotonic()
    sender.start()
    try:
        summary = run_stage(stage, settings(share, idle_seconds=60.0), signals=StopSignals(),
                            meter=rapl)
    finally:
        sender.cancel()
    assert time.monotonic() - started < 30
    assert summary.interrupted and summary.made == 0 and summary.exit_code == 130
    assert rapl.idle_w is None  # a wait cut short is no measurement
    assert not (share / "OUT").exists()


def test_an_old_log_is_rotated_and_still_read(share, powercap, rapl):
    old = MetricsLog(share / "logs", DrawingStage.name, host_name(), extra_columns=("note",))
    old.append({"output": "OUT/9", "status": "done", "seconds": 1.0, "note": "before energy"})
    run_stage(DrawingStage(share, powercap, 1), settings(share), signals=StopSignals(), meter=rapl)

    files = sorted(path.name for path in (share / "logs").iterdir())
    assert len(files) == 2 and f"drawing-{host_name()}.csv" in files
    rows = {row["output"]: row for row in logged(share)}
    assert "energy_j" not in rows["OUT/9"] and float(rows["OUT/1"]["energy_j"]) == \
        pytest.approx(1.1)


def test_idle_power_is_measured_again_between_jobs_when_missing_or_old(share, powercap, rapl):
    run = Run(DrawingStage(share, powercap, 0), settings(share, idle_seconds=0.3), "host")
    run.meter = rapl
    started = time.monotonic()
    run.refresh_idle_power()  # no idle figure yet: measured now
    assert rapl.idle_w == 0.0 and time.monotonic() - started >= 0.3
    started = time.monotonic()
    run.refresh_idle_power()  # fresh: nothing to do
    assert time.monotonic() - started < 0.25


def test_generate_names_this_machines_meter_and_logs_the_energy_columns(share, simulator):
    result = run_script("generate.py", "--root", share, "--server", simulator.url,
                        "--add", "Peru:family:2", "--no-progress")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("energy: ")]
    assert lines and (lines[0].startswith(f"energy: not measured on {host_name()}: ")
                      or lines[0].endswith(f" on {host_name()}"))
    log = next((share / "logs").glob("generate-*.csv"))
    rows = list(csv.DictReader(log.open()))
    assert tuple(rows[0])[-len(ENERGY_COLUMNS):] == ENERGY_COLUMNS
    measured = "not measured" not in lines[0]
    for row in rows:
        # the simulator runs on loopback: its jobs' energy is theirs
        assert row["energy_scope"] == ("local" if measured else "")
        assert (row["energy_j"] != "") == measured


def test_the_segment_stage_names_the_gpu_it_runs_on_for_the_meter(share, tmp_path):
    torch = pytest.importorskip("torch")
    from drawpipe.sam.settings import CutoutSettings, GeneratorSettings, ModelSettings
    from drawpipe.stages.segment import SegmentStage

    def stage(device):
        return SegmentStage(share, ModelSettings("vit_tiny", tmp_path / "sam.pth", device),
                            GeneratorSettings(), CutoutSettings())

    assert stage("cpu").cuda_devices() == ()  # no GPU in use: NVML measures none
    if torch.cuda.is_available():
        (uuid,) = stage("cuda").cuda_devices()
        assert uuid.startswith("GPU-") and len(uuid) == len("GPU-") + 36
