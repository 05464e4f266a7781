"""Pixel fidelity metrics (PSNR, SSIM, RMSE, bias) inside an explicit display window."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.floating]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Window:
    """A display window [low, high] in the image's units (HU for CT)."""

    low: float
    high: float

    @property
    def width(self) -> float:
        """``high - low``: the dynamic range PSNR and SSIM are measured against."""
        return self.high - self.low

    def label(self) -> str:
        """E.g. ``[-160, 240]``."""
        return f"[{self.low:g}, {self.high:g}]"

    def apply(self, image: FloatArray) -> npt.NDArray[np.float64]:
        """Clip to the window, as a viewer shows it."""
        return np.clip(np.asarray(image, dtype=np.float64), self.low, self.high)


#: Soft-tissue (abdomen) window, the one the targets are stated in.
SOFT_TISSUE = Window(-160.0, 240.0)
#: A wide window that includes lung, fat and bone.
WIDE = Window(-1000.0, 1000.0)


def _select(image: FloatArray, mask: BoolArray | None) -> npt.NDArray[np.float64]:
    arr = np.asarray(image, dtype=np.float64)
    return arr[mask] if mask is not None else arr.ravel()


def rmse(
    reference: FloatArray, image: FloatArray, window: Window, mask: BoolArray | None = None
) -> float:
    """Root-mean-square error after windowing both images."""
    diff = window.apply(image) - window.apply(reference)
    return float(np.sqrt(np.mean(_select(diff, mask) ** 2)))


def psnr(
    reference: FloatArray, image: FloatArray, window: Window, mask: BoolArray | None = None
) -> float:
    """Peak signal-to-noise ratio in dB with the window width as the peak.

    Parameters
    ----------
    reference, image
        Images in the same units.
    window
        Display window; both images are clipped to it first.
    mask
        Pixels to include (e.g. the body outline); all when ``None``.
    """
    err = rmse(reference, image, window, mask)
    return float(20.0 * np.log10(window.width / max(err, 1e-12)))


def ssim(
    reference: FloatArray, image: FloatArray, window: Window, mask: BoolArray | None = None
) -> float:
    """Structural similarity (Wang et al. 2004) of the windowed images.

    The SSIM map uses a 7x7 window and the window width as data range; its
    mean is taken over ``mask`` when given.
    """
    from skimage.metrics import structural_similarity

    _, smap = structural_similarity(  # type: ignore[no-untyped-call]
        window.apply(reference), window.apply(image), data_range=window.width, full=True
    )
    return float(np.mean(_select(smap, mask)))


def bias(reference: FloatArray, image: FloatArray, mask: BoolArray) -> float:
    """Mean difference ``image - reference`` over ``mask`` (HU bias)."""
    return float(np.mean(_select(image, mask) - _select(reference, mask)))


def body_mask(reference: FloatArray, threshold: float = -500.0) -> BoolArray:
    """Pixels inside the object: above ``threshold`` after filling holes (lungs, gas)."""
    from scipy import ndimage as ndi

    inside = ndi.binary_fill_holes(np.asarray(reference) > threshold)
    return np.asarray(inside, dtype=bool)


def mean_by_key(rows: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Each metric's mean over the rows that have it, keys in order of first appearance."""
    rows = list(rows)
    keys = dict.fromkeys(k for row in rows for k in row)
    return {k: float(np.mean([row[k] for row in rows if k in row])) for k in keys}
