"""Tests of the ct-denoise pipeline: parameters, weight pinning, determinism, dose behaviour."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.base import MethodKind, Pipeline, PipelineError, Volume, WeightsError, sha256_file
from pipelines.ct_denoise import entry
from pipelines.ct_denoise.inference import SHIPPED_SHA256, SHIPPED_WEIGHTS
from pipelines.ct_denoise.phantoms import body_slice, head_slice
from pipelines.ct_denoise.simulate import ParallelBeamProjector, simulate_pair


def _rms(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a[mask] - b[mask]) ** 2)))


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray, float]:
    """A 128-pixel head section at normal dose (12 HU) and 25 % dose."""
    rng = np.random.default_rng(7)
    spacing = 0.9
    clean = head_slice(rng, 128, spacing)
    p = simulate_pair(
        clean,
        spacing,
        rng,
        fraction=0.25,
        normal_noise_hu=12.0,
        projector=ParallelBeamProjector(128),
    )
    return p.normal, p.low, spacing


def _volume(image: np.ndarray, spacing: float) -> Volume:
    return Volume(image[None].astype(np.float32), "CT", "HU", (spacing, spacing))


def test_entry_describes_a_ct_pipeline() -> None:
    e = entry()
    assert e.name == "ct-denoise"
    assert e.modalities == ("CT",)
    assert e.train is not None and e.evaluate is not None
    pipe = e.factory({"method": "classical"})
    assert isinstance(pipe, Pipeline)
    info = pipe.model_info()
    assert info.kind is MethodKind.CLASSICAL
    assert "classical" in info.name
    assert info.weights_sha256 is None


def test_default_is_the_shipped_model() -> None:
    info = entry().factory({}).model_info()
    assert info.kind is MethodKind.GENERATIVE
    assert info.weights_sha256 == SHIPPED_SHA256


def test_shipped_weights_match_their_pinned_hash() -> None:
    assert SHIPPED_WEIGHTS.is_file()
    assert sha256_file(SHIPPED_WEIGHTS) == SHIPPED_SHA256
    assert SHIPPED_WEIGHTS.stat().st_size < 5_000_000


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"methd": "model"}, "Did you mean 'method'"),
        ({"method": "clasical"}, "Did you mean 'classical'"),
        ({"device": "tpu"}, "device"),
        ({"batch_size": 0}, "at least 1"),
        ({"batch_size": True}, "integer"),
        ({"weights": "site.pt"}, "weights_sha256"),
        ({"weights": "site.pt", "weights_sha256": "abc"}, "64 hexadecimal"),
        ({"weights_sha256": "0" * 64}, "without 'weights'"),
    ],
)
def test_bad_parameters_are_named(params: dict[str, str | int | bool], needle: str) -> None:
    with pytest.raises(PipelineError, match=needle):
        entry().factory(params)


def test_site_weights_with_the_wrong_hash_are_refused(tmp_path: Path) -> None:
    site = tmp_path / "site.pt"
    site.write_bytes(SHIPPED_WEIGHTS.read_bytes())
    with pytest.raises(WeightsError, match="refusing"):
        entry().factory({"weights": str(site), "weights_sha256": "0" * 64})
    # The same bytes under their own hash load, and are labelled as site weights.
    pipe = entry().factory({"weights": str(site), "weights_sha256": sha256_file(site)})
    assert "site" in pipe.model_info().name
    # Another model: its own version, so its outputs get their own UIDs.
    shipped = entry().factory({}).model_info().version
    assert pipe.model_info().version == f"{shipped}+site-{sha256_file(site)[:12]}"


def test_tampered_shipped_weights_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines.ct_denoise import inference

    tampered = tmp_path / "ct.pt"
    data = bytearray(SHIPPED_WEIGHTS.read_bytes())
    data[-1] ^= 0xFF
    tampered.write_bytes(bytes(data))
    monkeypatch.setattr(inference, "SHIPPED_WEIGHTS", tampered)
    with pytest.raises(WeightsError):
        entry().factory({})


def test_model_is_deterministic_and_float32(pair: tuple[np.ndarray, np.ndarray, float]) -> None:
    _, low, spacing = pair
    pipe = entry().factory({"device": "cpu"})
    a = pipe.run(_volume(low, spacing))
    b = pipe.run(_volume(low, spacing))
    assert a.volume.voxels.dtype == np.float32
    assert np.array_equal(a.volume.voxels, b.volume.voxels)
    assert len(a.qa) == 1


def test_model_brings_low_dose_closer_to_normal_dose(
    pair: tuple[np.ndarray, np.ndarray, float],
) -> None:
    normal, low, spacing = pair
    mask = normal > -500
    result = entry().factory({}).run(_volume(low, spacing))
    assert result.qa[0].passed, result.qa[0].reasons
    out = result.volume.voxels[0]
    assert _rms(out, normal, mask) < 0.8 * _rms(low, normal, mask)


def test_normal_dose_input_stays_close(pair: tuple[np.ndarray, np.ndarray, float]) -> None:
    normal, _, spacing = pair
    mask = (normal > -200) & (normal < 200)
    out = entry().factory({}).run(_volume(normal, spacing)).volume.voxels[0]
    change = _rms(out, normal, mask)
    # The network is conditioned on the estimated noise level: at normal-dose
    # noise (12 HU) it changes the image by well under that noise (about 3 HU).
    assert change < 0.4 * 12.0
    assert abs(float(np.mean(out[mask] - normal[mask]))) < 1.0


def test_padding_outside_the_field_of_view_is_kept() -> None:
    rng = np.random.default_rng(3)
    img = body_slice(rng, 96, 1.2) + rng.normal(0, 20, (96, 96)).astype(np.float32)
    img[:, :6] = -2048.0
    out = entry().factory({}).run(_volume(img.astype(np.float32), 1.2)).volume.voxels[0]
    assert np.all(out[:, :6] == -2048.0)


def test_classical_method_denoises(pair: tuple[np.ndarray, np.ndarray, float]) -> None:
    normal, low, spacing = pair
    mask = normal > -500
    out = entry().factory({"method": "classical"}).run(_volume(low, spacing)).volume.voxels[0]
    assert _rms(out, normal, mask) < _rms(low, normal, mask)


def test_batches_give_the_same_slices(pair: tuple[np.ndarray, np.ndarray, float]) -> None:
    _, low, spacing = pair
    stack = np.stack([low, low[::-1].copy(), low[:, ::-1].copy()]).astype(np.float32)
    vol = Volume(stack, "CT", "HU", (spacing, spacing))
    one = entry().factory({"batch_size": 1}).run(vol).volume.voxels
    three = entry().factory({"batch_size": 3}).run(vol).volume.voxels
    np.testing.assert_allclose(one, three, atol=0.05)


def test_wrong_modality_is_refused(pair: tuple[np.ndarray, np.ndarray, float]) -> None:
    _, low, spacing = pair
    vol = Volume(low[None].astype(np.float32), "MR", "arbitrary", (spacing, spacing))
    with pytest.raises(PipelineError, match="modality"):
        entry().factory({"method": "classical"}).run(vol)
