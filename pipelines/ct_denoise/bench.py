"""Speed benchmark of ct-denoise: the network alone and the whole pipeline, in ms per slice."""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np

from pipelines.base import ParamValue, Volume

#: Torch threads the benchmark pins (the target machine has two CPU cores).
THREADS = 2
#: Slices per forward pass: the pipeline's default batch.
BATCH = 8


def _phantom_stack(n_slices: int, size: int) -> np.ndarray:
    from pipelines.ct_denoise.phantoms import body_slice

    rng = np.random.default_rng(0)
    base = body_slice(rng, size, 0.7)
    noise = rng.normal(0.0, 25.0, (n_slices, size, size)).astype(np.float32)
    return (base[None] + noise).astype(np.float32)


def describe(params: Mapping[str, ParamValue] | None = None) -> dict[str, str]:
    """Backend, device, threads and batch the benchmark runs with."""
    import torch

    from pipelines.ct_denoise.inference import select_device

    device = select_device(str((params or {}).get("device", "auto")))
    return {
        "backend": (
            f"torch {torch.__version__} eager, oneDNN, channels-last"
            if device == "cpu"
            else "torch cuda"
        ),
        "device": device,
        "threads": str(torch.get_num_threads()),
        "batch": str(int((params or {}).get("batch_size", BATCH))),
    }


def benchmark(n_slices: int = 16, size: int = 512) -> dict[str, float]:
    """Milliseconds per slice for the model alone and the whole pipeline run.

    Parameters
    ----------
    n_slices
        Slices in the benchmark series.
    size
        Slice edge in pixels.

    Returns
    -------
    dict
        ``model_ms_per_slice_torch_cpu_batch8`` (network forward only),
        ``pipeline_ms_per_slice`` (Volume in, noise estimate, batched
        inference, QA gate, Result out), ``pipeline_over_model`` and
        ``classical_ms_per_slice`` (the NLM method through the same pipeline)
        and ``cpu_share_during_model`` (CPU time over wall time x threads:
        1.0 on an otherwise idle machine).
    """
    import torch

    from pipelines.ct_denoise.network import denoise_tensor
    from pipelines.ct_denoise.pipeline import build_pipeline

    torch.set_num_threads(THREADS)
    stack = _phantom_stack(n_slices, size)
    volume = Volume(stack, "CT", "HU", (0.7, 0.7))
    pipe = build_pipeline({"method": "model", "device": "cpu", "batch_size": BATCH})
    net = pipe._denoiser._net  # type: ignore[attr-defined]  # the model alone, same weights
    sigma = torch.full((BATCH,), 25.0)
    with torch.inference_mode():
        denoise_tensor(net, torch.from_numpy(stack[:BATCH]), sigma)  # warm-up
        t0 = time.perf_counter()
        c0 = time.process_time()
        for start in range(0, n_slices, BATCH):
            batch = torch.from_numpy(stack[start : start + BATCH])
            denoise_tensor(net, batch, sigma[: batch.shape[0]])
        wall = time.perf_counter() - t0
        model_ms = wall * 1000.0 / n_slices
        # The share of the pinned cores this process actually got: below 1 when
        # other work shares the machine, and the timings are then pessimistic.
        cpu_share = (time.process_time() - c0) / (wall * THREADS)
    pipe.run(volume.with_voxels(stack[:BATCH].copy()))  # warm-up
    t0 = time.perf_counter()
    pipe.run(volume)
    pipeline_ms = (time.perf_counter() - t0) * 1000.0 / n_slices
    classical = build_pipeline({"method": "classical"})
    n_classical = min(n_slices, 4)
    t0 = time.perf_counter()
    classical.run(volume.with_voxels(stack[:n_classical].copy()))
    classical_ms = (time.perf_counter() - t0) * 1000.0 / n_classical
    return {
        f"model_ms_per_slice_torch_cpu_{THREADS}threads_batch{BATCH}": model_ms,
        "pipeline_ms_per_slice": pipeline_ms,
        "pipeline_over_model": pipeline_ms / model_ms,
        "classical_ms_per_slice": classical_ms,
        "slice_size": float(size),
        "cpu_share_during_model": cpu_share,
    }


if __name__ == "__main__":
    print(describe())
    for key, value in benchmark().items():
        print(f"{key}: {value:.2f}")
