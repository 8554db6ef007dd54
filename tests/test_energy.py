"""Energy meters (engine/energy.py): RAPL on a powercap tree built in a temporary folder,
zeus-apple-silicon and NVML through stand-ins of those libraries (tests/doubles/, put on
sys.path here), and the ledger that splits a counter among windows and measures idle."""

import json
import os
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from powercap import DRAM_RANGE_UJ, PACKAGE_RANGE_UJ, set_energy, two_socket_machine, write_zone

from drawpipe.engine import energy
from drawpipe.engine.energy import (CLIENT_SIDE, ENERGY_COLUMNS, IDLE_MIN_SECONDS, LOCAL,
                                    EnergyMeter, NvmlCounter, RaplCounter, choose_meter,
                                    find_rapl_domains)

DOUBLES = Path(__file__).resolve().parent / "doubles"
MAC = ("darwin", "arm64")
LINUX = ("linux", "x86_64")


class Clock:
    """Monotonic seconds the test moves by hand."""

    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------- RAPL


@pytest.fixture
def powercap(tmp_path) -> Path:
    return two_socket_machine(tmp_path / "powercap")


def test_rapl_reads_packages_and_dram_and_leaves_out_what_they_contain(powercap):
    domains = find_rapl_domains(powercap)

    assert [(d.path.name, d.name, d.component) for d in domains] == [
        ("intel-rapl:0", "package-0", "cpu"), ("intel-rapl:0:2", "dram", "dram"),
        ("intel-rapl:1", "package-1", "cpu"), ("intel-rapl:1:0", "dram", "dram")]
    assert domains[1].max_energy_range_uj == DRAM_RANGE_UJ
    counter = RaplCounter(powercap)
    assert counter.components == ("cpu", "dram")
    assert counter.scope == "RAPL: package-0, dram, package-1, dram"


def test_a_rapl_window_is_the_difference_of_the_counters(powercap):
    clock = Clock()
    meter = EnergyMeter(RaplCounter(powercap), clock=clock)
    window = meter.open_window()
    set_energy(powercap, "intel-rapl:0", 1_000_000 + 12_500_000)  # +12.5 J
    set_energy(powercap, "intel-rapl:1", 3_000_000 + 7_000_000)  # +7 J
    set_energy(powercap, "intel-rapl:0:2", 2_000_000 + 1_250_000)  # +1.25 J
    set_energy(powercap, "intel-rapl:0:0", 500_000 + 99_000_000)  # core: inside package-0
    set_energy(powercap, "intel-rapl:2", 9_000_000 + 99_000_000)  # psys: not added
    clock.now += 4.0
    reading = window.close()

    assert reading.meter == "rapl" and reading.scope == LOCAL and reading.error is None
    assert reading.components_j == {"cpu": pytest.approx(19.5), "dram": pytest.approx(1.25)}
    assert reading.energy_j == pytest.approx(20.75)
    assert reading.seconds == 4.0
    assert reading.row() == {"energy_meter": "rapl", "energy_scope": "local", "energy_j": 20.75,
                             "energy_cpu_j": 19.5, "energy_gpu_j": None, "energy_ane_j": None,
                             "energy_dram_j": 1.25, "idle_w": None}
    assert set(reading.row()) == set(ENERGY_COLUMNS)
    assert window.close() is reading  # a second close changes nothing


def test_a_rapl_counter_that_wraps_around_inside_a_window(powercap):
    set_energy(powercap, "intel-rapl:0", PACKAGE_RANGE_UJ - 2_000_000)  # 2 J before the end
    meter = EnergyMeter(RaplCounter(powercap), clock=Clock())
    window = meter.open_window()
    set_energy(powercap, "intel-rapl:0", 3_000_000)  # past the end, from 0: 5 J in all

    assert window.close().components_j == {"cpu": pytest.approx(5.0), "dram": 0.0}


def choose_as_another_user(root: Path) -> dict:
    """choose_meter(powercap_root=root) in a child that is not root (root reads any
    file): the child of a fork drops to the user nobody; a user already is one."""
    def choose() -> dict:
        meter = choose_meter(powercap_root=root, host="testhost", system=LINUX)
        return {"measuring": meter.measuring, "reason": meter.reason,
                "row": meter.open_window().close().row()}

    if os.geteuid() != 0:
        return choose()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to nobody, answer in one JSON line, leave at once
        try:
            os.close(read_end)
            os.setgid(65534)
            os.setuid(65534)
            sys.modules["pynvml"] = None  # this part is about RAPL alone
            os.write(write_end, json.dumps(choose()).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as answer:
        data = answer.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def test_a_rapl_zone_not_readable_measures_nothing_and_says_why_in_one_line():
    # Since Linux 5.10 energy_uj is mode 0400, root's alone. The tree must be readable
    # for everyone but that file, so it is made outside pytest's private tmp folder.
    root = Path(tempfile.mkdtemp(prefix="powercap-"))
    try:
        os.chmod(root, 0o755)
        for zone, name in (("intel-rapl:0", "package-0"), ("intel-rapl:0:0", "dram")):
            folder = write_zone(root, zone, name, 1_000)
            os.chmod(folder, 0o755)
            for file in folder.iterdir():
                os.chmod(file, 0o444)
        os.chmod(root / "intel-rapl:0:0" / "energy_uj", 0o400 if os.geteuid() == 0 else 0)

        answer = choose_as_another_user(root)
    finally:
        os.chmod(root / "intel-rapl:0:0" / "energy_uj", 0o644)
        for path in sorted(root.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        root.rmdir()

    assert answer["measuring"] is False
    assert answer["reason"] == (
        f"not measured on testhost: {root}/intel-rapl:0:0/energy_uj is not readable (root only "
        "since Linux 5.10; a udev rule or chmod can open it); nvidia-ml-py is not installed "
        "(pip install 'drawpipe[energy]')")
    assert all(value is None for value in answer["row"].values())


def test_no_powercap_and_no_nvml_is_not_measured(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # nvidia-ml-py not installed
    meter = choose_meter(powercap_root=tmp_path / "none", host="box", system=LINUX)

    assert not meter.measuring and meter.name is None
    assert meter.reason == (f"not measured on box: {tmp_path / 'none'} does not exist (no "
                            "powercap in this kernel); nvidia-ml-py is not installed "
                            "(pip install 'drawpipe[energy]')")
    assert meter.describe() == "energy: " + meter.reason
    window = meter.open_window(local=False)
    reading = window.close()
    assert reading.meter is None and reading.energy_j is None and reading.error is None
    assert set(reading.row()) == set(ENERGY_COLUMNS)
    assert all(value is None for value in reading.row().values())
    assert meter.measure_idle(5, wait=pytest.fail) is None  # no meter: no waiting either


# ---------------------------------------------------------------- the ledger


def test_windows_open_at_the_same_time_share_the_energy(powercap):
    clock = Clock()
    meter = EnergyMeter(RaplCounter(powercap), clock=clock)
    package = 1_000_000

    def spend(joules: float) -> None:
        nonlocal package
        package += int(joules * 1e6)
        set_energy(powercap, "intel-rapl:0", package)
        clock.now += 1.0

    first = meter.open_window()
    spend(10)
    second = meter.open_window(local=False)
    spend(20)  # both open: 10 J each
    first_reading = first.close()
    spend(6)
    second_reading = second.close()

    assert first_reading.energy_j == pytest.approx(20.0)
    assert second_reading.energy_j == pytest.approx(16.0)
    assert first_reading.energy_j + second_reading.energy_j == pytest.approx(36.0)
    assert second_reading.scope == CLIENT_SIDE
    assert second_reading.row()["energy_scope"] == "client-side"


def test_idle_power_at_start_and_from_gaps_between_windows(powercap):
    clock = Clock()
    meter = EnergyMeter(RaplCounter(powercap), clock=clock)
    package = 1_000_000

    def idle(seconds: float, watts: float) -> None:
        nonlocal package
        package += int(seconds * watts * 1e6)
        set_energy(powercap, "intel-rapl:0", package)
        clock.now += seconds

    assert meter.idle_age_seconds() is None
    assert meter.measure_idle(3.0, wait=lambda seconds: idle(seconds, 5.0)) == pytest.approx(5.0)
    assert meter.idle_age_seconds() == 0.0

    window = meter.open_window()
    idle(10.0, 40.0)  # the job: 400 J
    reading = window.close()
    assert reading.energy_j == pytest.approx(400.0) and reading.idle_w == pytest.approx(5.0)
    assert reading.row()["idle_w"] == 5.0

    idle(IDLE_MIN_SECONDS / 2, 50.0)  # a worker moving on: too short to be idle
    meter.open_window().close()
    assert meter.idle_w == pytest.approx(5.0)

    idle(IDLE_MIN_SECONDS + 2, 7.0)  # a poll wait with no window open: idle
    assert meter.open_window().close().idle_w == pytest.approx(7.0)
    assert meter.idle_age_seconds() == 0.0


def test_idle_is_not_measured_while_a_window_is_open_or_when_cut_short(powercap):
    clock = Clock()
    meter = EnergyMeter(RaplCounter(powercap), clock=clock)
    window = meter.open_window()

    assert meter.measure_idle(3.0, wait=lambda seconds: None) is None
    window.close()
    opened = []
    assert meter.measure_idle(3.0, wait=lambda seconds: opened.append(meter.open_window())) is None
    opened[0].close()

    def stopped_at_once(seconds):
        clock.now += 0.1

    assert meter.measure_idle(3.0, wait=stopped_at_once) is None  # a stop signal came
    assert meter.idle_w is None


def test_a_failed_read_costs_the_windows_across_it_their_energy_and_no_more(powercap):
    clock = Clock()
    meter = EnergyMeter(RaplCounter(powercap), clock=clock)
    window = meter.open_window()
    (powercap / "intel-rapl:0" / "energy_uj").write_text("garbage\n")
    other = meter.open_window()  # opened while the counter cannot be read
    set_energy(powercap, "intel-rapl:0", 5_000_000)
    reading = window.close()
    other_reading = other.close()

    assert reading.energy_j is None and other_reading.energy_j is None
    assert reading.error.startswith("energy read failed: ValueError: invalid literal")
    assert all(value is None for value in reading.row().values())
    set_energy(powercap, "intel-rapl:0", 6_000_000)
    assert meter.open_window().close().energy_j == 0.0  # read again from here on
    window = meter.open_window()
    set_energy(powercap, "intel-rapl:0", 8_000_000)
    assert window.close().energy_j == pytest.approx(2.0)


# ---------------------------------------------------------------- stand-ins


@pytest.fixture
def stand_ins(monkeypatch):
    """tests/doubles/ first on sys.path: ``import zeus_apple_silicon`` and ``import
    pynvml`` find the stand-ins, fresh for each test; this process's Apple monitor is
    forgotten before and after."""
    for name in ("zeus_apple_silicon", "pynvml"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(DOUBLES))
    monkeypatch.setattr(energy, "_apple_monitor", None)
    import pynvml
    import zeus_apple_silicon
    yield zeus_apple_silicon.chip, pynvml.machine
    for name in ("zeus_apple_silicon", "pynvml"):
        sys.modules.pop(name, None)


def m_series(chip, **counters_mj):
    chip.counters_mj.update(counters_mj)
    return chip


def test_apple_silicon_splits_the_soc_into_cpu_gpu_ane_dram(stand_ins):
    chip, _ = stand_ins
    m_series(chip, cpu_total_mj=1_000, gpu_mj=2_000, ane_mj=30, dram_mj=400, gpu_sram_mj=10,
             efficiency_cores_mj=[1, 2], performance_cores_mj=[3, 4])
    meter = choose_meter(host="mac", system=MAC)
    assert meter.describe(host="mac") == "energy: apple-soc (Apple SoC: CPU, GPU, ANE, DRAM) on mac"

    window = meter.open_window()
    chip.add(cpu_total_mj=1_500, gpu_mj=20_250, ane_mj=0, dram_mj=750, gpu_sram_mj=999)
    reading = window.close()

    assert reading.components_j == {"cpu": 1.5, "gpu": 20.25, "ane": 0.0, "dram": 0.75}
    assert reading.energy_j == pytest.approx(22.5)  # GPU SRAM is not added
    assert reading.row()["energy_ane_j"] == 0.0  # measured zero is not "not measured"


def test_a_component_the_chip_lacks_stays_empty(stand_ins):
    chip, _ = stand_ins
    m_series(chip, cpu_total_mj=0, gpu_mj=0, ane_mj=0)  # no DRAM channel on this chip
    meter = choose_meter(system=MAC)
    window = meter.open_window()
    chip.add(cpu_total_mj=2_000, gpu_mj=3_000, ane_mj=500)
    row = window.close().row()

    assert meter.counter.components == ("cpu", "gpu", "ane")
    assert row["energy_dram_j"] is None and row["energy_j"] == 5.5


def test_apple_silicon_missing_or_refused_is_not_measured(stand_ins, monkeypatch):
    chip, _ = stand_ins
    chip.refuse_subscription = True
    meter = choose_meter(host="mac", system=MAC)
    assert meter.reason == ("not measured on mac: IOReport refused: RuntimeError: Failed to "
                            "create IOReport subscription.")

    chip.refuse_subscription = False  # a chip that reports none of the four
    assert choose_meter(host="mac", system=MAC).reason == (
        "not measured on mac: IOReport reports no CPU, GPU, ANE or DRAM energy here")

    monkeypatch.setitem(sys.modules, "zeus_apple_silicon", None)  # not installed
    monkeypatch.setattr(energy, "_apple_monitor", None)
    assert choose_meter(host="mac", system=MAC).reason == (
        "not measured on mac: zeus-apple-silicon is not installed (pip install 'drawpipe[energy]')")
    assert choose_meter(host="old", system=("darwin", "x86_64")).reason == (
        "not measured on old: an Intel Mac (IOReport energy needs Apple Silicon)")


def test_an_apple_window_that_raises_gets_no_energy_and_the_next_one_does(stand_ins):
    chip, _ = stand_ins
    m_series(chip, cpu_total_mj=0, gpu_mj=0, ane_mj=0, dram_mj=0)
    meter = choose_meter(system=MAC)
    window = meter.open_window()
    chip.add(gpu_mj=5_000)
    chip.fail_next = RuntimeError("Failed to convert CFString to std::string")
    reading = window.close()

    assert reading.energy_j is None and reading.meter == "apple-soc"
    assert reading.error == ("energy read failed: RuntimeError: Failed to convert CFString "
                             "to std::string")
    window = meter.open_window()
    chip.add(gpu_mj=1_000)
    assert window.close().energy_j == 1.0


def test_a_chip_channel_that_vanishes_mid_window_is_not_passed_off_as_the_whole(stand_ins):
    chip, _ = stand_ins
    m_series(chip, cpu_total_mj=0, gpu_mj=0, ane_mj=0, dram_mj=0)
    meter = choose_meter(system=MAC)
    window = meter.open_window()
    chip.counters_mj["dram_mj"] = None
    reading = window.close()

    assert reading.energy_j is None
    assert reading.error == "energy: DRAM not reported in this window"


def test_one_apple_monitor_per_process_and_no_two_calls_at_once(stand_ins):
    chip, _ = stand_ins
    m_series(chip, cpu_total_mj=0, gpu_mj=0, ane_mj=0, dram_mj=0)
    chip.call_seconds = 0.001
    # Two meters (two runs in one process), four workers: one monitor, one call at a time.
    meters = [choose_meter(system=MAC), choose_meter(system=MAC)]
    readings = []

    def worker(meter):
        for _ in range(15):
            window = meter.open_window()
            chip.add(gpu_mj=10)
            readings.append(window.close())

    threads = [threading.Thread(target=worker, args=(meters[i % 2],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert chip.monitors_made == 1
    assert chip.calls >= 4 * 15 * 2 and chip.overlapping_calls == 0
    assert len(readings) == 60 and all(r.error is None for r in readings)
    # The stand-in sees overlapping calls when nothing holds them apart.
    import zeus_apple_silicon
    monitor = zeus_apple_silicon.AppleEnergyMonitor()
    threads = [threading.Thread(target=lambda: [monitor.get_cumulative_energy() for _ in range(5)])
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert chip.overlapping_calls > 0


def nvidia(machine, *gpus):
    import pynvml
    machine.gpus = [pynvml.Gpu(name, f"GPU-{index}{index}aa-{name[-4:]}", energy)
                    for index, (name, energy) in enumerate(gpus)]
    return machine.gpus


def test_nvml_measures_the_gpu_in_use_in_joules(stand_ins, tmp_path, monkeypatch):
    _, machine = stand_ins
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    gpus = nvidia(machine, ("NVIDIA H100 80GB HBM3", 5_000_000), ("NVIDIA H100 80GB HBM3", 9_000))
    meter = choose_meter(gpus=(1,), powercap_root=tmp_path / "none", host="gpubox", system=LINUX)

    assert meter.describe(host="gpubox") == "energy: nvml (NVIDIA GPU: NVIDIA H100 80GB HBM3) on gpubox"
    window = meter.open_window()
    gpus[1].energy_mj += 1_307_000  # ML.ENERGY's SDXL image on an A100
    gpus[0].energy_mj += 99_000_000  # another GPU's work is not ours
    reading = window.close()
    assert reading.components_j == {"gpu": 1307.0} and reading.energy_j == 1307.0
    assert reading.row()["energy_cpu_j"] is None
    meter.close()
    assert machine.initialized == 0


def test_nvml_follows_cuda_visible_devices(stand_ins, tmp_path, monkeypatch):
    _, machine = stand_ins
    gpus = nvidia(machine, ("NVIDIA A100-SXM4-40GB", 0), ("NVIDIA L4", 0), ("NVIDIA T4", 0))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    assert NvmlCounter((0,)).scope == "NVIDIA GPU: NVIDIA T4"  # cuda:0 is the third GPU
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", gpus[1].uuid)
    assert NvmlCounter((0,)).scope == "NVIDIA GPU: NVIDIA L4"
    assert NvmlCounter(None).scope == "NVIDIA GPU: NVIDIA L4"  # all it can see: one
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert NvmlCounter(None).scope == ("NVIDIA GPU: NVIDIA A100-SXM4-40GB, NVIDIA L4, "
                                       "NVIDIA T4")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    meter = choose_meter(gpus=(1,), powercap_root=tmp_path / "none", host="h", system=LINUX)
    assert meter.reason.startswith("not measured on h: ")
    assert meter.reason.endswith("cuda:1 is not in CUDA_VISIBLE_DEVICES")


def test_nvml_without_library_or_energy_counter_is_not_measured(stand_ins, tmp_path):
    _, machine = stand_ins
    gpus = nvidia(machine, ("Tesla P100-PCIE-16GB", 0))
    gpus[0].supported = False  # Pascal has no total-energy counter
    meter = choose_meter(gpus=(0,), powercap_root=tmp_path / "none", host="h", system=LINUX)
    assert meter.reason == (f"not measured on h: {tmp_path / 'none'} does not exist (no powercap "
                            "in this kernel); NVML: Tesla P100-PCIE-16GB: total energy: Not "
                            "Supported (Volta or newer needed)")
    assert machine.initialized == 0  # shut down again

    machine.library_found = False
    meter = choose_meter(powercap_root=tmp_path / "none", host="h", system=LINUX)
    assert meter.reason.endswith("; NVML: NVML Shared Library Not Found")


def test_an_nvml_read_that_fails_or_goes_backwards_costs_one_window(stand_ins, tmp_path):
    _, machine = stand_ins
    import pynvml
    (gpu,) = nvidia(machine, ("NVIDIA L4", 1_000_000))
    meter = EnergyMeter(NvmlCounter((0,)), clock=Clock())

    window = meter.open_window()
    machine.fail_next = pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
    assert window.close().error == "energy read failed: NVMLError_GpuIsLost: GPU is lost"
    window = meter.open_window()
    gpu.energy_mj = 10  # the driver was reloaded: its counter starts again
    assert window.close().error == ("energy read failed: the NVML energy counter went "
                                    "backwards (driver reloaded?)")
    window = meter.open_window()
    gpu.energy_mj += 2_500
    assert window.close().energy_j == 2.5


def test_rapl_and_nvml_together_are_one_meter(stand_ins, powercap):
    _, machine = stand_ins
    (gpu,) = nvidia(machine, ("NVIDIA L4", 0))
    meter = choose_meter(gpus=(0,), powercap_root=powercap, system=LINUX)

    assert meter.name == "rapl+nvml"
    window = meter.open_window()
    gpu.energy_mj += 70_000
    set_energy(powercap, "intel-rapl:1", 3_000_000 + 30_000_000)
    reading = window.close()
    assert reading.components_j == {"cpu": 30.0, "dram": 0.0, "gpu": 70.0}
    assert reading.energy_j == 100.0
    meter.close()
    assert machine.initialized == 0
