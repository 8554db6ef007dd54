"""Energy in the report: what each stage cost per image and in all, from the logs' energy
columns (engine/energy.py writes them). Pure functions, no files read:

    energy_rows(raw_rows)             metrics.read_logs rows (dicts of strings) -> EnergyRow
    stage_energy(stage, rows, left)   StageEnergy: EnergyFigures per host and scope, all
                                      hosts, the hosts not measured, kWh so far, projection
    co2e_grams(kwh, grid_g_per_kwh)   CO2e of an energy at a grid intensity the user gives
    check_grid_intensity(value)       the --grid-intensity value, or ValueError (one line)
    power_over_time(rows)             host -> [(end epoch, W)]: the chart of W over time
    energy_wh_by_output(rows)         output key -> Wh of its latest done row (the export)
    format_energy(stage_energy)       the plain-text report's lines

Definitions (for README's Report section when the report shows them):

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
"""

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from drawpipe.engine.energy import CLIENT_SIDE, COMPONENTS, LOCAL

ALL_HOSTS = "all hosts"
J_PER_WH = 3600.0


@dataclass(frozen=True)
class EnergyRow:
    """One logged job's energy. ``energy_j`` None: not measured; ``logged`` False: a log
    written before the energy columns existed."""

    host: str
    status: str
    output: str
    end: float | None  # epoch seconds (time_utc: when the job ended)
    seconds: float | None
    meter: str | None
    scope: str | None
    energy_j: float | None
    components_j: dict[str, float]
    idle_w: float | None
    logged: bool

    @property
    def gross_wh(self) -> float | None:
        return None if self.energy_j is None else self.energy_j / J_PER_WH

    @property
    def net_wh(self) -> float | None:
        if self.energy_j is None or self.idle_w is None or self.seconds is None:
            return None
        return max(0.0, self.energy_j - self.idle_w * self.seconds) / J_PER_WH


def _number(text) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _epoch(text) -> float | None:
    try:
        return datetime.fromisoformat(text).timestamp()  # "...Z": UTC
    except (TypeError, ValueError):
        return None


def energy_rows(raw_rows) -> list[EnergyRow]:
    """Parse one stage's rows as metrics.read_logs gives them (every value a string, a
    column missing from an older layout missing from the dict)."""
    rows = []
    for raw in raw_rows:
        energy_j = _number(raw.get("energy_j"))
        measured = energy_j is not None and energy_j >= 0
        components = {}
        for component in COMPONENTS:
            value = _number(raw.get(f"energy_{component}_j"))
            if measured and value is not None:
                components[component] = value
        rows.append(EnergyRow(
            host=raw.get("host") or "?",
            status=raw.get("status", ""),
            output=raw.get("output", ""),
            end=_epoch(raw.get("time_utc")),
            seconds=_number(raw.get("seconds")),
            meter=(raw.get("energy_meter") or None) if measured else None,
            scope=(raw.get("energy_scope") or LOCAL) if measured else None,
            energy_j=energy_j if measured else None,
            components_j=components,
            idle_w=_number(raw.get("idle_w")) if measured else None,
            logged="energy_j" in raw,
        ))
    return rows


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


def _figures(host: str, scope: str, rows: list[EnergyRow]) -> EnergyFigures:
    done = [row for row in rows if row.status == "done"]
    gross = [row.gross_wh for row in done]
    net = [row.net_wh for row in done if row.net_wh is not None]
    components = {}
    for component in COMPONENTS:
        values = [row.components_j[component] / J_PER_WH for row in done
                  if component in row.components_j]
        if values:
            components[component] = _mean(values)
    nets = [row.net_wh for row in rows if row.net_wh is not None]
    return EnergyFigures(
        host=host, scope=scope,
        meters=tuple(sorted({row.meter for row in rows if row.meter})),
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
    """One stage's energy. ``figures``: per (host, scope) sorted by host, then an "all
    hosts" line per scope measured on more than one host. ``not_measured``: host -> why
    ("" for no meter, or "older log"). ``unmeasured_rows``: rows without energy on hosts
    that do measure (a failed read). ``projected_*_kwh``: for ``left`` jobs at the local
    rate per done image; None without left, local images or (net) idle figures."""

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


def stage_energy(stage: str, rows: list[EnergyRow], left: int | None,
                 grid_g_per_kwh: float | None = None) -> StageEnergy:
    """The figures of one stage's rows (energy_rows) with ``left`` jobs still to do."""
    by_group: dict[tuple[str, str], list[EnergyRow]] = defaultdict(list)
    hosts_measured = set()
    for row in rows:
        if row.energy_j is not None:
            by_group[(row.host, row.scope)].append(row)
            hosts_measured.add(row.host)
    figures = [_figures(host, scope, by_group[(host, scope)])
               for host, scope in sorted(by_group, key=lambda key: (key[1] != LOCAL, key))]
    for scope in (LOCAL, CLIENT_SIDE):
        group = [row for (host, s), rows_ in by_group.items() if s == scope for row in rows_]
        if len({row.host for row in group}) > 1:
            figures.append(_figures(ALL_HOSTS, scope, sorted(group, key=lambda r: r.end or 0)))
    not_measured = {}
    for row in rows:
        if row.host not in hosts_measured:
            # a host with new rows and older-layout rows is "no meter": that is now
            if not_measured.get(row.host) != "":
                not_measured[row.host] = "" if row.logged else "older log"
    measured_rows = [row for row in rows if row.energy_j is not None]
    nets = [row.net_wh for row in measured_rows if row.net_wh is not None]
    local = [row for row in measured_rows if row.scope == LOCAL]
    local_done = sum(row.status == "done" for row in local)
    local_nets = [row.net_wh for row in local if row.net_wh is not None]
    projected_gross = projected_net = None
    if left is not None and local_done:
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
                            if row.scope == CLIENT_SIDE) / 1000,
        projected_gross_kwh=projected_gross, projected_net_kwh=projected_net,
        grid_g_per_kwh=grid_g_per_kwh,
    )


def co2e_grams(kwh: float | None, grid_g_per_kwh: float | None) -> float | None:
    """kWh x gCO2e/kWh; None when either is unknown."""
    if kwh is None or grid_g_per_kwh is None:
        return None
    return kwh * grid_g_per_kwh


def check_grid_intensity(value) -> float:
    """The grid intensity in gCO2e per kWh as a float; ValueError (a message for the
    user) unless it is a number above 0 and below 2,000 (coal is about 1,000)."""
    number = _number(value)
    if number is None or not 0 < number < 2000:
        raise ValueError(f"the grid intensity must be grams of CO2e per kWh, a number above 0 "
                         f"(coal is about 1,000); got {value!r}")
    return number


def power_over_time(rows: list[EnergyRow]) -> dict[str, list[tuple[float, float]]]:
    """host -> [(end epoch seconds, mean W of that job)], oldest first, every measured
    row with a time and a length."""
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for row in rows:
        if row.energy_j is not None and row.end is not None and row.seconds:
            series[row.host].append((row.end, row.energy_j / row.seconds))
    return {host: sorted(points) for host, points in sorted(series.items())}


def energy_wh_by_output(rows: list[EnergyRow]) -> dict[str, float]:
    """output key -> gross Wh of its latest local "done" row (the image's own energy;
    client-side rows are not an image's)."""
    found = {}
    for row in sorted(rows, key=lambda r: r.end or 0):
        if row.status == "done" and row.energy_j is not None and row.scope == LOCAL:
            found[row.output] = row.gross_wh
    return found


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


def format_energy(energy: StageEnergy) -> list[str]:
    """The plain-text report's energy lines for one stage (no heading)."""
    lines = []
    if energy.figures:
        lines.append("Wh per image, gross | net of idle: mean  p50  p95")
        for f in energy.figures:
            label = f"{f.host} ({', '.join(f.meters) or 'meter?'}"
            label += ", client side only)" if f.scope == CLIENT_SIDE else ")"
            lines.append(
                f"  {label}: {f.images} images, gross {_cell(f.gross_wh_mean)}  "
                f"{_cell(f.gross_wh_p50)}  {_cell(f.gross_wh_p95)} | net "
                f"{_cell(f.net_wh_mean)}  {_cell(f.net_wh_p50)}  {_cell(f.net_wh_p95)}; "
                f"so far {format_wh(f.gross_kwh * 1000)}")
    for host, why in sorted(energy.not_measured.items()):
        lines.append(f"  not measured on {host}" + (" (a log written before energy was logged)"
                                                     if why else ""))
    if energy.unmeasured_rows:
        lines.append(f"  {energy.unmeasured_rows} job(s) on measuring hosts have no energy "
                     "(a meter read failed)")
    if not energy.figures:
        return lines
    so_far = f"so far {format_wh(energy.gross_kwh * 1000)}"
    if energy.net_kwh is not None:
        so_far += f" (net {format_wh(energy.net_kwh * 1000)})"
    if energy.client_side_kwh:
        so_far += (f", of which {format_wh(energy.client_side_kwh * 1000)} client side "
                   "(the remote servers' energy is not measured)")
    lines.append("  " + so_far)
    if energy.projected_gross_kwh is not None:
        projected = (f"projected for {energy.left} left: "
                     f"{format_wh(energy.projected_gross_kwh * 1000)}")
        if energy.projected_net_kwh is not None:
            projected += f" (net {format_wh(energy.projected_net_kwh * 1000)})"
        if energy.not_measured:
            projected += ", at the measured hosts' rate"
        lines.append("  " + projected)
    if energy.grid_g_per_kwh is not None:
        co2e = (f"CO2e at {energy.grid_g_per_kwh:g} g/kWh: "
                f"{format_grams(co2e_grams(energy.gross_kwh, energy.grid_g_per_kwh))} so far")
        if energy.projected_gross_kwh is not None:
            co2e += (f", {format_grams(co2e_grams(energy.projected_gross_kwh, energy.grid_g_per_kwh))}"
                     " projected")
        lines.append("  " + co2e)
    return lines
