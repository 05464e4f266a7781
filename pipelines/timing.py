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


def paired_ms_per_slice(
    model: Callable[[], object],
    pipeline: Callable[[], object],
    n_slices: int,
    rounds: int,
    threads: int,
) -> dict[str, float]:
    """Time the network and the whole pipeline in alternating rounds.

    On a shared machine the speed drifts within minutes, so a ratio of two
    timings taken one after the other says more about the drift than about
    the pipeline. Each round times ``model()`` and ``pipeline()`` (both
    processing ``n_slices`` slices, already warmed up), in alternating order
    so that a drift within a round does not bias every ratio the same way;
    the ratio is the median of the rounds' ratios.

    Returns
    -------
    dict
        ``model_ms`` and ``pipeline_ms`` (medians, per slice),
        ``pipeline_over_model`` (median of per-round ratios) and
        ``cpu_share_during_model`` (see :func:`ms_per_slice`).
    """
    model_ms, pipeline_ms, ratios, shares = [], [], [], []
    for i in range(rounds):
        if i % 2 == 0:
            m, share = ms_per_slice(model, n_slices, 1, threads)
            p, _ = ms_per_slice(pipeline, n_slices, 1, threads)
        else:
            p, _ = ms_per_slice(pipeline, n_slices, 1, threads)
            m, share = ms_per_slice(model, n_slices, 1, threads)
        model_ms.append(m)
        pipeline_ms.append(p)
        ratios.append(p / m)
        shares.append(share)
    return {
        "model_ms": statistics.median(model_ms),
        "pipeline_ms": statistics.median(pipeline_ms),
        "pipeline_over_model": statistics.median(ratios),
        "cpu_share_during_model": statistics.median(shares),
    }
