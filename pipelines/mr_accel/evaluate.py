"""Evaluation of mr-accel against the accelerated input and classical baselines."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.base import FloatArray, Pipeline, Volume
from pipelines.evaluation.metrics import mean_by_key
from pipelines.mr_accel.anatomy import training_image
from pipelines.mr_accel.baselines import cs_l1_wavelet, nlm_denoise
from pipelines.mr_accel.config import BUNDLED_WEIGHTS, BUNDLED_WEIGHTS_SHA256
from pipelines.mr_accel.metrics import (
    edge_sites,
    fidelity,
    homogeneous_rois,
    mean_rise_distance,
    roi_snr,
)
from pipelines.mr_accel.qa import robust_scale
from pipelines.mr_accel.simulate import (
    EVAL_ACCELERATION,
    EVAL_REFERENCE_NOISE,
    Acceleration,
    accelerate,
    fully_averaged,
)

logger = logging.getLogger(__name__)

#: Distinct from the training seed: the simulated test images are held out.
EVAL_SEED = 7_000_001
METHODS = ("input", "nlm", "cs", "mr-accel", "mr-accel-no-dc")
LABELS = {
    "input": "accelerated input",
    "nlm": "non-local means",
    "cs": "CS L1-wavelet (sigpy)",
    "mr-accel": "mr-accel (with data consistency)",
    "mr-accel-no-dc": "mr-accel (acceleration unknown)",
}
#: Real MR test images shipped with pydicom / pydicom-data (evaluation only).
REAL_FILES = ("MR_small.dcm", "emri_small.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm", "MR2_UNCR.dcm")


@dataclass(frozen=True)
class Case:
    """One evaluation image: its fully sampled reference and accelerated input."""

    name: str
    dataset: str
    reference: FloatArray
    accelerated: FloatArray
    acceleration: Acceleration


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Command-line options of ``radnode evaluate mr-accel``."""
    p = argparse.ArgumentParser(prog="radnode evaluate mr-accel", description=__doc__)
    # Not the committed report's folder: a run never overwrites the evidence
    # the model card quotes (refresh it with --out pipelines/mr_accel/evaluation).
    p.add_argument("--out", type=Path, default=Path("var/evaluate/mr-accel"), help="report folder")
    p.add_argument("--n-sim", type=int, default=24, help="held-out simulated images")
    p.add_argument("--quick", action="store_true", help="two small simulated, one real image")
    p.add_argument("--weights", type=Path, default=BUNDLED_WEIGHTS)
    p.add_argument("--weights-sha256", default=BUNDLED_WEIGHTS_SHA256)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    return p.parse_args(list(argv))


def simulated_cases(n: int, shape: tuple[int, int] | None) -> list[Case]:
    """Held-out simulated references (with their own noise) at the headline acceleration."""
    rng = np.random.default_rng(EVAL_SEED)
    cases = []
    for i in range(n):
        reference = fully_averaged(training_image(rng, shape), EVAL_REFERENCE_NOISE, rng)
        acc = replace(EVAL_ACCELERATION, pe_axis=-2 if i % 2 == 0 else -1)
        cases.append(
            Case(f"sim-{i:02d}", "simulated", reference, accelerate(reference, acc, rng), acc)
        )
    return cases


def real_cases(files: Sequence[str]) -> list[Case]:
    """Real MR slices from pydicom's test data, accelerated by simulation.

    The stored image is the reference (it is what a full acquisition gave);
    its phase-encode direction, where recorded, sets the simulated one.
    """
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.pixels.processing import apply_modality_lut

    from pipelines.mr_accel.kspace import phase_encode_axis

    rng = np.random.default_rng(EVAL_SEED + 1)
    cases = []
    for name in files:
        path = get_testdata_file(name)
        if path is None:
            logger.warning("real MR test file %s not available; skipped", name)
            continue
        ds = pydicom.dcmread(path)
        arr = np.asarray(apply_modality_lut(ds.pixel_array, ds), dtype=np.float32)
        frames = arr if arr.ndim == 3 else arr[None]
        if len(frames) > 1:
            frames = frames[:: max(1, len(frames) // 3)][:3]
        axis = phase_encode_axis(ds.get("InPlanePhaseEncodingDirection")) or -2
        for j, frame in enumerate(frames):
            ref = frame
            if max(ref.shape) > 512:
                # Centre 512x512 of the 1024 matrix keeps the baselines' run time sane.
                r0, c0 = (ref.shape[0] - 512) // 2, (ref.shape[1] - 512) // 2
                ref = ref[r0 : r0 + 512, c0 : c0 + 512]
            acc = replace(EVAL_ACCELERATION, pe_axis=axis)
            label = f"{Path(name).stem}" + (f"-f{j}" if len(frames) > 1 else "")
            cases.append(Case(label, "real", ref, accelerate(ref, acc, rng), acc))
    return cases


def run_methods(
    case: Case, pipeline: Callable[[float | None], Pipeline]
) -> tuple[dict[str, FloatArray], dict[str, bool]]:
    """Every method's output for ``case``, in the input's units, and the QA verdicts.

    ``pipeline(coverage)`` is mr-accel with data consistency at that phase
    coverage, or without it for ``None`` (built once per coverage by the caller).
    A slice the gate fails is the input itself (as the node would send it);
    the second mapping says, per mr-accel method, whether the gate passed it.
    """
    x = case.accelerated
    scale = robust_scale(x) or 1.0
    outputs: dict[str, FloatArray] = {"input": x}
    outputs["nlm"] = nlm_denoise(x / scale) * scale
    outputs["cs"] = (
        cs_l1_wavelet(x / scale, case.acceleration.coverage, case.acceleration.pe_axis) * scale
    )
    vol = _volume(x)
    passed = {}
    for method, coverage in (("mr-accel", case.acceleration.coverage), ("mr-accel-no-dc", None)):
        result = pipeline(coverage).run(vol)
        outputs[method] = result.volume.voxels[0]
        passed[method] = not result.flagged_slices
        if result.flagged_slices:
            logger.warning("%s: QA gate flagged the %s output", case.name, method)
    return outputs, passed


def _volume(image: FloatArray) -> Volume:
    """One MR slice as the pipeline takes it."""
    return Volume(voxels=image[None].astype(np.float32), modality="MR", unit="arbitrary")


def unchanged_input(case: Case, restore: Pipeline) -> dict[str, float]:
    """mr-accel on the fully sampled reference: how far its output moves from it.

    Whether the QA gate passed it; if it did, PSNR, SSIM and NRMSE of the
    output against the input itself and the RMS change as a percentage of
    the input's 99.5th percentile (a flagged slice goes out unchanged, so
    only its flag is reported).
    """
    x = case.reference
    result = restore.run(_volume(x))
    if result.flagged_slices:
        return {"qa_passed": 0.0}
    out = result.volume.voxels[0]
    scale = float(np.percentile(x, 99.5)) or 1.0
    change = (out.astype(np.float64) - x) / scale
    return {
        "qa_passed": 1.0,
        **fidelity(x, out),
        "change_rms_pct": 100.0 * float(np.sqrt(np.mean(change * change))),
    }


def _mean_unchanged(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean of :func:`unchanged_input` rows: the share passed, the rest over passed rows."""
    mean = mean_by_key(r for r in rows if r["qa_passed"])
    mean["qa_passed"] = sum(bool(r["qa_passed"]) for r in rows) / len(rows)
    return mean


def score(case: Case, outputs: dict[str, FloatArray]) -> dict[str, dict[str, float]]:
    """Fidelity, ROI SNR and edge rise distance of each method on ``case``."""
    rois = homogeneous_rois(case.reference)
    sites = edge_sites(case.reference, case.acceleration.pe_axis)
    scores = {}
    for method, img in outputs.items():
        s = fidelity(case.reference, img)
        s["roi_snr"] = roi_snr(img, rois)
        s["rise_px"] = mean_rise_distance(img, sites, case.acceleration.pe_axis)
        scores[method] = s
    return scores


def summarise(per_case: dict[str, dict[str, dict[str, float]]]) -> dict[str, Any]:
    """Means per method and the acceptance criteria, for one dataset."""
    names = list(per_case)
    summary: dict[str, Any] = {"cases": len(names), "methods": {}}
    for method in METHODS:
        rows = [per_case[n][method] for n in names]
        summary["methods"][method] = {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]}
    m = summary["methods"]
    snr_gain = [
        per_case[n]["mr-accel"]["roi_snr"] / per_case[n]["input"]["roi_snr"] - 1.0 for n in names
    ]
    sharper = [per_case[n]["mr-accel"]["rise_px"] < per_case[n]["input"]["rise_px"] for n in names]
    model = m["mr-accel"]
    summary["criteria"] = {
        "psnr_gain_db": model["psnr"] - m["input"]["psnr"],
        "ssim": model["ssim"],
        "beats_nlm": bool(model["psnr"] > m["nlm"]["psnr"] and model["ssim"] > m["nlm"]["ssim"]),
        "beats_cs": bool(model["psnr"] > m["cs"]["psnr"] and model["ssim"] > m["cs"]["ssim"]),
        "roi_snr_gain_pct": 100.0 * float(np.nanmean(snr_gain)),
        "sharper_than_input_pct": 100.0 * float(np.mean(sharper)),
    }
    c = summary["criteria"]
    summary["targets_met"] = {
        "psnr_gain_ge_3db": bool(c["psnr_gain_db"] >= 3.0),
        "ssim_ge_0.90": bool(c["ssim"] >= 0.90),
        "above_both_baselines": bool(c["beats_nlm"] and c["beats_cs"]),
        "roi_snr_up_ge_5pct": bool(c["roi_snr_gain_pct"] >= 5.0),
        "sharper_in_ge_90pct": bool(c["sharper_than_input_pct"] >= 90.0),
    }
    return summary


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Run every case and write report.md, metrics.json and figures to ``args.out``."""
    import torch

    from pipelines.mr_accel.report import write_report

    torch.set_num_threads(args.threads)
    params: dict[str, Any] = {
        "weights": str(args.weights),
        "weights_sha256": args.weights_sha256,
        "device": "cpu",
    }
    started = time.perf_counter()
    if args.quick:
        cases = simulated_cases(2, (128, 160)) + real_cases(REAL_FILES[:1])
    else:
        cases = simulated_cases(args.n_sim, None) + real_cases(REAL_FILES)
    from pipelines.mr_accel import create

    @functools.cache
    def pipeline(coverage: float | None) -> Pipeline:
        return create(params if coverage is None else {**params, "phase_coverage": coverage})

    per_case: dict[str, dict[str, dict[str, float]]] = {}
    # The fully sampled reference itself through mr-accel (acceleration
    # unknown, as for any input): what it does to an image that needs nothing.
    fully_sampled: dict[str, dict[str, float]] = {}
    examples: dict[str, tuple[Case, dict[str, FloatArray]]] = {}
    for case in cases:
        fully_sampled[case.name] = unchanged_input(case, pipeline(None))
        outputs, passed = run_methods(case, pipeline)
        per_case[case.name] = score(case, outputs)
        for method, ok in passed.items():
            per_case[case.name][method]["qa_passed"] = float(ok)
        if case.dataset not in examples or case.name.startswith("MR-SIEMENS"):
            examples[case.dataset] = (case, outputs)
        logger.info(
            "%s: input %.2f dB, mr-accel %.2f dB",
            case.name,
            per_case[case.name]["input"]["psnr"],
            per_case[case.name]["mr-accel"]["psnr"],
        )
    datasets = sorted({c.dataset for c in cases})
    metrics: dict[str, Any] = {
        "scenario": {
            "phase_coverage": EVAL_ACCELERATION.coverage,
            "noise_rel": EVAL_ACCELERATION.noise,
            "partial_fourier": EVAL_ACCELERATION.partial_fourier,
            "reference_noise_rel": EVAL_REFERENCE_NOISE,
        },
        "quick": bool(args.quick),
        "weights_sha256": args.weights_sha256,
        "seconds": 0.0,
        "datasets": {
            d: summarise({c.name: per_case[c.name] for c in cases if c.dataset == d})
            for d in datasets
        },
        "per_case": per_case,
        "fully_sampled_input": {
            d: {
                "cases": [c.name for c in cases if c.dataset == d],
                "mean": _mean_unchanged([fully_sampled[c.name] for c in cases if c.dataset == d]),
            }
            for d in datasets
        },
        "fully_sampled_per_case": fully_sampled,
    }
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_report(args.out, metrics, examples, LABELS)
    return metrics


def main(argv: Sequence[str]) -> int:
    """Entry point of ``radnode evaluate mr-accel``; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    metrics = evaluate(args)
    for name, summary in metrics["datasets"].items():
        print(name, json.dumps(summary["criteria"]), json.dumps(summary["targets_met"]))
    print(f"report written to {args.out / 'report.md'}")
    return 0
