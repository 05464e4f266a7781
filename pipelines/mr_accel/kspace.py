"""k-space of MR magnitude images: centred FFTs, sampled-line masks, data consistency."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

ComplexArray = npt.NDArray[np.complex64]
FloatArray = npt.NDArray[np.float32]

#: Fraction of the symmetric acquired band that data consistency enforces. The
#: innermost k-space carries contrast and the position of anatomy and has the
#: highest SNR, so keeping it costs little noise; the outer acquired lines are
#: left to the network, which removes their noise.
DC_KEEP = 0.25
#: Output intensity (of the slice's robust scale) below which a pixel counts as
#: background when the noise floor is measured.
BACKGROUND_LEVEL = 0.05


def fft2c(image: npt.NDArray[np.floating] | npt.NDArray[np.complexfloating]) -> ComplexArray:
    """Centred, orthonormal 2-D FFT over the last two axes (image -> k-space)."""
    shifted = np.fft.ifftshift(image, axes=(-2, -1))
    k = np.fft.fft2(shifted, axes=(-2, -1), norm="ortho")
    return np.fft.fftshift(k, axes=(-2, -1)).astype(np.complex64)


def ifft2c(kspace: npt.NDArray[np.complexfloating]) -> ComplexArray:
    """Centred, orthonormal inverse 2-D FFT over the last two axes (k-space -> image)."""
    shifted = np.fft.ifftshift(kspace, axes=(-2, -1))
    img = np.fft.ifft2(shifted, axes=(-2, -1), norm="ortho")
    return np.fft.fftshift(img, axes=(-2, -1)).astype(np.complex64)


def phase_encode_axis(direction: str | None) -> int | None:
    """Array axis of the phase-encode direction from InPlanePhaseEncodingDirection.

    ``"ROW"`` means phase encoding runs along a row, i.e. across columns (the
    last axis); ``"COL"`` runs along a column (axis -2). Unknown gives ``None``.
    """
    if direction is None:
        return None
    value = direction.strip().upper()
    if value == "ROW":
        return -1
    if value in ("COL", "COLUMN"):
        return -2
    return None


def acquired_lines(n: int, coverage: float, partial_fourier: float = 1.0) -> npt.NDArray[np.bool_]:
    """Which of ``n`` phase-encode lines a reduced-coverage acquisition measured.

    Parameters
    ----------
    n
        Phase-encode matrix size after zero filling.
    coverage
        Centred fraction of lines in the acquisition's phase-encode range
        (reduced phase resolution, e.g. 0.5).
    partial_fourier
        Fraction of that range actually measured, from one edge (partial
        Fourier, e.g. 0.625); the missing lines are on the low-index side.
    """
    mask = np.zeros(n, dtype=bool)
    width = max(1, round(n * coverage))
    start = (n - width) // 2
    skip = round(width * (1.0 - partial_fourier))
    mask[start + skip : start + width] = True
    return mask


def symmetric_band(coverage: float, partial_fourier: float = 1.0) -> float:
    """Fraction of the matrix, centred, that an acquisition measured on both sides."""
    return coverage * (2.0 * partial_fourier - 1.0)


def central_box(shape: tuple[int, int], fraction: float) -> npt.NDArray[np.bool_]:
    """Centred box covering ``fraction`` of each k-space axis (at least 3 samples).

    The box is symmetric about k = 0 (an odd number of samples), so it holds
    every frequency together with its conjugate partner and a real image stays
    real when the box is replaced.
    """
    mask = np.zeros(shape, dtype=bool)
    slices = []
    for n in shape:
        half = max(1, int(n * fraction) // 2)
        width = 2 * half + 1
        start = n // 2 - half
        slices.append(slice(start, start + width))
    mask[slices[0], slices[1]] = True
    return mask


def dc_box_fraction(coverage: float, partial_fourier: float = 1.0) -> float:
    """Fraction of each axis that :func:`data_consistency` keeps from the input."""
    return DC_KEEP * symmetric_band(coverage, partial_fourier)


def rician_mean(amplitude: npt.NDArray[np.floating], sigma: float) -> npt.NDArray[np.float64]:
    """Expected magnitude of a signal ``amplitude`` in complex noise of std ``sigma``.

    ``E[M] = sigma sqrt(pi/2) L_1/2(-A^2 / 2 sigma^2)``, written with
    exponentially scaled Bessel functions so that it is stable at high SNR,
    where it tends to ``A``; at ``A = 0`` it is the Rayleigh mean.
    """
    from scipy.special import i0e, i1e

    a = np.asarray(amplitude, dtype=np.float64)
    if sigma <= 0:
        return a
    x = a * a / (2.0 * sigma * sigma)
    mean: npt.NDArray[np.float64] = (
        sigma * np.sqrt(np.pi / 2.0) * ((1.0 + x) * i0e(x / 2.0) + x * i1e(x / 2.0))
    )
    return mean


def noise_floor_sigma(measured: FloatArray, output: FloatArray) -> float:
    """Per-channel noise std from the background, where magnitudes are Rayleigh.

    Background is where the restoration found no signal; there ``E[M^2] =
    2 sigma^2``. With under 1 % background the floor is not measured (0).
    """
    background = output < BACKGROUND_LEVEL * max(float(np.percentile(output, 99.5)), 1e-12)
    if background.mean() < 0.01:
        return 0.0
    m = measured[background].astype(np.float64)
    return float(np.sqrt(np.mean(m * m) / 2.0))


def floor_corrected(measured: FloatArray, output: FloatArray) -> FloatArray:
    """The measured magnitude minus the noise floor the magnitude operation added.

    The acquired complex k-space has zero-mean noise, but its magnitude image
    does not: taking ``|.|`` adds a Rician floor (Rayleigh in the background)
    that is smooth and so sits in the low frequencies. Subtracting its expected
    value given the restored amplitude makes the low frequencies of the result
    an unbiased stand-in for those of the acquired signal.
    """
    sigma = noise_floor_sigma(measured, output)
    if sigma <= 0:
        return measured.astype(np.float32)
    amp = np.maximum(output, 0.0)
    return np.asarray(measured - (rician_mean(amp, sigma) - amp), dtype=np.float32)


def data_consistency(
    output: FloatArray, measured: FloatArray, coverage: float, partial_fourier: float = 1.0
) -> FloatArray:
    """Replace each output slice's central k-space with the measured slice's.

    A DICOM magnitude image is the scanner's reconstruction of the acquired
    lines, so its low spatial frequencies are the acquired central k-space up to
    the (smooth) image phase and the noise floor of the magnitude, which
    :func:`floor_corrected` removes first. Putting them back means the
    restoration can add detail at high frequencies but cannot change contrast,
    intensity or the position of anatomy. The box lies inside the symmetric
    acquired band along either axis, so the phase-encode direction need not be
    known.

    Parameters
    ----------
    output, measured
        ``(slices, rows, cols)`` or ``(rows, cols)`` magnitude images on the
        same scale.
    coverage, partial_fourier
        The known acceleration (see :func:`acquired_lines`).
    """
    box = central_box(output.shape[-2:], dc_box_fraction(coverage, partial_fourier))
    out = np.asarray(output, dtype=np.float32).reshape(-1, *output.shape[-2:])
    meas = np.asarray(measured, dtype=np.float32).reshape(-1, *output.shape[-2:])
    result = np.empty_like(out)
    for i in range(out.shape[0]):
        k_out = fft2c(out[i])
        k_out[box] = fft2c(floor_corrected(meas[i], out[i]))[box]
        result[i] = ifft2c(k_out).real
    return result.reshape(output.shape)


def lowfreq_difference(output: FloatArray, reference: FloatArray, fraction: float) -> float:
    """Relative norm of the difference of two images' central k-space boxes."""
    box = central_box(output.shape[-2:], fraction)
    k_ref = fft2c(reference)[..., box]
    k_diff = fft2c(output)[..., box] - k_ref
    denom = float(np.linalg.norm(k_ref))
    return float(np.linalg.norm(k_diff)) / denom if denom > 0 else 0.0
