"""k-space of MR magnitude images: centred FFTs, sampled-line masks, data consistency."""

from __future__ import annotations

import functools

import numpy as np
import numpy.typing as npt
import scipy.fft

from pipelines.base import FloatArray
from pipelines.stats import upper_percentile

ComplexArray = npt.NDArray[np.complex64]

#: Fraction of the symmetric acquired band that data consistency enforces. The
#: innermost k-space carries contrast and the position of anatomy and has the
#: highest SNR, so keeping it costs little noise; the outer acquired lines are
#: left to the network, which removes their noise.
DC_KEEP = 0.25
#: Output intensity (of the slice's robust scale) below which a pixel counts as
#: background when the noise floor is measured.
BACKGROUND_LEVEL = 0.05
#: Signal-to-noise ratio (amplitude over noise SD) from which :func:`rician_excess`
#: uses the asymptotic series of the Rician mean; below it, a table of exact values.
RICIAN_SERIES_SNR = 8.0
#: Spacing of that table in SNR: linear interpolation in it is within 1e-6
#: noise SDs of the exact expression, as is the series above 8.
RICIAN_TABLE_STEP = 1.0 / 1024.0


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
        half = _box_half(n, fraction)
        slices.append(slice(n // 2 - half, n // 2 + half + 1))
    mask[slices[0], slices[1]] = True
    return mask


def _box_half(n: int, fraction: float) -> int:
    """Half-width of :func:`central_box` along an axis of ``n`` samples."""
    return max(1, int(n * fraction) // 2)


def central_kspace(image: FloatArray, fraction: float) -> ComplexArray:
    """``fft2c(image)[central_box(image.shape, fraction)]`` of a real image, shaped as the box.

    Only the box is transformed: the columns' real FFT is cut to the box's
    non-negative frequencies before the rows' FFT, and the negative column
    frequencies are the conjugates of the positive ones (the image is real).
    """
    rows, cols = image.shape
    half_r, half_c = _box_half(rows, fraction), _box_half(cols, fraction)
    _check_box(image.shape, half_r, half_c)
    shifted = np.fft.ifftshift(np.asarray(image, dtype=np.float32))
    low_c = scipy.fft.rfft(shifted, axis=1, norm="ortho")[:, : half_c + 1]
    box = scipy.fft.fft(low_c, axis=0, norm="ortho")[np.arange(-half_r, half_r + 1) % rows]
    # Columns -half_c .. -1: k(-p, -q) = conj(k(p, q)).
    negative = np.conj(box[::-1, :0:-1])
    return np.concatenate([negative, box], axis=1).astype(np.complex64)


def central_image(box: npt.NDArray[np.complexfloating], shape: tuple[int, int]) -> FloatArray:
    """Real part of ``ifft2c`` of a k-space that is ``box`` in its centre and zero elsewhere.

    The inverse of :func:`central_kspace` (``box`` as it returns it, for an
    image of ``shape``); the transform along the rows covers only the box's
    columns.
    """
    rows, cols = shape
    half_r, half_c = (box.shape[0] - 1) // 2, (box.shape[1] - 1) // 2
    _check_box(shape, half_r, half_c)
    low_c = np.zeros((rows, half_c + 1), dtype=np.complex64)
    low_c[np.arange(-half_r, half_r + 1) % rows] = box[:, half_c:]
    spectrum = np.zeros((rows, cols // 2 + 1), dtype=np.complex64)
    spectrum[:, : half_c + 1] = scipy.fft.ifft(low_c, axis=0, norm="ortho")
    shifted = scipy.fft.irfft(spectrum, n=cols, axis=1, norm="ortho")
    return np.asarray(np.fft.fftshift(shifted), dtype=np.float32)


def _check_box(shape: tuple[int, ...], half_r: int, half_c: int) -> None:
    if 2 * half_r >= shape[0] or 2 * half_c >= shape[1]:
        raise ValueError(f"A central box of half-widths {half_r, half_c} does not fit {shape}.")


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


def rician_excess(amplitude: npt.NDArray[np.floating], sigma: float) -> FloatArray:
    """``rician_mean(amplitude, sigma) - amplitude`` in float32, without Bessel functions.

    Below :data:`RICIAN_SERIES_SNR` the excess, in units of ``sigma``, is
    interpolated linearly in a table of exact values; above it, it is the
    asymptotic series ``s/2 + s^3/8 + 3 s^5/16`` of ``s = sigma / amplitude``.
    Either is within 1e-6 ``sigma`` of :func:`rician_mean`, below float32's
    resolution of the images, at a tenth of its cost.
    """
    a = np.asarray(amplitude, dtype=np.float32)
    if sigma <= 0:
        return np.zeros_like(a)
    snr = a / np.float32(sigma)
    table, slope = _rician_excess_table()
    position = np.minimum(snr, np.float32(RICIAN_SERIES_SNR)) * np.float32(1.0 / RICIAN_TABLE_STEP)
    index = np.minimum(position.astype(np.int32), table.size - 2)
    interpolated = table[index] + slope[index] * (position - index)
    inv = np.float32(1.0) / np.maximum(snr, np.float32(RICIAN_SERIES_SNR))
    inv2 = inv * inv
    series = inv * (np.float32(0.5) + inv2 * (np.float32(0.125) + inv2 * np.float32(0.1875)))
    excess = np.where(snr < RICIAN_SERIES_SNR, interpolated, series)
    return np.asarray(excess * np.float32(sigma), dtype=np.float32)


@functools.cache
def _rician_excess_table() -> tuple[FloatArray, FloatArray]:
    """Exact Rician excess for unit noise at SNRs 0 .. :data:`RICIAN_SERIES_SNR`, and slopes."""
    n = round(RICIAN_SERIES_SNR / RICIAN_TABLE_STEP) + 1
    grid = np.linspace(0.0, RICIAN_SERIES_SNR, n)
    excess = rician_mean(grid, 1.0) - grid
    slope = np.append(np.diff(excess), 0.0)
    return excess.astype(np.float32), slope.astype(np.float32)


def noise_floor_sigma(measured: FloatArray, output: FloatArray) -> float:
    """Per-channel noise std from the background, where magnitudes are Rayleigh.

    Background is where the restoration found no signal; there ``E[M^2] =
    2 sigma^2``. With under 1 % background the floor is not measured (0).
    """
    background = output < BACKGROUND_LEVEL * max(upper_percentile(output, 99.5), 1e-12)
    count = int(np.count_nonzero(background))
    if count < 0.01 * background.size:
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
    amp = np.maximum(output, np.float32(0.0))
    return np.asarray(measured - rician_excess(amp, sigma), dtype=np.float32)


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
    fraction = dc_box_fraction(coverage, partial_fourier)
    shape = output.shape[-2:]
    out = np.asarray(output, dtype=np.float32).reshape(-1, *shape)
    meas = np.asarray(measured, dtype=np.float32).reshape(-1, *shape)
    result = np.empty_like(out)
    for i in range(out.shape[0]):
        # Replacing the box is adding the inverse transform of the difference
        # of the two boxes, which only the box's frequencies need.
        box = central_kspace(floor_corrected(meas[i], out[i]) - out[i], fraction)
        result[i] = out[i] + central_image(box, (shape[0], shape[1]))
    return result.reshape(output.shape)


def lowfreq_difference(
    output: FloatArray, reference: FloatArray, fraction: float, floor: FloatArray | None = None
) -> float:
    """Relative norm of the difference of two images' central k-space boxes.

    With ``floor`` (the noise floor the magnitude added to ``reference``), the
    output is compared with ``reference - t * floor`` for the best ``t`` in
    [0, 1]: a restoration may keep the floor (an unchanged slice does), remove
    it, or anything in between; the difference left over is relative to the
    floor-free reference. Nothing but the floor's own pattern is excused.
    """
    k_ref = central_kspace(reference, fraction)
    k_diff = central_kspace(np.asarray(output - reference, dtype=np.float32), fraction)
    if floor is not None:
        k_floor = central_kspace(floor, fraction)
        energy = float(np.vdot(k_floor, k_floor).real)
        if energy > 0:
            t = float(np.clip(-np.vdot(k_floor, k_diff).real / energy, 0.0, 1.0))
            k_diff = k_diff + np.complex64(t) * k_floor
        k_ref = k_ref - k_floor
    denom = float(np.linalg.norm(k_ref))
    return float(np.linalg.norm(k_diff)) / denom if denom > 0 else 0.0
