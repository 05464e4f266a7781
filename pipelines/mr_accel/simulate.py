"""Simulated fast acquisitions: phase, reduced coverage, partial Fourier, masks, noise."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pipelines.base import FloatArray
from pipelines.mr_accel.kspace import acquired_lines, fft2c, ifft2c


@dataclass(frozen=True)
class Acceleration:
    """How one simulated acquisition was shortened.

    Parameters
    ----------
    pe_axis
        Array axis of phase encoding (-2 or -1).
    coverage
        Centred fraction of phase-encode lines acquired (1 = full resolution).
    partial_fourier
        Fraction of those lines measured from one edge (1 = none).
    mask
        ``"none"``, ``"equispaced"`` or ``"random"`` Cartesian undersampling.
    acceleration
        Undersampling factor of the mask (1 with no mask).
    noise
        Complex Gaussian noise standard deviation relative to the image's
        99.5th percentile: fewer averages raise it by sqrt(NEX_full / NEX).
    levels
        Integer grey levels of the stored image (0: not quantised).
    """

    pe_axis: int = -2
    coverage: float = 1.0
    partial_fourier: float = 1.0
    mask: str = "none"
    acceleration: float = 1.0
    noise: float = 0.0
    levels: int = 0


def smooth_phase(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A smooth image phase (B0 offsets, coil phase), up to a few radians.

    Without it k-space is Hermitian and partial Fourier could be undone
    exactly by conjugate symmetry, which no real acquisition allows.
    """
    rows, cols = shape
    yy, xx = np.mgrid[0:rows, 0:cols] / max(rows, cols) - 0.5
    phase = rng.uniform(-np.pi, np.pi) + rng.uniform(-3, 3) * yy + rng.uniform(-3, 3) * xx
    phase += rng.uniform(-4, 4) * yy * xx + rng.uniform(-3, 3) * (yy**2 - xx**2)
    bumps = ndimage.gaussian_filter(rng.standard_normal(shape), max(rows, cols) / 12)
    phase += rng.uniform(0, 1.5) * bumps / (np.abs(bumps).max() + 1e-12)
    return np.asarray(phase)


def line_mask(n: int, acc: Acceleration, seed: int) -> np.ndarray:
    """Acquired phase-encode lines: coverage, partial Fourier, undersampling mask."""
    lines = acquired_lines(n, acc.coverage, acc.partial_fourier)
    if acc.mask != "none":
        from monai.apps.reconstruction.transforms.array import (
            EquispacedKspaceMask,
            RandomKspaceMask,
        )

        cls = EquispacedKspaceMask if acc.mask == "equispaced" else RandomKspaceMask
        # The mask keeps a fully sampled centre of 30 % and thins the rest.
        transform = cls(
            center_fractions=[0.3],
            accelerations=[acc.acceleration],
            spatial_dims=1,
            is_complex=False,
        )
        transform.set_random_state(seed=seed)
        transform(np.ones((1, n), dtype=np.float32))
        lines = lines & np.asarray(transform.mask).reshape(-1).astype(bool)
    return lines


def accelerate(clean: FloatArray, acc: Acceleration, rng: np.random.Generator) -> FloatArray:
    """The magnitude image a shortened acquisition of ``clean`` would give.

    The image gets a smooth phase, goes to k-space, receives complex Gaussian
    noise (thermal noise is white and complex in k-space), and keeps only the
    acquired lines, zero-filled to the full matrix; the scanner's magnitude
    reconstruction then makes the noise Rician.
    """
    shape = (clean.shape[0], clean.shape[1])
    obj = clean * np.exp(1j * smooth_phase(rng, shape))
    k = fft2c(obj)
    if acc.noise > 0:
        scale = float(np.percentile(clean, 99.5)) or 1.0
        noise = rng.standard_normal(k.shape) + 1j * rng.standard_normal(k.shape)
        k = k + (acc.noise * scale / np.sqrt(2.0)) * noise
    n = shape[0] if acc.pe_axis == -2 else shape[1]
    lines = line_mask(n, acc, int(rng.integers(2**31)))
    mask = lines[:, None] if acc.pe_axis == -2 else lines[None, :]
    img = np.abs(ifft2c(k * mask)).astype(np.float32)
    if acc.levels > 0:
        # The stored DICOM has integer pixels.
        q = acc.levels / max(float(img.max()), 1e-12)
        img = (np.round(img * q) / q).astype(np.float32)
    return img


def fully_averaged(clean: FloatArray, noise: float, rng: np.random.Generator) -> FloatArray:
    """The magnitude image a full acquisition with all its averages gives.

    Even the fully sampled, fully averaged reference carries thermal noise:
    complex Gaussian with standard deviation ``noise`` times the image's 99.5th
    percentile, which the magnitude turns Rician (a floor in dark regions). A
    restoration is asked for this image, not for a noise-free one no scanner
    acquires. The fast input is simulated from it (:func:`accelerate` adds the
    extra noise of fewer averages), so the reference's noise inside the
    acquired band is shared by input and target: the protocol the real-image
    evaluation follows too, where a real fast scan's noise would be independent.
    """
    if noise <= 0:
        return np.asarray(clean, dtype=np.float32)
    sigma = noise * (float(np.percentile(clean, 99.5)) or 1.0) / np.sqrt(2.0)
    re = clean + sigma * rng.standard_normal(clean.shape)
    im = sigma * rng.standard_normal(clean.shape)
    return np.asarray(np.hypot(re, im), dtype=np.float32)


def random_reference_noise(rng: np.random.Generator) -> float:
    """Thermal noise of a fully averaged reference: 0.2-2.5 % of its bright signal.

    Complex noise of that standard deviation puts sqrt(2) / noise, about 60
    to 700, as the SNR of the 99.5th-percentile signal: from routine clinical
    series to heavily averaged ones.
    """
    return float(np.exp(rng.uniform(np.log(0.002), np.log(0.025))))


def random_acceleration(rng: np.random.Generator) -> Acceleration:
    """Training mixture: mostly reduced coverage, some full, some masks and PF."""
    pe_axis = int(rng.choice([-2, -1]))
    full = rng.random() < 0.15
    coverage = 1.0 if full else float(rng.uniform(0.4, 0.75))
    pf = 1.0 if rng.random() < 0.6 else float(rng.uniform(0.6, 0.85))
    mask, accel = "none", 1.0
    if not full and rng.random() < 0.1:
        mask = str(rng.choice(["equispaced", "random"]))
        accel = 1.5
    noise = float(np.exp(rng.uniform(np.log(0.003), np.log(0.08))))
    if full and rng.random() < 0.5:
        noise = float(rng.uniform(0.0, 0.01))
    levels = int(rng.choice([0, 255, 1023, 4095]))
    return Acceleration(pe_axis, coverage, pf, mask, accel, noise, levels)


#: The evaluation's headline scenario: half the phase-encode lines and fewer
#: averages (noise at 3 % of the tissue signal).
EVAL_ACCELERATION = Acceleration(pe_axis=-2, coverage=0.5, noise=0.03)

#: Thermal noise of the simulated evaluation references (an SNR near 140 at the
#: 99.5th-percentile signal).
EVAL_REFERENCE_NOISE = 0.01
