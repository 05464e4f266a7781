"""Tests of the per-slice timing the speed benchmarks report."""

from __future__ import annotations

import time

from pipelines.timing import ms_per_slice, paired_ms_per_slice


def _busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_ms_per_slice_divides_by_the_slices() -> None:
    ms, share = ms_per_slice(lambda: _busy(0.02), n_slices=4, repeats=3, threads=1)
    # Busy waiting takes at least its time; a loaded machine only adds to it.
    assert 5.0 <= ms < 50.0
    assert 0.0 < share <= 1.5


def test_paired_rounds_alternate_and_give_the_median_ratio() -> None:
    order: list[str] = []

    def model() -> None:
        order.append("m")
        _busy(0.01)

    def pipeline() -> None:
        order.append("p")
        _busy(0.03)

    result = paired_ms_per_slice(model, pipeline, n_slices=2, rounds=4, threads=1)
    assert order == ["m", "p", "p", "m", "m", "p", "p", "m"]
    assert 5.0 <= result["model_ms"] < result["pipeline_ms"]
    assert result["pipeline_ms"] >= 15.0
    assert result["pipeline_over_model"] > 1.0
    assert set(result) == {
        "model_ms",
        "pipeline_ms",
        "pipeline_over_model",
        "cpu_share_during_model",
    }
