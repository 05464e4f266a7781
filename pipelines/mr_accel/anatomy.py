"""Fully sampled MR training images: phantominator phantoms and procedural anatomy."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from pipelines.base import FloatArray

#: Relaxation-weighted contrasts as (TR, TE) in seconds, the phantoms' T1/T2 units.
CONTRASTS = {
    "T1": (0.5, 0.012),
    "T2": (4.0, 0.1),
    "PD": (3.0, 0.012),
}


def spin_echo_signal(
    m0: np.ndarray, t1: np.ndarray, t2: np.ndarray, tr: float, te: float
) -> np.ndarray:
    """Spin-echo magnitude ``M0 (1 - exp(-TR/T1)) exp(-TE/T2)``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        s = m0 * (1.0 - np.exp(-tr / np.where(t1 > 0, t1, np.inf)))
        s = s * np.exp(-te / np.where(t2 > 0, t2, np.inf))
    return np.nan_to_num(s)


def random_shape(rng: np.random.Generator) -> tuple[int, int]:
    """A matrix of 256-512 per side (one in five 128-256), square or not."""
    low = 128 if rng.random() < 0.2 else 256
    rows = int(rng.integers(low, 2 * low + 1) // 8 * 8)
    cols = rows if rng.random() < 0.5 else int(rng.integers(low, 2 * low + 1) // 8 * 8)
    return rows, cols


def phantom_image(rng: np.random.Generator, shape: tuple[int, int]) -> FloatArray:
    """A Shepp-Logan MR phantom slice in a random contrast, texture and field."""
    from phantominator import shepp_logan

    z = float(rng.uniform(-0.2, 0.2))
    m0, t1, t2 = shepp_logan((shape[0], shape[1], 1), MR=True, zlims=(z, z + 0.01))
    tr, te = CONTRASTS[str(rng.choice(list(CONTRASTS)))]
    tr *= float(rng.uniform(0.7, 1.4))
    te *= float(rng.uniform(0.7, 1.4))
    img = spin_echo_signal(m0[..., 0], t1[..., 0], t2[..., 0], tr, te)
    img *= _texture(rng, shape, amount=float(rng.uniform(0.0, 0.08)))
    img = _add_small_structures(rng, img, img > 0.05 * img.max())
    return _finish(rng, img)


def procedural_anatomy(rng: np.random.Generator, shape: tuple[int, int]) -> FloatArray:
    """Head- or body-like anatomy: tissue classes with texture and small structures.

    Tissue labels come from thresholded smooth random fields inside an outline,
    each class with its own intensity (a random contrast), a thin bright rim
    like subcutaneous fat, and vessels, dots and lesions a few pixels across.
    """
    rows, cols = shape
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float64)
    cy, cx = rows / 2 + rng.normal(0, rows * 0.03), cols / 2 + rng.normal(0, cols * 0.03)
    ay = rows * rng.uniform(0.3, 0.46)
    ax = cols * rng.uniform(0.3, 0.46)
    theta = rng.uniform(0, np.pi)
    u = ((xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)) / ax
    v = (-(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)) / ay
    # A wobbly outline: radius modulated by a few low angular harmonics.
    ang = np.arctan2(v, u)
    wobble = 1.0 + sum(
        rng.uniform(0, 0.05) * np.cos(k * ang + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5)
    )
    r = np.hypot(u, v) / wobble
    body = r < 1.0
    rim_width = rng.uniform(0.02, 0.06)
    rim = body & (r > 1.0 - rim_width)
    inner = r < 1.0 - rim_width - rng.uniform(0.0, 0.05)

    n_classes = int(rng.integers(2, 5))
    field = ndimage.gaussian_filter(rng.standard_normal(shape), rng.uniform(3, 14))
    edges = np.quantile(field[inner], np.sort(rng.uniform(0.15, 0.85, n_classes - 1)))
    labels = np.digitize(field, edges)
    levels = rng.uniform(0.15, 1.0, n_classes)
    img = np.zeros(shape)
    img[inner] = levels[labels[inner]]
    img[body & ~inner & ~rim] = rng.uniform(0.1, 0.6)
    img[rim] = rng.uniform(0.4, 1.0)
    img *= _texture(rng, shape, amount=float(rng.uniform(0.0, 0.2)))
    img = _add_small_structures(rng, img, inner)
    return _finish(rng, img)


def training_image(rng: np.random.Generator, shape: tuple[int, int] | None = None) -> FloatArray:
    """One fully sampled image: a phantom (a third of the time) or procedural anatomy."""
    shape = shape or random_shape(rng)
    if rng.random() < 1.0 / 3.0:
        return phantom_image(rng, shape)
    return procedural_anatomy(rng, shape)


def _texture(rng: np.random.Generator, shape: tuple[int, int], amount: float) -> np.ndarray:
    """Multiplicative tissue texture: smooth noise at a couple of scales."""
    tex = np.zeros(shape)
    for sigma in (1.0, 3.0):
        f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
        tex += f / (f.std() + 1e-12)
    out: np.ndarray = 1.0 + amount * tex / 2.0
    return out


def _add_small_structures(
    rng: np.random.Generator, img: np.ndarray, region: np.ndarray
) -> np.ndarray:
    """Dots, vessels and small lesions: the detail that reduced coverage blurs."""
    rows, cols = img.shape
    out = img.copy()
    where = np.argwhere(region)
    if where.size == 0:
        return out
    yy, xx = np.mgrid[0:rows, 0:cols]
    scale = float(np.percentile(img[region], 90))
    for _ in range(int(rng.integers(3, 15))):
        cy, cx = where[rng.integers(len(where))]
        radius = rng.uniform(1.0, 5.0)
        contrast = rng.uniform(-0.6, 0.8) * scale
        out[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] += contrast
    for _ in range(int(rng.integers(1, 6))):
        # A vessel: a random walk drawn one to two pixels wide.
        y, x = (float(c) for c in where[rng.integers(len(where))])
        heading = rng.uniform(0, 2 * np.pi)
        contrast = rng.uniform(0.3, 0.9) * scale * rng.choice([-1.0, 1.0])
        width = int(rng.integers(1, 3))
        for _ in range(int(rng.integers(20, 120))):
            heading += rng.normal(0, 0.15)
            y += np.sin(heading)
            x += np.cos(heading)
            iy, ix = int(y), int(x)
            if not (0 <= iy < rows - width and 0 <= ix < cols - width):
                break
            out[iy : iy + width, ix : ix + width] = img[iy, ix] + contrast
    clipped: np.ndarray = np.clip(out, 0.0, None)
    return clipped


def _finish(rng: np.random.Generator, img: np.ndarray) -> FloatArray:
    """Band-limit slightly, apply a receive-coil field, scale to about 1."""
    img = ndimage.gaussian_filter(img, rng.uniform(0.4, 0.8))
    img = img * receive_field(rng, img.shape)
    peak = float(np.percentile(img, 99.5))
    return np.asarray(img / peak if peak > 0 else img, dtype=np.float32)


def receive_field(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Receive-coil sensitivity: a gentle gradient, or (half the time) a surface coil.

    A surface coil's sensitivity falls with distance from the coil, so tissue
    far from it is dim and, at the same thermal noise, has a low SNR: detail
    there is barely above the noise, which a restoration must keep, not wipe.
    """
    rows, cols = shape[0], shape[1]
    yy, xx = np.mgrid[0:rows, 0:cols] / max(rows, cols)
    field = 1.0 + rng.uniform(-0.25, 0.25) * (yy - 0.5) + rng.uniform(-0.25, 0.25) * (xx - 0.5)
    if rng.random() < 0.5:
        # The coil sits just outside one side of the field of view.
        along = rng.uniform(0.2, 0.8)
        side = int(rng.integers(4))
        h, w = rows / max(rows, cols), cols / max(rows, cols)
        cy, cx = [(-0.1, along * w), (h + 0.1, along * w), (along * h, -0.1), (along * h, w + 0.1)][
            side
        ]
        floor = rng.uniform(0.05, 0.3)
        falloff = np.exp(-np.hypot(yy - cy, xx - cx) / rng.uniform(0.25, 0.7))
        field = field * (floor + (1.0 - floor) * falloff / falloff.max())
    return np.asarray(field)
