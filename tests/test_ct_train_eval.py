"""Tests of ``radnode train/evaluate ct-denoise`` in smoke and quick modes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipelines.base import Volume, sha256_file
from pipelines.ct_denoise import entry

pytestmark = pytest.mark.slow


def test_train_smoke_writes_loadable_pinned_weights(tmp_path: Path) -> None:
    train = entry().train
    assert train is not None
    assert train(["--smoke", "--out", str(tmp_path), "--cache", "none", "--seed", "3"]) == 0
    weights = tmp_path / "ct_denoise_rescnn_v1.pt"
    record = json.loads((tmp_path / "train.json").read_text())
    assert record["sha256"] == sha256_file(weights)
    assert record["config"]["seed"] == 3
    pipe = entry().factory({"weights": str(weights), "weights_sha256": record["sha256"]})
    vol = Volume(np.zeros((1, 32, 32), np.float32), "CT", "HU")
    assert pipe.run(vol).volume.voxels.shape == (1, 32, 32)
    # Same seed, same weights.
    again = tmp_path / "again"
    assert train(["--smoke", "--out", str(again), "--cache", "none", "--seed", "3"]) == 0
    assert sha256_file(again / "ct_denoise_rescnn_v1.pt") == record["sha256"]


def test_train_smoke_keeps_init_and_learning_rate(tmp_path: Path) -> None:
    from pipelines.ct_denoise.inference import shipped_weights

    train = entry().train
    assert train is not None
    shipped, shipped_sha = shipped_weights()
    args = ["--smoke", "--out", str(tmp_path), "--cache", "none", "--lr", "0.0002"]
    assert train([*args, "--init", str(shipped)]) == 0
    record = json.loads((tmp_path / "train.json").read_text())
    assert record["init_sha256"] == shipped_sha
    assert record["config"]["lr"] == 0.0002


def test_evaluate_quick_writes_report_and_json(tmp_path: Path) -> None:
    evaluate = entry().evaluate
    assert evaluate is not None
    assert evaluate(["--quick", "--out", str(tmp_path), "--cache", "none"]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    report = (tmp_path / "report.md").read_text()
    assert "[-160, 240]" in report and "[-1000, 1000]" in report
    for tier in ("pixel_simulated", "task"):
        assert metrics[tier]
    assert set(metrics["task"]["model"]["inserts"]) == {
        "3mm/14HU",
        "5mm/7HU",
        "7mm/5HU",
        "10mm/3HU",
    }
    assert {"psnr_soft", "ssim_soft", "rmse_wide", "bias_hu"} <= set(
        metrics["pixel_simulated"]["model"]
    )
    # Quick mode keeps the real slices of at most 128 pixels: each has its own row.
    per_slice = metrics["pixel_real_per_slice"]
    assert list(per_slice) == metrics["real_slices"] and per_slice
    for row in per_slice.values():
        assert row["noise_sd_low_dose_hu"] > 0
        assert {"psnr_soft_low_dose", "psnr_soft_model"} <= set(row)
    assert "Each real slice" in report
    # Normal-dose inputs: the simulated mean and each real slice as scanned.
    normal = metrics["normal_dose_input"]
    assert list(normal) == ["simulated (mean)", *metrics["real_slices"]]
    for name, row in normal.items():
        assert row["noise_sd_hu"] > 0 and row["change_rms_hu"] >= 0
        if name in metrics["real_slices"]:  # the simulated row holds means of ratios
            ratio = row["change_rms_hu"] / row["noise_sd_hu"]
            assert row["change_over_noise"] == pytest.approx(ratio)
    assert "### Normal-dose input" in report
    # Tier 2 on anatomy too: every version's noise, and texture where measured.
    anatomy = metrics["noise_anatomy"]
    assert set(anatomy) == {"simulated", "real"}
    for versions in anatomy.values():
        assert list(versions) == list(metrics["task"])  # the same versions as the phantom
        for name, row in versions.items():
            assert row["noise_sd_hu"] > 0
            if name != "normal dose":
                assert row["nps_peak_cyc_per_mm"] > 0 and row["nps_mean_cyc_per_mm"] > 0
        # A denoiser leaves less of the inserted noise than it was given.
        assert (
            versions["model"]["inserted_noise_sd_hu"] < versions["low dose"]["inserted_noise_sd_hu"]
        )
    assert "### On simulated anatomy" in report and "### On real anatomy" in report
    assert any(p.suffix == ".png" for p in tmp_path.iterdir())
