"""Task-based detectability: contrast-to-noise ratio and a channelized Hotelling observer."""

from __future__ import annotations

from math import comb, factorial

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.floating]


def disk_mask(size: int, radius_px: float) -> npt.NDArray[np.bool_]:
    """A centred disk in a ``size`` x ``size`` ROI."""
    c = (size - 1) / 2.0
    y, x = np.mgrid[:size, :size]
    mask: npt.NDArray[np.bool_] = (x - c) ** 2 + (y - c) ** 2 <= radius_px**2
    return mask


def cnr(signal_rois: FloatArray, radius_px: float, background_sd: float | None = None) -> float:
    """Contrast-to-noise ratio of a centred disk in signal-present ROIs.

    Contrast is the mean inside the disk minus the mean of an annulus
    (1.5-2.5 radii) around it; noise is the SD of the background annulus
    pixels, unless ``background_sd`` is given.
    """
    rois = np.asarray(signal_rois, dtype=np.float64)
    size = rois.shape[-1]
    inner = disk_mask(size, radius_px)
    ring = disk_mask(size, 2.5 * radius_px) & ~disk_mask(size, 1.5 * radius_px)
    contrast = float(np.mean(rois[:, inner]) - np.mean(rois[:, ring]))
    sd = float(np.std(rois[:, ring])) if background_sd is None else background_sd
    return contrast / max(sd, 1e-9)


def laguerre_gauss_channels(size: int, width_px: float, count: int = 6) -> npt.NDArray[np.float64]:
    """Laguerre-Gauss channel profiles, ``(count, size*size)``.

    Rotationally symmetric channels suit disk signals on rotationally
    symmetric backgrounds; ``width_px`` (the Gaussian width a) is set
    relative to the disk so the channels span its spectrum (Barrett et al.).
    """
    c = (size - 1) / 2.0
    y, x = np.mgrid[:size, :size]
    r2 = (x - c) ** 2 + (y - c) ** 2
    g = 2.0 * np.pi * r2 / (width_px**2)
    chans = []
    for j in range(count):
        # Laguerre polynomial L_j(g) by its explicit sum.
        lj = np.zeros_like(g)
        for k in range(j + 1):
            lj += (-1) ** k * comb(j, k) * g**k / factorial(k)
        u = np.sqrt(2.0) / width_px * np.exp(-np.pi * r2 / width_px**2) * lj
        chans.append(u.ravel())
    return np.asarray(chans)


def cho_dprime(
    present: FloatArray, absent: FloatArray, radius_px: float, channels: int = 6
) -> float:
    """Detectability index d' of a channelized Hotelling observer.

    Parameters
    ----------
    present, absent
        ``(n, m, m)`` ROIs centred on the signal location, with and without
        the signal.
    radius_px
        Disk radius; the Laguerre-Gauss width is ``2.5 * radius_px``, a
        common choice for disk signals.
    channels
        Number of Laguerre-Gauss channels.

    Returns
    -------
    float
        d' = sqrt(dv^T S^-1 dv), dv the mean channel-output difference and S
        the average of the two classes' channel covariances.
    """
    return _hotelling_dprime(*_channel_outputs(present, absent, radius_px, channels))


def _channel_outputs(
    present: FloatArray, absent: FloatArray, radius_px: float, channels: int = 6
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Laguerre-Gauss channel outputs of each ROI, ``(n, channels)`` per class."""
    sp = np.asarray(present, dtype=np.float64)
    sa = np.asarray(absent, dtype=np.float64)
    u = laguerre_gauss_channels(sp.shape[-1], 2.5 * radius_px, channels)
    return sp.reshape(sp.shape[0], -1) @ u.T, sa.reshape(sa.shape[0], -1) @ u.T


def _hotelling_dprime(vp: npt.NDArray[np.float64], va: npt.NDArray[np.float64]) -> float:
    """Hotelling d' of two classes of channel outputs."""
    dv = vp.mean(axis=0) - va.mean(axis=0)
    cov = 0.5 * (np.cov(vp, rowvar=False) + np.cov(va, rowvar=False))
    # A small ridge keeps the inverse stable when ROIs are few.
    cov += np.eye(vp.shape[1]) * 1e-6 * float(np.trace(cov))
    return float(np.sqrt(max(float(dv @ np.linalg.solve(cov, dv)), 0.0)))


#: Bootstrap draws of :func:`dprime_change` unless told otherwise.
BOOTSTRAP_DRAWS = 1000


def dprime_change(
    present: FloatArray,
    absent: FloatArray,
    ref_present: FloatArray,
    ref_absent: FloatArray,
    radius_px: float,
    draws: int = BOOTSTRAP_DRAWS,
    seed: int = 0,
    channels: int = 6,
) -> tuple[float, float, float]:
    """Change of CHO d' against a reference, with a paired 95 % bootstrap interval.

    The images of both versions come from the same noise realisations (a
    method's output of realisation ``i`` against realisation ``i`` itself), so
    each bootstrap draw resamples realisations once and takes both versions'
    d' from the same draw: the interval is that of the change, far narrower
    than two separate intervals would suggest.

    Parameters
    ----------
    present, absent
        ``(n, m, m)`` ROIs of the version being judged (e.g. a method's output).
    ref_present, ref_absent
        The same realisations in the reference version (e.g. the low-dose input).
    radius_px
        Disk radius, as for :func:`cho_dprime`.
    draws
        Bootstrap draws.
    seed
        Seed of the resampling.
    channels
        Number of Laguerre-Gauss channels, as for :func:`cho_dprime`.

    Returns
    -------
    tuple of float
        ``(change, low, high)``: d' minus the reference's d', and the 2.5th
        and 97.5th percentiles of the change over the draws.
    """
    n_present, n_absent = len(present), len(absent)
    if len(ref_present) != n_present or len(ref_absent) != n_absent:
        raise ValueError("dprime_change needs the same realisations in both versions")
    vp, va = _channel_outputs(present, absent, radius_px, channels)
    rp, ra = _channel_outputs(ref_present, ref_absent, radius_px, channels)
    change = _hotelling_dprime(vp, va) - _hotelling_dprime(rp, ra)
    rng = np.random.default_rng(seed)
    samples = np.empty(draws)
    for k in range(draws):
        i = rng.integers(0, n_present, n_present)
        j = rng.integers(0, n_absent, n_absent)
        samples[k] = _hotelling_dprime(vp[i], va[j]) - _hotelling_dprime(rp[i], ra[j])
    low, high = np.percentile(samples, [2.5, 97.5])
    return change, float(low), float(high)
