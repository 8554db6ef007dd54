"""Stand-in for zeus-apple-silicon 1.1 (a double of the third-party library, for tests on
machines that are not Macs): its Python surface as bound in the library's
bindings/energy_bindings.hpp and bindings/zeus_apple_silicon/__init__.py.

    AppleEnergyMonitor()                    RuntimeError("Failed to create IOReport
                                            subscription.") when IOReport refuses
    .begin_window(key, restart=False)       RuntimeError for a key still open
    .end_window(key) -> AppleEnergyMetrics  RuntimeError for a key never begun
    .get_cumulative_energy() -> AppleEnergyMetrics
    AppleEnergyMetrics                      11 fields, mJ: ints, lists of ints (per core
                                            and cluster), None where the chip reports nothing

The test plays the chip through ``chip``: its cumulative counters, a failure to raise
on the next call, a pause inside each call (so calls that overlap can be seen) and counts
of monitors made and of calls that overlapped.
"""

import threading
import time

FIELDS = ("cpu_total_mj", "efficiency_cores_mj", "performance_cores_mj", "efficiency_cluster_mj",
          "performance_cluster_mj", "efficiency_core_manager_mj", "performance_core_manager_mj",
          "dram_mj", "gpu_mj", "gpu_sram_mj", "ane_mj")


class AppleEnergyMetrics:
    def __init__(self):
        for name in FIELDS:
            setattr(self, name, None)


class Chip:
    """The SoC the stand-in reads: cumulative mJ per field (None: not on this chip)."""

    def __init__(self, **counters_mj):
        self.counters_mj = {name: None for name in FIELDS}
        self.counters_mj.update(counters_mj)
        self.refuse_subscription = False
        self.fail_next: Exception | None = None
        self.call_seconds = 0.0
        self.monitors_made = 0
        self.calls = 0
        self.overlapping_calls = 0
        self._inside = 0
        self._state = threading.Lock()

    def add(self, **mj):
        with self._state:
            for name, value in mj.items():
                self.counters_mj[name] += value

    def snapshot(self) -> AppleEnergyMetrics:
        metrics = AppleEnergyMetrics()
        with self._state:
            for name, value in self.counters_mj.items():
                setattr(metrics, name, list(value) if isinstance(value, list) else value)
        return metrics

    def enter(self):
        with self._state:
            self._inside += 1
            self.calls += 1
            if self._inside > 1:
                self.overlapping_calls += 1
            failure, self.fail_next = self.fail_next, None
        if self.call_seconds:
            time.sleep(self.call_seconds)
        with self._state:
            self._inside -= 1
        if failure is not None:
            raise failure


chip = Chip()


def _difference(later: AppleEnergyMetrics, earlier: AppleEnergyMetrics) -> AppleEnergyMetrics:
    result = AppleEnergyMetrics()
    for name in FIELDS:
        a, b = getattr(earlier, name), getattr(later, name)
        if isinstance(a, list) and isinstance(b, list):
            setattr(result, name, [y - x for x, y in zip(a, b)])
        elif a is not None and b is not None:
            setattr(result, name, b - a)
    return result


class AppleEnergyMonitor:
    def __init__(self):
        if chip.refuse_subscription:
            raise RuntimeError("Failed to create IOReport subscription.")
        chip.monitors_made += 1
        self._begun: dict[str, AppleEnergyMetrics] = {}

    def get_cumulative_energy(self) -> AppleEnergyMetrics:
        chip.enter()
        return chip.snapshot()

    def begin_window(self, key: str, restart: bool = False) -> None:
        if key in self._begun and not restart:
            raise RuntimeError("Measurement with specified key already exists.")
        chip.enter()
        self._begun[key] = chip.snapshot()

    def end_window(self, key: str) -> AppleEnergyMetrics:
        if key not in self._begun:
            raise RuntimeError("No measurement with provided key had been started.")
        chip.enter()
        return _difference(chip.snapshot(), self._begun.pop(key))
