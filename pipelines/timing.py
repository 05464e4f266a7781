"""Timing a pipeline step per slice, as the speed benchmarks report it."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def ms_per_slice(
    run: Callable[[], object], n_slices: int, repeats: int, threads: int
) -> tuple[float, float]:
    """Median milliseconds per slice of ``run()``, and the median CPU share it got.

    Parameters
    ----------
    run
        Processes ``n_slices`` slices once (already warmed up).
    n_slices
        Slices one call processes.
    repeats
        Timed calls; the medians are reported.
    threads
        CPU threads the work is pinned to.

    Returns
    -------
    tuple
        Milliseconds per slice, and the CPU time over wall time x ``threads``:
        1.0 on an otherwise idle machine, below 1 when other work shares the
        cores (the timing is then pessimistic).
    """
    times, shares = [], []
    for _ in range(repeats):
        wall0, cpu0 = time.perf_counter(), time.process_time()
        run()
        wall = time.perf_counter() - wall0
        times.append(1000.0 * wall / n_slices)
        shares.append((time.process_time() - cpu0) / (wall * threads))
    return statistics.median(times), statistics.median(shares)
