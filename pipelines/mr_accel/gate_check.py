"""How the mr-accel QA gate behaves on held-out simulated data.

``python -m pipelines.mr_accel.gate_check [--seeds S ...] [--images N]``

For each seed: ``N`` simulated references with mixed accelerations are
restored with and without data consistency, and the gate's metrics are
compared with its limits (a restoration should pass with room to spare);
then a disc of 5 px radius and 30 % contrast is injected into each
restoration at a random tissue site, and, separately, white grain as strong
as the input's own fine-grained noise is added to it; the share of each the
gate catches is counted. Prints one JSON line per seed.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from pipelines.base import FloatArray, Volume
from pipelines.mr_accel.anatomy import training_image
from pipelines.mr_accel.qa import GateThresholds, gate
from pipelines.mr_accel.simulate import (
    accelerate,
    fully_averaged,
    random_acceleration,
    random_reference_noise,
)

METRICS = ("lowfreq_diff", "bias_max", "structure_max", "detail_ratio", "noise_ratio", "edge_corr")


def _with_disc(image: FloatArray, rng: np.random.Generator) -> FloatArray | None:
    """``image`` plus a bright disc at a random tissue site (None without tissue)."""
    scale = float(np.percentile(image, 99.5))
    rows, cols = image.shape
    sites = np.argwhere(image[8:-8, 8:-8] > 0.15 * scale) + 8
    if len(sites) == 0:
        return None
    r, c = sites[rng.integers(len(sites))]
    yy, xx = np.mgrid[0:rows, 0:cols]
    disc = (yy - r) ** 2 + (xx - c) ** 2 <= 25
    return np.asarray(image + np.float32(0.3 * scale) * disc, dtype=np.float32)


def check(seed: int, images: int, noise: float | None = None) -> dict[str, Any]:
    """Gate metrics of restorations and the catch rate of injected discs, for one seed.

    ``noise`` fixes the extra noise of fewer averages (otherwise drawn as in
    training, 0.3-8 %).
    """
    from pipelines.mr_accel import create
    from pipelines.mr_accel.pipeline import MRAccelPipeline

    rng = np.random.default_rng(seed)
    limits = GateThresholds()
    seen: dict[str, list[float]] = {k: [] for k in METRICS}
    flagged = caught = injected = grained = grain_caught = 0
    pipelines: dict[tuple[float, float] | None, MRAccelPipeline] = {}
    for _ in range(images):
        reference = fully_averaged(training_image(rng), random_reference_noise(rng), rng)
        acc = random_acceleration(rng)
        if noise is not None:
            acc = replace(acc, noise=noise)
        x = accelerate(reference, acc, rng) * np.float32(1000.0)
        keys: list[tuple[float, float] | None] = [None]
        if acc.mask == "none":
            keys.append((acc.coverage, acc.partial_fourier))
        for key in keys:
            if key not in pipelines:
                known = {} if key is None else {"phase_coverage": key[0], "partial_fourier": key[1]}
                pipe = create(known)
                assert isinstance(pipe, MRAccelPipeline)
                pipelines[key] = pipe
            result = pipelines[key].run(Volume(voxels=x[None], modality="MR", unit="arbitrary"))
            verdict = result.qa[0]
            flagged += not verdict.passed
            for k in METRICS:
                seen[k].append(float(verdict.metrics.get(k, np.nan)))
            fake = _with_disc(result.volume.voxels[0], rng)
            if fake is not None:
                injected += 1
                caught += not gate(x, fake, limits).passed
            # Grain as strong as the input's own noise, added by the "model".
            # (The pipeline judged its own normalised slice: measure in x's units.)
            own = gate(x, result.volume.voxels[0], limits).metrics
            grain_sd = own.get("noise_in", 0.0) * own.get("scale", 0.0)
            if grain_sd > 0:
                grainy = result.volume.voxels[0] + rng.normal(0.0, grain_sd, x.shape)
                grained += 1
                grain_caught += not gate(x, grainy.astype(np.float32), limits).passed
    return {
        "seed": seed,
        "restorations": len(seen["bias_max"]),
        "flagged": flagged,
        "max": {k: round(float(np.nanmax(v)), 4) for k, v in seen.items() if k != "edge_corr"},
        "min_edge_corr": round(float(np.nanmin(seen["edge_corr"])), 3),
        "limits": {
            "lowfreq_diff": limits.max_lowfreq_diff,
            "bias_max": limits.max_bias,
            "structure_max": limits.max_structure,
            "detail_ratio": limits.max_detail_ratio,
            "noise_ratio": limits.max_noise_ratio,
            "min_edge_corr": limits.min_edge_corr,
        },
        "discs_injected": injected,
        "discs_caught": caught,
        "grain_injected": grained,
        "grain_caught": grain_caught,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Print one JSON line per seed; returns the exit code."""
    p = argparse.ArgumentParser(prog="python -m pipelines.mr_accel.gate_check", description=__doc__)
    p.add_argument("--seeds", type=int, nargs="+", default=[7_500_000, 7_500_001, 7_500_002])
    p.add_argument("--images", type=int, default=30, help="simulated images per seed")
    p.add_argument("--noise", type=float, help="fixed extra noise (default: as in training)")
    args = p.parse_args(argv)
    for seed in args.seeds:
        print(json.dumps(check(seed, args.images, args.noise)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
