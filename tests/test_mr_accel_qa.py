"""Tests of the mr-accel QA gate: restorations pass, injected fake structure fails."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.base import Volume
from pipelines.mr_accel import create
from pipelines.mr_accel.anatomy import procedural_anatomy
from pipelines.mr_accel.pipeline import MRAccelPipeline
from pipelines.mr_accel.qa import gate
from pipelines.mr_accel.simulate import Acceleration, accelerate


def _fast_image(seed: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    clean = procedural_anatomy(rng, (192, 192))
    return clean, accelerate(clean, Acceleration(pe_axis=-2, coverage=0.5, noise=0.03), rng)


def _with_fake_lesion(image: np.ndarray) -> np.ndarray:
    """A bright 5-pixel disc in the flattest tissue: structure the input never had."""
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(image, 2.0)
    grad = ndimage.gaussian_gradient_magnitude(image, 3.0)
    score = np.where(smooth > 0.3 * image.max(), -grad, -np.inf)
    score[:20], score[-20:], score[:, :20], score[:, -20:] = -np.inf, -np.inf, -np.inf, -np.inf
    r, c = np.unravel_index(np.argmax(score), image.shape)
    yy, xx = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    disc = ((yy - r) ** 2 + (xx - c) ** 2 <= 25).astype(np.float32)
    out: np.ndarray = image + 0.3 * float(np.percentile(image, 99.5)) * disc
    return out.astype(np.float32)


def test_gate_passes_unchanged_and_restored_slices() -> None:
    _, fast = _fast_image()
    assert gate(fast, fast).passed
    restored = create({"phase_coverage": 0.5}).run(
        Volume(voxels=fast[None], modality="MR", unit="arbitrary")
    )
    assert restored.qa[0].passed, restored.qa[0].reasons


def test_gate_catches_an_injected_fake_structure() -> None:
    _, fast = _fast_image()
    verdict = gate(fast, _with_fake_lesion(fast))
    assert not verdict.passed
    assert any("structure" in r or "bias" in r for r in verdict.reasons)
    assert verdict.metrics["structure_max"] > 0.1


def test_gate_catches_a_contrast_change() -> None:
    _, fast = _fast_image()
    verdict = gate(fast, fast * np.float32(1.2))
    assert not verdict.passed
    assert any("low-frequency" in r for r in verdict.reasons)


def test_failing_slice_passes_through_unchanged_and_flagged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, fast = _fast_image()
    voxels = np.stack([fast, fast]) * np.float32(900.0)
    real_restore = MRAccelPipeline.restore_normalised

    def hallucinating(self: MRAccelPipeline, norm: np.ndarray) -> np.ndarray:
        out = real_restore(self, norm)
        out[1] = _with_fake_lesion(out[1])
        return out

    monkeypatch.setattr(MRAccelPipeline, "restore_normalised", hallucinating)
    result = create({}).run(Volume(voxels=voxels, modality="MR", unit="arbitrary"))
    assert result.flagged_slices == [1]
    np.testing.assert_array_equal(result.volume.voxels[1], voxels[1])
    assert not np.array_equal(result.volume.voxels[0], voxels[0])
    assert result.qa[1].reasons and result.qa[1].metrics
