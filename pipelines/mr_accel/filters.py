"""Several linear filters of one image through one FFT, as ``scipy.ndimage`` computes them.

The QA gate smooths each slice and its residual at several widths (up to a
65-tap Gaussian) and takes Sobel gradients; done with ``scipy.ndimage`` that is
most of the gate's time. Here an image is extended by reflection (ndimage's
``"reflect"`` mode, NumPy's ``"symmetric"``) by at least the widest kernel's
radius, transformed once, and every filter is a product with its transfer
function and one inverse transform. The kernels are ndimage's (sampled,
normalised Gaussians truncated at 4 sigma; Sobel's [-1, 0, 1] x [1, 2, 1]), and
a separable filter of the extended image equals ndimage's filter of the image,
so the results agree to float32 rounding.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.fft

from pipelines.base import FloatArray
from pipelines.mr_accel.kspace import ComplexArray

Kernel = tuple[float, ...]

#: ``scipy.ndimage.sobel``'s kernels: the difference and the smoothing across it.
SOBEL_DIFFERENCE: Kernel = (-1.0, 0.0, 1.0)
SOBEL_SMOOTHING: Kernel = (1.0, 2.0, 1.0)


def gaussian_kernel(sigma: float, truncate: float = 4.0) -> Kernel:
    """``scipy.ndimage.gaussian_filter``'s 1-D kernel for ``sigma`` (in pixels)."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 / (sigma * sigma) * x * x)
    return tuple(float(v) for v in phi / phi.sum())


def convolve_kernels(a: Kernel, b: Kernel) -> Kernel:
    """The kernel of applying ``a`` then ``b`` (both centred, odd lengths)."""
    return tuple(float(v) for v in np.convolve(a, b))


@dataclass(frozen=True)
class Separable:
    """A 2-D correlation kernel ``rows[i] * cols[j]`` (each centred, of odd length)."""

    rows: Kernel
    cols: Kernel

    @property
    def radius(self) -> int:
        """Largest half-length of the two kernels."""
        return max(len(self.rows), len(self.cols)) // 2


class Spectrum:
    """The FFT of an image extended by reflection, to filter it several times.

    Parameters
    ----------
    image
        2-D image.
    pad
        Reflected border in pixels; every filter's radius must not exceed it.
        The bottom and right borders are widened to the next size the FFT
        computes fast (a 512-pixel slice with a 33-pixel border: 600, not
        578, about a third less time per transform); the filtered image is
        the same.
    """

    def __init__(self, image: FloatArray, pad: int) -> None:
        self.shape = image.shape
        self.pad = pad
        rows, cols = image.shape
        extra_rows = scipy.fft.next_fast_len(rows + 2 * pad) - (rows + 2 * pad)
        extra_cols = scipy.fft.next_fast_len(cols + 2 * pad, real=True) - (cols + 2 * pad)
        extended = np.pad(
            np.asarray(image, dtype=np.float32),
            ((pad, pad + extra_rows), (pad, pad + extra_cols)),
            mode="symmetric",
        )
        self._padded: tuple[int, int] = (extended.shape[0], extended.shape[1])
        self._spectrum: ComplexArray = scipy.fft.rfft2(extended)

    def filtered(self, *terms: Separable, signs: tuple[float, ...] | None = None) -> FloatArray:
        """The image correlated with the sum of ``terms`` (``signs`` weigh them, default +1).

        ``Separable(g, g)`` is ``ndimage.gaussian_filter``; a difference of two
        Gaussians takes one inverse transform instead of two.
        """
        weights = signs or (1.0,) * len(terms)
        transfer = np.zeros(self._spectrum.shape, dtype=np.complex64)
        for term, weight in zip(terms, weights, strict=True):
            if term.radius > self.pad:
                raise ValueError(f"Kernel radius {term.radius} exceeds the border {self.pad}.")
            transfer += np.float32(weight) * _transfer(term, self._padded)
        full = scipy.fft.irfft2(self._spectrum * transfer, s=self._padded)
        p, (rows, cols) = self.pad, self.shape
        return np.ascontiguousarray(full[p : p + rows, p : p + cols], dtype=np.float32)


@functools.lru_cache(maxsize=64)
def _transfer(term: Separable, padded: tuple[int, int]) -> ComplexArray:
    """Transfer function of a separable correlation on a periodic ``padded`` grid."""
    t_rows = np.conj(scipy.fft.fft(_circular(term.rows, padded[0])))
    t_cols = np.conj(scipy.fft.rfft(_circular(term.cols, padded[1])))
    return np.asarray(t_rows[:, None] * t_cols[None, :], dtype=np.complex64)


def _circular(kernel: Kernel, n: int) -> npt.NDArray[np.float64]:
    """``kernel`` (centred) laid on ``n`` samples with its centre at index 0."""
    radius = len(kernel) // 2
    out = np.zeros(n, dtype=np.float64)
    np.add.at(out, np.arange(-radius, radius + 1) % n, np.asarray(kernel))
    return out
