"""Tests of the inference backends: OpenVINO agrees with torch; torch takes over when it fails."""

from __future__ import annotations

import builtins
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipelines import backend
from pipelines.backend import (
    MAX_COMPILED_SHAPES,
    OpenVINONetwork,
    TorchNetwork,
    load_backend,
    resolve_backend,
)
from pipelines.base import PipelineError, Volume
from pipelines.ct_denoise import entry as ct_entry
from pipelines.ct_denoise.inference import (
    TOLERANCE_HU,
    ModelDenoiser,
    denoise_array,
    probe_inputs,
    shipped_weights,
)
from pipelines.ct_denoise.network import RESIDUAL_SCALE, load_weights
from pipelines.ct_denoise.phantoms import body_slice
from pipelines.mr_accel import create as mr_create
from pipelines.mr_accel.anatomy import procedural_anatomy
from pipelines.mr_accel.config import BUNDLED_WEIGHTS, BUNDLED_WEIGHTS_SHA256
from pipelines.mr_accel.network import TOLERANCE, load_backend_network, load_network
from pipelines.mr_accel.pipeline import MRAccelPipeline
from pipelines.mr_accel.simulate import Acceleration, accelerate


def _ct_slices(n: int, size: int, noise_hu: float, seed: int = 0) -> np.ndarray:
    """Simulated body sections in HU with noise, over the whole HU range the network sees."""
    rng = np.random.default_rng(seed)
    clean = np.stack([body_slice(rng, size, 350.0 / size) for _ in range(n)])
    noisy = clean + rng.normal(0.0, noise_hu, clean.shape)
    return np.clip(noisy, -1024.0, 3071.0).astype(np.float32)


def _mr_slices(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Two accelerated procedural slices, normalised like the pipeline's input."""
    rng = np.random.default_rng(seed)
    slices = []
    for _ in range(2):
        clean = procedural_anatomy(rng, shape)
        fast = accelerate(clean, Acceleration(pe_axis=-2, coverage=0.5, noise=0.03), rng)
        slices.append(fast / np.percentile(fast, 99.5))
    return np.stack(slices).astype(np.float32)[:, None]


@pytest.fixture(scope="module")
def ct_torch() -> TorchNetwork:
    return TorchNetwork(load_weights(shipped_weights()[0]), "cpu", channels_last=True)


@pytest.fixture(scope="module")
def mr_torch() -> TorchNetwork:
    return TorchNetwork(load_network(BUNDLED_WEIGHTS, BUNDLED_WEIGHTS_SHA256), "cpu")


def test_cpu_default_is_openvino() -> None:
    denoiser = ModelDenoiser(*shipped_weights(), device="cpu")
    assert isinstance(denoiser.network, OpenVINONetwork)
    assert "openvino" in denoiser.network.name
    pipe = mr_create({"device": "cpu"})
    assert isinstance(pipe, MRAccelPipeline)
    assert isinstance(pipe.network(), OpenVINONetwork)


@pytest.mark.parametrize(("size", "noise_hu"), [(512, 25.0), (250, 60.0)])
def test_ct_openvino_agrees_with_torch_in_hu(
    ct_torch: TorchNetwork, size: int, noise_hu: float
) -> None:
    # 512 x 512 at the pipeline's batch shape; 250 x 250 needs reflection padding.
    hu = _ct_slices(2, size, noise_hu)
    sigma = np.full(2, noise_hu, dtype=np.float32)
    ov_net = ModelDenoiser(*shipped_weights(), device="cpu").network
    diff = np.abs(denoise_array(ov_net, hu, sigma) - denoise_array(ct_torch, hu, sigma))
    assert float(diff.max()) <= TOLERANCE_HU
    assert float(diff.mean()) <= TOLERANCE_HU / 10


@pytest.mark.parametrize("shape", [(256, 256), (101, 77)])
def test_mr_openvino_agrees_with_torch_in_normalised_units(
    mr_torch: TorchNetwork, shape: tuple[int, int]
) -> None:
    # 101 x 77 is padded to multiples of 8 inside the converted network.
    x = _mr_slices(shape)
    ov_net = load_backend_network(BUNDLED_WEIGHTS, BUNDLED_WEIGHTS_SHA256, "cpu", "auto")
    assert isinstance(ov_net, OpenVINONetwork)
    out = ov_net(x)
    assert out.shape == x.shape
    assert float(np.abs(out - mr_torch(x)).max()) <= TOLERANCE


def test_torch_backend_gives_the_networks_own_output(ct_torch: TorchNetwork) -> None:
    import torch

    from pipelines.ct_denoise.network import HU_SCALE, RESIDUAL_SCALE, SIGMA_SCALE

    hu = _ct_slices(2, 96, 30.0)
    sigma = np.array([30.0, 30.0], dtype=np.float32)
    net = load_weights(shipped_weights()[0])
    with torch.inference_mode():
        x = torch.from_numpy(hu)[:, None] / HU_SCALE
        noise = net(x, torch.from_numpy(sigma) / SIGMA_SCALE)[:, 0] * RESIDUAL_SCALE
        expected = (torch.from_numpy(hu) - noise).numpy()
    np.testing.assert_array_equal(denoise_array(ct_torch, hu, sigma), expected)


def test_pipelines_agree_across_backends() -> None:
    hu = _ct_slices(3, 128, 40.0, seed=5)
    volume = Volume(hu, "CT", "HU", (1.5, 1.5))
    ov = ct_entry().factory({"device": "cpu"}).run(volume)
    pt = ct_entry().factory({"device": "cpu", "backend": "torch"}).run(volume)
    assert [q.passed for q in ov.qa] == [q.passed for q in pt.qa]
    assert float(np.abs(ov.volume.voxels - pt.volume.voxels).max()) <= TOLERANCE_HU
    assert ov.parameters["backend"] == "auto" and pt.parameters["backend"] == "torch"
    # What actually ran is in the provenance.
    assert str(ov.parameters["runtime"]).startswith("openvino")
    assert str(pt.parameters["runtime"]).startswith("torch")

    mr = Volume((_mr_slices((128, 128), seed=2)[:, 0] * 900).astype(np.float32), "MR", "arbitrary")
    mr_ov = mr_create({"phase_coverage": 0.5}).run(mr)
    mr_pt = mr_create({"phase_coverage": 0.5, "backend": "torch"}).run(mr)
    assert [q.passed for q in mr_ov.qa] == [q.passed for q in mr_pt.qa]
    assert str(mr_ov.parameters["runtime"]).startswith("openvino")
    assert str(mr_pt.parameters["runtime"]).startswith("torch")
    scale = float(np.percentile(mr.voxels, 99.5))
    assert float(np.abs(mr_ov.volume.voxels - mr_pt.volume.voxels).max()) <= 10 * TOLERANCE * scale


def test_openvino_compiles_one_model_per_shape_and_keeps_a_few(mr_torch: TorchNetwork) -> None:
    ov_net = load_backend_network(BUNDLED_WEIGHTS, BUNDLED_WEIGHTS_SHA256, "cpu", "auto")
    assert isinstance(ov_net, OpenVINONetwork)
    for rows in range(64, 64 + 8 * (MAX_COMPILED_SHAPES + 2), 8):
        x = _mr_slices((rows, 64))
        assert float(np.abs(ov_net(x) - mr_torch(x)).max()) <= TOLERANCE
    assert len(ov_net._compiled) == MAX_COMPILED_SHAPES


def test_conversion_is_reused_for_the_same_weights() -> None:
    first = ModelDenoiser(*shipped_weights(), device="cpu").network
    second = ModelDenoiser(*shipped_weights(), device="cpu").network
    assert isinstance(first, OpenVINONetwork) and isinstance(second, OpenVINONetwork)
    assert first._model is second._model


def test_falls_back_to_torch_without_openvino(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_import = builtins.__import__

    def no_openvino(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError("No module named 'openvino'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_openvino)
    with caplog.at_level(logging.WARNING, logger="pipelines.backend"):
        denoiser = ModelDenoiser(*shipped_weights(), device="cpu")
    assert isinstance(denoiser.network, TorchNetwork)
    assert "OpenVINO is not available" in caplog.text
    hu = _ct_slices(1, 64, 30.0)
    out = denoiser.denoise(hu, np.array([30.0], dtype=np.float32))
    assert out.shape == hu.shape and out.dtype == np.float32


def test_falls_back_to_torch_when_the_conversion_fails(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any) -> Any:
        raise RuntimeError("unsupported operation")

    monkeypatch.setattr(backend, "_converted", broken)
    with caplog.at_level(logging.WARNING, logger="pipelines.backend"):
        net = load_backend_network(BUNDLED_WEIGHTS, BUNDLED_WEIGHTS_SHA256, "cpu", "auto")
    assert isinstance(net, TorchNetwork)
    assert "could not convert" in caplog.text and "unsupported operation" in caplog.text


def test_falls_back_to_torch_when_openvino_disagrees(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_call = OpenVINONetwork.__call__

    def off_by_one_hu(self: OpenVINONetwork, *inputs: np.ndarray) -> np.ndarray:
        return real_call(self, *inputs) + np.float32(1.0 / RESIDUAL_SCALE)

    monkeypatch.setattr(OpenVINONetwork, "__call__", off_by_one_hu)
    with caplog.at_level(logging.WARNING, logger="pipelines.backend"):
        denoiser = ModelDenoiser(*shipped_weights(), device="cpu")
    assert isinstance(denoiser.network, TorchNetwork)
    assert "differs from torch's" in caplog.text


def test_torch_backend_is_used_when_asked_for() -> None:
    net = load_backend(
        load_network(BUNDLED_WEIGHTS, BUNDLED_WEIGHTS_SHA256),
        probe_inputs(),
        key="test",
        tolerance=0.0,
        backend="torch",
    )
    assert isinstance(net, TorchNetwork)
    assert net.kind == "torch"


def test_backend_choice_by_device() -> None:
    assert resolve_backend("auto", "cpu") == "openvino"
    assert resolve_backend("torch", "cpu") == "torch"
    assert resolve_backend("auto", "cuda") == "torch"
    with pytest.raises(PipelineError, match="CPU"):
        resolve_backend("openvino", "cuda")
    with pytest.raises(PipelineError, match="Unknown backend"):
        resolve_backend("tensorrt", "cpu")


@pytest.mark.parametrize("factory", [ct_entry().factory, mr_create])
def test_unknown_backend_parameter_is_named(factory: Any) -> None:
    with pytest.raises(PipelineError, match="Did you mean 'openvino'"):
        factory({"backend": "openvin"})


def test_conversion_sends_and_writes_no_telemetry(tmp_path: Path) -> None:
    """OpenVINO's usage telemetry is declined: nothing lands in the user's home."""
    code = (
        "from pipelines.ct_denoise.pipeline import build_pipeline\n"
        "pipe = build_pipeline({'method': 'model', 'device': 'cpu'})\n"
        "assert pipe.denoiser.network.kind == 'openvino'\n"
    )
    env = {**os.environ, "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    # OpenVINO's telemetry keeps its client id and usage counts under ~/intel.
    assert not (tmp_path / "intel").exists()
