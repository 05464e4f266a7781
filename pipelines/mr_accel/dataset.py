"""Seeded, cached training pairs: simulated fast acquisitions and their full images."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.base import FloatArray
from pipelines.mr_accel.anatomy import training_image
from pipelines.mr_accel.qa import robust_scale
from pipelines.mr_accel.simulate import (
    Acceleration,
    accelerate,
    fully_averaged,
    random_acceleration,
    random_reference_noise,
)

logger = logging.getLogger(__name__)

#: Bump when the simulation changes, so stale caches are not reused.
SIMULATION_VERSION = 2


@dataclass(frozen=True)
class PairSpec:
    """What a cached set of training patches was made from."""

    seed: int
    n_images: int
    per_image: int
    patch: int
    shape: tuple[int, int] | None = None

    def key(self) -> str:
        """Cache key: a short hash of the spec and the simulation version."""
        text = json.dumps(
            [SIMULATION_VERSION, self.seed, self.n_images, self.per_image, self.patch, self.shape]
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def normalised_pair(
    reference: FloatArray, acc: Acceleration, rng: np.random.Generator
) -> tuple[FloatArray, FloatArray]:
    """Simulate ``acc`` on ``reference``; divide both by the accelerated image's scale.

    The scale is the one the pipeline computes at inference (the 99.5th
    percentile of the input slice), so the network learns in the same units.
    """
    degraded = accelerate(reference, acc, rng)
    scale = robust_scale(degraded) or 1.0
    return degraded / scale, (reference / scale).astype(np.float32)


def make_patches(spec: PairSpec, progress: bool = False) -> tuple[FloatArray, FloatArray]:
    """Input and target patches ``(n, patch, patch)`` for ``spec``, fully seeded."""
    rng = np.random.default_rng(spec.seed)
    inputs: list[FloatArray] = []
    targets: list[FloatArray] = []
    iterator = range(spec.n_images)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="simulating", unit="image")
    for _ in iterator:
        clean = training_image(rng, spec.shape)
        reference = fully_averaged(clean, random_reference_noise(rng), rng)
        acc = random_acceleration(rng)
        x, y = normalised_pair(reference, acc, rng)
        rows, cols = x.shape
        p = min(spec.patch, rows, cols)
        taken = 0
        for _attempt in range(spec.per_image * 4):
            r = int(rng.integers(0, rows - p + 1))
            c = int(rng.integers(0, cols - p + 1))
            tgt = y[r : r + p, c : c + p]
            # Mostly patches with anatomy; a few of background teach it to stay dark.
            if tgt.mean() < 0.05 and rng.random() < 0.8:
                continue
            inputs.append(x[r : r + p, c : c + p])
            targets.append(tgt)
            taken += 1
            if taken == spec.per_image:
                break
    return np.stack(inputs), np.stack(targets)


def cached_patches(
    spec: PairSpec, cache_dir: Path | None, progress: bool = False
) -> tuple[FloatArray, FloatArray]:
    """:func:`make_patches`, stored as float16 under ``cache_dir`` and reused."""
    if cache_dir is None:
        return make_patches(spec, progress)
    path = cache_dir / f"mr_accel_pairs_{spec.key()}.npz"
    if path.is_file():
        with np.load(path) as data:
            logger.info("reusing simulated pairs %s", path.name)
            return data["x"].astype(np.float32), data["y"].astype(np.float32)
    x, y = make_patches(spec, progress)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, x=x.astype(np.float16), y=y.astype(np.float16))
    tmp.replace(path)
    return x, y
