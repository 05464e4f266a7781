"""Noise texture: the 2-D noise power spectrum (NPS) and its radial summary."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.floating]


@dataclass(frozen=True)
class NPSResult:
    """Radially averaged NPS with its summary numbers.

    Attributes
    ----------
    frequency
        Radial spatial frequency bins, cycles/mm.
    nps
        NPS in HU^2 mm^2 per bin.
    noise_sd
        SD of the noise (square root of the NPS integral), HU.
    peak_frequency
        Frequency of the NPS maximum, cycles/mm.
    mean_frequency
        NPS-weighted mean frequency, cycles/mm (falls when noise gets blotchy).
    """

    frequency: npt.NDArray[np.float64]
    nps: npt.NDArray[np.float64]
    noise_sd: float
    peak_frequency: float
    mean_frequency: float


def noise_power_spectrum(rois: FloatArray, spacing_mm: float, bins: int = 32) -> NPSResult:
    """NPS of noise-only ROIs (ICRU 87 / IEC 62220 style estimate).

    Parameters
    ----------
    rois
        ``(n, m, m)`` square regions of noise (image minus its mean, or the
        difference of an image and a reference, scaled by 1/sqrt(2) if it is a
        difference of two independent realisations).
    spacing_mm
        Pixel spacing.
    bins
        Number of radial frequency bins up to the Nyquist frequency.
    """
    data = np.asarray(rois, dtype=np.float64)
    _, m, _ = data.shape
    # Remove each ROI's mean and a linear trend in mean only (first order
    # detrending): the NPS is about fluctuations, not offsets.
    data = data - data.mean(axis=(1, 2), keepdims=True)
    spec = np.abs(np.fft.fftshift(np.fft.fft2(data), axes=(1, 2))) ** 2
    nps2d = spec.mean(axis=0) * (spacing_mm * spacing_mm) / (m * m)
    f = np.fft.fftshift(np.fft.fftfreq(m, d=spacing_mm))
    fy, fx = np.meshgrid(f, f, indexing="ij")
    fr = np.hypot(fx, fy)
    nyquist = 0.5 / spacing_mm
    edges = np.linspace(0.0, nyquist, bins + 1)
    which = np.digitize(fr.ravel(), edges) - 1
    radial = np.zeros(bins)
    for b in range(bins):
        sel = which == b
        radial[b] = nps2d.ravel()[sel].mean() if sel.any() else 0.0
    centres = 0.5 * (edges[:-1] + edges[1:])
    df = 1.0 / (m * spacing_mm)
    variance = float(nps2d.sum() * df * df)
    weight = radial * centres
    mean_f = float((centres * weight).sum() / max(weight.sum(), 1e-12))
    return NPSResult(
        frequency=centres,
        nps=radial,
        noise_sd=float(np.sqrt(max(variance, 0.0))),
        peak_frequency=float(centres[int(np.argmax(radial))]),
        mean_frequency=mean_f,
    )
