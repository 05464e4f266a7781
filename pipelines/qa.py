"""Reference-free quality gate for image-to-image enhancement (method-noise checks)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from pipelines.base import SliceQA

FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]


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
    smooth = ndi.uniform_filter(image.astype(np.float32), size=5)
    mask: BoolArray = (smooth > low) & (smooth < high)
    return mask


def local_sd(image: FloatArray, size: int) -> FloatArray:
    """Standard deviation in a ``size`` x ``size`` window around each pixel.

    In float32 after removing the image's mean: the variance of a window is
    then computed from values of a few hundred HU, well within float32's
    precision, at half the cost of float64.
    """
    x = image.astype(np.float32) - np.float32(np.mean(image))
    mean = ndi.uniform_filter(x, size=size)
    mean_sq = ndi.uniform_filter(x * x, size=size)
    return np.asarray(np.sqrt(np.maximum(mean_sq - mean * mean, 0.0)), dtype=np.float32)


def flat_mask(image: FloatArray, size: int = 9) -> BoolArray:
    """Soft-tissue pixels away from edges: the places where SD is noise, not anatomy.

    An edge is where the gradient of a smoothed copy exceeds what noise alone
    gives; the threshold is taken relative to the median gradient inside tissue.
    """
    tissue = tissue_mask(image)
    smooth = ndi.gaussian_filter(image.astype(np.float32), 2.0)
    grad = np.hypot(ndi.sobel(smooth, 0), ndi.sobel(smooth, 1))
    if tissue.sum() < 64:
        return tissue
    edge = grad > 3.0 * float(np.median(grad[tissue])) + 1e-6
    edge = ndi.binary_dilation(edge, iterations=size // 2)
    flat: BoolArray = tissue & ~edge
    return flat if flat.sum() >= 64 else tissue


def estimate_noise_sd(image: FloatArray, size: int = 9, max_size: int = 256) -> float:
    """Noise standard deviation of a CT slice, in HU, without a reference.

    The median local SD (``size`` x ``size`` windows) over flat soft tissue.
    CT noise is spatially correlated (ramp-filtered back-projection), so
    wavelet estimators that assume white noise under-read it; the pixel
    variance in a flat window measures it directly, whatever its texture.

    Parameters
    ----------
    image
        2-D slice in HU.
    size
        Window edge in pixels.
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
    mask = flat_mask(img, size)
    if mask.sum() < 16:
        return 0.0
    return float(np.median(local_sd(img, size)[mask]))


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
    blocks = image[:rows, :cols].reshape(rows // factor, factor, cols // factor, factor)
    return np.asarray(blocks.mean(axis=(1, 3), dtype=np.float32), dtype=np.float32)


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


def region_bias(before: FloatArray, after: FloatArray, region_px: int, mask: BoolArray) -> float:
    """Largest absolute mean change over square tissue regions of ``region_px``."""
    diff = ((after - before) * mask).astype(np.float32)
    cover = ndi.uniform_filter(mask.astype(np.float32), size=region_px)
    mean = ndi.uniform_filter(diff, size=region_px)
    # Only regions mostly made of tissue: the mean of a few pixels is noise.
    ok = cover > 0.6
    # Sample the regions on a half-overlapping grid to keep them independent-ish.
    step = max(region_px // 2, 1)
    sel = np.zeros_like(ok)
    sel[step // 2 :: step, step // 2 :: step] = True
    sel &= ok
    if not sel.any():
        return 0.0
    return float(np.max(np.abs(mean[sel] / cover[sel])))


def _gradient(smooth: FloatArray) -> FloatArray:
    return np.asarray(np.hypot(ndi.sobel(smooth, 0), ndi.sobel(smooth, 1)), dtype=np.float32)


def edge_correlation(
    edges: FloatArray, residual: FloatArray, body: BoolArray, sigma_px: float
) -> float:
    """Pearson correlation of the residual's local magnitude with input edges.

    Removed noise is independent of anatomy, so its local magnitude does not
    follow the edges; a blurred edge leaves its detail in the residual, right
    on the edge. ``edges`` is the gradient magnitude of the smoothed input.
    """
    if body.sum() < 64:
        return 0.0
    # Clip so bone and air borders do not outweigh soft-tissue edges.
    a = np.minimum(edges[body], 400.0).astype(np.float64)
    energy = ndi.gaussian_filter(np.abs(residual), sigma_px, truncate=3.0)
    b = energy[body].astype(np.float64)
    if a.std() < 1e-6 or b.std() < 1e-6:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def _tile_mad(values: FloatArray, mask: BoolArray, tile: int) -> FloatArray:
    """Robust SD (1.4826 x median absolute value) per square tile, as a full-size map."""
    rows, cols = values.shape
    global_scale = 1.4826 * float(np.median(np.abs(values[mask]))) + 1e-3
    out = np.full(values.shape, global_scale, dtype=np.float32)
    for r0 in range(0, rows, tile):
        for c0 in range(0, cols, tile):
            sel = mask[r0 : r0 + tile, c0 : c0 + tile]
            if sel.sum() * 4 >= sel.size:
                vals = np.abs(values[r0 : r0 + tile, c0 : c0 + tile][sel])
                out[r0 : r0 + tile, c0 : c0 + tile] = 1.4826 * float(np.median(vals)) + 1e-3
    return out


def structure_area_mm2(
    edges: FloatArray,
    residual: FloatArray,
    body: BoolArray,
    sigma_px: float,
    z: float,
    pixel_area_mm2: float,
    floor_hu: float = 0.0,
) -> float:
    """Largest connected area where the smoothed residual is structure, not noise.

    Smoothing keeps a blob (an invented or erased lesion) and averages noise
    away; the threshold is ``z`` robust SDs of the smoothed residual itself,
    so it follows the noise level. The strongest input edges are left to
    :func:`edge_correlation`.
    """
    if body.sum() < 64:
        return 0.0
    smooth_res = ndi.gaussian_filter(residual, sigma_px, truncate=3.0)
    # CT noise is not stationary (it is highest where the rays are longest),
    # so the scale is a robust SD (MAD) per tile of ~15 smoothing widths:
    # local enough to follow the noise, robust so a lesion does not raise it.
    scale = _tile_mad(smooth_res, body, max(int(15 * sigma_px), 16))
    strong_edge = ndi.maximum_filter(edges > np.percentile(edges[body], 90), size=5)
    hot = (np.abs(smooth_res) > np.maximum(z * scale, floor_hu)) & body & ~strong_edge
    if not hot.any():
        return 0.0
    labels, n = ndi.label(hot)
    sizes = np.bincount(labels.ravel())[1:]
    return float(sizes.max()) * pixel_area_mm2 if n else 0.0


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
    means, which survive the averaging, and the cost drops fourfold.

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
    residual = b - a
    tissue = tissue_mask(b)
    sigma_px = max(2.0 / spacing, 2.0)
    # One smoothed copy of the input serves the flat-region mask (noise), the
    # edge map (blurring) and the edge exclusion of the structure check.
    edges = _gradient(ndi.gaussian_filter(b, sigma_px, truncate=3.0))
    body = ndi.uniform_filter(b, size=5) > -500.0
    if tissue.sum() >= 64:
        edge = edges > 3.0 * float(np.median(edges[tissue])) + 1e-6
        flat = tissue & ~ndi.maximum_filter(edge, size=9)
        if flat.sum() < 64:
            flat = tissue
    else:
        flat = tissue
    if flat.sum() >= 16:
        sd_in = float(np.median(local_sd(b, 9)[flat]))
        sd_out = float(np.median(local_sd(a, 9)[flat]))
        sd_res = float(np.median(local_sd(residual, 9)[flat]))
    else:
        sd_in = sd_out = sd_res = 0.0
    floor = max(sd_in, 1.0)
    region_px = max(round(th.region_mm / spacing), 8)
    bias = region_bias(b, a, region_px, tissue)
    corr = edge_correlation(edges, residual, body, sigma_px)
    # A correlation only means something when the residual on the edges is
    # large enough to matter; a near-identity output (normal-dose input) has
    # a few HU of residual whose pattern is irrelevant.
    on_edges = body & (edges > np.percentile(edges[body], 90)) if body.any() else body
    edge_res = float(np.mean(np.abs(residual[on_edges]))) if on_edges.any() else 0.0
    area = structure_area_mm2(
        edges, residual, body, sigma_px, th.structure_z, spacing**2, th.min_structure_hu
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
