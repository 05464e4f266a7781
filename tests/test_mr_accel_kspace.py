"""Tests of mr-accel's k-space physics, simulation and metrics."""

from __future__ import annotations

import numpy as np

from pipelines.mr_accel.anatomy import procedural_anatomy, receive_field
from pipelines.mr_accel.kspace import (
    acquired_lines,
    central_box,
    central_image,
    central_kspace,
    data_consistency,
    dc_box_fraction,
    fft2c,
    floor_corrected,
    ifft2c,
    lowfreq_difference,
    noise_floor_sigma,
    phase_encode_axis,
    rician_excess,
    rician_mean,
)
from pipelines.mr_accel.metrics import edge_sites, mean_rise_distance
from pipelines.mr_accel.simulate import Acceleration, accelerate, fully_averaged, line_mask


def test_fft_round_trip_is_orthonormal() -> None:
    rng = np.random.default_rng(0)
    img = rng.standard_normal((32, 48)).astype(np.float32)
    k = fft2c(img)
    assert np.isclose(np.linalg.norm(k), np.linalg.norm(img), rtol=1e-5)
    np.testing.assert_allclose(ifft2c(k).real, img, atol=1e-5)


def test_acquired_lines_coverage_and_partial_fourier() -> None:
    lines = acquired_lines(256, 0.5)
    assert lines.sum() == 128
    assert lines[128] and not lines[0] and not lines[-1]
    pf = acquired_lines(256, 0.5, partial_fourier=0.75)
    assert pf.sum() == 96
    # The missing partial-Fourier lines are on one side only; the centre is kept.
    assert pf[128] and not pf[64] and pf[191]


def test_phase_encode_direction_names() -> None:
    assert phase_encode_axis("ROW") == -1
    assert phase_encode_axis("COL") == -2
    assert phase_encode_axis(None) is None


def test_equispaced_mask_thins_the_outer_lines() -> None:
    acc = Acceleration(coverage=0.75, mask="equispaced", acceleration=1.5)
    mask = line_mask(128, acc, seed=1)
    assert mask.sum() < acquired_lines(128, 0.75).sum()
    assert mask[64]


def test_data_consistency_keeps_the_central_kspace() -> None:
    rng = np.random.default_rng(1)
    measured = procedural_anatomy(rng, (128, 96))
    # A restoration that got contrast and position wrong at low frequencies.
    yy = np.linspace(0, 1, 128, dtype=np.float32)[:, None]
    wrong = (1.2 * measured + 0.3 * yy + 0.05 * rng.standard_normal(measured.shape)).astype(
        np.float32
    )
    fixed = data_consistency(wrong, measured, coverage=0.5)
    box = central_box(measured.shape, dc_box_fraction(0.5))
    k_fixed = fft2c(fixed)[box]
    k_meas = fft2c(floor_corrected(measured, wrong))[box]
    assert np.abs(k_fixed - k_meas).max() < 1e-4 * np.abs(k_meas).max()
    # Without a noise floor the kept k-space is the measured image's own.
    assert np.abs(k_fixed - fft2c(measured)[box]).max() < 0.05 * np.abs(k_meas).max()
    # Outside the box the restoration's content is left alone.
    outside = ~central_box(measured.shape, 0.5)
    np.testing.assert_allclose(
        np.abs(fft2c(fixed)[outside]), np.abs(fft2c(wrong)[outside]), rtol=1e-3, atol=1e-3
    )


def test_data_consistency_removes_the_magnitude_noise_floor() -> None:
    rng = np.random.default_rng(6)
    clean = procedural_anatomy(rng, (128, 128))
    sigma = 0.02
    noise = sigma * (rng.standard_normal(clean.shape) + 1j * rng.standard_normal(clean.shape))
    measured = np.abs(clean + noise).astype(np.float32)
    # Background is Rayleigh: its mean is the floor the acquired k-space lacks.
    assert abs(noise_floor_sigma(measured, clean) - sigma) < 0.1 * sigma
    corrected = floor_corrected(measured, clean)
    background = clean < 0.01
    assert abs(float(corrected[background].mean())) < 0.1 * sigma
    assert float(measured[background].mean()) > sigma
    fixed = data_consistency(clean, measured, coverage=0.5)
    box = central_box(clean.shape, dc_box_fraction(0.5))
    k_ref = fft2c(corrected)[box]
    assert np.abs(fft2c(fixed)[box] - k_ref).max() < 1e-4 * np.abs(k_ref).max()


def test_rician_mean_limits() -> None:
    amp = np.array([0.0, 10.0])
    mean = rician_mean(amp, 1.0)
    assert np.isclose(mean[0], np.sqrt(np.pi / 2))
    assert np.isclose(mean[1], 10.0, rtol=1e-2)


def test_simulation_breaks_hermitian_symmetry_and_blurs() -> None:
    rng = np.random.default_rng(2)
    clean = procedural_anatomy(rng, (128, 128))
    fast = accelerate(clean, Acceleration(pe_axis=-2, coverage=0.5, noise=0.0), rng)
    sites = edge_sites(clean, -2)
    assert sites
    assert mean_rise_distance(fast, sites, -2) > mean_rise_distance(clean, sites, -2)


def test_simulated_noise_level_matches_fewer_averages() -> None:
    rng = np.random.default_rng(3)
    flat = np.ones((128, 128), np.float32)
    noisy = accelerate(flat, Acceleration(coverage=1.0, noise=0.05), rng)
    # At high SNR the magnitude's noise is the real channel's: complex std / sqrt(2).
    assert 0.03 < float(noisy[32:96, 32:96].std()) < 0.04


def test_fully_averaged_reference_has_rician_thermal_noise() -> None:
    rng = np.random.default_rng(6)
    image = np.zeros((128, 128), np.float32)
    image[32:96, 32:96] = 1.0
    ref = fully_averaged(image, 0.02, rng)
    sigma = 0.02 / np.sqrt(2.0)  # per channel
    # Bright tissue: unbiased, noise of one channel; background: a Rayleigh floor.
    assert abs(float(ref[40:88, 40:88].mean()) - 1.0) < 2e-3
    assert np.isclose(float(ref[40:88, 40:88].std()), sigma, rtol=0.1)
    assert np.isclose(float(ref[:24].mean()), sigma * np.sqrt(np.pi / 2), rtol=0.05)
    np.testing.assert_array_equal(fully_averaged(image, 0.0, rng), image)


def test_surface_coil_field_leaves_dim_tissue_far_from_the_coil() -> None:
    fields = [receive_field(np.random.default_rng(seed), (96, 128)) for seed in range(40)]
    spreads = [float(f.max() / f.min()) for f in fields]
    # Half are gentle gradients (at most 1.25 / 0.75); the rest fall to 5-30 %.
    assert sum(s < 2.0 for s in spreads) >= 10
    assert sum(s > 3.0 for s in spreads) >= 10
    assert all(f.min() > 0.03 for f in fields)


def test_lowfreq_difference_allows_keeping_or_removing_the_noise_floor() -> None:
    rng = np.random.default_rng(8)
    clean = procedural_anatomy(rng, (128, 128))
    measured = accelerate(clean, Acceleration(coverage=1.0, noise=0.06), rng)
    # The floor the magnitude added, as the gate computes it from a restoration.
    floor = (measured - floor_corrected(measured, clean)).astype(np.float32)
    assert float(floor.max()) > 0.01
    frac = 1.0 / 16.0
    for t in (0.0, 0.4, 1.0):
        kept = (measured - t * floor).astype(np.float32)
        assert lowfreq_difference(kept, measured, frac, floor) < 1e-6
    # Never stricter than either end alone; without the allowance removal counts.
    out = (clean * np.float32(1.01)).astype(np.float32)
    allowed = lowfreq_difference(out, measured, frac, floor)
    removed = (measured - floor).astype(np.float32)
    assert allowed <= lowfreq_difference(out, measured, frac) + 1e-6
    assert allowed <= lowfreq_difference(out, removed, frac) + 1e-6
    assert lowfreq_difference(removed, measured, frac) > 0.01
    # A 5 % change of contrast or a doubled floor is not the floor's removal.
    for changed in (measured * np.float32(0.95), measured * np.float32(1.05), measured + floor):
        assert lowfreq_difference(changed.astype(np.float32), measured, frac, floor) > 0.03


def test_central_kspace_is_the_box_of_the_full_transform() -> None:
    rng = np.random.default_rng(4)
    for shape in ((128, 96), (101, 77)):
        img = rng.standard_normal(shape).astype(np.float32)
        for fraction in (1.0 / 16.0, 0.125, 0.3):
            box = central_box(shape, fraction)
            rows, cols = box.any(axis=1).sum(), box.any(axis=0).sum()
            expected = fft2c(img)[box].reshape(rows, cols)
            k = central_kspace(img, fraction)
            np.testing.assert_allclose(k, expected, atol=1e-5 * np.abs(expected).max())
            # The inverse: the image of a k-space that is the box and zero elsewhere.
            full = np.zeros(shape, dtype=np.complex64)
            full[box] = expected.ravel()
            np.testing.assert_allclose(
                central_image(k, shape), ifft2c(full).real, atol=1e-5 * np.abs(img).max()
            )


def test_fast_rician_excess_matches_the_bessel_expression() -> None:
    snr = np.concatenate([np.linspace(0.0, 40.0, 200_001), np.geomspace(40.0, 1e5, 500)])
    for sigma in (1.0, 0.015, 37.0):
        amp = (snr * sigma).astype(np.float32)
        exact = rician_mean(amp.astype(np.float64), sigma) - amp
        fast = rician_excess(amp, sigma)
        assert fast.dtype == np.float32
        assert float(np.abs(fast - exact).max()) < 1e-6 * sigma
    assert not rician_excess(np.ones(3, np.float32), 0.0).any()
