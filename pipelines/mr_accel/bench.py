"""Speed benchmark of mr-accel: milliseconds per slice, network alone and whole pipeline."""

from __future__ import annotations

import time

import numpy as np

from pipelines.base import Volume


def benchmark(n_slices: int = 16, size: int = 512) -> dict[str, float]:
    """Time mr-accel on a simulated ``n_slices`` x ``size`` x ``size`` series.

    Parameters
    ----------
    n_slices, size
        Series shape; the acceleration is the evaluation's (50 % coverage).

    Returns
    -------
    dict
        ``model_ms_per_slice`` (network inference only),
        ``pipeline_ms_per_slice`` (normalisation, network, data consistency,
        QA gate and scaling back), ``threads`` and ``slices``.
    """
    import torch

    from pipelines.mr_accel import create
    from pipelines.mr_accel.anatomy import procedural_anatomy
    from pipelines.mr_accel.pipeline import MRAccelPipeline, slice_scales
    from pipelines.mr_accel.simulate import EVAL_ACCELERATION, accelerate

    rng = np.random.default_rng(0)
    clean = procedural_anatomy(rng, (size, size))
    accelerated = accelerate(clean, EVAL_ACCELERATION, rng) * np.float32(1000.0)
    voxels = np.repeat(accelerated[None], n_slices, axis=0).astype(np.float32)
    volume = Volume(voxels=voxels, modality="MR", unit="arbitrary")
    pipe = create({"phase_coverage": EVAL_ACCELERATION.coverage})
    assert isinstance(pipe, MRAccelPipeline)
    norm = (voxels / slice_scales(voxels)[:, None, None]).astype(np.float32)

    # Load the weights and let the CPU kernels be built for this batch shape.
    pipe.restore_normalised(norm[: pipe.config.batch_size])
    start = time.perf_counter()
    pipe.restore_normalised(norm)
    model_s = time.perf_counter() - start
    start = time.perf_counter()
    pipe.run(volume)
    pipeline_s = time.perf_counter() - start
    return {
        "model_ms_per_slice": 1000.0 * model_s / n_slices,
        "pipeline_ms_per_slice": 1000.0 * pipeline_s / n_slices,
        "threads": float(torch.get_num_threads()),
        "slices": float(n_slices),
    }
