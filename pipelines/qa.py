"""Reference-free quality gate for image-to-image enhancement (method-noise checks)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from pipelines.base import FloatArray, SliceQA
from pipelines.stats import upper_percentile

BoolArray = npt.NDArray[np.bool_]
ArrayT = TypeVar("ArrayT", FloatArray, BoolArray)


def tissue_mask(image: FloatArray, low: float = -300.0, high: float = 300.0) -> BoolArray:
    """Pixels of soft tissue and fat, where noise is measured.

    Parameters
    ----------
    image
        2-D slice in HU.
    low, high
        HU range, applied to a lightly smoothed copy so noise does not punch
        holes into the mask.

    Returns
    -------
    numpy.ndarray
        Boolean mask of the same shape.
    """
    return _in_band(_smooth5(image), low, high)


def _smooth5(image: FloatArray) -> FloatArray:
    """The 5 x 5 box mean that the tissue and body masks threshold."""
    return np.asarray(ndi.uniform_filter(image.astype(np.float32), size=5), dtype=np.float32)


def _in_band(smooth: FloatArray, low: float, high: float) -> BoolArray:
    mask: BoolArray = (smooth > low) & (smooth < high)
    return mask


@dataclass(frozen=True)
class Placement:
    """Where an image cut out of a whole slice sits in it.

    Grids of windows, regions and tiles are laid on the whole slice, so a
    measurement of the cut-out equals that of the slice. The default: the
    image is the whole slice.
    """

    origin: tuple[int, int] = (0, 0)
    #: The whole slice's shape; ``None``: the image's own.
    slice_shape: tuple[int, int] | None = None

    def grid(self, step: int) -> tuple[slice, slice]:
        """Every ``step``-th row and column, from ``step // 2`` in the slice."""
        return (
            slice((step // 2 - self.origin[0]) % step, None, step),
            slice((step // 2 - self.origin[1]) % step, None, step),
        )


WHOLE = Placement()


def median_local_sd(
    image: FloatArray,
    mask: BoolArray,
    size: int,
    stride: int = 1,
    placement: Placement = WHOLE,
    quantile: float = 0.5,
) -> float:
    """Median over ``mask`` of the standard deviation in ``size`` x ``size`` windows.

    Another ``quantile`` of them instead of the median (0.5) when given (a
    low quantile with ``stride`` > 1 rests on fewer windows than the median
    does, and is the less precise).

    In float32 after removing the mean over ``mask``: the variance of a window is
    then computed from values of a few hundred HU, well within float32's
    precision, at half the cost of float64. Its last steps are taken only on
    the masked pixels.

    With ``stride`` > 1 the windows are centred on every ``stride``-th row
    and column only (when the grid holds at least 16 masked pixels). Up to
    the window's edge this keeps every independent window: the median is as
    precise, for a fraction of the filtering. The grid keeps its place in
    the slice ``image`` was cut from (``placement``).
    """
    x = image.astype(np.float32) - np.float32(np.mean(image[mask]) if mask.any() else 0.0)
    grid = placement.grid(stride)
    if stride > 1 and np.count_nonzero(mask[grid]) >= 16:
        mean = _box_mean_on_grid(x, size, grid)
        variance = _box_mean_on_grid(x * x, size, grid)
        mask = mask[grid]
    else:
        mean = ndi.uniform_filter(x, size=size)
        variance = ndi.uniform_filter(x * x, size=size)
    variance -= mean * mean
    sds = np.sqrt(np.maximum(variance[mask], np.float32(0.0)))
    return float(np.median(sds) if quantile == 0.5 else np.quantile(sds, quantile))


def flat_mask(image: FloatArray, size: int = 9) -> BoolArray:
    """Soft-tissue pixels away from edges: the places where SD is noise, not anatomy.

    An edge is where the gradient of a smoothed copy exceeds what noise alone
    gives; the threshold is taken relative to the median gradient inside tissue.
    """
    tissue = tissue_mask(image)
    if np.count_nonzero(tissue) < 64:
        return tissue
    grad = _gradient(ndi.gaussian_filter(image.astype(np.float32), 2.0))
    edge = grad > 3.0 * float(np.median(grad[tissue])) + 1e-6
    flat: BoolArray = tissue & ~_dilate_diamond(edge, size // 2)
    return flat if np.count_nonzero(flat) >= 64 else tissue


def _dilate_diamond(mask: BoolArray, radius: int) -> BoolArray:
    """``ndimage.binary_dilation(mask, iterations=radius)`` (3 x 3 cross), by shifts."""
    out = mask.copy()
    for _ in range(radius):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


#: Edge of the windows the noise estimate reads, pixels.
NOISE_WINDOW = 9
#: The quantile of the local SDs in flat tissue that the noise estimate reads ...
NOISE_QUANTILE = 0.1
#: ... and that quantile over the median for CT noise alone, in windows of
#: :data:`NOISE_WINDOW`: the median of 0.807 and 0.813, measured on the noise
#: of 40 simulated slices each of seeds 5000 and 6000 (their low- minus
#: normal-dose images, scaled to the normal-dose noise; 5-95 % of slices
#: 0.74-0.84).
NOISE_QUANTILE_RATIO = 0.81


def estimate_noise_sd(image: FloatArray, max_size: int = 256) -> float:
    """Noise standard deviation of a CT slice, in HU, without a reference.

    A low quantile (:data:`NOISE_QUANTILE`) of the local SD (windows of
    :data:`NOISE_WINDOW` pixels) over flat soft tissue, scaled to what the
    median gives on CT noise alone (:data:`NOISE_QUANTILE_RATIO`). CT noise
    is spatially correlated (ramp-filtered back-projection), so wavelet
    estimators that assume white noise under-read it; the pixel variance in
    a flat window measures it directly. Texture the flat-tissue mask lets
    through (a body wall of fat and muscle strands, parenchyma) only adds
    variance, so the quietest windows are read. On the 80 simulated slices
    the ratio was measured on (in sample), against the median local SD of
    their noise alone in the same windows: the median of the windows
    over-read the noise more than 1.3-fold on 23 slices, up to 8.4-fold;
    this estimate on 6, at most 1.49-fold (median ratio 1.03, lowest 0.82).
    White noise, whose local SDs spread less, is read about 10 % high. The
    windows are centred on every third row and column of the flat region
    (see :func:`median_local_sd`).

    Parameters
    ----------
    image
        2-D slice in HU.
    max_size
        Larger slices are measured in their central ``max_size`` square: the
        noise level of a slice is read where the patient is, at a quarter of
        the cost for 512 x 512 images.

    Returns
    -------
    float
        Estimated noise SD in HU (0.0 when the slice has no soft tissue).
    """
    img = _central(np.asarray(image, dtype=np.float32), max_size)
    mask = flat_mask(img, NOISE_WINDOW)
    if np.count_nonzero(mask) < 16:
        return 0.0
    stride = NOISE_WINDOW // 3
    quietest = median_local_sd(img, mask, NOISE_WINDOW, stride=stride, quantile=NOISE_QUANTILE)
    return quietest / NOISE_QUANTILE_RATIO


def _central(image: FloatArray, max_size: int) -> FloatArray:
    rows, cols = image.shape
    r0 = max((rows - max_size) // 2, 0)
    c0 = max((cols - max_size) // 2, 0)
    return image[r0 : r0 + max_size, c0 : c0 + max_size]


def block_mean(image: FloatArray, factor: int) -> FloatArray:
    """Average ``factor`` x ``factor`` blocks (edges that do not fill a block are dropped)."""
    if factor == 1:
        return image.astype(np.float32)
    rows = image.shape[0] // factor * factor
    cols = image.shape[1] // factor * factor
    x = np.asarray(image, dtype=np.float32)
    # A sum of strided views: several times faster than a reshaped mean.
    total = np.zeros((rows // factor, cols // factor), dtype=np.float32)
    for r in range(factor):
        for c in range(factor):
            total += x[r:rows:factor, c:cols:factor]
    return np.asarray(total / np.float32(factor * factor), dtype=np.float32)


@dataclass(frozen=True)
class GateThresholds:
    """Limits of the QA gate.

    Parameters
    ----------
    max_bias_hu
        Largest allowed mean HU change in any large tissue region.
    region_mm
        Edge of the square regions the bias is measured in.
    max_noise_ratio
        Output noise over input noise; above it the method added noise.
    max_residual_ratio
        SD of the removed residual in flat tissue over input noise; above it
        the method removed more than the noise there is.
    max_edge_correlation
        Correlation of the removed residual's magnitude with the input's
        edges; above it anatomy is being removed.
    max_structure_mm2
        Largest allowed connected area in which the smoothed residual stands
        out from its own noise (structure invented or erased off the edges);
        never less than 12 pixels, the size of a noise blob after smoothing.
    structure_z
        How many robust SDs the smoothed residual must exceed to count.
    min_structure_hu
        ... and never less than this many HU: when almost nothing is removed
        (a normal-dose input), a few HU of smoothed residual are not anatomy.
    """

    max_bias_hu: float = 5.0
    region_mm: float = 40.0
    max_noise_ratio: float = 1.1
    max_residual_ratio: float = 1.5
    max_edge_correlation: float = 0.45
    max_structure_mm2: float = 20.0
    structure_z: float = 4.5
    min_structure_hu: float = 4.0


def region_bias(
    before: FloatArray,
    after: FloatArray,
    region_px: int,
    mask: BoolArray,
    placement: Placement = WHOLE,
) -> float:
    """Largest absolute mean change over square tissue regions of ``region_px``.

    The regions keep their places in the slice the images were cut from
    (``placement``).
    """
    diff = ((after - before) * mask).astype(np.float32)
    # Sample the regions on a half-overlapping grid to keep them independent-ish.
    grid = placement.grid(max(region_px // 2, 1))
    cover = _box_mean_on_grid(mask.astype(np.float32), region_px, grid)
    mean = _box_mean_on_grid(diff, region_px, grid)
    # Only regions mostly made of tissue: the mean of a few pixels is noise.
    sel = cover > 0.6
    if not sel.any():
        return 0.0
    return float(np.max(np.abs(mean[sel] / cover[sel])))


def _box_mean_on_grid(image: FloatArray, size: int, grid: tuple[slice, slice]) -> FloatArray:
    """``ndimage.uniform_filter(image, size)[grid]``, filtering only the grid's rows and columns.

    The box filter is separable: along the rows for the grid's columns only,
    then along the columns of that narrow strip.
    """
    strip = ndi.uniform_filter1d(image, size, axis=1)[:, grid[1]]
    return np.asarray(ndi.uniform_filter1d(strip, size, axis=0)[grid[0]], dtype=np.float32)


def _gradient(smooth: FloatArray) -> FloatArray:
    """Sobel gradient magnitude (float32; no overflow-safe ``hypot`` needed in HU).

    ``ndimage.sobel`` along both axes (``"reflect"`` border), from one
    reflected copy by array differences: five times faster on a 256 x 256
    slice, equal to float32 rounding.
    """
    x = np.pad(np.asarray(smooth, dtype=np.float32), 1, mode="symmetric")
    d0 = x[2:] - x[:-2]  # [-1, 0, 1] down the rows ...
    g0 = d0[:, :-2] + 2 * d0[:, 1:-1] + d0[:, 2:]  # ... [1, 2, 1] across them
    d1 = x[:, 2:] - x[:, :-2]
    g1 = d1[:-2] + 2 * d1[1:-1] + d1[2:]
    return np.asarray(np.sqrt(g0 * g0 + g1 * g1), dtype=np.float32)


def local_max(image: ArrayT, size: int) -> ArrayT:
    """``ndimage.maximum_filter(image, size)`` of a finite 2-D image or boolean mask.

    The ``size`` x ``size`` window is placed as ndimage places it (even sizes
    reach one pixel further back than forward). The reflected border adds no
    values the window does not already hold, so the window is simply cut at
    the edges. Per axis, maxima over runs of 1, 2, 4, ... pixels are doubled
    up and two overlapping runs cover the window: several times faster than
    ndimage's filter. On a mask it grows the mask by the window.
    """
    out = np.asarray(image)
    if out.ndim != 2:
        raise ValueError(f"local_max takes a 2-D array; got {out.ndim} dimensions")
    low = False if out.dtype == bool else -np.inf
    back = size // 2
    for axis in (0, 1):
        n = out.shape[axis]
        pad = [(0, 0), (0, 0)]
        pad[axis] = (back, size - 1 - back)
        run = np.pad(out, pad, constant_values=low)
        # run[j]: the maximum over `width` pixels from j on, doubled up to size.
        width = 1
        while 2 * width <= size:
            here = _along(run, axis, 0, run.shape[axis] - width)
            np.maximum(here, _along(run, axis, width, run.shape[axis]), out=here)
            width *= 2
        out = np.maximum(_along(run, axis, 0, n), _along(run, axis, size - width, size - width + n))
    return out


def _along(a: np.ndarray, axis: int, start: int, stop: int) -> np.ndarray:
    """The view ``a[start:stop]`` along ``axis`` of a 2-D array."""
    index = [slice(None), slice(None)]
    index[axis] = slice(start, stop)
    return a[tuple(index)]


def edge_correlation(
    edges: FloatArray, residual: FloatArray, body: BoolArray, sigma_px: float
) -> float:
    """Pearson correlation of the residual's local magnitude with input edges.

    Removed noise is independent of anatomy, so its local magnitude does not
    follow the edges; a blurred edge leaves its detail in the residual, right
    on the edge. ``edges`` is the gradient magnitude of the smoothed input.
    """
    if np.count_nonzero(body) < 64:
        return 0.0
    # Clip so bone and air borders do not outweigh soft-tissue edges.
    a = np.minimum(edges[body], 400.0).astype(np.float64)
    energy = ndi.gaussian_filter(np.abs(residual), sigma_px, truncate=3.0)
    b = energy[body].astype(np.float64)
    a -= a.mean()
    b -= b.mean()
    # Pearson's r from sums (as np.corrcoef, without its BLAS products, which
    # would start threads inside the gate's own thread pool).
    sa, sb = float(np.sum(a * a)), float(np.sum(b * b))
    if sa < 1e-12 * a.size or sb < 1e-12 * b.size:
        return 0.0
    return float(np.sum(a * b)) / float(np.sqrt(sa * sb))


def _tile_mad(
    values: FloatArray,
    mask: BoolArray,
    tile: int,
    placement: Placement = WHOLE,
) -> FloatArray:
    """Robust SD (1.4826 x median absolute value) per square tile, as a full-size map.

    Tiles less than a quarter (of their pixels in the slice) inside ``mask``
    get the whole mask's value. All tiles' medians come from one sort
    (masked-out values sort last as +inf), the same values as ``np.median``
    tile by tile. The tiles keep their places in the slice ``values`` were
    cut from (``placement``).
    """
    rows, cols = values.shape
    origin = placement.origin
    full_rows, full_cols = placement.slice_shape or (rows, cols)
    global_scale = 1.4826 * float(np.median(np.abs(values[mask]))) + 1e-3
    front = (origin[0] % tile, origin[1] % tile)
    n_r, n_c = -(-(rows + front[0]) // tile), -(-(cols + front[1]) // tile)
    where = (slice(front[0], front[0] + rows), slice(front[1], front[1] + cols))
    padded = np.full((n_r * tile, n_c * tile), np.inf, dtype=np.float32)
    padded[where] = np.where(mask, np.abs(values), np.float32(np.inf))
    inside = np.zeros(padded.shape, dtype=np.int32)
    inside[where] = mask
    count = _per_tile(inside, tile).sum(axis=-1)
    size = np.outer(
        _in_slice(n_r, tile, origin[0] - front[0], full_rows),
        _in_slice(n_c, tile, origin[1] - front[1], full_cols),
    )
    ordered = np.sort(_per_tile(padded, tile), axis=-1)
    lower = np.take_along_axis(ordered, np.maximum((count - 1) // 2, 0)[..., None], axis=-1)
    upper = np.take_along_axis(ordered, (count // 2)[..., None], axis=-1)
    median = ((lower + upper) / np.float32(2.0))[..., 0]
    scale = np.where(count * 4 >= size, 1.4826 * median.astype(np.float64) + 1e-3, global_scale)
    full = np.repeat(np.repeat(scale, tile, axis=0), tile, axis=1)
    return np.asarray(full[where], dtype=np.float32)


def _in_slice(n_tiles: int, tile: int, start: int, length: int) -> npt.NDArray[np.int64]:
    """Pixels of each of ``n_tiles`` tiles, the first at ``start``, within ``[0, length)``."""
    lo = start + tile * np.arange(n_tiles, dtype=np.int64)
    counts: npt.NDArray[np.int64] = np.maximum(np.minimum(lo + tile, length) - np.maximum(lo, 0), 0)
    return counts


def _per_tile(image: npt.NDArray[np.generic], tile: int) -> npt.NDArray[Any]:
    """``(rows / tile, cols / tile, tile * tile)``: the pixels of each tile of an image."""
    n_r, n_c = image.shape[0] // tile, image.shape[1] // tile
    blocks = image.reshape(n_r, tile, n_c, tile).transpose(0, 2, 1, 3)
    return blocks.reshape(n_r, n_c, tile * tile)


def structure_area_mm2(
    edges: FloatArray,
    residual: FloatArray,
    body: BoolArray,
    sigma_px: float,
    z: float,
    pixel_area_mm2: float,
    floor_hu: float,
    edge_p90: float,
    placement: Placement = WHOLE,
) -> float:
    """Largest connected area where the smoothed residual is structure, not noise.

    Smoothing keeps a blob (an invented or erased lesion) and averages noise
    away; the threshold is ``z`` robust SDs of the smoothed residual itself,
    so it follows the noise level. The strongest input edges (above
    ``edge_p90``, the 90th percentile of ``edges`` in the body) are left to
    :func:`edge_correlation`. ``placement`` places the images in the whole
    slice (see :func:`_tile_mad`).
    """
    if np.count_nonzero(body) < 64:
        return 0.0
    smooth_res = ndi.gaussian_filter(residual, sigma_px, truncate=3.0)
    # CT noise is not stationary (it is highest where the rays are longest),
    # so the scale is a robust SD (MAD) per tile of ~15 smoothing widths:
    # local enough to follow the noise, robust so a lesion does not raise it.
    scale = _tile_mad(smooth_res, body, max(int(15 * sigma_px), 16), placement)
    strong_edge = local_max(edges > edge_p90, 5)
    hot = (np.abs(smooth_res) > np.maximum(z * scale, floor_hu)) & body & ~strong_edge
    if not hot.any():
        return 0.0
    labels, _ = ndi.label(hot)
    sizes = np.bincount(labels.ravel())[1:]
    return float(sizes.max()) * pixel_area_mm2


#: Above this HU (after a 5 x 5 mean) a pixel is inside the patient (or the table).
BODY_HU = -500.0


def body_box(image: FloatArray, margin: int) -> tuple[slice, slice]:
    """The bounding box of the pixels above :data:`BODY_HU`, grown by ``margin`` pixels.

    The whole image when no pixel is above it.
    """
    inside = image > BODY_HU
    rows = np.flatnonzero(inside.any(axis=1))
    cols = np.flatnonzero(inside.any(axis=0))
    if rows.size == 0:
        return slice(None), slice(None)
    return (
        slice(max(int(rows[0]) - margin, 0), int(rows[-1]) + margin + 1),
        slice(max(int(cols[0]) - margin, 0), int(cols[-1]) + margin + 1),
    )


def _reach(sigma_px: float, region_px: int) -> int:
    """How far outside the raw body mask the gate's filters read, in pixels.

    The body mask's 5 x 5 mean (2), then the larger of the region boxes
    (half their edge) and the chain smoothing (3 sigma) + gradient (1) +
    edge dilation (4) + 9 x 9 windows (4); one more for rounding.
    """
    smoothing = int(3.0 * sigma_px + 0.5)
    return 2 + max(region_px // 2, smoothing + 1 + 4 + 4) + 1


def gate_slice(
    before: FloatArray,
    after: FloatArray,
    pixel_spacing: tuple[float, float],
    thresholds: GateThresholds | None = None,
    input_noise_sd: float | None = None,
) -> SliceQA:
    """Judge one enhanced slice against its input, without a reference.

    Slices finer than 0.6 mm or larger than 320 pixels are judged on 2 x 2
    block means: the checks concern lesion-sized structure and regional
    means, which survive the averaging, and the cost drops fourfold. The
    checks then run on the body's bounding box (:func:`body_box`), with a
    margin wider than any filter's reach: the air around the patient is not
    looked at (the region and tile grids keep their places in the slice).

    Parameters
    ----------
    before, after
        Input and enhanced 2-D slices in HU.
    pixel_spacing
        (row, column) spacing in mm.
    thresholds
        Gate limits; defaults to :class:`GateThresholds`.
    input_noise_sd
        Noise SD of ``before`` (full resolution) if already estimated.

    Returns
    -------
    SliceQA
        The verdict with metrics ``bias_hu``, ``noise_in_hu``, ``noise_ratio``,
        ``residual_ratio``, ``edge_correlation`` and ``structure_mm2``, and a
        reason for every failed check.
    """
    th = thresholds or GateThresholds()
    spacing = float(np.mean(pixel_spacing))
    factor = 2 if (min(before.shape) > 320 or spacing < 0.6) and min(before.shape) >= 64 else 1
    b = block_mean(np.asarray(before, dtype=np.float32), factor)
    a = block_mean(np.asarray(after, dtype=np.float32), factor)
    spacing *= factor
    region_px = max(round(th.region_mm / spacing), 8)
    sigma_px = max(2.0 / spacing, 2.0)
    # Every check looks inside the body only: the air around it is cut off,
    # leaving a margin wide enough that no filter reaches past it.
    crop = body_box(b, _reach(sigma_px, region_px))
    placement = Placement((crop[0].start or 0, crop[1].start or 0), (b.shape[0], b.shape[1]))
    b, a = b[crop], a[crop]
    residual = b - a
    # One 5 x 5 mean of the input gives the tissue and the body masks.
    smooth5 = _smooth5(b)
    tissue = _in_band(smooth5, -300.0, 300.0)
    body = smooth5 > BODY_HU
    # One smoothed copy of the input serves the flat-region mask (noise), the
    # edge map (blurring) and the edge exclusion of the structure check.
    edges = _gradient(ndi.gaussian_filter(b, sigma_px, truncate=3.0))
    if np.count_nonzero(tissue) >= 64:
        edge = edges > 3.0 * float(np.median(edges[tissue])) + 1e-6
        flat = tissue & ~local_max(edge, 9)
        if np.count_nonzero(flat) < 64:
            flat = tissue
    else:
        flat = tissue
    if np.count_nonzero(flat) >= 16:
        sd_in, sd_out, sd_res = (
            median_local_sd(x, flat, 9, stride=3, placement=placement) for x in (b, a, residual)
        )
    else:
        sd_in = sd_out = sd_res = 0.0
    floor = max(sd_in, 1.0)
    bias = region_bias(b, a, region_px, tissue, placement)
    corr = edge_correlation(edges, residual, body, sigma_px)
    # A correlation only means something when the residual on the edges is
    # large enough to matter; a near-identity output (normal-dose input) has
    # a few HU of residual whose pattern is irrelevant.
    edge_p90 = upper_percentile(edges[body], 90) if body.any() else 0.0
    on_edges = body & (edges > edge_p90)
    edge_res = float(np.mean(np.abs(residual[on_edges]))) if on_edges.any() else 0.0
    area = structure_area_mm2(
        edges,
        residual,
        body,
        sigma_px,
        th.structure_z,
        spacing**2,
        th.min_structure_hu,
        edge_p90=edge_p90,
        placement=placement,
    )
    sigma_in = sd_in if input_noise_sd is None else input_noise_sd
    metrics = {
        "bias_hu": bias,
        "noise_in_hu": float(sigma_in),
        "noise_ratio": sd_out / floor,
        "residual_ratio": sd_res / floor,
        "edge_correlation": corr,
        "edge_residual_hu": edge_res,
        "structure_mm2": area,
    }
    reasons: list[str] = []
    if bias > th.max_bias_hu:
        reasons.append(f"mean HU changed by {bias:.1f} in a region (limit {th.max_bias_hu})")
    if metrics["noise_ratio"] > th.max_noise_ratio:
        reasons.append(f"output noise exceeds input noise (ratio {metrics['noise_ratio']:.2f})")
    if metrics["residual_ratio"] > th.max_residual_ratio:
        reasons.append(
            f"removed residual exceeds the input noise (ratio {metrics['residual_ratio']:.2f})"
        )
    if corr > th.max_edge_correlation and edge_res > max(4.0, 0.5 * floor):
        reasons.append(f"residual follows the edges (correlation {corr:.2f})")
    if area > max(th.max_structure_mm2, 12.0 * spacing**2):
        reasons.append(f"structure of {area:.0f} mm² in the residual")
    return SliceQA(passed=not reasons, metrics=metrics, reasons=tuple(reasons))
