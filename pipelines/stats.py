"""Order statistics of whole images without sorting or partitioning all of them."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

#: Values a sample for :func:`upper_percentile`'s bound takes (about).
SAMPLE_SIZE = 4096
#: Below this many values :func:`upper_percentile` is ``np.percentile`` itself.
MIN_SIZE = 4 * SAMPLE_SIZE


def upper_percentile(values: npt.ArrayLike, q: float) -> float:
    """``np.percentile(values, q)`` (linear interpolation) for a high ``q``, faster.

    ``np.percentile`` partitions every value; a high percentile depends only
    on the largest ones. A lower percentile of a strided sample bounds them
    from below, and only the values above that bound are partitioned: about a
    fifth of the cost for the 99.5th percentile of a 512 x 512 image. The
    order statistics are the same, so the result is ``np.percentile``'s up to
    the rounding of the interpolation. When the bound turns out too high (a
    sample that missed the bright pixels), the whole array is partitioned.

    Parameters
    ----------
    values
        Finite values, any shape.
    q
        Percentile in [0, 100]; the gain is largest near 100.
    """
    flat = np.asarray(values).ravel()
    n = flat.size
    if n < MIN_SIZE:
        return float(np.percentile(flat, q))
    index = (n - 1) * q / 100.0
    lo = int(np.floor(index))
    frac = index - lo
    above = n - lo  # order statistics lo .. n - 1 must be kept
    # An odd stride, so that the sample of an image with power-of-two rows
    # does not fall on a few columns only.
    step = max(n // SAMPLE_SIZE, 1) | 1
    tail = min(3.0 * above / n, 1.0)
    bound = np.percentile(flat[::step], 100.0 * (1.0 - tail))
    kept = flat[flat >= bound]
    if kept.size < above:
        return float(np.percentile(flat, q))
    k = kept.size - above
    last = min(k + 1, kept.size - 1)
    part = np.partition(kept, [k, last])
    a, b = float(part[k]), float(part[last])
    return a + (b - a) * frac
