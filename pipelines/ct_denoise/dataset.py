"""Seeded, cached training and evaluation sets of simulated normal/low-dose CT pairs."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from pipelines.base import FloatArray
from pipelines.ct_denoise.simulate import DOSE_FRACTIONS, ParallelBeamProjector, simulate_pairs
from pipelines.qa import estimate_noise_sd

logger = logging.getLogger(__name__)

#: Bumped whenever the phantoms or the noise simulation change, so a cache of
#: an older recipe is never reused.
RECIPE_VERSION = "ct-sim-5"


@dataclass(frozen=True)
class SimRecipe:
    """What a simulated set is made of; its hash names the cache file.

    Parameters
    ----------
    n_phantoms
        Number of procedural phantoms.
    doses_per_phantom
        Low-dose realisations per phantom, each at its own dose fraction.
    size
        Image edge in pixels.
    seed
        Seed of every random draw (phantom ``i`` uses ``[seed, i]``).
    fraction
        A fixed dose fraction, or ``None`` to draw from the clinical range.
    """

    n_phantoms: int
    doses_per_phantom: int = 2
    size: int = 256
    seed: int = 0
    fraction: float | None = None

    def key(self) -> str:
        """Short hash of the recipe and the simulation version."""
        text = json.dumps({**asdict(self), "version": RECIPE_VERSION}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SimSet:
    """Arrays of a simulated set (one row per low-dose realisation)."""

    normal: FloatArray
    low: FloatArray
    sigma_low: FloatArray
    fraction: FloatArray
    spacing: FloatArray
    photons: FloatArray

    def __len__(self) -> int:
        return int(self.low.shape[0])


@lru_cache(maxsize=4)
def projector_for(size: int) -> ParallelBeamProjector:
    """A projector per image size, reused across phantoms (it holds only geometry)."""
    return ParallelBeamProjector(size)


def _one_phantom(args: tuple[SimRecipe, int]) -> dict[str, FloatArray]:
    import torch

    from pipelines.ct_denoise.phantoms import random_phantom

    torch.set_num_threads(1)
    recipe, index = args
    rng = np.random.default_rng([recipe.seed, index])
    clean, spacing = random_phantom(rng, recipe.size)
    if recipe.fraction is None:
        fractions = [float(f) for f in rng.uniform(*DOSE_FRACTIONS, recipe.doses_per_phantom)]
    else:
        fractions = [recipe.fraction] * recipe.doses_per_phantom
    pairs = simulate_pairs(clean, spacing, rng, fractions, projector=projector_for(recipe.size))
    meta = [
        np.array(
            [estimate_noise_sd(p.low), p.dose_fraction, spacing, p.incident_photons],
            dtype=np.float32,
        )
        for p in pairs
    ]
    return {
        "normal": np.stack([p.normal for p in pairs]),
        "low": np.stack([p.low for p in pairs]),
        "meta": np.stack(meta),
    }


def generate(
    recipe: SimRecipe,
    cache_dir: Path | None = None,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
) -> SimSet:
    """Simulate (or load from the cache) the set described by ``recipe``.

    Parameters
    ----------
    recipe
        The set to make.
    cache_dir
        Where ``<key>.npz`` files are kept; ``None`` disables the cache.
    workers
        Processes to simulate with (each uses one torch thread).
    progress
        Called with the number of phantoms finished so far.

    Returns
    -------
    SimSet
        The pairs, ordered by phantom index then realisation.
    """
    path = cache_dir / f"{recipe.key()}.npz" if cache_dir is not None else None
    if path is not None and path.is_file():
        with np.load(path) as data:
            return SimSet(**{k: data[k] for k in SimSet.__dataclass_fields__})
    jobs = [(recipe, i) for i in range(recipe.n_phantoms)]
    results: list[dict[str, FloatArray]] = []
    if workers > 1:
        with get_context("spawn").Pool(workers) as pool:
            for res in pool.imap(_one_phantom, jobs):
                results.append(res)
                if progress:
                    progress(len(results))
    else:
        for job in jobs:
            results.append(_one_phantom(job))
            if progress:
                progress(len(results))
    meta = np.concatenate([r["meta"] for r in results])
    sim = SimSet(
        normal=np.concatenate([r["normal"] for r in results]),
        low=np.concatenate([r["low"] for r in results]),
        sigma_low=meta[:, 0].copy(),
        fraction=meta[:, 1].copy(),
        spacing=meta[:, 2].copy(),
        photons=meta[:, 3].copy(),
    )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, **asdict(sim))
        tmp.replace(path)
    return sim
