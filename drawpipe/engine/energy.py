"""Energy meters: what each job's window cost in joules, measured where a meter exists and
never invented where none does.

    choose_meter(...)      this machine's meter, chosen once at start: an EnergyMeter
    EnergyMeter            one per process: opens job windows over one cumulative counter,
                           splits the energy among the windows open at once, and measures
                           idle power while none is open
    EnergyWindow           one job's window: ``meter.open_window()`` ... ``window.close()``
    EnergyReading          what a window measured; ``reading.row()`` gives the CSV values
    ENERGY_COLUMNS         the CSV columns
    AppleCounter, NvmlCounter, RaplCounter, CombinedCounter   the counters behind a meter

Counters (each reads a cumulative counter; a window is the difference of two reads):

- ``apple-soc``: Apple Silicon's IOReport "Energy Model" counters through
  ``zeus-apple-silicon`` (``pip install 'drawpipe[energy]'``; macOS arm64, no sudo):
  ``AppleEnergyMonitor().get_cumulative_energy()`` -> ``AppleEnergyMetrics`` in mJ, of
  which CPU (``cpu_total_mj``), GPU (``gpu_mj``), ANE (``ane_mj``) and DRAM (``dram_mj``)
  are kept; a field the chip does not report is None there and stays empty here, never 0.
  ``gpu_sram_mj`` is not added: whether "GPU Energy" already holds it is undocumented, and
  a meter must not count anything twice. Apple calls these values model-based estimates
  of the chip's own power management (the library's README), not a wall-socket reading.
  The library's monitor is not documented as thread-safe: one per process, every call
  under one lock. Cumulative reads rather than its labelled windows, because windows of
  workers that overlap would each count the whole chip (the ledger below splits it).
- ``nvml``: NVML's ``nvmlDeviceGetTotalEnergyConsumption`` (mJ since the driver loaded;
  Volta or newer) of the GPUs in use (``nvidia-ml-py``): component GPU only.
- ``rapl``: Linux RAPL under /sys/class/powercap: every ``intel-rapl:N`` zone named
  ``package-N`` (component CPU: cores, caches and the rest of the package) and every zone
  or subzone named ``dram`` (component DRAM). ``core``/``uncore`` subzones are inside
  their package and ``psys`` holds the whole platform, so none is added. ``energy_uj``
  wraps at ``max_energy_range_uj``; a window shorter than one wrap (hours at desk power)
  is measured right. Since Linux 5.10 ``energy_uj`` is readable by root only: then RAPL is
  not used and the reason says so in one line.
- Several at once (a Linux box with RAPL and an NVIDIA GPU): ``rapl+nvml``, one sum.
- None of these: the meter measures nothing, and ``meter.reason`` is one line, "not
  measured on <host>: ...". No estimate is ever offered as a measurement.

What is measured, and what it means:

- A job's window gives ``energy_j``, the whole counter's energy from open to close (the
  *gross* energy: whole chip, whole GPU, whole package), and per component where the
  counter has it (``energy_cpu_j`` ...). Windows of one process that are open at the same
  time share each stretch of energy equally (two workers, one chip: no double count).
  Another process on the same machine (a second stage, a browser) is not known: its work
  lands in this process's windows, and in its idle.
- ``idle_w``: the machine's mean power while this process had no window open, measured by
  ``meter.measure_idle(seconds)`` (at start, before the first job) and on its own from
  any gap between windows of at least IDLE_MIN_SECONDS (a worker's poll wait); the
  latest such figure goes into each row. The report's *net* energy of a job is then
  ``energy_j - idle_w * seconds``: what the image caused above the machine sitting idle.
- Energy belongs to an image only when the app that drew it ran on the measuring machine:
  ``open_window(local=False)`` (a remote server) marks the reading "client-side", this
  machine's side of the job only, which the report keeps apart from images' energy.
  Local means what engine/worker.py's ``Worker.runs_here`` says: no server, or one whose
  app runs here (the stage names a process to sample: a server on loopback).

CSV columns (ENERGY_COLUMNS, appended to the per-host logs beside CPU % and RAM):

    energy_meter   the counter's name ("apple-soc", "nvml", "rapl", "rapl+nvml");
                   empty when nothing was measured
    energy_scope   "local": the work ran here, the energy is the job's;
                   "client-side": the server is remote, this machine's side only
    energy_j       gross energy of the window, J (3 decimals: mJ)
    energy_cpu_j  energy_gpu_j  energy_ane_j  energy_dram_j
                   per component, J; empty where the counter has no such component
    idle_w         the latest idle power before the window closed, W; empty if none yet

Every energy column is empty when no meter exists, when a read failed in that window
(``reading.error`` says why: log it once), and in logs written before these columns.

How the engine uses it (engine/loop.py, run.py, worker.py; one meter per process, shared
by its workers):

      meter = choose_meter(gpus=cuda_devices())     # when the run has work to do;
                                                  # gpus: the stage's CUDA devices
                                                  # (segment on cuda: its device's UUID)
      log(meter.describe())                       # "energy: rapl (RAPL: package-0, dram)
                                                  # on host" or "energy: not measured on
                                                  # host: ..."
      meter.measure_idle(idle_seconds, wait=...)  # before the workers start; a stop
                                                  # signal ends the wait (and the run)
      ...
      window = meter.open_window(local=runs_here)  # with the job's stopwatch
      result = run_job(job, scratch)              # and the result delivered
      reading = window.close()                    # where the stopwatch stops; never raises
      row.update(reading.row())                   # the ENERGY_COLUMNS of the stage's log
      ...
      meter.close()                               # run end

``open_window`` and ``close`` each take one counter read under the lock (tens of
microseconds for RAPL; bench/energy.py); without a meter they read nothing. A window is
also a context manager (``with meter.open_window() as window: ...``; then
``window.reading``). Between jobs nothing needs calling: a worker that waits with no
window open is idle time. ``meter.idle_age_seconds()`` says how old the idle figure is:
a run whose jobs come back to back measures idle again before a job once it is an hour
old (run.py Run.refresh_idle_power). A dry run chooses no meter.
"""

import os
import platform
import re
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from drawpipe.files import host_name

COMPONENTS = ("cpu", "gpu", "ane", "dram")
ENERGY_COLUMNS = ("energy_meter", "energy_scope", "energy_j", "energy_cpu_j", "energy_gpu_j",
                  "energy_ane_j", "energy_dram_j", "idle_w")
LOCAL = "local"
CLIENT_SIDE = "client-side"

# A gap between windows counts as an idle measurement from this long on: shorter ones are
# a worker moving to its next job (and the GPU still winding down from the last).
IDLE_MIN_SECONDS = 2.0
# Idle measured before the first job of a run: a few seconds, a small part of a night.
IDLE_START_SECONDS = 3.0

POWERCAP_ROOT = Path("/sys/class/powercap")

_RAPL_ZONE = re.compile(r"intel-rapl:(\d+)(?::(\d+))?")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ---------------------------------------------------------------- counters


class Counter(Protocol):
    """A cumulative energy counter. ``read()`` may raise (any exception: the window
    that needed it gets no energy); ``joules(earlier, later)`` gives each component's
    energy between two reads, in J, None for a component it does not have, and raises
    ValueError when the counter went backwards (a driver reloaded)."""

    name: str
    components: tuple[str, ...]

    def read(self): ...

    def joules(self, earlier, later) -> dict[str, float | None]: ...

    def close(self) -> None: ...


class CounterUnavailable(Exception):
    """This counter cannot be used here; the message is the reason, in a few words."""


# Apple: one monitor per process (the library does not say its calls are thread-safe).
_apple_lock = threading.Lock()
_apple_monitor = None

_APPLE_FIELDS = {"cpu": "cpu_total_mj", "gpu": "gpu_mj", "ane": "ane_mj", "dram": "dram_mj"}


def _shared_apple_monitor():
    """This process's one AppleEnergyMonitor (made on first use). Hold _apple_lock."""
    global _apple_monitor
    if _apple_monitor is None:
        try:
            from zeus_apple_silicon import AppleEnergyMonitor
        except ImportError:
            raise CounterUnavailable("zeus-apple-silicon is not installed "
                                     "(pip install 'drawpipe[energy]')") from None
        try:
            _apple_monitor = AppleEnergyMonitor()
        except RuntimeError as exc:  # "Failed to create IOReport subscription."
            raise CounterUnavailable(f"IOReport refused: {_one_line(exc)}") from None
    return _apple_monitor


class AppleCounter:
    """Apple Silicon's SoC energy (CPU, GPU, ANE, DRAM) from IOReport, via
    zeus-apple-silicon. Raises CounterUnavailable when the library or the chip's
    counters cannot be had."""

    name = "apple-soc"

    def __init__(self):
        with _apple_lock:
            monitor = _shared_apple_monitor()
            try:
                first = monitor.get_cumulative_energy()
            except RuntimeError as exc:
                raise CounterUnavailable(f"IOReport read failed: {_one_line(exc)}") from None
        self.components = tuple(c for c, name in _APPLE_FIELDS.items()
                                if getattr(first, name, None) is not None)
        if not self.components:
            raise CounterUnavailable("IOReport reports no CPU, GPU, ANE or DRAM energy here")
        self.scope = "Apple SoC: " + ", ".join(c.upper() for c in self.components)

    def read(self) -> dict[str, int | None]:
        with _apple_lock:
            metrics = _shared_apple_monitor().get_cumulative_energy()
        return {c: getattr(metrics, _APPLE_FIELDS[c], None) for c in self.components}

    def joules(self, earlier, later) -> dict[str, float | None]:
        result = {}
        for component in self.components:
            a, b = earlier.get(component), later.get(component)
            if a is None or b is None:  # a channel that came or went: not measured
                result[component] = None
                continue
            if b < a:
                raise ValueError(f"the IOReport {component.upper()} counter went backwards")
            result[component] = (b - a) / 1000.0  # mJ -> J
        return result

    def close(self) -> None:
        pass  # the monitor lives as long as the process: one per process


@dataclass(frozen=True)
class RaplDomain:
    """One RAPL zone: its folder, ``name`` ("package-0", "dram"), the component it is
    counted as, and the range its ``energy_uj`` wraps at, in µJ."""

    path: Path
    name: str
    component: str
    max_energy_range_uj: int


def _read_int(path: Path) -> int:
    with open(path, "rb") as file:
        return int(file.read())


def find_rapl_domains(root: Path = POWERCAP_ROOT) -> list[RaplDomain]:
    """The package and DRAM zones under ``root`` (a powercap class folder: zones appear
    flat, ``intel-rapl:0``, ``intel-rapl:0:0`` ...), each checked with one read.

    Raises CounterUnavailable with the reason: no powercap folder, no zones, or one
    not readable (``energy_uj`` is root-only since Linux 5.10): a sum missing a domain
    would pass a part of the machine off as all of it, so then nothing is measured.
    """
    root = Path(root)
    if not root.is_dir():
        raise CounterUnavailable(f"{root} does not exist (no powercap in this kernel)")
    zones = []
    for path in root.iterdir():
        match = _RAPL_ZONE.fullmatch(path.name)
        if match:
            zones.append((int(match[1]), -1 if match[2] is None else int(match[2]), path))
    domains = []
    for _, _, path in sorted(zones):
        try:
            name = (path / "name").read_text().strip()
        except OSError as exc:
            raise CounterUnavailable(f"{path / 'name'}: {exc.strerror or exc}") from None
        top_level = path.name.count(":") == 1
        if top_level and name.startswith("package"):
            component = "cpu"
        elif name == "dram":
            component = "dram"
        else:
            continue  # core, uncore (inside their package), psys (the whole platform)
        try:
            max_range = _read_int(path / "max_energy_range_uj")
            _read_int(path / "energy_uj")
        except PermissionError:
            raise CounterUnavailable(
                f"{path / 'energy_uj'} is not readable (root only since Linux 5.10; "
                "a udev rule or chmod can open it)") from None
        except (OSError, ValueError) as exc:
            raise CounterUnavailable(f"{path}: {_one_line(exc)}") from None
        if max_range <= 0:
            raise CounterUnavailable(f"{path / 'max_energy_range_uj'} is {max_range}")
        domains.append(RaplDomain(path, name, component, max_range))
    if not any(domain.component == "cpu" for domain in domains):
        raise CounterUnavailable(f"no RAPL package zone under {root}")
    return domains


class RaplCounter:
    """Linux RAPL: CPU packages and DRAM from /sys/class/powercap."""

    name = "rapl"

    def __init__(self, root: Path = POWERCAP_ROOT):
        self.domains = find_rapl_domains(root)
        self._files = [str(domain.path / "energy_uj") for domain in self.domains]
        self.components = tuple(c for c in COMPONENTS
                                if any(d.component == c for d in self.domains))
        self.scope = "RAPL: " + ", ".join(d.name for d in self.domains)

    def read(self) -> list[int]:
        values = []
        for path in self._files:
            fd = os.open(path, os.O_RDONLY)
            try:
                values.append(int(os.read(fd, 32)))
            finally:
                os.close(fd)
        return values

    def joules(self, earlier, later) -> dict[str, float | None]:
        result = {component: 0.0 for component in self.components}
        for domain, a, b in zip(self.domains, earlier, later):
            # The counter restarts from 0 past its range (a window shorter than one
            # wrap, as every job's is, sees at most one).
            delta = b - a if b >= a else b + domain.max_energy_range_uj - a
            result[domain.component] += delta / 1e6  # µJ -> J
        return result

    def close(self) -> None:
        pass


def _cuda_visible_devices() -> list[str] | None:
    """CUDA_VISIBLE_DEVICES as a list (indices or "GPU-..." UUIDs), None if unset."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    return [item.strip() for item in value.split(",") if item.strip()]


class NvmlCounter:
    """NVIDIA GPUs' total-energy counters through NVML (nvidia-ml-py).

    ``gpus``: the GPUs in use, as UUIDs ("GPU-...": torch gives
    ``"GPU-" + str(torch.cuda.get_device_properties(i).uuid)``) or as the index in
    ``cuda:N``, mapped through CUDA_VISIBLE_DEVICES; None: every GPU this process can
    see. An index is NVML's number for the GPU (PCI bus order), which is CUDA's too
    unless the machine mixes GPU models (CUDA puts the fastest first): there, pass the
    UUID. Raises CounterUnavailable with the reason.
    """

    name = "nvml"
    components = ("gpu",)

    def __init__(self, gpus: tuple[int | str, ...] | None = None):
        try:
            import pynvml
        except ImportError:
            raise CounterUnavailable("nvidia-ml-py is not installed "
                                     "(pip install 'drawpipe[energy]')") from None
        self._nvml = pynvml
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise CounterUnavailable(f"NVML: {exc}") from None
        try:
            self._handles = [self._handle(gpu) for gpu in self._wanted(gpus)]
            if not self._handles:
                raise CounterUnavailable("NVML sees no GPU")
            names = []
            for handle in self._handles:
                name = pynvml.nvmlDeviceGetName(handle)
                try:
                    pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
                except pynvml.NVMLError as exc:
                    raise CounterUnavailable(f"NVML: {name}: total energy: {exc} "
                                             "(Volta or newer needed)") from None
                names.append(name)
        except CounterUnavailable:
            pynvml.nvmlShutdown()
            raise
        except pynvml.NVMLError as exc:
            pynvml.nvmlShutdown()
            raise CounterUnavailable(f"NVML: {exc}") from None
        self.scope = "NVIDIA GPU: " + ", ".join(names)

    def _wanted(self, gpus) -> list[int | str]:
        visible = _cuda_visible_devices()
        if gpus is None:
            return list(visible) if visible is not None else \
                list(range(self._nvml.nvmlDeviceGetCount()))
        wanted = []
        for gpu in gpus:
            if isinstance(gpu, int) and visible is not None:
                if gpu >= len(visible):
                    raise CounterUnavailable(f"cuda:{gpu} is not in CUDA_VISIBLE_DEVICES")
                gpu = visible[gpu]
            wanted.append(gpu)
        return wanted

    def _handle(self, gpu: int | str):
        if isinstance(gpu, str) and not gpu.isdigit():
            return self._nvml.nvmlDeviceGetHandleByUUID(gpu)
        return self._nvml.nvmlDeviceGetHandleByIndex(int(gpu))

    def read(self) -> list[int]:
        return [self._nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self._handles]

    def joules(self, earlier, later) -> dict[str, float | None]:
        if any(b < a for a, b in zip(earlier, later)):
            raise ValueError("the NVML energy counter went backwards (driver reloaded?)")
        return {"gpu": sum(b - a for a, b in zip(earlier, later)) / 1000.0}  # mJ -> J

    def close(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError:
            pass


class CombinedCounter:
    """Counters of disjoint parts summed: RAPL's CPU and DRAM with NVML's GPU."""

    def __init__(self, counters: list):
        self.counters = counters
        self.name = "+".join(counter.name for counter in counters)
        self.components = tuple(c for c in COMPONENTS
                                if any(c in counter.components for counter in counters))
        self.scope = "; ".join(counter.scope for counter in counters)

    def read(self) -> list:
        return [counter.read() for counter in self.counters]

    def joules(self, earlier, later) -> dict[str, float | None]:
        result: dict[str, float | None] = {}
        for counter, a, b in zip(self.counters, earlier, later):
            result.update(counter.joules(a, b))
        return result

    def close(self) -> None:
        for counter in self.counters:
            counter.close()


# ---------------------------------------------------------------- readings and windows


@dataclass(frozen=True)
class EnergyReading:
    """What one window measured. ``energy_j``: the counter's whole energy in the window
    (gross), J, None when not measured; ``components_j``: component ("cpu", "gpu",
    "ane", "dram") -> J, only those the counter has; ``idle_w``: the latest idle power,
    W; ``seconds``: the window's length; ``scope``: LOCAL or CLIENT_SIDE; ``meter``: the
    counter's name, None when none measures; ``error``: why this window has no energy
    though a meter exists (a failed read), one line."""

    meter: str | None
    scope: str
    energy_j: float | None
    components_j: dict[str, float | None]
    idle_w: float | None
    seconds: float
    error: str | None = None

    def row(self) -> dict:
        """The ENERGY_COLUMNS values for a metrics row (None is an empty cell)."""
        measured = self.energy_j is not None
        values = {
            "energy_meter": self.meter if measured else None,
            "energy_scope": self.scope if measured else None,
            "energy_j": _rounded(self.energy_j),
            "idle_w": _rounded(self.idle_w) if measured else None,
        }
        for component in COMPONENTS:
            value = self.components_j.get(component) if measured else None
            values[f"energy_{component}_j"] = _rounded(value)
        return values


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


@dataclass
class _Share:
    """An open window's running share of the energy."""

    opened: float
    local: bool
    joules: dict[str, float | None]
    error: str | None = None


class EnergyWindow:
    """One job's window (EnergyMeter.open_window). ``close()`` ends it and returns its
    EnergyReading (a second call returns the same); as a context manager it closes on
    exit and keeps the result in ``reading``."""

    def __init__(self, meter: "EnergyMeter", share: _Share | None, local: bool, opened: float):
        self._meter = meter
        self._share = share
        self._local = local
        self._opened = opened
        self.reading: EnergyReading | None = None

    def close(self) -> EnergyReading:
        if self.reading is None:
            self.reading = self._meter._close(self)
        return self.reading

    def __enter__(self) -> "EnergyWindow":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class EnergyMeter:
    """The ledger over one counter (or none): job windows, their shares, idle power.

    Every open and close reads the counter once, under one lock: the energy since the
    previous read goes in equal parts to the windows open in between, or, when none
    was, to the current idle stretch. A read that fails gives the windows open across it
    no energy (``reading.error``) and starts the ledger afresh at the next good read.
    ``counter=None``: nothing is measured; ``reason`` says why (one line).
    """

    def __init__(self, counter: Counter | None, reason: str | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.counter = counter
        self.reason = reason
        self._clock = clock
        self._lock = threading.Lock()
        self._open: dict[int, _Share] = {}
        self._last = None  # the previous good read
        self._idle_since: float | None = None  # start of the current idle stretch
        self._idle_joules = 0.0
        self.idle_w: float | None = None
        self._idle_measured_at: float | None = None
        self._read_error: str | None = None  # why the last read failed
        if counter is not None:
            with self._lock:
                self._advance(clock())

    @property
    def measuring(self) -> bool:
        return self.counter is not None

    @property
    def name(self) -> str | None:
        return None if self.counter is None else self.counter.name

    def describe(self, host: str | None = None) -> str:
        """One line for the run's log: the meter and what it covers, or the reason."""
        if self.counter is None:
            return f"energy: {self.reason}"
        return f"energy: {self.counter.name} ({self.counter.scope}) on {host or host_name()}"

    def open_window(self, local: bool = True) -> EnergyWindow:
        """Start a job's window. ``local``: the work runs on this machine (no server, or
        a server on loopback); False for a remote server: this machine's side only."""
        if self.counter is None:
            return EnergyWindow(self, None, local, self._clock())
        with self._lock:
            now = self._clock()
            self._advance(now)
            if not self._open:
                self._end_idle(now)
            share = _Share(now, local, {c: 0.0 for c in self.counter.components})
            if self._last is None:
                share.error = self._read_error or "no counter read yet"
            self._open[id(share)] = share
        return EnergyWindow(self, share, local, now)

    def _close(self, window: EnergyWindow) -> EnergyReading:
        scope = LOCAL if window._local else CLIENT_SIDE
        share = window._share
        if share is None:
            return EnergyReading(None, scope, None, {}, None, self._clock() - window._opened)
        with self._lock:
            now = self._clock()
            self._advance(now)
            del self._open[id(share)]
            if not self._open and self._last is not None:
                self._idle_since, self._idle_joules = now, 0.0
            idle_w = self.idle_w
        seconds = now - share.opened
        if share.error is not None:
            return EnergyReading(self.counter.name, scope, None, {}, idle_w, seconds, share.error)
        missing = [c.upper() for c, joules in share.joules.items() if joules is None]
        if missing:  # a sum without a part it had before would pass a part off as all
            return EnergyReading(self.counter.name, scope, None, {}, idle_w, seconds,
                                 f"energy: {', '.join(missing)} not reported in this window")
        return EnergyReading(self.counter.name, scope, sum(share.joules.values()),
                             dict(share.joules), idle_w, seconds)

    def _advance(self, now: float) -> None:
        """Read the counter and book the energy since the last read (lock held)."""
        try:
            sample = self.counter.read()
        except Exception as exc:  # a meter must never fail a job
            self._lose_track(_one_line(exc), None, now)
            return
        try:
            delta = None if self._last is None else self.counter.joules(self._last, sample)
        except ValueError as exc:  # went backwards: what follows is measured from here
            self._lose_track(str(exc), sample, now)
            return
        self._last = sample
        if delta is None:  # a first read, or the first after a failure
            if not self._open:
                self._idle_since, self._idle_joules = now, 0.0
            return
        if self._open:
            parts = len(self._open)
            for share in self._open.values():
                for component, joules in delta.items():
                    if joules is None or share.joules.get(component) is None:
                        share.joules[component] = None
                    else:
                        share.joules[component] += joules / parts
        elif self._idle_since is not None:
            self._idle_joules += sum(j for j in delta.values() if j is not None)

    def _lose_track(self, why: str, sample, now: float) -> None:
        """A read failed (or went backwards): the windows open across it get no energy,
        the idle stretch is dropped, and ``sample`` (or the next good read) is the new
        starting point."""
        self._read_error = f"energy read failed: {why}"
        for share in self._open.values():
            share.error = share.error or self._read_error
        self._last = sample
        self._idle_since = None if sample is None or self._open else now
        self._idle_joules = 0.0

    def _end_idle(self, now: float) -> None:
        """The idle stretch ends (a window opens): long enough, it is the new idle_w."""
        if self._idle_since is not None and now - self._idle_since >= IDLE_MIN_SECONDS:
            self.idle_w = self._idle_joules / (now - self._idle_since)
            self._idle_measured_at = now
        self._idle_since = None

    def measure_idle(self, seconds: float = IDLE_START_SECONDS,
                     wait: Callable[[float], object] = time.sleep) -> float | None:
        """Measure idle power over ``seconds`` with no window open (call it before the
        workers start). ``wait(seconds)``: how to wait (the run's stop Event's ``wait``
        returns early on a stop signal). Returns the new idle_w in W, or None when a
        window was open at either end, a read failed, the wait ended before half its
        time, or there is no meter."""
        if self.counter is None:
            return None
        with self._lock:
            started = self._clock()
            self._advance(started)
            if self._open or self._last is None:
                return None
            self._idle_since, self._idle_joules = started, 0.0
        wait(seconds)
        with self._lock:
            now = self._clock()
            self._advance(now)
            if self._open or self._idle_since != started or now - started < seconds / 2:
                return None  # a window opened, a read failed, or a stop cut the wait short
            self.idle_w = self._idle_joules / (now - started)
            self._idle_measured_at = now
            self._idle_since, self._idle_joules = now, 0.0
            return self.idle_w

    def idle_age_seconds(self) -> float | None:
        """Seconds since idle power was last measured; None if never."""
        if self._idle_measured_at is None:
            return None
        return self._clock() - self._idle_measured_at

    def close(self) -> None:
        if self.counter is not None:
            self.counter.close()


# ---------------------------------------------------------------- choosing


def choose_meter(gpus: tuple[int | str, ...] | None = None, powercap_root: Path = POWERCAP_ROOT,
                 host: str | None = None, system: tuple[str, str] | None = None) -> EnergyMeter:
    """This machine's meter: Apple Silicon's IOReport on a Mac with an M-series chip;
    elsewhere RAPL and NVML where each works (both summed when both do); otherwise an
    EnergyMeter that measures nothing, its ``reason`` "not measured on <host>: ...".

    ``gpus``: the NVIDIA GPUs in use (NvmlCounter); None: all this process can see.
    ``system``: (sys.platform, machine), by default this machine's.
    """
    host = host or host_name()
    platform_name, machine = system or (sys.platform, platform.machine())
    reasons = []
    if platform_name == "darwin":
        if machine != "arm64":
            reasons.append("an Intel Mac (IOReport energy needs Apple Silicon)")
        else:
            try:
                return EnergyMeter(AppleCounter())
            except CounterUnavailable as exc:
                reasons.append(str(exc))
        return EnergyMeter(None, f"not measured on {host}: {'; '.join(reasons)}")
    counters = []
    for make in (lambda: RaplCounter(powercap_root), lambda: NvmlCounter(gpus)):
        try:
            counters.append(make())
        except CounterUnavailable as exc:
            reasons.append(str(exc))
    if not counters:
        return EnergyMeter(None, f"not measured on {host}: {'; '.join(reasons)}")
    counter = counters[0] if len(counters) == 1 else CombinedCounter(counters)
    return EnergyMeter(counter)
