"""Image-quality metrics for MR restoration: fidelity, ROI SNR and 10-90 % edge rise."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from pipelines.base import FloatArray


def fidelity(reference: FloatArray, image: FloatArray) -> dict[str, float]:
    """PSNR (dB), SSIM and NRMSE of ``image`` against ``reference``.

    The data range is the reference's 99.5th percentile, the same robust scale
    the pipeline normalises by, so hot pixels do not inflate PSNR.
    """
    from skimage.metrics import (
        normalized_root_mse,
        peak_signal_noise_ratio,
        structural_similarity,
    )

    ref = reference.astype(np.float64)
    img = image.astype(np.float64)
    data_range = float(np.percentile(ref, 99.5)) or 1.0
    return {
        "psnr": float(peak_signal_noise_ratio(ref, img, data_range=data_range)),  # type: ignore[no-untyped-call]
        "ssim": float(structural_similarity(ref, img, data_range=data_range)),  # type: ignore[no-untyped-call]
        "nrmse": float(normalized_root_mse(ref, img)),
    }


def homogeneous_rois(reference: FloatArray, size: int = 7, count: int = 6) -> list[tuple[int, int]]:
    """Top-left corners of the most uniform tissue windows of ``reference``.

    Windows are ranked by coefficient of variation among those whose mean is
    at least a third of the image's robust maximum (tissue, not background),
    and kept apart by ``2 * size`` so they sample different regions.
    """
    ref = reference.astype(np.float64)
    mean = ndimage.uniform_filter(ref, size)
    sq = ndimage.uniform_filter(ref * ref, size)
    std = np.sqrt(np.maximum(sq - mean * mean, 0.0))
    scale = float(np.percentile(ref, 99.5)) or 1.0
    half = size // 2
    valid = np.zeros(ref.shape, dtype=bool)
    valid[half : ref.shape[0] - half, half : ref.shape[1] - half] = True
    valid &= mean > scale / 3.0
    cv = np.where(valid, std / np.maximum(mean, 1e-12), np.inf)
    chosen: list[tuple[int, int]] = []
    for flat in np.argsort(cv, axis=None):
        if not np.isfinite(cv.flat[flat]) or len(chosen) == count:
            break
        r, c = np.unravel_index(flat, ref.shape)
        if all(abs(r - a) >= 2 * size or abs(c - b) >= 2 * size for a, b in chosen):
            chosen.append((int(r) - half, int(c) - half))
    return chosen


def roi_snr(image: FloatArray, rois: list[tuple[int, int]], size: int = 7) -> float:
    """Mean over ROIs of mean / standard deviation inside each ROI."""
    values = []
    for r, c in rois:
        patch = image[r : r + size, c : c + size].astype(np.float64)
        sd = float(patch.std())
        if sd > 0:
            values.append(float(patch.mean()) / sd)
    return float(np.mean(values)) if values else float("nan")


def edge_sites(
    reference: FloatArray, axis: int, count: int = 12, half: int = 6
) -> list[tuple[int, int]]:
    """Strong, clean step edges of ``reference`` crossed along ``axis``.

    An edge qualifies when the gradient along ``axis`` dominates the one across
    it and the reference steps by at least a fifth of its robust maximum
    within ``half`` pixels; sites are kept apart by ``2 * half``.
    """
    ref = ndimage.gaussian_filter(reference.astype(np.float64), 0.7)
    ax = axis % 2
    g_along = np.abs(ndimage.sobel(ref, ax))
    g_across = np.abs(ndimage.sobel(ref, 1 - ax))
    scale = float(np.percentile(reference, 99.5)) or 1.0
    score = np.where(g_along > 3.0 * g_across, g_along, 0.0)
    margin = half + 3
    score[:margin, :] = 0
    score[-margin:, :] = 0
    score[:, :margin] = 0
    score[:, -margin:] = 0
    sites: list[tuple[int, int]] = []
    for flat in np.argsort(score, axis=None)[::-1]:
        if score.flat[flat] <= 0 or len(sites) == count:
            break
        r, c = (int(v) for v in np.unravel_index(flat, ref.shape))
        prof = _profile(reference, (r, c), ax, half)
        if abs(prof[-2:].mean() - prof[:2].mean()) < 0.2 * scale:
            continue
        if all(abs(r - a) >= 2 * half or abs(c - b) >= 2 * half for a, b in sites):
            sites.append((r, c))
    return sites


def rise_distance(image: FloatArray, site: tuple[int, int], axis: int, half: int = 6) -> float:
    """10-90 % rise distance in pixels of the edge at ``site`` along ``axis``.

    The profile is averaged over three neighbouring lines to tame noise and
    interpolated tenfold; its plateaus are the means of the two end samples.
    """
    prof = _profile(image, site, axis % 2, half)
    lo, hi = prof[:2].mean(), prof[-2:].mean()
    if abs(hi - lo) < 1e-12:
        return float("nan")
    p = (prof - lo) / (hi - lo)
    x = np.arange(len(p), dtype=np.float64)
    fine = np.linspace(0, len(p) - 1, 10 * (len(p) - 1) + 1)
    pf = np.interp(fine, x, p)
    centre = len(fine) // 2
    below = np.nonzero(pf[:centre] <= 0.1)[0]
    above = np.nonzero(pf[centre:] >= 0.9)[0]
    x10 = fine[below[-1]] if below.size else fine[0]
    x90 = fine[centre + above[0]] if above.size else fine[-1]
    return float(x90 - x10)


def mean_rise_distance(image: FloatArray, sites: list[tuple[int, int]], axis: int) -> float:
    """Mean 10-90 % rise distance over ``sites`` (pixels; smaller is sharper)."""
    values = [rise_distance(image, s, axis) for s in sites]
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _profile(image: FloatArray, site: tuple[int, int], ax: int, half: int) -> np.ndarray:
    r, c = site
    img = image.astype(np.float64)
    if ax == 0:
        block = img[r - half : r + half + 1, max(c - 1, 0) : c + 2].mean(axis=1)
    else:
        block = img[max(r - 1, 0) : r + 2, c - half : c + half + 1].mean(axis=0)
    # Orient every profile as a rising edge.
    rising: np.ndarray = block if block[-2:].mean() >= block[:2].mean() else block[::-1]
    return rising
