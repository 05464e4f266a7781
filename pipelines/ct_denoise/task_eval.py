"""Task-based tiers on the CCT189-like low-contrast phantom: NPS, CNR, CHO d' and HU bias."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from pipelines.base import FloatArray
from pipelines.ct_denoise.phantoms import (
    LOW_CONTRAST_INSERTS,
    insert_positions,
    low_contrast_phantom,
)
from pipelines.evaluation.noise import NPSResult, noise_power_spectrum
from pipelines.evaluation.observer import cho_dprime, cnr, disk_mask, dprime_change

Method = Callable[[FloatArray, float], FloatArray]
#: Cylinder radius and pixel spacing: a 180 mm water cylinder at 0.8 mm
#: pixels, so the 3 mm insert spans about four pixels.
RADIUS_MM = 90.0
#: Normal-dose noise SD at the cylinder centre, HU (a routine-dose body scan).
NORMAL_NOISE_HU = 10.0
#: The versions every method is compared with; d' changes are taken against low dose.
BASE = ("normal dose", "low dose")


@dataclass(frozen=True)
class TaskImages:
    """Signal-present and signal-absent realisations of one dose (normal and low)."""

    present_normal: FloatArray
    present_low: FloatArray
    absent_normal: FloatArray
    absent_low: FloatArray
    spacing: float


def simulate_task_images(size: int, realisations: int, dose: float, seed: int) -> TaskImages:
    """Independent noise realisations of the phantom with and without inserts.

    The inserts change the line integrals by a fraction of a percent, so one
    projection of the plain cylinder sets the noise variance of both classes.
    """
    from pipelines.ct_denoise.simulate import (
        ParallelBeamProjector,
        calibrate_photons,
        extra_log_variance,
        line_integrals,
        log_variance,
        noise_image,
    )

    spacing = 2.0 * RADIUS_MM * 1.14 / size
    rng = np.random.default_rng(seed)
    proj = ParallelBeamProjector(size)
    present = low_contrast_phantom(size, spacing, RADIUS_MM, with_inserts=True)
    absent = low_contrast_phantom(size, spacing, RADIUS_MM, with_inserts=False)
    p = line_integrals(proj, absent, spacing)
    photons = calibrate_photons(proj, p, spacing, NORMAL_NOISE_HU)
    v_normal = log_variance(p, photons)
    v_extra = extra_log_variance(p, photons, dose, v_normal)
    out: dict[str, list[FloatArray]] = {"pn": [], "pl": [], "an": [], "al": []}
    for _ in range(realisations):
        for clean, tag in ((present, "p"), (absent, "a")):
            normal = clean + noise_image(proj, v_normal, spacing, rng)
            low = normal + noise_image(proj, v_extra, spacing, rng)
            out[tag + "n"].append(normal)
            out[tag + "l"].append(low)
    return TaskImages(
        present_normal=np.stack(out["pn"]),
        present_low=np.stack(out["pl"]),
        absent_normal=np.stack(out["an"]),
        absent_low=np.stack(out["al"]),
        spacing=spacing,
    )


def _rois(images: FloatArray, x_mm: float, y_mm: float, spacing: float, half: int) -> FloatArray:
    size = images.shape[-1]
    c = (size - 1) / 2.0
    col = round(c + x_mm / spacing)
    row = round(c + y_mm / spacing)
    return images[:, row - half : row + half + 1, col - half : col + half + 1]


def detectability(
    present: FloatArray,
    absent: FloatArray,
    spacing: float,
    reference: tuple[FloatArray, FloatArray] | None = None,
) -> dict[str, dict[str, float]]:
    """CNR and CHO d' per insert, keyed like ``"3mm/14HU"``.

    With a ``reference`` (the same realisations' signal-present and
    signal-absent images in another version, e.g. the low-dose input), each
    insert also gets the change of d' against it and its paired 95 %
    bootstrap interval (``dprime_change``, ``dprime_change_low``,
    ``dprime_change_high``).
    """
    result: dict[str, dict[str, float]] = {}
    for (diameter, contrast), (x, y) in zip(
        LOW_CONTRAST_INSERTS, insert_positions(RADIUS_MM), strict=True
    ):
        radius_px = diameter / 2.0 / spacing
        half = max(int(np.ceil(3.0 * radius_px)), 6)
        sp = _rois(present, x, y, spacing, half)
        sa = _rois(absent, x, y, spacing, half)
        key = f"{diameter:g}mm/{contrast:g}HU"
        disk = disk_mask(sp.shape[-1], radius_px)
        contrast_meas = float(sp[:, disk].mean() - sa[:, disk].mean())
        result[key] = {
            "dprime": cho_dprime(sp, sa, radius_px),
            "cnr": cnr(sp, radius_px, background_sd=float(sa[:, disk].std())),
            "contrast_hu": contrast_meas,
        }
        if reference is not None:
            change, low, high = dprime_change(
                sp,
                sa,
                _rois(reference[0], x, y, spacing, half),
                _rois(reference[1], x, y, spacing, half),
                radius_px,
            )
            result[key].update(dprime_change=change, dprime_change_low=low, dprime_change_high=high)
    return result


def noise_texture(absent: FloatArray, spacing: float, roi: int = 48) -> NPSResult:
    """NPS from signal-absent realisations: each minus the ensemble mean.

    Subtracting the mean of n realisations leaves noise scaled by
    sqrt((n-1)/n), which is undone here.
    """
    n = absent.shape[0]
    noise = (absent - absent.mean(axis=0, keepdims=True)) * np.sqrt(n / max(n - 1, 1))
    size = absent.shape[-1]
    c = size // 2
    offset = int(0.35 * RADIUS_MM / spacing)
    rois = []
    for dx, dy in ((0, 0), (offset, 0), (-offset, 0), (0, offset), (0, -offset)):
        r0 = c + dy - roi // 2
        c0 = c + dx - roi // 2
        rois.append(noise[:, r0 : r0 + roi, c0 : c0 + roi])
    return noise_power_spectrum(np.concatenate(rois), spacing, bins=max(roi // 3, 8))


def cylinder_bias(absent: FloatArray, reference: FloatArray, spacing: float) -> float:
    """Mean HU difference to the normal-dose images inside the central 60 % of the cylinder."""
    size = absent.shape[-1]
    mask = disk_mask(size, 0.6 * RADIUS_MM / spacing)
    return float(absent[:, mask].mean() - reference[:, mask].mean())


def run_task_tier(
    images: TaskImages, methods: Mapping[str, Method]
) -> dict[str, dict[str, object]]:
    """All task and noise-texture numbers for normal dose, low dose and each method."""
    sp = images.spacing
    versions: dict[str, tuple[FloatArray, FloatArray]] = {
        "normal dose": (images.present_normal, images.absent_normal),
        "low dose": (images.present_low, images.absent_low),
    }
    for name, method in methods.items():
        pres = np.stack([method(x, sp) for x in images.present_low])
        abst = np.stack([method(x, sp) for x in images.absent_low])
        versions[name] = (pres, abst)
    low_dose = versions["low dose"]
    out: dict[str, dict[str, object]] = {}
    for name, (pres, abst) in versions.items():
        nps = noise_texture(abst, sp)
        out[name] = {
            "inserts": detectability(pres, abst, sp, None if name in BASE else low_dose),
            "noise_sd_hu": nps.noise_sd,
            "nps_peak_cyc_per_mm": nps.peak_frequency,
            "nps_mean_cyc_per_mm": nps.mean_frequency,
            "nps_curve": [nps.frequency.tolist(), nps.nps.tolist()],
            "bias_hu": cylinder_bias(abst, images.absent_normal, sp),
        }
    return out
