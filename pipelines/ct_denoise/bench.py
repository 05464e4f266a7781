"""Speed benchmark of ct-denoise: the network alone and the whole pipeline, in ms per slice."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import numpy as np

from pipelines.base import FloatArray, ParamValue, Volume
from pipelines.timing import ms_per_slice, paired_ms_per_slice

if TYPE_CHECKING:
    from pipelines.backend import Network
    from pipelines.ct_denoise.pipeline import CTDenoisePipeline

#: CPU threads the benchmark pins, torch's and OpenVINO's (the target machine
#: has two CPU cores).
THREADS = 2
#: Slices per forward pass: the pipeline's default batch.
BATCH = 8


def _phantom_stack(n_slices: int, size: int) -> np.ndarray:
    from pipelines.ct_denoise.phantoms import body_slice

    rng = np.random.default_rng(0)
    base = body_slice(rng, size, 0.7)
    noise = rng.normal(0.0, 25.0, (n_slices, size, size)).astype(np.float32)
    return (base[None] + noise).astype(np.float32)


def _model(params: Mapping[str, ParamValue] | None = None) -> tuple[CTDenoisePipeline, Network]:
    """The model pipeline as benchmarked (on the CPU, batch :data:`BATCH`) and its network."""
    from pipelines.ct_denoise.inference import ModelDenoiser
    from pipelines.ct_denoise.pipeline import build_pipeline

    pipe = build_pipeline(
        {"device": "cpu", "batch_size": BATCH, **(params or {}), "method": "model"}
    )
    denoiser = pipe.denoiser
    assert isinstance(denoiser, ModelDenoiser)
    return pipe, denoiser.network


def describe(params: Mapping[str, ParamValue] | None = None) -> dict[str, str]:
    """Backend, device, threads and batch the benchmark runs with.

    Builds the model as :func:`benchmark` does (an OpenVINO conversion is
    reused by it).
    """
    import torch

    torch.set_num_threads(THREADS)
    pipe, network = _model(params)
    return {
        "backend": network.name,
        "device": str(pipe.parameters["device"]),
        "threads": str(network.threads),
        "batch": str(pipe.parameters["batch_size"]),
    }


def _network_run(network: Network, stack: FloatArray) -> Callable[[], None]:
    """A warmed-up call that runs ``stack`` through the network alone, batch by batch."""
    from pipelines.ct_denoise.inference import denoise_array

    sigma = np.full(BATCH, 25.0, dtype=np.float32)
    denoise_array(network, stack[:BATCH], sigma)  # warm-up

    def run() -> None:
        for start in range(0, stack.shape[0], BATCH):
            batch = stack[start : start + BATCH]
            denoise_array(network, batch, sigma[: batch.shape[0]])

    return run


def benchmark(n_slices: int = 16, size: int = 512, repeats: int = 5) -> dict[str, float]:
    """Milliseconds per slice for the model alone and the whole pipeline run.

    Parameters
    ----------
    n_slices
        Slices in the benchmark series.
    size
        Slice edge in pixels.
    repeats
        Rounds; each times the network and the whole pipeline (see
        :func:`pipelines.timing.paired_ms_per_slice`); medians are reported.
        Torch, for comparison, is timed afterwards in as many plain repeats,
        so its figure carries the machine's drift: read no speed-up from it.

    Returns
    -------
    dict
        ``model_ms_per_slice_{backend}_cpu_{threads}threads_batch{batch}``
        (network forward only, on the pipeline's backend, and on torch
        eager for comparison when that is another), ``pipeline_ms_per_slice``
        (Volume in, noise estimate, batched inference, QA gate, Result out),
        ``pipeline_over_model`` (median of the rounds' ratios, over the
        pipeline's own backend), ``classical_ms_per_slice`` (the NLM method
        through the same pipeline) and ``cpu_share_during_model`` (CPU time
        over wall time x threads: 1.0 on an otherwise idle machine).
    """
    import torch

    from pipelines.ct_denoise.pipeline import build_pipeline

    torch.set_num_threads(THREADS)
    stack = _phantom_stack(n_slices, size)
    volume = Volume(stack, "CT", "HU", (0.7, 0.7))
    pipe, network = _model()
    model_run = _network_run(network, stack)
    pipe.run(volume.with_voxels(stack[:BATCH].copy()))  # warm-up
    paired = paired_ms_per_slice(model_run, lambda: pipe.run(volume), n_slices, repeats, THREADS)
    key = f"model_ms_per_slice_{{}}_cpu_{THREADS}threads_batch{BATCH}"
    timings = {key.format(network.kind): paired["model_ms"]}
    if network.kind != "torch":
        # Last, so that torch's idle worker threads do not share the cores with
        # the timings above.
        _, reference = _model({"backend": "torch"})
        torch_run = _network_run(reference, stack)
        timings[key.format("torch")], _ = ms_per_slice(torch_run, n_slices, repeats, THREADS)
    classical = build_pipeline({"method": "classical"})
    n_classical = min(n_slices, 4)
    few = volume.with_voxels(stack[:n_classical].copy())
    classical_ms, _ = ms_per_slice(lambda: classical.run(few), n_classical, 1, THREADS)
    return {
        **timings,
        "pipeline_ms_per_slice": paired["pipeline_ms"],
        "pipeline_over_model": paired["pipeline_over_model"],
        "classical_ms_per_slice": classical_ms,
        "slice_size": float(size),
        "cpu_share_during_model": paired["cpu_share_during_model"],
    }


if __name__ == "__main__":
    print(describe())
    for key, value in benchmark().items():
        print(f"{key}: {value:.2f}")
