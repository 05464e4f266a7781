"""Tests of the low-dose simulation: projector, noise insertion, phantoms and the cached sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.ct_denoise.dataset import SimRecipe, generate
from pipelines.ct_denoise.phantoms import low_contrast_phantom, random_phantom, water_cylinder
from pipelines.ct_denoise.simulate import (
    ParallelBeamProjector,
    calibrate_photons,
    insert_noise,
    line_integrals,
    simulate_pair,
)


def test_fbp_reconstructs_a_disk() -> None:
    proj = ParallelBeamProjector(96)
    disk = water_cylinder(96, 1.0, 30.0) + 1000.0
    rec = proj.fbp(proj.forward(disk))
    assert rec[40:56, 40:56].mean() == pytest.approx(1000.0, rel=0.03)
    assert abs(rec[2:10, 2:10].mean()) < 30.0


def test_noise_grows_as_dose_falls_and_is_not_white() -> None:
    rng = np.random.default_rng(0)
    proj = ParallelBeamProjector(128)
    clean = water_cylinder(128, 1.5, 80.0)
    half = simulate_pair(clean, 1.5, rng, fraction=0.5, normal_noise_hu=10.0, projector=proj)
    tenth = simulate_pair(clean, 1.5, rng, fraction=0.1, normal_noise_hu=10.0, projector=proj)
    c = slice(44, 84)
    sd_normal = float((half.normal - clean)[c, c].std())
    assert sd_normal == pytest.approx(10.0, rel=0.25)
    # Quantum noise: SD scales as 1/sqrt(dose) (electronic noise adds a little).
    assert float((half.low - clean)[c, c].std()) / sd_normal == pytest.approx(np.sqrt(2), rel=0.2)
    assert float((tenth.low - clean)[c, c].std()) / sd_normal == pytest.approx(np.sqrt(10), rel=0.2)
    # FBP noise is correlated: neighbouring pixels are not independent.
    noise = (tenth.low - clean)[c, c]
    corr = np.corrcoef(noise[:, :-1].ravel(), noise[:, 1:].ravel())[0, 1]
    assert abs(corr) > 0.05


def test_insertion_on_a_given_image_adds_only_noise() -> None:
    rng = np.random.default_rng(1)
    proj = ParallelBeamProjector(96)
    image = low_contrast_phantom(96, 2.0, 80.0)
    photons = calibrate_photons(proj, line_integrals(proj, image, 2.0), 2.0, 10.0)
    low = insert_noise(proj, image, 2.0, 0.25, photons, rng)
    diff = (low - image)[30:66, 30:66]
    assert abs(float(diff.mean())) < 2.0
    assert float(diff.std()) == pytest.approx(10.0 * np.sqrt(3.0), rel=0.3)


def test_phantoms_are_seeded_and_realistic() -> None:
    a, sa = random_phantom(np.random.default_rng([5, 1]), 128)
    b, sb = random_phantom(np.random.default_rng([5, 1]), 128)
    assert np.array_equal(a, b) and sa == sb
    assert a.min() >= -1000.0 - 1e-3
    assert a.max() > 300.0  # bone or contrast is present
    assert np.mean((a > -200) & (a < 200)) > 0.1  # and soft tissue


def test_sets_are_reproducible_and_cached(tmp_path: Path) -> None:
    recipe = SimRecipe(n_phantoms=2, doses_per_phantom=2, size=64, seed=3)
    first = generate(recipe, tmp_path)
    assert (tmp_path / f"{recipe.key()}.npz").is_file()
    again = generate(recipe, tmp_path)
    fresh = generate(recipe, None)
    assert np.array_equal(first.low, again.low)
    assert np.array_equal(first.low, fresh.low)
    assert len(first) == 4
    assert np.all((first.fraction >= 0.1) & (first.fraction <= 0.5))
