"""Tests of the mr-accel pipeline: parameters, weights pinning, scaling, determinism."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from pipelines.base import (
    SMOOTHING,
    SPATIAL_RESAMPLING,
    MethodKind,
    PipelineError,
    Volume,
    WeightsError,
)
from pipelines.mr_accel import create, entry
from pipelines.mr_accel.anatomy import procedural_anatomy
from pipelines.mr_accel.config import BUNDLED_WEIGHTS, BUNDLED_WEIGHTS_SHA256
from pipelines.mr_accel.simulate import Acceleration, accelerate


def _accelerated_volume(scale: float = 1000.0, seed: int = 3) -> Volume:
    rng = np.random.default_rng(seed)
    clean = procedural_anatomy(rng, (192, 160))
    img = accelerate(clean, Acceleration(pe_axis=-2, coverage=0.5, noise=0.03), rng)
    voxels = (np.stack([img, img[::-1]]) * scale).astype(np.float32)
    return Volume(voxels=voxels, modality="MR", unit="arbitrary", meta={"phase_encode": "COL"})


def _psnr(ref: np.ndarray, img: np.ndarray) -> float:
    peak = float(np.percentile(ref, 99.5))
    mse = float(np.mean((ref.astype(np.float64) - img) ** 2))
    return float(10.0 * np.log10(peak**2 / mse))


def test_entry_describes_the_pipeline() -> None:
    e = entry()
    assert e.name == "mr-accel"
    assert e.modalities == ("MR",)
    assert e.train is not None and e.evaluate is not None


def test_unknown_parameter_is_named_with_a_suggestion() -> None:
    with pytest.raises(PipelineError, match=r"'phase_coverag'.*Did you mean 'phase_coverage'"):
        create({"phase_coverag": 0.5})


def test_weights_need_their_sha256() -> None:
    with pytest.raises(PipelineError, match="weights_sha256"):
        create({"weights": str(BUNDLED_WEIGHTS)})


def test_bad_coverage_is_refused() -> None:
    with pytest.raises(PipelineError, match="phase_coverage"):
        create({"phase_coverage": 1.5})


def test_partial_fourier_of_one_half_or_less_is_refused() -> None:
    for value in (0.5, 0.4):
        with pytest.raises(PipelineError, match=r"'partial_fourier' must be in \(0.5, 1\]"):
            create({"partial_fourier": value})
    assert create({"partial_fourier": 0.6}) is not None


def test_hash_mismatch_is_refused(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="refusing"):
        create({"weights": str(BUNDLED_WEIGHTS), "weights_sha256": "0" * 64})
    tampered = tmp_path / "tampered.pt"
    shutil.copy(BUNDLED_WEIGHTS, tampered)
    with tampered.open("r+b") as fh:
        fh.seek(-10, 2)
        fh.write(b"\x00" * 4)
    with pytest.raises(WeightsError, match="refusing"):
        create({"weights": str(tampered), "weights_sha256": BUNDLED_WEIGHTS_SHA256})


def test_model_provenance() -> None:
    pipe = create({})
    info = pipe.model_info()
    assert info.kind is MethodKind.GENERATIVE
    assert info.weights_sha256 == BUNDLED_WEIGHTS_SHA256
    result = pipe.run(_accelerated_volume())
    assert result.derivation == SPATIAL_RESAMPLING
    assert len(result.qa) == 2


def test_site_weights_are_another_model_version(tmp_path: Path) -> None:
    from node.uids import output_uids

    site = tmp_path / "site.pt"
    shutil.copyfile(BUNDLED_WEIGHTS, site)
    shipped = create({}).model_info()
    info = create({"weights": str(site), "weights_sha256": BUNDLED_WEIGHTS_SHA256}).model_info()
    assert "site weights" in info.name and "site weights" not in shipped.name
    assert info.version == f"{shipped.version}+site-{BUNDLED_WEIGHTS_SHA256[:12]}"
    # Its outputs therefore form another series, never replacing the shipped model's.
    source = ("1.2.3", ["1.2.3.1"])
    assert output_uids(*source, "mr-accel", info.version) != output_uids(
        *source, "mr-accel", shipped.version
    )


def test_classical_method_is_labelled_classical() -> None:
    pipe = create({"method": "classical"})
    assert pipe.model_info().kind is MethodKind.CLASSICAL
    assert "classical" in pipe.model_info().name
    result = pipe.run(_accelerated_volume())
    assert result.derivation == SMOOTHING


def test_prepare_loads_the_network_ahead_of_the_first_run() -> None:
    from pipelines.mr_accel.pipeline import MRAccelPipeline

    pipe = create({})
    classical = create({"method": "classical"})
    assert isinstance(pipe, MRAccelPipeline) and isinstance(classical, MRAccelPipeline)
    assert pipe._net is None  # lazily loaded
    pipe.prepare()
    loaded = pipe._net
    assert loaded is not None
    pipe.run(_accelerated_volume())
    assert pipe._net is loaded  # the run used it, nothing loaded twice
    classical.prepare()  # nothing to load for the classical method
    assert classical._net is None


def test_deterministic() -> None:
    vol = _accelerated_volume()
    a = create({"phase_coverage": 0.5}).run(vol).volume.voxels
    b = create({"phase_coverage": 0.5}).run(vol).volume.voxels
    np.testing.assert_array_equal(a, b)


def test_output_in_the_input_scaling() -> None:
    small = _accelerated_volume(scale=0.01)
    large = _accelerated_volume(scale=4000.0)
    out_small = create({}).run(small).volume.voxels
    out_large = create({}).run(large).volume.voxels
    # Same restoration whatever the arbitrary units: outputs scale with inputs.
    np.testing.assert_allclose(out_large / 4000.0, out_small / 0.01, rtol=1e-3, atol=1e-4)
    for vol, out in ((small, out_small), (large, out_large)):
        ratio = float(out.mean() / vol.voxels.mean())
        assert 0.95 < ratio < 1.05
        assert abs(float(np.percentile(out, 99.5) / np.percentile(vol.voxels, 99.5)) - 1) < 0.1


def test_restores_an_accelerated_slice() -> None:
    rng = np.random.default_rng(11)
    clean = procedural_anatomy(rng, (256, 224))
    fast = accelerate(clean, Acceleration(pe_axis=-1, coverage=0.5, noise=0.03), rng)
    vol = Volume(voxels=fast[None] * np.float32(700.0), modality="MR", unit="arbitrary")
    result = create({"phase_coverage": 0.5}).run(vol)
    assert not result.flagged_slices
    out = result.volume.voxels[0] / 700.0
    assert _psnr(clean, out) > _psnr(clean, fast) + 2.0


def test_fully_sampled_low_noise_input_stays_close() -> None:
    rng = np.random.default_rng(5)
    clean = procedural_anatomy(rng, (256, 256))
    full = accelerate(clean, Acceleration(coverage=1.0, noise=0.004), rng)
    vol = Volume(voxels=full[None] * np.float32(2000.0), modality="MR", unit="arbitrary")
    result = create({}).run(vol)
    out = result.volume.voxels[0] / 2000.0
    assert not result.flagged_slices
    assert _psnr(full, out) > 35.0
    # Already near-perfect (about 49 dB): the output may differ only marginally.
    assert _psnr(clean, out) >= _psnr(clean, full) - 1.0


def test_real_fully_sampled_image_stays_close() -> None:
    import pydicom
    from pydicom.data import get_testdata_file

    path = get_testdata_file("MR_small.dcm")
    assert isinstance(path, str)
    ds = pydicom.dcmread(path)
    voxels = ds.pixel_array.astype(np.float32)[None]
    result = create({}).run(Volume(voxels=voxels, modality="MR", unit="arbitrary"))
    assert _psnr(voxels[0], result.volume.voxels[0]) > 30.0


def test_non_mr_volume_is_refused() -> None:
    vol = Volume(voxels=np.zeros((1, 8, 8), np.float32), modality="CT", unit="HU")
    with pytest.raises(PipelineError, match="MR"):
        create({"method": "classical"}).run(vol)
