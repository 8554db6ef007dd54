"""The report's energy arithmetic (report/energy.py) on logs with known energies, written
by MetricsLog with the energy columns and read back by read_logs, beside an older log
without them."""

import pytest

from drawpipe.engine.energy import ENERGY_COLUMNS, EnergyReading
from drawpipe.engine.metrics import MetricsLog, read_logs
from drawpipe.report.energy import (ALL_HOSTS, check_grid_intensity, co2e_grams, energy_rows,
                                    energy_wh_by_output, format_energy, format_wh,
                                    power_over_time, stage_energy)

T0 = 1_795_356_000.0  # an epoch second (2026-11-22)


def job(output, status, seconds, end, reading=None):
    row = {"output": output, "status": status, "seconds": seconds, "time_utc": end}
    if reading is not None:
        row.update(reading.row())
    return row


def measured(meter, energy_j, seconds, idle_w=None, scope="local", **components_j):
    return EnergyReading(meter, scope, energy_j, components_j or {"cpu": energy_j}, idle_w, seconds)


@pytest.fixture
def logs(tmp_path):
    """Four hosts' upscale logs:
    mac-a  apple-soc, local: 3 images of 1800, 3600, 5400 J in 60 s at 10 W idle, and a
           failed job of 720 J in 30 s
    pc-b   rapl, driving a remote server (client side): 2 images of 360 J, no idle yet
    mac-c  an older log without energy columns: 2 images
    mac-d  energy columns, no meter: 1 image"""
    logs_dir = tmp_path / "logs"
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
    raw, skipped = read_logs(logs_dir, "upscale")
    assert skipped == 0 and len(raw) == 9
    return energy_rows(raw)


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
    assert format_energy(only_old) == ["  not measured on mac-c (a log written before "
                                       "energy was logged)"]


def test_the_text_report(logs):
    lines = format_energy(stage_energy("upscale", logs, left=10, grid_g_per_kwh=400))

    assert lines == [
        "Wh per image, gross | net of idle: mean  p50  p95",
        "  mac-a (apple-soc): 3 images, gross 1.00  1.00  1.45 | net 0.833  0.833  1.28; "
        "so far 3.20 Wh",
        "  pc-b (rapl, client side only): 2 images, gross 0.100  0.100  0.100 | net -  -  -; "
        "so far 0.200 Wh",
        "  not measured on mac-c (a log written before energy was logged)",
        "  not measured on mac-d",
        "  so far 3.40 Wh (net 2.62 Wh), of which 0.200 Wh client side (the remote servers' "
        "energy is not measured)",
        "  projected for 10 left: 10.7 Wh (net 8.72 Wh), at the measured hosts' rate",
        "  CO2e at 400 g/kWh: 1.36 g so far, 4.27 g projected",
    ]


def test_all_hosts_per_scope_and_failed_reads(tmp_path):
    logs_dir = tmp_path / "logs"
    for host, joules in (("mac-a", 3600), ("mac-b", 7200)):
        log = MetricsLog(logs_dir, "generate", host, extra_columns=ENERGY_COLUMNS)
        log.append(job(f"G/{host}.png", "done", 30.0, T0, measured("apple-soc", joules, 30.0)))
        # a window whose read failed: no energy, though the host measures
        log.append(job(f"G/{host}-2.png", "done", 30.0, T0 + 30,
                       EnergyReading("apple-soc", "local", None, {}, None, 30.0, "read failed")))
    energy = stage_energy("generate", energy_rows(read_logs(logs_dir, "generate")[0]), left=4)

    assert [f.host for f in energy.figures] == ["mac-a", "mac-b", ALL_HOSTS]
    everyone = energy.figures[-1]
    assert everyone.images == 2 and everyone.gross_wh_mean == pytest.approx(1.5)
    assert energy.unmeasured_rows == 2 and energy.not_measured == {}
    assert energy.projected_gross_kwh == pytest.approx(4 * 3 / 2 / 1000)
    assert energy.projected_net_kwh is None  # no idle figure
    assert "  2 job(s) on measuring hosts have no energy (a meter read failed)" in \
        format_energy(energy)


def test_power_over_time_and_each_images_energy(logs):
    series = power_over_time(logs)

    assert set(series) == {"mac-a", "pc-b"}
    assert series["mac-a"][0] == (pytest.approx(T0), pytest.approx(30.0))  # 1800 J / 60 s
    assert [round(w, 6) for _, w in series["mac-a"]] == [30.0, 60.0, 90.0, 24.0]
    by_output = energy_wh_by_output(logs)
    assert by_output == {"U/0.png": pytest.approx(0.5), "U/1.png": pytest.approx(1.0),
                         "U/2.png": pytest.approx(1.5)}  # client-side rows are not images'


def test_grid_intensity_and_formats():
    assert check_grid_intensity("350") == 350.0
    for bad in ("0", "-5", "abc", "nan", "5000", None):
        with pytest.raises(ValueError) as error:
            check_grid_intensity(bad)
        assert str(error.value) == ("the grid intensity must be grams of CO2e per kWh, a number "
                                    f"above 0 (coal is about 1,000); got {bad!r}")
    assert format_wh(0.36306) == "0.363 Wh"
    assert format_wh(4210) == "4.21 kWh"
    assert format_wh(None) == "-"
    assert format_wh(0) == "0 Wh"
