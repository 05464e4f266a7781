"""Low-dose CT simulation by projection-domain noise insertion (Yu 2012; Zeng 2015)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipelines.base import FloatArray

#: Linear attenuation of water at the ~70 keV effective energy of a 120 kVp
#: beam, per mm. HU = 1000 * (mu - mu_water) / mu_water.
MU_WATER_PER_MM = 0.0193
#: Electronic (detector) noise SD in photon-count units: it only matters for
#: the most attenuating rays, where it makes low-dose noise grow faster than
#: 1/sqrt(dose), as on a real scanner.
ELECTRONIC_NOISE_SD = 8.0
#: Clinical noise of normal-dose scans, SD in HU in uniform soft tissue
#: (abdomen and head protocols, standard kernel, 1-5 mm slices). The
#: simulation calibrates the incident flux of every slice to a draw from this
#: range, as tube-current modulation does on a scanner.
NORMAL_DOSE_NOISE_HU = (8.0, 18.0)
#: Dose fractions of the simulated low-dose scans.
DOSE_FRACTIONS = (0.10, 0.50)


def hu_to_mu(hu: FloatArray) -> FloatArray:
    """HU to linear attenuation per mm (air and below clamp to zero)."""
    return np.asarray(np.maximum(MU_WATER_PER_MM * (1.0 + hu / 1000.0), 0.0), dtype=np.float32)


class ParallelBeamProjector:
    """A 2-D parallel-beam projector and filtered back-projection in torch.

    Detector bins have the pixel spacing; the detector spans the image
    diagonal. Back-projection uses a Hann-apodised ramp, a "standard" kernel:
    its noise power spectrum has the mid-frequency peak of clinical CT noise.

    Parameters
    ----------
    size
        Image edge in pixels.
    n_views
        Projection angles over 180 degrees.
    """

    def __init__(self, size: int, n_views: int | None = None) -> None:
        import torch

        self.size = size
        self.n_views = n_views or math.ceil(size * 1.25)
        self.n_det = math.ceil(size * math.sqrt(2.0)) + 2
        angles = torch.arange(self.n_views, dtype=torch.float64) * (math.pi / self.n_views)
        self.cos = torch.cos(angles).float()
        self.sin = torch.sin(angles).float()
        half = (size - 1) / 2.0
        self.pix = torch.arange(size, dtype=torch.float32) - half
        self.det = torch.arange(self.n_det, dtype=torch.float32) - (self.n_det - 1) / 2.0
        pad = 1 << math.ceil(math.log2(2 * self.n_det))
        freq = torch.fft.rfftfreq(pad)
        # Ramp |f| with a Hann window: the apodisation of a standard kernel.
        self.filter = (2.0 * freq * 0.5 * (1.0 + torch.cos(2.0 * math.pi * freq))).float()
        self.pad = pad
        self._gain: float | None = None

    def forward(self, image: FloatArray, step: int = 1) -> FloatArray:
        """Line integrals of ``image`` (values per pixel length), shape (views, bins).

        ``step`` > 1 samples every ``step``-th view and ray point and repeats
        the views: a cheap, smooth estimate that is enough where the line
        integrals only set the noise variance.
        """
        import torch
        import torch.nn.functional as nnf

        img = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
        t = self.det[None, :, None]  # detector position
        s = self.det[None, None, ::step]  # position along the ray
        views = list(range(0, self.n_views, step))
        out = torch.empty((len(views), self.n_det))
        norm = self.size / 2.0
        chunk = 16
        for k0 in range(0, len(views), chunk):
            sel = views[k0 : k0 + chunk]
            c = self.cos[sel][:, None, None]
            sn = self.sin[sel][:, None, None]
            x = t * c - s * sn
            y = t * sn + s * c
            grid = torch.stack((x / norm, y / norm), dim=-1)
            vals = nnf.grid_sample(
                img.expand(grid.shape[0], -1, -1, -1),
                grid,
                mode="bilinear",
                padding_mode="zeros",
                align_corners=False,
            )
            out[k0 : k0 + len(sel)] = vals[:, 0].sum(dim=-1) * step
        full = out.repeat_interleave(step, dim=0)[: self.n_views]
        return full.numpy()

    def center_noise_gain(self) -> float:
        """Variance at the image centre of the FBP of unit-variance white sinogram noise.

        Computed once by reconstructing white noise; it converts a variance
        sinogram into the noise variance at the centre without a reconstruction.
        """
        if self._gain is None:
            rng = np.random.default_rng(0)
            noise = rng.standard_normal((self.n_views, self.n_det)).astype(np.float32)
            img = self.fbp(noise)
            c = self.size // 2
            r = max(self.size // 8, 4)
            self._gain = float(img[c - r : c + r, c - r : c + r].var())
        return self._gain

    def fbp(self, sinogram: FloatArray) -> FloatArray:
        """Filtered back-projection of ``sinogram`` (views, bins) to an image."""
        import torch

        sino = torch.from_numpy(np.ascontiguousarray(sinogram, dtype=np.float32))
        spec = torch.fft.rfft(sino, n=self.pad, dim=-1) * self.filter
        filtered = torch.fft.irfft(spec, n=self.pad, dim=-1)[:, : self.n_det]
        import torch.nn.functional as nnf

        yy, xx = torch.meshgrid(self.pix, self.pix, indexing="ij")
        image = torch.zeros((self.size, self.size))
        # Back-projection as one bilinear lookup per (view, pixel): the filtered
        # sinogram is sampled like an image whose rows are views, at the
        # detector position t = x cos(theta) + y sin(theta) of every pixel.
        half_det = self.n_det / 2.0
        chunk = 64
        for v0 in range(0, self.n_views, chunk):
            v1 = min(v0 + chunk, self.n_views)
            c = self.cos[v0:v1, None, None]
            sn = self.sin[v0:v1, None, None]
            t = (xx[None] * c + yy[None] * sn) / half_det
            rows = torch.arange(v0, v1, dtype=torch.float32)
            r = ((2.0 * rows + 1.0) / self.n_views - 1.0)[:, None, None].expand_as(t)
            grid = torch.stack((t, r), dim=-1).reshape(1, -1, self.size, 2)
            vals = nnf.grid_sample(
                filtered[None, None],
                grid,
                mode="bilinear",
                padding_mode="zeros",
                align_corners=False,
            )
            image += vals.reshape(v1 - v0, self.size, self.size).sum(dim=0)
        return (image * (math.pi / (2.0 * self.n_views))).numpy()


@dataclass(frozen=True)
class DosePair:
    """A normal-dose slice, its low-dose counterpart and the simulation facts."""

    normal: FloatArray
    low: FloatArray
    dose_fraction: float
    incident_photons: float
    normal_noise_hu: float


def line_integrals(
    projector: ParallelBeamProjector, hu: FloatArray, spacing_mm: float
) -> FloatArray:
    """Dimensionless line integrals p = integral of mu along each ray."""
    return projector.forward(hu_to_mu(hu), step=2) * spacing_mm


def log_variance(p: FloatArray, photons: float, fraction: float = 1.0) -> FloatArray:
    """Variance of the measured line integral at ``fraction`` of ``photons``.

    With mean counts lambda = I0 * f * exp(-p), Poisson plus Gaussian
    electronic noise, the log-transformed measurement has variance
    (lambda + sigma_e^2) / lambda^2 (first-order expansion, accurate above a
    few tens of counts; Zeng et al. 2015).
    """
    lam = np.maximum(photons * fraction * np.exp(-p.astype(np.float64)), 1.0)
    var = (lam + ELECTRONIC_NOISE_SD**2) / (lam * lam)
    return np.asarray(var, dtype=np.float32)


def noise_image(
    projector: ParallelBeamProjector,
    variance: FloatArray,
    spacing_mm: float,
    rng: np.random.Generator,
) -> FloatArray:
    """FBP of Gaussian sinogram noise of ``variance``, in HU."""
    noise = rng.standard_normal(variance.shape).astype(np.float32) * np.sqrt(variance)
    mu = projector.fbp(noise) / spacing_mm
    return (mu * (1000.0 / MU_WATER_PER_MM)).astype(np.float32)


def extra_log_variance(
    p: FloatArray, photons: float, fraction: float, normal: FloatArray | None = None
) -> FloatArray:
    """Variance to add to normal-dose line integrals for dose ``fraction``: v(f) - v(1), >= 0.

    ``normal`` is v(1) (:func:`log_variance` at full dose) when already known.
    """
    v1 = log_variance(p, photons) if normal is None else normal
    extra: FloatArray = np.maximum(log_variance(p, photons, fraction) - v1, 0.0)
    return extra


def insert_noise(
    projector: ParallelBeamProjector,
    normal: FloatArray,
    spacing_mm: float,
    fraction: float,
    photons: float,
    rng: np.random.Generator,
    p: FloatArray | None = None,
) -> FloatArray:
    """Low-dose counterpart of a normal-dose image (real or simulated).

    Yu et al. 2012: the normal-dose measurement already holds noise of
    variance v(1); a scan at dose fraction f has v(f). Adding zero-mean noise
    of variance v(f) - v(1) to the normal-dose line integrals and
    reconstructing that noise alone (FBP is linear) gives the low-dose image,
    with the texture of CT noise. ``p`` is the image's line integrals when
    already computed.
    """
    if p is None:
        p = line_integrals(projector, normal, spacing_mm)
    extra = extra_log_variance(p, photons, fraction)
    return (normal + noise_image(projector, extra, spacing_mm, rng)).astype(np.float32)


def calibrate_photons(
    projector: ParallelBeamProjector, p: FloatArray, spacing_mm: float, target_sd_hu: float
) -> float:
    """Incident photons per detector bin and view giving ``target_sd_hu`` at the centre.

    Quantum noise variance at the centre is the projector's gain times the
    mean over views of the measurement variance on the central rays, and it
    scales as 1/I0; electronic noise is left out of the calibration.
    """
    centre = projector.n_det // 2
    band = max(projector.n_det // 40, 1)
    transmission = np.exp(-p[:, centre - band : centre + band + 1].astype(np.float64))
    mean_inv = float(np.mean(1.0 / np.maximum(transmission, 1e-12)))
    hu_per_mu = 1000.0 / (MU_WATER_PER_MM * spacing_mm)
    var_per_photon = projector.center_noise_gain() * mean_inv * hu_per_mu**2
    return var_per_photon / (target_sd_hu**2)


def simulate_pairs(
    clean: FloatArray,
    spacing_mm: float,
    rng: np.random.Generator,
    fractions: list[float],
    normal_noise_hu: float | None = None,
    projector: ParallelBeamProjector | None = None,
) -> list[DosePair]:
    """Normal-dose and low-dose images of a noise-free phantom.

    The normal-dose image is the phantom plus reconstructed quantum and
    electronic noise at a flux calibrated to clinical noise; each low-dose
    image adds the extra noise of its dose fraction to that same normal-dose
    scan by projection-domain insertion (one patient, one normal-dose scan,
    several simulated dose reductions).
    """
    proj = projector or ParallelBeamProjector(clean.shape[0])
    target = (
        float(rng.uniform(*NORMAL_DOSE_NOISE_HU)) if normal_noise_hu is None else normal_noise_hu
    )
    p = line_integrals(proj, clean, spacing_mm)
    photons = calibrate_photons(proj, p, spacing_mm, target)
    var_normal = log_variance(p, photons)
    normal = (clean + noise_image(proj, var_normal, spacing_mm, rng)).astype(np.float32)
    pairs = []
    for f in fractions:
        extra = extra_log_variance(p, photons, f, var_normal)
        low = normal + noise_image(proj, extra, spacing_mm, rng)
        pairs.append(
            DosePair(
                normal=normal,
                low=low.astype(np.float32),
                dose_fraction=f,
                incident_photons=photons,
                normal_noise_hu=target,
            )
        )
    return pairs


def simulate_pair(
    clean: FloatArray,
    spacing_mm: float,
    rng: np.random.Generator,
    fraction: float | None = None,
    normal_noise_hu: float | None = None,
    projector: ParallelBeamProjector | None = None,
) -> DosePair:
    """One normal/low-dose pair; the dose fraction is drawn when not given."""
    f = float(rng.uniform(*DOSE_FRACTIONS)) if fraction is None else fraction
    return simulate_pairs(clean, spacing_mm, rng, [f], normal_noise_hu, projector)[0]
