"""How the CT QA gate behaves on held-out simulated slices.

``python -m pipelines.ct_denoise.gate_check [--seeds S ...] [--slices N]``

For each seed: ``N`` procedural body sections (256 x 256, 0.7-1.4 mm pixels,
normal-dose noise 8-18 HU) at 25 % dose go through the shipped ct-denoise
pipeline; the honest outputs should pass. Then discs are added to each
output that passed, at random tissue sites (-300 to 300 HU: fat and soft
tissue; 8 mm +40 HU, 6 mm +25 HU, 5 mm -30 HU), and the share the gate
catches is counted. Prints one JSON line per seed.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipelines.base import FloatArray, Volume
from pipelines.qa import gate_slice, tissue_mask

#: Injected discs as (diameter in mm, HU added).
DISCS = ((8.0, 40.0), (6.0, 25.0), (5.0, -30.0))
SIZE = 256


def _with_disc(
    image: FloatArray,
    sites: np.ndarray,
    spacing: float,
    disc: tuple[float, float],
    rng: np.random.Generator,
) -> FloatArray:
    """``image`` plus one disc at a random site of ``sites``."""
    r, c = sites[rng.integers(len(sites))]
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]]
    inside = (yy - r) ** 2 + (xx - c) ** 2 <= (disc[0] / 2.0 / spacing) ** 2
    return np.asarray(image + np.float32(disc[1]) * inside, dtype=np.float32)


def check(seed: int, slices: int) -> dict[str, Any]:
    """Flags on honest outputs and catch rates of injected discs, for one seed."""
    from pipelines.ct_denoise.phantoms import body_slice
    from pipelines.ct_denoise.pipeline import build_pipeline
    from pipelines.ct_denoise.simulate import ParallelBeamProjector, simulate_pair

    rng = np.random.default_rng(seed)
    projector = ParallelBeamProjector(SIZE)
    pipe = build_pipeline({"device": "cpu"})
    flagged = 0
    caught = {f"{d:g}mm{hu:+g}HU": 0 for d, hu in DISCS}
    for _ in range(slices):
        spacing = float(rng.uniform(0.7, 1.4))
        noise = float(rng.uniform(8.0, 18.0))
        clean = body_slice(rng, SIZE, spacing)
        low = simulate_pair(
            clean, spacing, rng, fraction=0.25, normal_noise_hu=noise, projector=projector
        ).low.astype(np.float32)
        result = pipe.run(Volume(low[None], "CT", "HU", (spacing, spacing)))
        if result.flagged_slices:
            flagged += 1
            continue  # the input went out unchanged: nothing to inject into
        out = result.volume.voxels[0]
        sites = np.argwhere(tissue_mask(low)[10:-10, 10:-10]) + 10
        for disc, key in zip(DISCS, caught, strict=True):
            fake = _with_disc(out, sites, spacing, disc, rng)
            caught[key] += not gate_slice(low, fake, (spacing, spacing)).passed
    injected = slices - flagged
    return {
        "seed": seed,
        "slices": slices,
        "flagged": flagged,
        "injected": injected,
        "caught": caught,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Print one JSON line per seed; returns the exit code."""
    p = argparse.ArgumentParser(
        prog="python -m pipelines.ct_denoise.gate_check", description=__doc__
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[5000, 5001, 5002])
    p.add_argument("--slices", type=int, default=20, help="simulated slices per seed")
    args = p.parse_args(argv)
    for seed in args.seeds:
        print(json.dumps(check(seed, args.slices)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
