#!/usr/bin/env python3
"""What an energy window costs a job (engine/energy.py), against the same job with no
meter, in one run.

  job          a fixed piece of work (SHA-256 of ``--job-mb`` MB: milliseconds), alone: the
               baseline
  no meter     the same job inside a window of a meter that measures nothing (a machine
               without one): nothing is read
  rapl         the same job inside a RAPL window, on a powercap tree built in a temporary
               folder (two packages, two DRAM zones: four energy_uj files per read,
               the layout of a two-socket server); each open and close reads them all
  this machine the same with this machine's own meter, when it has one (Apple Silicon,
               NVML, readable RAPL); otherwise the line says why not

How to read it: ``window µs`` is the cost of one open + close alone (best of
``--repeats`` batches of ``--windows``), in wall time and in CPU time; ``job ms`` the job
inside a window (best of ``--repeats`` batches of ``--jobs``); ``job ratio`` that over
the bare job (1.00: nothing measurable). The target: a window well under 1 ms, and a job
ratio indistinguishable from 1. The sampler line is what every job already pays
(engine.metrics.ResourceSampler's enter and exit, a thread started and stopped), for scale.

    .venv/bin/python bench/energy.py            # ~15 s
"""

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH_DIR.parent), str(BENCH_DIR.parent / "tests")]

from harness import print_table  # noqa: E402
from powercap import two_socket_machine  # noqa: E402

from drawpipe.engine.energy import EnergyMeter, RaplCounter, choose_meter  # noqa: E402
from drawpipe.engine.metrics import ResourceSampler  # noqa: E402


def best_per_call(functions: list, calls: int, repeats: int, clock) -> list[float]:
    """Seconds per call of each function: the best of ``repeats`` batches of ``calls``.
    The batches take turns, so a busy spell of a shared machine hits all of them alike."""
    best = [float("inf")] * len(functions)
    for _ in range(repeats):
        for index, function in enumerate(functions):
            started = clock()
            for _ in range(calls):
                function()
            best[index] = min(best[index], (clock() - started) / calls)
    return best


def window_of(meter: EnergyMeter):
    def open_and_close() -> None:
        meter.open_window().close()
    return open_and_close


def job_in(meter: EnergyMeter, work):
    def job() -> None:
        window = meter.open_window()
        work()
        window.close()
    return job


def sampled_window() -> None:
    with ResourceSampler(interval_seconds=30):
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--windows", type=int, default=2000, help="windows per timed batch")
    parser.add_argument("--jobs", type=int, default=100, help="jobs per timed batch")
    parser.add_argument("--job-mb", type=float, default=4.0, help="the job: SHA-256 of this many MB")
    args = parser.parse_args()

    data = os.urandom(int(args.job_mb * 1e6))

    def work() -> None:
        hashlib.sha256(data).digest()

    with tempfile.TemporaryDirectory() as folder:
        meters = [("no meter", EnergyMeter(None, "not measured: the no-meter path")),
                  ("rapl (built tree)", EnergyMeter(RaplCounter(two_socket_machine(Path(folder)))))]
        own = choose_meter()
        if own.measuring:
            meters.append((f"this machine: {own.name}", own))
        repeats = args.repeats
        windows = [window_of(meter) for _, meter in meters]
        wall = best_per_call(windows, args.windows, repeats, time.perf_counter)
        cpu = best_per_call(windows, args.windows, repeats, time.process_time)
        # The sampler starts a thread each time: fewer calls give a steady figure.
        (sampler_wall,) = best_per_call([sampled_window], 50, repeats, time.perf_counter)
        (sampler_cpu,) = best_per_call([sampled_window], 50, repeats, time.process_time)
        bare_job, *jobs = best_per_call([work] + [job_in(meter, work) for _, meter in meters],
                                        args.jobs, repeats, time.perf_counter)
        rows = [[label, f"{wall[i] * 1e6:.1f}", f"{cpu[i] * 1e6:.1f}", f"{jobs[i] * 1000:.3f}",
                 f"{jobs[i] / bare_job:.3f}", "met" if wall[i] < 1e-3 else "MISSED"]
                for i, (label, _) in enumerate(meters)]
        rows.append(["(sampler enter+exit)", f"{sampler_wall * 1e6:.1f}",
                     f"{sampler_cpu * 1e6:.1f}", "", "", ""])
        own.close()

    print(f"job: SHA-256 of {args.job_mb:g} MB, {bare_job * 1000:.3f} ms alone; best of "
          f"{repeats} batches ({args.windows} windows, {args.jobs} jobs each)\n")
    print_table(["meter", "window µs", "window CPU µs", "job ms", "job ratio", "< 1 ms"], rows)
    if not own.measuring:
        print(f"\nthis machine: {own.reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
