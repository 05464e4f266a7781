"""Smoke tests of ``radnode train mr-accel`` and ``radnode evaluate mr-accel``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.base import WeightsError, sha256_file
from pipelines.mr_accel import entry


@pytest.mark.slow
def test_train_smoke_writes_pinned_weights(tmp_path: Path) -> None:
    train = entry().train
    assert train is not None
    out = tmp_path / "w.pt"
    assert train(["--smoke", "--no-progress", "--out", str(out)]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["sha256"] == sha256_file(out)
    assert meta["smoke"] is True
    pipe = entry().factory({"weights": str(out), "weights_sha256": meta["sha256"]})
    assert pipe.model_info().weights_sha256 == meta["sha256"]


@pytest.mark.slow
def test_evaluate_quick_writes_report_and_metrics(tmp_path: Path) -> None:
    evaluate = entry().evaluate
    assert evaluate is not None
    assert evaluate(["--quick", "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["datasets"]) == {"simulated", "real"}
    for summary in metrics["datasets"].values():
        assert {"input", "nlm", "cs", "mr-accel"} <= set(summary["methods"])
        assert "psnr_gain_db" in summary["criteria"]
    report = (tmp_path / "report.md").read_text()
    assert "PSNR" in report and "crops_simulated.png" in report
    assert list(tmp_path.glob("*.png"))
    # Every reference also went through mr-accel unaccelerated, and is reported.
    fully = metrics["fully_sampled_input"]
    assert set(fully) == {"simulated", "real"}
    assert set(metrics["fully_sampled_per_case"]) == set(metrics["per_case"])
    for row in metrics["fully_sampled_per_case"].values():
        if row["qa_passed"]:
            assert {"psnr", "ssim", "nrmse", "change_rms_pct"} <= set(row)
            assert row["change_rms_pct"] >= 0
        else:  # flagged: sent unchanged, nothing else to report
            assert row == {"qa_passed": 0.0}
    assert "## Fully sampled input" in report


@pytest.mark.slow
def test_train_fine_tunes_from_pinned_weights_only(tmp_path: Path) -> None:
    import torch

    from pipelines.mr_accel.config import BUNDLED_WEIGHTS
    from pipelines.mr_accel.network import build_network, load_network
    from pipelines.mr_accel.train import parse_args

    train = entry().train
    assert train is not None
    first, second = tmp_path / "a.pt", tmp_path / "b.pt"
    assert train(["--smoke", "--no-progress", "--out", str(first)]) == 0
    sha = sha256_file(first)
    # Weights other than the bundled ones are loaded only with their hash.
    with pytest.raises(SystemExit):
        parse_args(["--init", str(first)])
    with pytest.raises(WeightsError):
        train(["--smoke", "--no-progress", "--init", str(first), "--init-sha256", "0" * 64])
    with pytest.raises(SystemExit):
        parse_args(["--init-sha256", sha])
    # Never over the weights it starts from, nor over the bundled ones.
    for out in (first, BUNDLED_WEIGHTS):
        with pytest.raises(SystemExit):
            parse_args(["--init", str(first), "--init-sha256", sha, "--out", str(out)])
    args = ["--smoke", "--no-progress", "--init", str(first), "--init-sha256", sha]
    assert train([*args, "--out", str(second)]) == 0
    meta = json.loads(second.with_suffix(".json").read_text())
    assert meta["init"] == "a.pt" and meta["init_sha256"] == sha
    # Three small steps from the first weights stay near them, far from a fresh start.
    start, tuned = load_network(first, sha), load_network(second, meta["sha256"])
    fresh = build_network()

    def distance(a: torch.nn.Module, b: torch.nn.Module) -> float:
        pairs = zip(a.parameters(), b.parameters(), strict=True)
        return sum(float((x - y).abs().sum()) for x, y in pairs)

    assert distance(start, tuned) < 0.1 * distance(fresh, tuned)
