"""Classical restorations of MR magnitude images: non-local means and L1-wavelet CS."""

from __future__ import annotations

import numpy as np

from pipelines.base import FloatArray
from pipelines.mr_accel.kspace import acquired_lines, fft2c


def nlm_denoise(image: FloatArray) -> FloatArray:
    """Non-local means with the noise level estimated from the image itself.

    Parameters
    ----------
    image
        2-D magnitude image, any scale.
    """
    from skimage.restoration import denoise_nl_means, estimate_sigma

    sigma = float(estimate_sigma(image))  # type: ignore[no-untyped-call]
    if sigma <= 0:
        return image.astype(np.float32)
    out = denoise_nl_means(
        image.astype(np.float64),
        h=0.8 * sigma,
        sigma=sigma,
        patch_size=5,
        patch_distance=6,
        fast_mode=True,
    )
    return np.asarray(out, dtype=np.float32)


def cs_l1_wavelet(
    image: FloatArray,
    coverage: float,
    pe_axis: int,
    partial_fourier: float = 1.0,
    lamda: float = 0.01,
    max_iter: int = 40,
) -> FloatArray:
    """Compressed sensing on the acquired lines: L1-wavelet regularised recon (sigpy).

    The magnitude image's k-space restricted to the acquired phase-encode lines
    stands in for the measured data (a single coil with unit sensitivity);
    the wavelet prior fills the missing lines and suppresses noise.

    Parameters
    ----------
    image
        2-D magnitude image scaled so that tissue is about 1 (``lamda`` is
        relative to that scale).
    coverage, partial_fourier
        The acquisition's phase-encode coverage (see :func:`acquired_lines`).
    pe_axis
        Array axis of the phase-encode direction (-2 or -1).
    """
    import sigpy.mri as mr

    rows, cols = image.shape
    n = rows if pe_axis in (0, -2) else cols
    lines = acquired_lines(n, coverage, partial_fourier)
    mask = lines[:, None] if pe_axis in (0, -2) else lines[None, :]
    ksp = (fft2c(image) * mask)[None].astype(np.complex64)
    mps = np.ones((1, rows, cols), dtype=np.complex64)
    app = mr.app.L1WaveletRecon(
        ksp, mps, lamda, wave_name="db4", max_iter=max_iter, show_pbar=False
    )
    rec = app.run()
    out: FloatArray = np.abs(np.asarray(rec)).astype(np.float32)
    return out
