"""Procedural normal-dose anatomy in HU: body and head cross-sections and Shepp-Logan phantoms."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from pipelines.base import FloatArray

Rng = np.random.Generator

# Typical attenuation of tissues at 120 kVp, in HU (textbook ranges; each
# draw jitters them so the network never sees one fixed contrast).
AIR = -1000.0
LUNG = -850.0
FAT = -100.0
WATER = 0.0
CSF = 8.0
WHITE_MATTER = 28.0
GRAY_MATTER = 40.0
MUSCLE = 50.0
LIVER = 60.0
SPLEEN = 50.0
KIDNEY = 35.0
VESSEL_CONTRAST = 200.0
CANCELLOUS_BONE = 250.0
CORTICAL_BONE = 1100.0


class Canvas:
    """A square grid in mm with helpers to paint ellipses of given HU."""

    def __init__(self, size: int, spacing_mm: float) -> None:
        half = (size - 1) / 2.0
        axis = (np.arange(size, dtype=np.float32) - half) * spacing_mm
        self.y, self.x = np.meshgrid(axis, axis, indexing="ij")
        self.image = np.full((size, size), AIR, dtype=np.float32)
        self.spacing = spacing_mm

    def ellipse(
        self, cx: float, cy: float, ax: float, ay: float, angle: float = 0.0
    ) -> npt.NDArray[np.bool_]:
        """Mask of an ellipse centred at (cx, cy) mm with semi-axes (ax, ay) mm."""
        c, s = np.cos(angle), np.sin(angle)
        dx, dy = self.x - cx, self.y - cy
        u = (dx * c + dy * s) / max(ax, 1e-3)
        v = (-dx * s + dy * c) / max(ay, 1e-3)
        mask: npt.NDArray[np.bool_] = (u * u + v * v) <= 1.0
        return mask

    def paint(
        self, hu: float, cx: float, cy: float, ax: float, ay: float, angle: float = 0.0
    ) -> npt.NDArray[np.bool_]:
        """Set an ellipse to ``hu`` and return its mask."""
        mask = self.ellipse(cx, cy, ax, ay, angle)
        self.image[mask] = hu
        return mask


def smooth_texture(rng: Rng, shape: tuple[int, int], scale_px: float, sd: float) -> FloatArray:
    """A smooth Gaussian random field: parenchymal texture, not noise."""
    field = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), scale_px)
    field /= float(field.std()) + 1e-6
    return np.asarray(field * sd, dtype=np.float32)


def add_lesions(rng: Rng, canvas: Canvas, region: npt.NDArray[np.bool_], count: int) -> None:
    """Small low-contrast disks (2-10 mm, 3-25 HU either sign) inside ``region``."""
    ys, xs = np.nonzero(region)
    if ys.size == 0:
        return
    for _ in range(count):
        k = int(rng.integers(ys.size))
        radius = float(rng.uniform(1.0, 5.0))
        contrast = float(rng.uniform(3.0, 25.0)) * float(rng.choice([-1.0, 1.0]))
        mask = (
            canvas.ellipse(
                float(canvas.x[ys[k], xs[k]]), float(canvas.y[ys[k], xs[k]]), radius, radius
            )
            & region
        )
        canvas.image[mask] += contrast


def body_slice(rng: Rng, size: int, spacing_mm: float) -> FloatArray:
    """An abdominal or chest cross-section: fat, organs, vessels, spine, ribs, lungs."""
    cv = Canvas(size, spacing_mm)
    fov = size * spacing_mm
    ax = float(rng.uniform(0.30, 0.46)) * fov
    ay = ax * float(rng.uniform(0.62, 0.85))
    cx, cy = (float(v) for v in rng.uniform(-0.03, 0.03, 2) * fov)
    body = cv.paint(FAT + float(rng.normal(0, 10)), cx, cy, ax, ay)
    fat_mm = float(rng.uniform(5.0, 30.0))
    inner = cv.paint(MUSCLE + float(rng.normal(0, 5)), cx, cy, ax - fat_mm, ay - fat_mm)
    cv.paint(FAT + float(rng.normal(0, 10)), cx, cy, ax - fat_mm - 8, ay - fat_mm - 8)
    chest = bool(rng.random() < 0.4)
    iax, iay = ax - fat_mm - 8, ay - fat_mm - 8
    if chest:
        for side in (-1.0, 1.0):
            lung = cv.paint(
                LUNG,
                cx + side * 0.45 * iax,
                cy - 0.05 * iay,
                0.42 * iax,
                0.8 * iay,
                float(rng.normal(0, 0.1)),
            )
            # Lung texture: vessels and septa as a coarse random field plus dots.
            tex = smooth_texture(rng, cv.image.shape, 1.5 / spacing_mm, 35.0)
            cv.image[lung] += tex[lung]
            for _ in range(int(rng.integers(15, 40))):
                r = float(rng.uniform(0.8, 3.0))
                px = cx + side * 0.45 * iax + float(rng.uniform(-0.35, 0.35)) * iax
                py = cy + float(rng.uniform(-0.6, 0.6)) * iay
                cv.image[cv.ellipse(px, py, r, r) & lung] = float(rng.uniform(-200, 60))
        heart = cv.paint(MUSCLE, cx, cy + 0.15 * iay, 0.35 * iax, 0.4 * iay, 0.3)
        add_lesions(rng, cv, heart, 2)
    else:
        organs = [
            (LIVER, -0.45, -0.1, 0.45, 0.55),
            (SPLEEN, 0.55, 0.0, 0.22, 0.35),
            (KIDNEY, -0.35, 0.45, 0.14, 0.22),
            (KIDNEY, 0.35, 0.45, 0.14, 0.22),
        ]
        for hu, ox, oy, sx, sy in organs:
            if rng.random() < 0.85:
                m = cv.paint(
                    hu + float(rng.normal(0, 8)),
                    cx + ox * iax,
                    cy + oy * iay,
                    sx * iax * float(rng.uniform(0.8, 1.2)),
                    sy * iay * float(rng.uniform(0.8, 1.2)),
                    float(rng.normal(0, 0.3)),
                )
                cv.image[m] += smooth_texture(rng, cv.image.shape, 3.0 / spacing_mm, 6.0)[m]
                add_lesions(rng, cv, m, int(rng.integers(1, 4)))
        # Bowel: soft tissue loops with gas.
        for _ in range(int(rng.integers(2, 7))):
            bx = cx + float(rng.uniform(-0.3, 0.4)) * iax
            by = cy + float(rng.uniform(-0.5, 0.1)) * iay
            r = float(rng.uniform(6, 18))
            cv.paint(MUSCLE - 15, bx, by, r, r * 0.8)
            if rng.random() < 0.6:
                cv.paint(AIR, bx, by, r * 0.5, r * 0.4)
    # Aorta and cava with iodinated contrast.
    vessel_hu = VESSEL_CONTRAST * float(rng.uniform(0.4, 1.6))
    cv.paint(vessel_hu, cx - 0.05 * iax, cy + 0.45 * iay, 11.0, 11.0)
    cv.paint(vessel_hu * 0.8, cx + 0.15 * iax, cy + 0.42 * iay, 10.0, 8.0)
    for _ in range(int(rng.integers(3, 10))):
        r = float(rng.uniform(1.0, 4.0))
        vx = cx + float(rng.uniform(-0.6, 0.6)) * iax
        vy = cy + float(rng.uniform(-0.6, 0.6)) * iay
        cv.image[cv.ellipse(vx, vy, r, r) & inner] = vessel_hu * float(rng.uniform(0.5, 1.0))
    # Spine: cortical ring around cancellous bone, posterior.
    sx, sy = cx, cy + 0.72 * iay
    cv.paint(CORTICAL_BONE * float(rng.uniform(0.7, 1.1)), sx, sy, 20.0, 17.0)
    cv.paint(CANCELLOUS_BONE * float(rng.uniform(0.6, 1.4)), sx, sy, 16.0, 13.0)
    cv.paint(CSF, sx, sy + 22.0, 6.0, 5.0)
    if chest:
        for k in range(int(rng.integers(6, 12))):
            t = np.pi * (0.1 + 0.8 * k / 11.0) * float(rng.choice([-1.0, 1.0]))
            rx = cx + (ax - fat_mm - 3) * float(np.sin(t))
            ry = cy - (ay - fat_mm - 3) * float(np.cos(t))
            cv.paint(CORTICAL_BONE * float(rng.uniform(0.5, 0.9)), rx, ry, 4.0, 6.0, t)
    cv.image[~body] = AIR
    return cv.image


def head_slice(rng: Rng, size: int, spacing_mm: float) -> FloatArray:
    """An axial head section: scalp, skull, gray and white matter, ventricles."""
    cv = Canvas(size, spacing_mm)
    fov = size * spacing_mm
    ay = min(float(rng.uniform(80, 100)), 0.47 * fov)
    ax = ay * float(rng.uniform(0.75, 0.9))
    ang = float(rng.normal(0, 0.08))
    cv.paint(MUSCLE - 10, 0, 0, ax, ay, ang)
    cv.paint(CORTICAL_BONE * float(rng.uniform(1.0, 1.5)), 0, 0, ax - 4, ay - 4, ang)
    brain = cv.paint(GRAY_MATTER + float(rng.normal(0, 3)), 0, 0, ax - 11, ay - 11, ang)
    wm = cv.paint(WHITE_MATTER + float(rng.normal(0, 2)), 0, 0, ax - 22, ay - 24, ang)
    cv.image[wm] += smooth_texture(rng, cv.image.shape, 2.0 / spacing_mm, 3.0)[wm]
    for side in (-1.0, 1.0):
        cv.paint(CSF, side * 7.0, -5.0, 4.0, 22.0, side * 0.3)
    cv.paint(GRAY_MATTER, -18.0, 10.0, 7.0, 10.0)
    cv.paint(GRAY_MATTER, 18.0, 10.0, 7.0, 10.0)
    add_lesions(rng, cv, brain, int(rng.integers(2, 6)))
    return cv.image


def shepp_logan_slice(rng: Rng, size: int, spacing_mm: float) -> FloatArray:
    """A randomly scaled and rotated Shepp-Logan phantom (phantominator) mapped to HU."""
    from phantominator import ct_shepp_logan
    from phantominator.ct_shepp_logan import ct_modified_shepp_logan_params_2d

    params = np.array(ct_modified_shepp_logan_params_2d(), dtype=np.float64)
    scale = float(rng.uniform(0.5, 0.9))
    params[:, 1:5] *= scale
    params[:, 5] += float(rng.uniform(-20, 20))
    ph = np.asarray(ct_shepp_logan((size, size), E=params), dtype=np.float32)
    # Gray value 0 is air, the thin ring (1.0) is skull, interior values around
    # 0.2 are brain-like; map soft values linearly to -20..130 HU.
    hu = np.where(ph <= 0.005, AIR, 30.0 + (ph - 0.2) * 500.0)
    hu = np.where(ph >= 0.5, CORTICAL_BONE, hu).astype(np.float32)
    inside = ph > 0.05
    add_lesions(rng, _wrap(hu, spacing_mm), inside & (ph < 0.5), int(rng.integers(2, 6)))
    return hu


def _wrap(image: FloatArray, spacing_mm: float) -> Canvas:
    cv = Canvas(image.shape[0], spacing_mm)
    cv.image = image
    return cv


def water_cylinder(size: int, spacing_mm: float, radius_mm: float = 100.0) -> FloatArray:
    """A uniform water cylinder in air: the base of noise and detectability tests."""
    cv = Canvas(size, spacing_mm)
    cv.paint(WATER, 0.0, 0.0, radius_mm, radius_mm)
    return cv.image


#: The CCT189-like low-contrast inserts: (diameter mm, contrast HU).
LOW_CONTRAST_INSERTS: tuple[tuple[float, float], ...] = (
    (3.0, 14.0),
    (5.0, 7.0),
    (7.0, 5.0),
    (10.0, 3.0),
)


def insert_positions(radius_mm: float = 100.0) -> list[tuple[float, float]]:
    """Centres (x, y) in mm of the four inserts, on a ring at half the radius."""
    ring = 0.5 * radius_mm
    angles = np.linspace(0.0, 2.0 * np.pi, len(LOW_CONTRAST_INSERTS), endpoint=False)
    return [(ring * float(np.cos(a)), ring * float(np.sin(a))) for a in angles]


def low_contrast_phantom(
    size: int, spacing_mm: float, radius_mm: float = 100.0, with_inserts: bool = True
) -> FloatArray:
    """Water cylinder with the CCT189-like disks (or without, for signal-absent images)."""
    cv = Canvas(size, spacing_mm)
    cv.paint(WATER, 0.0, 0.0, radius_mm, radius_mm)
    if with_inserts:
        for (diameter, contrast), (x, y) in zip(
            LOW_CONTRAST_INSERTS, insert_positions(radius_mm), strict=True
        ):
            cv.image[cv.ellipse(x, y, diameter / 2.0, diameter / 2.0)] += contrast
    return cv.image


def random_phantom(rng: Rng, size: int) -> tuple[FloatArray, float]:
    """One training phantom of a random family, with its pixel spacing in mm."""
    family = float(rng.random())
    if family < 0.55:
        spacing = float(rng.uniform(0.9, 1.5))
        return body_slice(rng, size, spacing), spacing
    if family < 0.85:
        spacing = float(rng.uniform(0.45, 0.85))
        return head_slice(rng, size, spacing), spacing
    spacing = float(rng.uniform(0.5, 1.0))
    return shepp_logan_slice(rng, size, spacing), spacing
