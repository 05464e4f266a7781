"""Three-tier evaluation of ct-denoise: pixel, noise texture and detectability."""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipelines.base import FloatArray, Volume
from pipelines.evaluation.metrics import (
    SOFT_TISSUE,
    WIDE,
    bias,
    body_mask,
    mean_by_key,
    psnr,
    rmse,
    ssim,
)

if TYPE_CHECKING:
    from pipelines.ct_denoise.simulate import ParallelBeamProjector

logger = logging.getLogger(__name__)

Method = Callable[[FloatArray, float], FloatArray]
#: Filter strengths tried for the NLM baseline (h = factor x noise SD).
NLM_SWEEP = (0.5, 0.7, 0.9, 1.1, 1.4)


@dataclass(frozen=True)
class EvalConfig:
    """Sizes of the evaluation sets; ``quick`` shrinks them for tests."""

    dose: float = 0.25
    size: int = 256
    sim_slices: int = 12
    tune_slices: int = 6
    realisations: int = 200
    real: bool = True
    seed: int = 1000

    @classmethod
    def quick(cls) -> EvalConfig:
        """A seconds-long run that exercises every tier."""
        return cls(size=96, sim_slices=2, tune_slices=1, realisations=6, real=True)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``radnode evaluate ct-denoise`` arguments."""
    ap = argparse.ArgumentParser(
        prog="radnode evaluate ct-denoise",
        description="Pixel, noise-texture and task-based evaluation against NLM and low dose.",
    )
    ap.add_argument("--out", type=Path, default=Path("var/evaluate/ct-denoise"))
    ap.add_argument("--quick", action="store_true", help="tiny sets (seconds), for tests")
    ap.add_argument("--weights", type=Path, default=None, help="weights file to evaluate")
    ap.add_argument("--weights-sha256", default=None, help="pinned SHA-256 of --weights")
    ap.add_argument("--dose", type=float, default=0.25, help="dose fraction of the low-dose scans")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=Path("var/cache/ct-denoise"))
    return ap.parse_args(list(argv))


def _model_method(
    weights: Path | None, sha: str | None, flags: list[bool]
) -> tuple[Method, str, str]:
    """The whole pipeline (gate included) as a method; ``flags`` collects gate failures."""
    from pipelines.ct_denoise.pipeline import build_pipeline

    params: dict[str, str | int] = {"method": "model", "device": "cpu", "batch_size": 4}
    if weights is not None:
        params["weights"] = str(weights)
        params["weights_sha256"] = str(sha)
    pipe = build_pipeline(params)
    info = pipe.model_info()

    def run(image: FloatArray, spacing: float) -> FloatArray:
        vol = Volume(image[None].astype(np.float32), "CT", "HU", (spacing, spacing))
        result = pipe.run(vol)
        flags.append(bool(result.flagged_slices))
        out: FloatArray = result.volume.voxels[0]
        return out

    return run, info.name, str(info.weights_sha256)


def _nlm_method(factor: float) -> Method:
    from pipelines.ct_denoise.classical import nlm_denoise
    from pipelines.qa import estimate_noise_sd

    def run(image: FloatArray, spacing: float) -> FloatArray:
        return nlm_denoise(image, estimate_noise_sd(image), factor)

    return run


def pixel_metrics(ref: FloatArray, img: FloatArray) -> dict[str, float]:
    """PSNR/SSIM/RMSE in both windows plus the mean HU bias, inside the body."""
    mask = body_mask(ref)
    out: dict[str, float] = {}
    for tag, win in (("soft", SOFT_TISSUE), ("wide", WIDE)):
        out[f"psnr_{tag}"] = psnr(ref, img, win, mask)
        out[f"ssim_{tag}"] = ssim(ref, img, win, mask)
        out[f"rmse_{tag}"] = rmse(ref, img, win, mask)
    soft = mask & (ref > -160) & (ref < 240)
    out["bias_hu"] = bias(ref, img, soft) if soft.any() else 0.0
    return out


def normal_dose_change(before: FloatArray, after: FloatArray) -> dict[str, float]:
    """What a method did to an input that needed nothing: change in soft tissue, in HU.

    ``noise_sd_hu`` is the input's noise as the pipeline estimates it;
    ``change_rms_hu`` and ``change_mean_hu`` are taken over the body's soft
    tissue (:data:`SOFT_TISSUE` in the input), ``change_over_noise`` is their
    ratio of RMS change to noise.
    """
    from pipelines.qa import estimate_noise_sd

    soft = body_mask(before) & (before > SOFT_TISSUE.low) & (before < SOFT_TISSUE.high)
    diff = (after - before)[soft].astype(np.float64)
    noise = estimate_noise_sd(before)
    rms = float(np.sqrt(np.mean(diff * diff))) if diff.size else 0.0
    return {
        "noise_sd_hu": noise,
        "change_rms_hu": rms,
        "change_mean_hu": float(np.mean(diff)) if diff.size else 0.0,
        "change_over_noise": rms / noise if noise > 0 else 0.0,
    }


#: Edge of the square regions the anatomy's noise texture is measured in, pixels.
NPS_ROI = 32


def _body_rois(reference: FloatArray, size: int = NPS_ROI) -> list[tuple[slice, slice]]:
    """Square regions on a grid that lie wholly inside the body of ``reference``."""
    inside = body_mask(reference)
    rows, cols = inside.shape
    return [
        (slice(r, r + size), slice(c, c + size))
        for r in range(0, rows - size + 1, size)
        for c in range(0, cols - size + 1, size)
        if inside[r : r + size, c : c + size].all()
    ]


def anatomy_noise(
    slices: Sequence[tuple[FloatArray, float, float | None]],
    methods: dict[str, Method],
    dose: float,
    seed: int,
) -> dict[str, dict[str, float]]:
    """Tier 2 on anatomy: noise level and texture of each version, mean over ``slices``.

    ``slices`` holds (normal-dose image, pixel spacing, incident flux). Each
    gets two independent low-dose realisations by the projection-domain
    noise insertion, at its own flux (a simulated slice's), or at the flux
    calibrated from its measured noise when that is ``None`` (a real slice:
    :func:`real_photons`, as for the pixel tier). Noise SD: the
    reference-free estimate (:func:`pipelines.qa.estimate_noise_sd`) of each
    version. Texture: the NPS of the difference of a version made from the
    two realisations, over square regions inside the body, divided by √2:
    the anatomy cancels and the noise the method left remains (the
    inserted noise only: a slice's own noise is in both). The normal-dose
    row has no texture figure (one scan of it).
    """
    from pipelines.ct_denoise.simulate import ParallelBeamProjector, insert_noise
    from pipelines.evaluation.noise import noise_power_spectrum
    from pipelines.qa import estimate_noise_sd

    rows: dict[str, list[dict[str, float]]] = {"normal dose": [], "low dose": []}
    rows.update({name: [] for name in methods})
    projectors: dict[int, ParallelBeamProjector] = {}
    for i, (nd, sp, known) in enumerate(slices):
        projector = projectors.setdefault(nd.shape[0], ParallelBeamProjector(nd.shape[0]))
        photons = real_photons(nd, sp, projector) if known is None else known
        pair = [
            insert_noise(projector, nd, sp, dose, photons, np.random.default_rng(seed + 2 * i + k))
            for k in (0, 1)
        ]
        rois = _body_rois(nd)
        rows["normal dose"].append({"noise_sd_hu": estimate_noise_sd(nd)})
        versions = {"low dose": pair}
        versions.update({name: [m(x, sp) for x in pair] for name, m in methods.items()})
        for name, (a, b) in versions.items():
            row = {"noise_sd_hu": estimate_noise_sd(a)}
            if rois:
                half = (a - b) / np.float32(np.sqrt(2.0))
                nps = noise_power_spectrum(np.stack([half[r] for r in rois]), sp, NPS_ROI // 3)
                row.update(
                    nps_peak_cyc_per_mm=nps.peak_frequency,
                    nps_mean_cyc_per_mm=nps.mean_frequency,
                    inserted_noise_sd_hu=nps.noise_sd,
                )
            row["texture_slices"] = float(bool(rois))
            rows[name].append(row)
    # texture_slices: the share of slices with a region inside the body (the
    # NPS figures are means over those).
    return {name: mean_by_key(r) for name, r in rows.items() if r}


def tune_nlm(cfg: EvalConfig, cache: Path | None) -> tuple[float, dict[str, float]]:
    """Pick the NLM strength with the best soft-tissue PSNR on simulated tuning slices."""
    from pipelines.ct_denoise.dataset import SimRecipe, generate

    data = generate(
        SimRecipe(cfg.tune_slices, 1, cfg.size, seed=cfg.seed + 1000, fraction=cfg.dose), cache
    )
    scores: dict[str, float] = {}
    for factor in NLM_SWEEP:
        run = _nlm_method(factor)
        vals = [
            psnr(n, run(lo, float(s)), SOFT_TISSUE, body_mask(n))
            for n, lo, s in zip(data.normal, data.low, data.spacing, strict=True)
        ]
        scores[f"{factor:g}"] = float(np.mean(vals))
    best = max(scores, key=lambda k: scores[k])
    return float(best), scores


def real_slices(size_limit: int | None) -> list[tuple[str, FloatArray, float]]:
    """The real CT slices of pydicom's and pydicom-data's test files, in HU.

    They are used for evaluation only. Files whose pixel data cannot be
    decoded here are skipped.
    """
    import pydicom
    from pydicom.data import get_testdata_file

    names = ["CT_small.dcm", "693_UNCR.dcm", "explicit_VR-UN.dcm", "bad_sequence.dcm"]
    out: list[tuple[str, FloatArray, float]] = []
    for name in names:
        path = get_testdata_file(name)
        if path is None:
            continue
        try:
            ds = pydicom.dcmread(path)
            raw = ds.pixel_array.astype(np.float32)
        except Exception as exc:  # noqa: BLE001 - an undecodable sample is skipped, said so
            logger.info("skipping %s: %s", name, exc)
            continue
        hu = raw * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
        if size_limit is not None and hu.shape[0] > size_limit:
            continue
        spacing = float(ds.PixelSpacing[0]) if "PixelSpacing" in ds else 1.0
        out.append((name, np.maximum(hu, -1024.0).astype(np.float32), spacing))
    return out


def real_photons(
    image: FloatArray,
    spacing: float,
    projector: ParallelBeamProjector,
    normal_sd_hu: float | None = None,
) -> float:
    """Incident flux at which ``image`` has ``normal_sd_hu`` of noise at the centre.

    By default the slice's own measured noise (at least 3 HU).
    """
    from pipelines.ct_denoise.simulate import calibrate_photons, line_integrals
    from pipelines.qa import estimate_noise_sd

    sigma = max(estimate_noise_sd(image), 3.0) if normal_sd_hu is None else normal_sd_hu
    return calibrate_photons(projector, line_integrals(projector, image, spacing), spacing, sigma)


def simulate_real_low_dose(
    image: FloatArray,
    spacing: float,
    dose: float,
    seed: int,
    normal_sd_hu: float | None = None,
    projector: ParallelBeamProjector | None = None,
) -> tuple[FloatArray, float]:
    """Low-dose version of a real slice, and the incident flux used.

    The flux is calibrated so that the full-dose scan has ``normal_sd_hu`` of
    noise at the centre; by default, the slice's own measured noise.
    """
    from pipelines.ct_denoise.simulate import ParallelBeamProjector, insert_noise

    rng = np.random.default_rng(seed)
    proj = projector or ParallelBeamProjector(image.shape[0])
    photons = real_photons(image, spacing, proj, normal_sd_hu)
    return insert_noise(proj, image, spacing, dose, photons, rng), photons


def evaluate(
    cfg: EvalConfig, out: Path, weights: Path | None, sha: str | None, cache: Path | None
) -> dict[str, object]:
    """Run all tiers, write ``report.md``, ``metrics.json`` and the plots into ``out``."""
    from pipelines.ct_denoise.dataset import SimRecipe, generate
    from pipelines.ct_denoise.report_writer import write_report
    from pipelines.ct_denoise.task_eval import run_task_tier, simulate_task_images

    started = time.time()
    out.mkdir(parents=True, exist_ok=True)
    flags: list[bool] = []
    model, model_name, model_sha = _model_method(weights, sha, flags)
    factor, sweep = tune_nlm(cfg, cache)
    nlm = _nlm_method(factor)
    methods: dict[str, Method] = {f"NLM (h={factor:g}σ)": nlm, "model": model}

    # Tier 1 on held-out simulated slices (seeds disjoint from training and tuning).
    data = generate(SimRecipe(cfg.sim_slices, 1, cfg.size, seed=cfg.seed, fraction=cfg.dose), cache)
    sim_rows: dict[str, list[dict[str, float]]] = {"low dose": []}
    sim_rows.update({k: [] for k in methods})
    examples: dict[str, dict[str, FloatArray]] = {}
    for i, (nd, ld, sp) in enumerate(zip(data.normal, data.low, data.spacing, strict=True)):
        sim_rows["low dose"].append(pixel_metrics(nd, ld))
        outs = {name: m(ld, float(sp)) for name, m in methods.items()}
        for name, img in outs.items():
            sim_rows[name].append(pixel_metrics(nd, img))
        if i == 0:
            examples["simulated"] = {"normal dose": nd, "low dose": ld, **outs}
    pixel_sim = {k: mean_by_key(v) for k, v in sim_rows.items()}
    noise_anatomy = {
        "simulated": anatomy_noise(
            [
                (nd, float(sp), float(photons))
                for nd, sp, photons in zip(data.normal, data.spacing, data.photons, strict=True)
            ],
            methods,
            cfg.dose,
            cfg.seed + 300,
        )
    }
    # The same held-out slices at normal dose: what the model does to a scan
    # that needs nothing (it should change little).
    normal_dose: dict[str, dict[str, float]] = {
        "simulated (mean)": mean_by_key(
            [
                normal_dose_change(nd, model(nd, float(sp)))
                for nd, sp in zip(data.normal, data.spacing, strict=True)
            ]
        )
    }

    # Tier 1 on real slices with simulated dose reduction (evaluation only).
    pixel_real: dict[str, dict[str, float]] = {}
    real_names: list[str] = []
    # Each real slice on its own: the mean over four hides which slices drive it.
    per_slice: dict[str, dict[str, float]] = {}
    if cfg.real:
        from pipelines.ct_denoise.pipeline import HU_MAX, HU_MIN
        from pipelines.qa import estimate_noise_sd

        real_rows: dict[str, list[dict[str, float]]] = {"low dose": []}
        real_rows.update({k: [] for k in methods})
        reals = real_slices(128 if cfg.size < 256 else None)
        for j, (name, nd, sp) in enumerate(reals):
            ld, _ = simulate_real_low_dose(nd, sp, cfg.dose, cfg.seed + 77 + j)
            real_names.append(name)
            real_rows["low dose"].append(pixel_metrics(nd, ld))
            outs = {mname: m(ld, sp) for mname, m in methods.items()}
            for mname, img in outs.items():
                real_rows[mname].append(pixel_metrics(nd, img))
            per_slice[name] = {
                "pixel_spacing_mm": sp,
                # As the pipeline measures it: on the input clipped to its HU range.
                "noise_sd_low_dose_hu": estimate_noise_sd(np.clip(ld, HU_MIN, HU_MAX)),
                "psnr_soft_low_dose": real_rows["low dose"][-1]["psnr_soft"],
                **{f"psnr_soft_{k}": real_rows[k][-1]["psnr_soft"] for k in methods},
            }
            # The real slice itself, as scanned: its dose is what it is.
            normal_dose[name] = normal_dose_change(nd, model(nd, sp))
            if "real" not in examples or nd.shape[0] > examples["real"]["normal dose"].shape[0]:
                examples["real"] = {"normal dose": nd, "low dose": ld, **outs}
        pixel_real = {k: mean_by_key(v) for k, v in real_rows.items() if v}
        if reals:
            noise_anatomy["real"] = anatomy_noise(
                [(nd, sp, None) for _, nd, sp in reals], methods, cfg.dose, cfg.seed + 400
            )

    # Tiers 2 and 3 on the low-contrast phantom.
    task_images = simulate_task_images(cfg.size, cfg.realisations, cfg.dose, cfg.seed + 500)
    task = run_task_tier(task_images, methods)

    metrics: dict[str, object] = {
        "dose_fraction": cfg.dose,
        "config": cfg.__dict__,
        "model": {"name": model_name, "weights_sha256": model_sha},
        "nlm": {"h_factor": factor, "sweep_psnr_soft": sweep},
        "pixel_simulated": pixel_sim,
        "pixel_real": pixel_real,
        "real_slices": real_names,
        "pixel_real_per_slice": per_slice,
        "normal_dose_input": normal_dose,
        "noise_anatomy": noise_anatomy,
        "noise_anatomy_roi_px": NPS_ROI,
        "task": task,
        "qa_gate": {"model_slices": len(flags), "flagged": int(sum(flags))},
        "seconds": round(time.time() - started, 1),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_report(out, metrics, examples, task_images.spacing)
    return metrics


def main(argv: Sequence[str]) -> int:
    """Entry of ``radnode evaluate ct-denoise``; returns an exit code."""
    import torch

    ns = parse_args(argv)
    torch.set_num_threads(ns.threads)
    cfg = EvalConfig.quick() if ns.quick else EvalConfig()
    cfg = EvalConfig(**{**cfg.__dict__, "dose": ns.dose})
    if (ns.weights is None) != (ns.weights_sha256 is None):
        print("--weights and --weights-sha256 go together")
        return 2
    cache = None if str(ns.cache) == "none" else ns.cache
    evaluate(cfg, ns.out, ns.weights, ns.weights_sha256, cache)
    print(f"report: {ns.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
