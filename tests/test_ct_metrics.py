"""Tests of the generic evaluation metrics: windowed PSNR/SSIM/RMSE, NPS, CNR and CHO d'."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from pipelines.evaluation.metrics import SOFT_TISSUE, WIDE, Window, bias, psnr, rmse, ssim
from pipelines.evaluation.noise import noise_power_spectrum
from pipelines.evaluation.observer import cho_dprime, cnr, disk_mask, dprime_change


def test_psnr_matches_its_definition_in_the_window() -> None:
    rng = np.random.default_rng(0)
    ref = np.zeros((64, 64), np.float32)
    img = ref + rng.normal(0.0, 10.0, ref.shape).astype(np.float32)
    err = float(np.sqrt(np.mean((img - ref) ** 2)))
    assert rmse(ref, img, SOFT_TISSUE) == pytest.approx(err, rel=1e-6)
    assert psnr(ref, img, SOFT_TISSUE) == pytest.approx(20 * np.log10(400.0 / err), rel=1e-6)
    # The wide window has five times the range: about 14 dB more for the same error.
    assert psnr(ref, img, WIDE) - psnr(ref, img, SOFT_TISSUE) == pytest.approx(
        20 * np.log10(2000.0 / 400.0), abs=1e-6
    )


def test_window_clips_before_comparing() -> None:
    ref = np.full((8, 8), 1000.0, np.float32)
    img = np.full((8, 8), 1500.0, np.float32)
    assert rmse(ref, img, SOFT_TISSUE) == 0.0
    assert rmse(ref, img, Window(-1000, 2000)) == pytest.approx(500.0)


def test_ssim_is_one_for_identical_and_lower_for_noisy() -> None:
    rng = np.random.default_rng(1)
    ref = rng.normal(40.0, 30.0, (64, 64)).astype(np.float32)
    assert ssim(ref, ref, SOFT_TISSUE) == pytest.approx(1.0)
    assert ssim(ref, ref + rng.normal(0, 30.0, ref.shape), SOFT_TISSUE) < 0.9


def test_bias_is_the_mean_difference_in_the_mask() -> None:
    ref = np.zeros((10, 10))
    img = ref + 3.0
    mask = np.zeros((10, 10), bool)
    mask[:5] = True
    img[5:] = 100.0
    assert bias(ref, img, mask) == pytest.approx(3.0)


def test_nps_of_white_noise_is_flat_and_integrates_to_the_variance() -> None:
    rng = np.random.default_rng(2)
    rois = rng.normal(0.0, 20.0, (40, 64, 64))
    res = noise_power_spectrum(rois, spacing_mm=0.5)
    assert res.noise_sd == pytest.approx(20.0, rel=0.03)
    # White noise: the flat NPS level is sigma^2 * pixel area.
    assert np.median(res.nps[2:]) == pytest.approx(400.0 * 0.25, rel=0.1)


def test_nps_shifts_down_when_noise_is_smoothed() -> None:
    rng = np.random.default_rng(3)
    white = rng.normal(0.0, 20.0, (20, 64, 64))
    smooth = np.stack([ndi.gaussian_filter(x, 1.5) for x in white])
    assert (
        noise_power_spectrum(smooth, 0.7).mean_frequency
        < noise_power_spectrum(white, 0.7).mean_frequency
    )


def _disk_rois(
    rng: np.random.Generator, n: int, contrast: float, noise: float
) -> tuple[np.ndarray, np.ndarray]:
    disk = disk_mask(21, 4.0).astype(float) * contrast
    present = disk + rng.normal(0.0, noise, (n, 21, 21))
    absent = rng.normal(0.0, noise, (n, 21, 21))
    return present, absent


def test_cho_dprime_grows_with_contrast_and_falls_with_noise() -> None:
    rng = np.random.default_rng(4)
    low = cho_dprime(*_disk_rois(rng, 200, 2.0, 10.0), radius_px=4.0)
    high = cho_dprime(*_disk_rois(rng, 200, 6.0, 10.0), radius_px=4.0)
    noisy = cho_dprime(*_disk_rois(rng, 200, 6.0, 30.0), radius_px=4.0)
    assert low < high
    assert noisy < high
    absent_only = cho_dprime(*_disk_rois(rng, 200, 0.0, 10.0), radius_px=4.0)
    assert absent_only < 0.6


def test_dprime_change_interval_is_paired() -> None:
    rng = np.random.default_rng(6)
    present, absent = _disk_rois(rng, 200, 3.0, 10.0)
    # The same realisations, unchanged: no change, and an interval of width 0.
    assert dprime_change(present, absent, present, absent, 4.0, draws=50) == (0.0, 0.0, 0.0)
    # More noise on the same realisations: d' falls, the whole interval below 0.
    noisier_p = present + rng.normal(0.0, 10.0, present.shape)
    noisier_a = absent + rng.normal(0.0, 10.0, absent.shape)
    change, low, high = dprime_change(noisier_p, noisier_a, present, absent, 4.0, draws=200)
    assert low <= change <= high < 0.0
    # A faint smoothing barely changes d': its interval holds 0.
    smooth_p = np.stack([ndi.gaussian_filter(x, 0.5) for x in present])
    smooth_a = np.stack([ndi.gaussian_filter(x, 0.5) for x in absent])
    change, low, high = dprime_change(smooth_p, smooth_a, present, absent, 4.0, draws=200)
    assert low <= 0.0 <= high
    with pytest.raises(ValueError, match="same realisations"):
        dprime_change(present[:10], absent, present, absent, 4.0)


def test_cnr_is_contrast_over_noise() -> None:
    rng = np.random.default_rng(5)
    present, _ = _disk_rois(rng, 100, 10.0, 5.0)
    assert cnr(present, 4.0, background_sd=5.0) == pytest.approx(2.0, rel=0.15)
