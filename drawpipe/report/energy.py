"""Energy in the report: what each stage cost per image and in all, from the logs' energy
columns (engine/energy.py writes them; inventory.py's LogRow reads them). Pure functions,
no files read:

    stage_energy(stage, rows, left)   StageEnergy: EnergyFigures per host and scope, all
                                      hosts, the hosts not measured, kWh so far, projection
    energy_table(energy)              its figures as rows of cells (the text and HTML tables)
    energy_notes(energy)              the sentences under the table: not measured, so far,
                                      projected, CO2e
    co2e_grams(kwh, grid_g_per_kwh)   CO2e of an energy at a grid intensity the user gives
    check_grid_intensity(value)       the --grid-intensity value, or ValueError (one line)
    power_over_time(rows)             host -> PowerSeries: the chart of W over time

Definitions (README's "Energy per image" says the same):

- *gross* energy of a job: its window's ``energy_j``, the meter's whole counter (whole
  chip, GPU or CPU package) while the job ran. *net*: ``energy_j - idle_w x seconds``,
  what the job caused above the machine idling (a job measured below idle counts 0); a
  row without ``idle_w`` has no net.
- *Wh per image* (mean, p50, p95; gross and net): over "done" rows with energy;
  percentiles interpolate linearly between closest ranks, as the report's seconds do.
- *so far*: every row with energy, whatever its status: a failed or duplicate job drew
  power too. *projected*: jobs left x (energy so far / images done), at the rate of the
  measured hosts, waste included.
- *scope*: "local" rows measured the machine where the image was drawn: they are the
  image's energy. "client-side" rows measured a Mac that drove a remote server: its own
  side only; they count in "so far" (electricity the dataset used) but never as an
  image's energy, and the server's side is not measured.
- *not measured*: a host whose rows carry no energy: no meter there ("not measured on
  <host>"), or a log written before the energy columns (older layout), which reads the
  same way. Nothing is estimated in their place.
- *CO2e*: kWh x the grid intensity (gCO2e per kWh) the user gives; no default, since no
  figure fits every grid.
- *W over time*: per host, the machine's mean power while its jobs ran (the energy of
  the jobs overlapping each stretch of time over the time they covered: windows open at
  once share the machine's energy, so their sum is the machine's), and the idle power
  each row logged.
"""

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass

from drawpipe.engine.energy import CLIENT_SIDE, COMPONENTS, LOCAL
from drawpipe.inventory import J_PER_WH, LogRow

ALL_HOSTS = "all hosts"


def _quantile(values: list[float], fraction: float) -> float | None:
    """Linear between closest ranks (statistics' "inclusive", numpy's default)."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=20, method="inclusive")[round(fraction * 20) - 1]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


@dataclass(frozen=True)
class EnergyFigures:
    """One host's (or all hosts') energy for one stage and scope. Per image: "done" rows
    with energy; ``gross_kwh``/``net_kwh``: every row with energy (net: those with
    idle_w); ``component_wh_mean``: mean Wh per image of each component measured."""

    host: str
    scope: str
    meters: tuple[str, ...]
    images: int
    gross_wh_mean: float | None
    gross_wh_p50: float | None
    gross_wh_p95: float | None
    net_wh_mean: float | None
    net_wh_p50: float | None
    net_wh_p95: float | None
    component_wh_mean: dict[str, float]
    rows: int
    gross_kwh: float
    net_kwh: float | None


def _figures(host: str, scope: str, rows: list[LogRow]) -> EnergyFigures:
    done = [row for row in rows if row.status == "done"]
    gross = [row.gross_wh for row in done]
    net = [row.net_wh for row in done if row.net_wh is not None]
    components = {}
    for component in COMPONENTS:
        values = [row.energy_components_j[component] / J_PER_WH for row in done
                  if component in row.energy_components_j]
        if values:
            components[component] = _mean(values)
    nets = [row.net_wh for row in rows if row.net_wh is not None]
    return EnergyFigures(
        host=host, scope=scope,
        meters=tuple(sorted({row.energy_meter for row in rows if row.energy_meter})),
        images=len(done),
        gross_wh_mean=_mean(gross), gross_wh_p50=_quantile(gross, 0.50),
        gross_wh_p95=_quantile(gross, 0.95),
        net_wh_mean=_mean(net), net_wh_p50=_quantile(net, 0.50), net_wh_p95=_quantile(net, 0.95),
        component_wh_mean=components,
        rows=len(rows),
        gross_kwh=sum(row.gross_wh for row in rows) / 1000,
        net_kwh=sum(nets) / 1000 if nets else None,
    )


@dataclass
class StageEnergy:
    """One stage's energy. ``figures``: per (host, scope), local first, sorted by host,
    then an "all hosts" line per scope measured on more than one host. ``not_measured``:
    host -> why ("" for no meter, or "older log"). ``unmeasured_rows``: rows without
    energy on hosts that do measure (a failed read). ``projected_*_kwh``: for ``left``
    jobs at the local rate per done image; None without jobs left (or their count), local
    images or (net) idle figures."""

    stage: str
    figures: list[EnergyFigures]
    not_measured: dict[str, str]
    unmeasured_rows: int
    left: int | None
    gross_kwh: float
    net_kwh: float | None
    client_side_kwh: float
    projected_gross_kwh: float | None
    projected_net_kwh: float | None
    grid_g_per_kwh: float | None = None

    @property
    def measured(self) -> bool:
        return bool(self.figures)


def stage_energy(stage: str, rows: list[LogRow], left: int | None,
                 grid_g_per_kwh: float | None = None) -> StageEnergy:
    """The figures of one stage's rows (inventory.load_logs) with ``left`` jobs still to
    do (None: unknown)."""
    by_group: dict[tuple[str, str], list[LogRow]] = defaultdict(list)
    hosts_measured = set()
    for row in rows:
        if row.energy_j is not None:
            by_group[(row.host, row.energy_scope)].append(row)
            hosts_measured.add(row.host)
    figures = [_figures(host, scope, by_group[(host, scope)])
               for host, scope in sorted(by_group, key=lambda key: (key[1] != LOCAL, key))]
    for scope in (LOCAL, CLIENT_SIDE):
        group = [row for (host, s), rows_ in by_group.items() if s == scope for row in rows_]
        if len({row.host for row in group}) > 1:
            figures.append(_figures(ALL_HOSTS, scope, sorted(group, key=lambda r: r.end)))
    not_measured = {}
    for row in rows:
        if row.host not in hosts_measured:
            # a host with new rows and older-layout rows is "no meter": that is now
            if not_measured.get(row.host) != "":
                not_measured[row.host] = "" if row.energy_logged else "older log"
    measured_rows = [row for row in rows if row.energy_j is not None]
    nets = [row.net_wh for row in measured_rows if row.net_wh is not None]
    local = [row for row in measured_rows if row.energy_scope == LOCAL]
    local_done = sum(row.status == "done" for row in local)
    local_nets = [row.net_wh for row in local if row.net_wh is not None]
    projected_gross = projected_net = None
    if left and local_done:  # nothing left: nothing to project
        projected_gross = left * sum(row.gross_wh for row in local) / local_done / 1000
        if len(local_nets) == len(local):  # every local row has its idle figure
            projected_net = left * sum(local_nets) / local_done / 1000
    return StageEnergy(
        stage=stage, figures=figures, not_measured=not_measured,
        unmeasured_rows=sum(1 for row in rows
                            if row.energy_j is None and row.host in hosts_measured),
        left=left,
        gross_kwh=sum(row.gross_wh for row in measured_rows) / 1000,
        net_kwh=sum(nets) / 1000 if nets else None,
        client_side_kwh=sum(row.gross_wh for row in measured_rows
                            if row.energy_scope == CLIENT_SIDE) / 1000,
        projected_gross_kwh=projected_gross, projected_net_kwh=projected_net,
        grid_g_per_kwh=grid_g_per_kwh,
    )


def co2e_grams(kwh: float | None, grid_g_per_kwh: float | None) -> float | None:
    """kWh x gCO2e/kWh; None when either is unknown."""
    if kwh is None or grid_g_per_kwh is None:
        return None
    return kwh * grid_g_per_kwh


def check_grid_intensity(value) -> float:
    """The grid intensity in gCO2e per kWh as a float; ValueError ("must be ...", for
    the user after the setting's name) unless it is a number above 0 and below 2,000
    (coal is about 1,000)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not 0 < number < 2000:  # nan fails too
        raise ValueError(f"must be grams of CO2e per kWh, a number above 0 and below 2,000 "
                         f"(coal is about 1,000); got {value!r}")
    return number


# --------------------------------------------------------------------------- W over time

# The chart's time axis is cut into at most this many stretches, none shorter than
# MIN_STRETCH_SECONDS: a night of thousands of jobs stays a readable line.
MAX_POINTS = 400
MIN_STRETCH_SECONDS = 1.0


@dataclass(frozen=True)
class PowerSeries:
    """One host's power over time. ``busy``: (epoch seconds, mean W of the machine while
    its jobs ran) per stretch of time with jobs; ``idle``: (epoch seconds a job ended,
    the idle W it logged); ``client_side``: every measured row is client-side (a Mac
    driving a remote server: its own side only)."""

    busy: list[tuple[float, float]]
    idle: list[tuple[float, float]]
    client_side: bool


def _spread(start: float, end: float, first: float, width: float, add) -> None:
    """Call ``add(stretch index, seconds of [start, end] inside it)`` for each stretch of
    ``width`` seconds (from ``first``) that [start, end] overlaps."""
    index = int((start - first) // width)
    while start < end:
        stretch_end = first + (index + 1) * width
        overlap = min(end, stretch_end) - start
        if overlap > 0:
            add(index, overlap)
        start = stretch_end
        index += 1


def _busy_power(rows: list[LogRow]) -> list[tuple[float, float]]:
    jobs = [(row.start, row.end, row.energy_j) for row in rows if row.seconds]
    if not jobs:
        return []
    first, last = min(job[0] for job in jobs), max(job[1] for job in jobs)
    width = max((last - first) / MAX_POINTS, MIN_STRETCH_SECONDS)
    count = int((last - first) // width) + 1
    joules, covered = [0.0] * count, [0.0] * count
    for start, end, energy_j in jobs:
        watts = energy_j / (end - start)

        def add_energy(index, seconds, watts=watts):
            joules[index] += watts * seconds

        _spread(start, end, first, width, add_energy)
    merged: list[list[float]] = []  # the union of the jobs' intervals: time covered
    for start, end, _ in sorted(jobs):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])

    def add_time(index, seconds):
        covered[index] += seconds

    for start, end in merged:
        _spread(start, end, first, width, add_time)
    return [(first + (index + 0.5) * width, joules[index] / covered[index])
            for index in range(count) if covered[index] > 0]


def power_over_time(rows: list[LogRow]) -> dict[str, PowerSeries]:
    """host -> PowerSeries of its measured rows (oldest first), hosts sorted."""
    by_host: dict[str, list[LogRow]] = defaultdict(list)
    for row in rows:
        if row.energy_j is not None:
            by_host[row.host].append(row)
    return {host: PowerSeries(
        busy=_busy_power(mine),
        idle=sorted((row.end, row.idle_w) for row in mine if row.idle_w is not None),
        client_side=all(row.energy_scope == CLIENT_SIDE for row in mine))
        for host, mine in sorted(by_host.items())}


# --------------------------------------------------------------------------- text


def format_wh(wh: float | None) -> str:
    """0.3631 -> "0.363 Wh"; 4210 -> "4.21 kWh"; None -> "-"."""
    if wh is None:
        return "-"
    if abs(wh) >= 1000:
        return f"{_three_digits(wh / 1000)} kWh"
    return f"{_three_digits(wh)} Wh"


def _three_digits(value: float) -> str:
    if value == 0:
        return "0"
    decimals = max(0, 2 - math.floor(math.log10(abs(value))))
    return f"{value:,.{decimals}f}"


def _cell(wh: float | None) -> str:
    return "-" if wh is None else _three_digits(wh)


def format_grams(grams: float) -> str:
    return f"{_three_digits(grams / 1000)} kg" if grams >= 1000 else f"{_three_digits(grams)} g"


# (heading, value from EnergyFigures); the text and HTML tables both show these
TABLE_COLUMNS = (
    ("host", lambda f: f.host),
    ("meter", lambda f: ", ".join(f.meters) + (" (client side only)"
                                               if f.scope == CLIENT_SIDE else "")),
    ("images", lambda f: f"{f.images:,}"),
    ("Wh/img gross mean", lambda f: _cell(f.gross_wh_mean)),
    ("p50", lambda f: _cell(f.gross_wh_p50)),
    ("p95", lambda f: _cell(f.gross_wh_p95)),
    ("net mean", lambda f: _cell(f.net_wh_mean)),
    ("p50", lambda f: _cell(f.net_wh_p50)),
    ("p95", lambda f: _cell(f.net_wh_p95)),
    ("of which (mean)", lambda f: " ".join(f"{component.upper()} {_three_digits(wh)}"
                                           for component, wh in f.component_wh_mean.items())),
    ("so far", lambda f: format_wh(f.gross_kwh * 1000)),
)


def energy_table(energy: StageEnergy) -> list[list[str]]:
    """The figures as rows of cells, the heading row first; [] when nothing was measured."""
    if not energy.figures:
        return []
    return [[heading for heading, _ in TABLE_COLUMNS]] + [
        [value(figures) for _, value in TABLE_COLUMNS] for figures in energy.figures]


def energy_notes(energy: StageEnergy) -> list[str]:
    """The sentences that go with the table: hosts not measured, failed reads, so far,
    projected, CO2e."""
    notes = []
    for host, why in sorted(energy.not_measured.items()):
        notes.append(f"not measured on {host}" + (" (a log written before energy was logged)"
                                                  if why else " (no meter there; its runs' "
                                                  "first lines say why)"))
    if energy.unmeasured_rows:
        notes.append(f"{energy.unmeasured_rows:,} job(s) on measuring hosts have no energy "
                     "(a meter read failed)")
    if not energy.figures:
        return notes
    so_far = f"so far {format_wh(energy.gross_kwh * 1000)}"
    if energy.net_kwh is not None:
        so_far += f" (net {format_wh(energy.net_kwh * 1000)})"
    if energy.client_side_kwh:
        so_far += (f", of which {format_wh(energy.client_side_kwh * 1000)} client side "
                   "(the remote servers' energy is not measured)")
    notes.append(so_far)
    if energy.projected_gross_kwh is not None:
        projected = (f"projected for the {energy.left:,} left: "
                     f"{format_wh(energy.projected_gross_kwh * 1000)}")
        if energy.projected_net_kwh is not None:
            projected += f" (net {format_wh(energy.projected_net_kwh * 1000)})"
        if energy.not_measured:
            projected += ", at the measured hosts' rate"
        notes.append(projected)
    grid = energy.grid_g_per_kwh
    if grid is not None:
        co2e = f"CO2e at {grid:g} g/kWh: {format_grams(co2e_grams(energy.gross_kwh, grid))} so far"
        if energy.projected_gross_kwh is not None:
            co2e += f", {format_grams(co2e_grams(energy.projected_gross_kwh, grid))} projected"
        notes.append(co2e)
    return notes
