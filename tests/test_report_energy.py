"""The report's energy arithmetic (report/energy.py) on logs with known energies, written
by MetricsLog with the energy columns and read back by inventory.load_logs, beside an older
log without them."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROJECT_DIR
from PIL import Image

from drawpipe.cli.report import parse_arguments, settings_from_arguments
from drawpipe.engine.energy import ENERGY_COLUMNS, EnergyReading
from drawpipe.engine.metrics import MetricsLog
from drawpipe.errors import UsageError
from drawpipe.inventory import load_logs
from drawpipe.report.energy import (ALL_HOSTS, check_grid_intensity, co2e_grams, energy_notes,
                                    energy_table, format_wh, power_over_time, stage_energy)
from drawpipe.report.stats import energy_lines

T0 = 1_795_356_000.0  # an epoch second (2026-11-22)


def job(output, status, seconds, end, reading=None):
    row = {"output": output, "status": status, "seconds": seconds, "time_utc": end}
    if reading is not None:
        row.update(reading.row())
    return row


def measured(meter, energy_j, seconds, idle_w=None, scope="local", **components_j):
    return EnergyReading(meter, scope, energy_j, components_j or {"cpu": energy_j}, idle_w, seconds)


def write_upscale_logs(logs_dir: Path) -> None:
    """Four hosts' upscale logs:
    mac-a  apple-soc, local: 3 images of 1800, 3600, 5400 J in 60 s at 10 W idle, and a
           failed job of 720 J in 30 s
    pc-b   rapl, driving a remote server (client side): 2 images of 360 J, no idle yet
    mac-c  an older log without energy columns: 2 images
    mac-d  energy columns, no meter: 1 image"""
    mac_a = MetricsLog(logs_dir, "upscale", "mac-a", extra_columns=ENERGY_COLUMNS)
    for n, joules in enumerate((1800, 3600, 5400)):
        gpu = joules * 0.75
        mac_a.append(job(f"U/{n}.png", "done", 60.0, T0 + 60 * n,
                         measured("apple-soc", joules, 60.0, 10.0, cpu=joules - gpu, gpu=gpu)))
    mac_a.append(job("U/3.png", "failed", 30.0, T0 + 200, measured("apple-soc", 720, 30.0, 10.0)))
    pc_b = MetricsLog(logs_dir, "upscale", "pc-b", extra_columns=ENERGY_COLUMNS)
    for n in range(2):
        pc_b.append(job(f"U/b{n}.png", "done", 20.0, T0 + 20 * n,
                        measured("rapl", 360, 20.0, scope="client-side", cpu=300, dram=60)))
    old = MetricsLog(logs_dir, "upscale", "mac-c")
    for n in range(2):
        old.append(job(f"U/c{n}.png", "done", 50.0, T0 + 50 * n))
    mac_d = MetricsLog(logs_dir, "upscale", "mac-d", extra_columns=ENERGY_COLUMNS)
    mac_d.append(job("U/d0.png", "done", 40.0, T0,
                     EnergyReading(None, "local", None, {}, None, 40.0)))


@pytest.fixture
def logs(tmp_path):
    """write_upscale_logs' rows, as the report reads them."""
    logs_dir = tmp_path / "logs"
    write_upscale_logs(logs_dir)
    logs = load_logs(logs_dir)
    assert logs.lines_skipped == logs.rows_skipped == 0 and len(logs.rows["upscale"]) == 9
    return logs.rows["upscale"]


def test_wh_per_image_gross_and_net_per_host(logs):
    energy = stage_energy("upscale", logs, left=10)
    mac_a, pc_b = energy.figures  # one host each: no "all hosts" line per scope

    assert (mac_a.host, mac_a.scope, mac_a.meters, mac_a.images) == ("mac-a", "local",
                                                                      ("apple-soc",), 3)
    assert mac_a.gross_wh_mean == pytest.approx(1.0)  # 1800, 3600, 5400 J = 0.5, 1, 1.5 Wh
    assert mac_a.gross_wh_p50 == pytest.approx(1.0)
    assert mac_a.gross_wh_p95 == pytest.approx(1.45)  # 1 + 0.9 x 0.5
    # net = gross - 10 W x 60 s = 1200, 3000, 4800 J
    assert mac_a.net_wh_mean == pytest.approx(9000 / 3 / 3600)
    assert mac_a.net_wh_p50 == pytest.approx(3000 / 3600)
    assert mac_a.net_wh_p95 == pytest.approx((3000 + 0.9 * 1800) / 3600)
    assert mac_a.component_wh_mean == {"cpu": pytest.approx(0.25), "gpu": pytest.approx(0.75)}
    # so far: every row, the failed job's 720 J too
    assert mac_a.rows == 4
    assert mac_a.gross_kwh == pytest.approx(11520 / 3600 / 1000)
    assert mac_a.net_kwh == pytest.approx((9000 + 720 - 300) / 3600 / 1000)

    assert (pc_b.host, pc_b.scope, pc_b.images) == ("pc-b", "client-side", 2)
    assert pc_b.gross_wh_mean == pytest.approx(0.1)
    assert pc_b.net_wh_mean is None and pc_b.net_kwh is None  # no idle figure
    assert pc_b.component_wh_mean == {"cpu": pytest.approx(300 / 3600),
                                      "dram": pytest.approx(60 / 3600)}


def test_so_far_projected_and_co2e(logs):
    energy = stage_energy("upscale", logs, left=10, grid_g_per_kwh=400)

    assert energy.gross_kwh == pytest.approx((11520 + 720) / 3600 / 1000)
    assert energy.client_side_kwh == pytest.approx(720 / 3600 / 1000)
    # 10 left at mac-a's (local) 11520 J per 3 done images, the failed job included
    assert energy.projected_gross_kwh == pytest.approx(10 * 11520 / 3 / 3600 / 1000)
    assert energy.projected_net_kwh == pytest.approx(10 * 9420 / 3 / 3600 / 1000)
    assert co2e_grams(energy.gross_kwh, 400) == pytest.approx(1.36)
    assert co2e_grams(energy.projected_gross_kwh, 400) == pytest.approx(4.2667, abs=1e-4)
    assert co2e_grams(energy.gross_kwh, None) is None
    assert stage_energy("upscale", logs, left=None).projected_gross_kwh is None


def test_old_logs_and_hosts_without_a_meter_read_as_not_measured(logs):
    energy = stage_energy("upscale", logs, left=10)

    assert energy.not_measured == {"mac-c": "older log", "mac-d": ""}
    assert energy.unmeasured_rows == 0
    assert {f.host for f in energy.figures} == {"mac-a", "pc-b"}
    only_old = stage_energy("upscale", [row for row in logs if row.host == "mac-c"], left=3)
    assert not only_old.measured and only_old.projected_gross_kwh is None
    assert energy_table(only_old) == []
    assert energy_lines(only_old) == ["  energy: not measured on mac-c (a log written before "
                                      "energy was logged)"]


def test_the_text_report(logs):
    energy = stage_energy("upscale", logs, left=10, grid_g_per_kwh=400)

    assert energy_table(energy) == [
        ["host", "meter", "images", "Wh/img gross mean", "p50", "p95", "net mean", "p50", "p95",
         "of which (mean)", "so far"],
        ["mac-a", "apple-soc", "3", "1.00", "1.00", "1.45", "0.833", "0.833", "1.28",
         "CPU 0.250 GPU 0.750", "3.20 Wh"],
        ["pc-b", "rapl (client side only)", "2", "0.100", "0.100", "0.100", "-", "-", "-",
         "CPU 0.0833 DRAM 0.0167", "0.200 Wh"],
    ]
    assert energy_notes(energy) == [
        "not measured on mac-c (a log written before energy was logged)",
        "not measured on mac-d (no meter there; its runs' first lines say why)",
        "so far 3.40 Wh (net 2.62 Wh), of which 0.200 Wh client side (the remote servers' "
        "energy is not measured)",
        "projected for the 10 left: 10.7 Wh (net 8.72 Wh), at the measured hosts' rate",
        "CO2e at 400 g/kWh: 1.36 g so far, 4.27 g projected",
    ]
    lines = energy_lines(energy)
    assert lines[0] == ("  energy (Wh per image; gross: the meter's whole reading, net: less "
                        "idle power):")
    assert lines[2].split() == ["mac-a", "apple-soc", "3", "1.00", "1.00", "1.45", "0.833",
                                "0.833", "1.28", "CPU", "0.250", "GPU", "0.750", "3.20", "Wh"]
    assert lines[-1] == "    CO2e at 400 g/kWh: 1.36 g so far, 4.27 g projected"


def test_all_hosts_per_scope_and_failed_reads(tmp_path):
    logs_dir = tmp_path / "logs"
    for host, joules in (("mac-a", 3600), ("mac-b", 7200)):
        log = MetricsLog(logs_dir, "generate", host, extra_columns=ENERGY_COLUMNS)
        log.append(job(f"G/{host}.png", "done", 30.0, T0, measured("apple-soc", joules, 30.0)))
        # a window whose read failed: no energy, though the host measures
        log.append(job(f"G/{host}-2.png", "done", 30.0, T0 + 30,
                       EnergyReading("apple-soc", "local", None, {}, None, 30.0, "read failed")))
    energy = stage_energy("generate", load_logs(logs_dir).rows["generate"], left=4)

    assert [f.host for f in energy.figures] == ["mac-a", "mac-b", ALL_HOSTS]
    everyone = energy.figures[-1]
    assert everyone.images == 2 and everyone.gross_wh_mean == pytest.approx(1.5)
    assert energy.unmeasured_rows == 2 and energy.not_measured == {}
    assert energy.projected_gross_kwh == pytest.approx(4 * 3 / 2 / 1000)
    assert energy.projected_net_kwh is None  # no idle figure
    assert "2 job(s) on measuring hosts have no energy (a meter read failed)" in \
        energy_notes(energy)


def test_power_over_time_and_each_images_energy(logs):
    series = power_over_time(logs)

    assert set(series) == {"mac-a", "pc-b"}
    mac_a, pc_b = series["mac-a"], series["pc-b"]
    assert not mac_a.client_side and pc_b.client_side
    # mac-a's jobs: 1800 J over [T0-60, T0], 3600 J over [T0, T0+60], 5400 J over
    # [T0+60, T0+120], 720 J over [T0+170, T0+200]: 30, 60, 90 and 24 W while they ran;
    # stretches of 260 s / 400 = 1 s (the shortest), none in the gap they left.
    watts = {round(t - T0, 1): round(w, 6) for t, w in mac_a.busy}
    assert watts[-59.5] == watts[-0.5] == 30.0 and watts[0.5] == watts[59.5] == 60.0
    assert watts[60.5] == 90.0 and watts[170.5] == watts[199.5] == 24.0
    assert len(watts) == 180 + 30 and 150.5 not in watts
    assert mac_a.idle == [(pytest.approx(T0 + t), 10.0) for t in (0, 60, 120, 200)]
    assert pc_b.idle == []  # it logged no idle figure
    rows = {row.output: row for row in logs}
    assert rows["U/2.png"].image_wh == pytest.approx(1.5)
    assert rows["U/b0.png"].image_wh is None  # client side: not the image's energy
    assert rows["U/c0.png"].image_wh is None and not rows["U/c0.png"].energy_logged


def test_two_workers_windows_add_up_to_the_machines_power(tmp_path):
    """Two windows open at once share the machine's energy: 100 W for 10 s is 500 J in
    each; the chart shows the machine's 100 W, not each window's 50."""
    log = MetricsLog(tmp_path / "logs", "generate", "mac-a", extra_columns=ENERGY_COLUMNS)
    for worker in (1, 2):
        log.append(job(f"G/{worker}.png", "done", 10.0, T0, measured("apple-soc", 500, 10.0)))
    rows = load_logs(tmp_path / "logs").rows["generate"]
    assert {round(w, 6) for _, w in power_over_time(rows)["mac-a"].busy} == {100.0}


def test_grid_intensity_and_formats():
    assert check_grid_intensity("350") == 350.0
    for bad in ("0", "-5", "abc", "nan", "5000", None):
        with pytest.raises(ValueError) as error:
            check_grid_intensity(bad)
        assert str(error.value) == ("must be grams of CO2e per kWh, a number above 0 and below "
                                    f"2,000 (coal is about 1,000); got {bad!r}")
    assert format_wh(0.36306) == "0.363 Wh"
    assert format_wh(4210) == "4.21 kWh"
    assert format_wh(None) == "-"
    assert format_wh(0) == "0 Wh"


# --------------------------------------------------------------------------- the command


@pytest.fixture
def measured_share(share) -> Path:
    """write_upscale_logs on a share with 10 generated images not upscaled yet."""
    write_upscale_logs(share / "logs")
    folder = share / "GENERATIONS" / "Peru" / "family"
    folder.mkdir(parents=True)
    for n in range(1, 11):
        Image.new("RGB", (8, 8), (n, 0, 0)).save(folder / f"Peru_family_{n}.png")
    return share


def report(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "drawpipe.report", *map(str, args)],
                          capture_output=True, text=True, cwd=PROJECT_DIR, timeout=120)


def cells(html: str, table_class: str) -> list[list[str]]:
    table = re.search(rf'<table class="{table_class}">(.*?)</table>', html, re.S).group(1)
    return [re.findall(r"<t[hd]>(.*?)</t[hd]>", row) for row in table.split("</tr>") if "<t" in row]


def test_the_report_gives_each_stages_energy_on_the_terminal_and_the_page(measured_share):
    result = report("--root", measured_share, "--html", "--grid-intensity", "400",
                    "--processes", "1")
    assert result.returncode == 0, result.stderr
    upscale = result.stdout[result.stdout.index("\nupscale\n"):result.stdout.index("\nsegment\n")]
    lines = upscale.splitlines()
    start = lines.index("  energy (Wh per image; gross: the meter's whole reading, net: less "
                        "idle power):")
    assert [line.split() for line in lines[start + 2:start + 4]] == [
        ["mac-a", "apple-soc", "3", "1.00", "1.00", "1.45", "0.833", "0.833", "1.28", "CPU",
         "0.250", "GPU", "0.750", "3.20", "Wh"],
        ["pc-b", "rapl", "(client", "side", "only)", "2", "0.100", "0.100", "0.100", "-", "-",
         "-", "CPU", "0.0833", "DRAM", "0.0167", "0.200", "Wh"]]
    # upscale's 10 left: the generated images without an upscaled one
    assert lines[start + 4:] == [
        "    not measured on mac-c (a log written before energy was logged)",
        "    not measured on mac-d (no meter there; its runs' first lines say why)",
        "    so far 3.40 Wh (net 2.62 Wh), of which 0.200 Wh client side (the remote servers' "
        "energy is not measured)",
        "    projected for the 10 left: 10.7 Wh (net 8.72 Wh), at the measured hosts' rate",
        "    CO2e at 400 g/kWh: 1.36 g so far, 4.27 g projected"]
    assert "\nsegment\n  no job logged\n" in result.stdout  # no energy lines without jobs

    page = (measured_share / "report" / "index.html").read_text()
    assert cells(page, "energy") == [
        ["host", "meter", "images", "Wh/img gross mean", "p50", "p95", "net mean", "p50", "p95",
         "of which (mean)", "so far"],
        ["mac-a", "apple-soc", "3", "1.00", "1.00", "1.45", "0.833", "0.833", "1.28",
         "CPU 0.250 GPU 0.750", "3.20 Wh"],
        ["pc-b", "rapl (client side only)", "2", "0.100", "0.100", "0.100", "-", "-", "-",
         "CPU 0.0833 DRAM 0.0167", "0.200 Wh"]]
    notes = re.findall(r'<div class="energy-note">(.*?)</div>', page)
    assert notes[0] == "not measured on mac-c (a log written before energy was logged)"
    assert "projected for the 10 left: 10.7 Wh (net 8.72 Wh), at the measured hosts&#39; rate" \
        in notes
    assert "CO2e at 400 g/kWh: 1.36 g so far, 4.27 g projected" in notes
    with Image.open(measured_share / "report" / "charts" / "upscale.png") as chart:
        assert chart.size == (1000, 940)  # the fourth panel: W over time per host


def test_old_logs_alone_read_as_not_measured(share):
    log = MetricsLog(share / "logs", "generate", "mac-c")
    log.append(job("GENERATIONS/a.png", "done", 10.0, T0))
    result = report("--root", share)
    assert result.returncode == 0, result.stderr
    assert "  energy: not measured on mac-c (a log written before energy was logged)\n" in \
        result.stdout


def arguments(share: Path, *args):
    return settings_from_arguments(parse_arguments(["--root", str(share), *map(str, args)]), share)


@pytest.mark.parametrize("value", ["0", "-5", "2000", "nan", "inf"])
def test_a_grid_intensity_out_of_range_is_a_usage_error(share, value):
    with pytest.raises(UsageError) as error:
        arguments(share, "--grid-intensity", value)
    assert str(error.value) == ("--grid-intensity must be grams of CO2e per kWh, a number above "
                                f"0 and below 2,000 (coal is about 1,000); got {float(value)!r}")


def test_the_grid_intensity_comes_from_the_profile_unless_given(share, tmp_path):
    config = tmp_path / "drawpipe.toml"
    config.write_text("[profiles.home]\ngrid_intensity = 250\n")
    assert arguments(share, "--config", config).grid_g_per_kwh == 250.0
    assert arguments(share, "--config", config, "--grid-intensity", "30").grid_g_per_kwh == 30.0
    assert arguments(share).grid_g_per_kwh is None  # no default
    config.write_text("[profiles.home]\ngrid_intensity = 9000\n")
    with pytest.raises(UsageError, match="^grid_intensity of the profile 'home' must be grams"):
        arguments(share, "--config", config)


@pytest.mark.parametrize("args, message", [
    (["--grid-intensity", "-1"], "error: --grid-intensity must be grams of CO2e per kWh"),
    (["--grid-intensity", "lots"], "argument --grid-intensity: invalid float value: 'lots'"),
])
def test_a_bad_grid_intensity_exits_2_with_one_line(measured_share, args, message):
    result = report("--root", measured_share, *args)
    assert result.returncode == 2
    assert message in result.stderr.strip().splitlines()[-1]  # one line (argparse: after usage)
    assert not (measured_share / "report").exists()
