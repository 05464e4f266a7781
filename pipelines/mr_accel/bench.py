"""Speed benchmark of mr-accel: milliseconds per slice, network alone and whole pipeline."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from pipelines.base import FloatArray, ParamValue, Volume
from pipelines.mr_accel.pipeline import MRAccelPipeline
from pipelines.timing import ms_per_slice, paired_ms_per_slice

#: CPU threads the benchmark pins, torch's and OpenVINO's (the target machine
#: has two CPU cores).
THREADS = 2


def _pipeline(params: Mapping[str, ParamValue]) -> MRAccelPipeline:
    from pipelines.mr_accel import create
    from pipelines.mr_accel.simulate import EVAL_ACCELERATION

    pipe = create({"phase_coverage": EVAL_ACCELERATION.coverage, **params})
    assert isinstance(pipe, MRAccelPipeline)
    return pipe


def describe(params: Mapping[str, ParamValue] | None = None) -> dict[str, str]:
    """Backend, device, threads and batch the benchmark runs with.

    Loads the network the pipeline would (converting it when the backend is
    OpenVINO; the conversion is reused by :func:`benchmark`).
    """
    import torch

    torch.set_num_threads(THREADS)
    pipe = _pipeline(params or {})
    network = pipe.network()
    return {
        "backend": network.name,
        "device": pipe.device,
        "threads": str(network.threads),
        "batch": str(pipe.config.batch_size),
    }


def _series(n_slices: int, size: int) -> FloatArray:
    from pipelines.mr_accel.anatomy import procedural_anatomy
    from pipelines.mr_accel.simulate import EVAL_ACCELERATION, accelerate

    rng = np.random.default_rng(0)
    clean = procedural_anatomy(rng, (size, size))
    accelerated = accelerate(clean, EVAL_ACCELERATION, rng) * np.float32(1000.0)
    return np.repeat(accelerated[None], n_slices, axis=0).astype(np.float32)


def _network_run(pipe: MRAccelPipeline, norm: FloatArray) -> Callable[[], object]:
    """A warmed-up call that runs the normalised slices through the network alone."""
    # Load the weights and let the kernels be built for this batch shape.
    pipe.restore_normalised(norm[: pipe.config.batch_size])
    return lambda: pipe.restore_normalised(norm)


def benchmark(n_slices: int = 16, size: int = 512, repeats: int = 5) -> dict[str, float]:
    """Time mr-accel on a simulated ``n_slices`` x ``size`` x ``size`` series.

    Parameters
    ----------
    n_slices, size
        Series shape; the acceleration is the evaluation's (50 % coverage).
    repeats
        Rounds; each times the network and the whole pipeline (see
        :func:`pipelines.timing.paired_ms_per_slice`); medians are reported.
        Torch, for comparison, is timed afterwards in as many plain repeats,
        so its figure carries the machine's drift: read no speed-up from it.

    Returns
    -------
    dict
        ``model_ms_per_slice_{backend}_cpu_{threads}threads_batch{batch}``
        (network inference only, on the pipeline's backend, and on torch
        eager for comparison when that is another), ``pipeline_ms_per_slice``
        (normalisation, network, data consistency, QA gate and scaling back),
        ``pipeline_over_model`` (median of the rounds' ratios, over the
        pipeline's own backend), ``cpu_share_during_model`` (CPU time over
        wall time x threads: 1.0 on an otherwise idle machine), ``threads``,
        ``batch`` and ``slices``.
    """
    import torch

    from pipelines.mr_accel.pipeline import slice_scales

    torch.set_num_threads(THREADS)
    voxels = _series(n_slices, size)
    volume = Volume(voxels=voxels, modality="MR", unit="arbitrary")
    norm = (voxels / slice_scales(voxels)[:, None, None]).astype(np.float32)
    pipe = _pipeline({})
    kind, batch = pipe.network().kind, pipe.config.batch_size
    model_run = _network_run(pipe, norm)
    pipe.run(volume.with_voxels(voxels[:batch].copy()))  # warm-up
    paired = paired_ms_per_slice(model_run, lambda: pipe.run(volume), n_slices, repeats, THREADS)
    key = f"model_ms_per_slice_{{}}_cpu_{THREADS}threads_batch{batch}"
    timings = {key.format(kind): paired["model_ms"]}
    if kind != "torch":
        # Last, so that torch's idle worker threads do not share the cores with
        # the timings above.
        torch_run = _network_run(_pipeline({"backend": "torch"}), norm)
        timings[key.format("torch")], _ = ms_per_slice(torch_run, n_slices, repeats, THREADS)
    return {
        **timings,
        "pipeline_ms_per_slice": paired["pipeline_ms"],
        "pipeline_over_model": paired["pipeline_over_model"],
        "cpu_share_during_model": paired["cpu_share_during_model"],
        "threads": float(THREADS),
        "batch": float(batch),
        "slices": float(n_slices),
    }


if __name__ == "__main__":
    print(describe())
    for key, value in benchmark().items():
        print(f"{key}: {value:.2f}")
