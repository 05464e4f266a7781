"""The mr-accel pipeline: normalise, restore, keep acquired k-space, QA-gate, scale back."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.base import (
    SMOOTHING,
    SPATIAL_RESAMPLING,
    FloatArray,
    MethodKind,
    ModelInfo,
    ParamValue,
    PipelineError,
    Result,
    SliceQA,
    Volume,
    slice_pool,
)
from pipelines.mr_accel.config import BUNDLED_WEIGHTS, MODEL_VERSION, MRAccelConfig
from pipelines.mr_accel.kspace import data_consistency
from pipelines.mr_accel.qa import gate, robust_scale

if TYPE_CHECKING:
    from pipelines.backend import Network

logger = logging.getLogger(__name__)

#: A slice much dimmer than the series (e.g. outside the head) is scaled by the
#: series' intensity, so that its noise is not blown up to tissue level.
MIN_SLICE_SCALE = 0.05


def slice_scales(voxels: FloatArray) -> FloatArray:
    """Robust intensity scale per slice, floored at a fraction of the series'.

    DICOM MR magnitudes have arbitrary units that differ between scanners,
    sequences and even series, so every slice is divided by its own 99.5th
    percentile before restoration and multiplied back afterwards; the output
    is then in the input's units whatever they are.
    """
    series = robust_scale(voxels)
    scales = np.array([robust_scale(s) for s in voxels], dtype=np.float32)
    return np.maximum(scales, np.float32(MIN_SLICE_SCALE * series))


class MRAccelPipeline:
    """Accelerated-MRI enhancement of one MR series.

    Parameters
    ----------
    config
        Validated rule parameters.
    """

    name = "mr-accel"
    modalities: tuple[str, ...] = ("MR",)

    def __init__(self, config: MRAccelConfig) -> None:
        self.config = config
        self._net: Network | None = None
        self._device = "cpu"
        if config.method == "model":
            from pipelines.base import verify_weights

            # Refuse mismatched weights when the rule is built, not at the first job.
            verify_weights(config.weights, config.weights_sha256)

    def model_info(self) -> ModelInfo:
        """Describe the method and its version."""
        if self.config.method == "classical":
            return ModelInfo(
                name="non-local means denoising (classical)",
                version=MODEL_VERSION,
                kind=MethodKind.CLASSICAL,
            )
        # A site's own weights are another model: their outputs get their own
        # version, and so their own series and instance UIDs.
        sha256 = self.config.weights_sha256.lower()
        site = self.config.weights.resolve() != BUNDLED_WEIGHTS.resolve()
        return ModelInfo(
            name="residual MONAI UNet for accelerated MR (mr-accel)"
            + (" (site weights)" if site else ""),
            version=f"{MODEL_VERSION}+site-{sha256[:12]}" if site else MODEL_VERSION,
            kind=MethodKind.GENERATIVE,
            weights_sha256=sha256,
        )

    def run(self, volume: Volume) -> Result:
        """Restore ``volume``; deterministic for the same input and weights."""
        if volume.modality != "MR":
            raise PipelineError(f"mr-accel takes MR volumes. Found modality {volume.modality!r}.")
        voxels = np.nan_to_num(volume.voxels, nan=0.0, posinf=0.0, neginf=0.0)
        scales = slice_scales(voxels)
        safe = np.where(scales > 0, scales, np.float32(1.0))
        norm = (voxels / safe[:, None, None]).astype(np.float32)

        restored = self.restore_normalised(norm)
        coverage = self.config.phase_coverage
        partial_fourier = self.config.partial_fourier

        out = np.empty(voxels.shape, dtype=np.float32)

        def finish(i: int) -> SliceQA:
            """Data consistency, the QA gate and the scaling back of slice ``i`` into ``out``."""
            restored_i = restored[i]
            if coverage is not None:
                restored_i = data_consistency(restored_i, norm[i], coverage, partial_fourier)
            # A magnitude image is non-negative.
            restored_i = np.maximum(restored_i, np.float32(0.0))
            verdict = gate(norm[i], restored_i)
            if verdict.passed and scales[i] > 0:
                out[i] = restored_i * scales[i]
            else:
                out[i] = voxels[i]  # failing slices go out unchanged and flagged
            return verdict

        with slice_pool() as pool:
            qa = list(pool.map(finish, range(voxels.shape[0])))
        for i, verdict in enumerate(qa):
            if not verdict.passed:
                logger.warning(
                    "mr-accel QA gate failed slice %d: %s", i, "; ".join(verdict.reasons)
                )
        return Result(
            volume=volume.with_voxels(out),
            qa=tuple(qa),
            model=self.model_info(),
            derivation=self._derivation(),
            description=self._description(coverage),
            parameters=self._parameters(coverage, partial_fourier),
        )

    def restore_normalised(self, norm: FloatArray) -> FloatArray:
        """Restore slices already divided by their robust scale (no QA, no DC)."""
        if self.config.method == "classical":
            from pipelines.mr_accel.baselines import nlm_denoise

            return np.stack([nlm_denoise(s) for s in norm]).astype(np.float32)
        return self._infer(norm)

    def _infer(self, norm: FloatArray) -> FloatArray:
        net = self.network()
        out = np.empty_like(norm)
        bs = self.config.batch_size
        for start in range(0, norm.shape[0], bs):
            out[start : start + bs] = net(norm[start : start + bs, None])[:, 0]
        return out

    @property
    def device(self) -> str:
        """Where the network runs (``"cpu"`` until :meth:`network` has loaded it)."""
        return self._device

    def prepare(self) -> None:
        """Load the network now rather than at the first run (the node's warm-up)."""
        if self.config.method == "model":
            self.network()

    def network(self) -> Network:
        """The network on its backend, loaded on first use."""
        if self._net is None:
            from pipelines.backend import resolve_device
            from pipelines.mr_accel.network import load_backend_network

            backend = self.config.backend
            self._device = resolve_device(self.config.device, backend, "mr-accel")
            self._net = load_backend_network(
                self.config.weights, self.config.weights_sha256, self._device, backend
            )
        return self._net

    def _derivation(self) -> Any:
        # The model restores resolution lost to reduced phase-encode coverage
        # (new high spatial frequencies), i.e. spatial resampling; the classical
        # method only removes noise, i.e. smoothing.
        return SMOOTHING if self.config.method == "classical" else SPATIAL_RESAMPLING

    def _description(self, coverage: float | None) -> str:
        info = self.model_info()
        dc = f", data consistency at phase coverage {coverage:g}" if coverage is not None else ""
        return f"mr-accel {info.name} v{info.version}{dc}"

    def _parameters(self, coverage: float | None, partial_fourier: float) -> dict[str, ParamValue]:
        params: dict[str, ParamValue] = {"method": self.config.method}
        if coverage is not None:
            params["phase_coverage"] = coverage
            params["partial_fourier"] = partial_fourier
        if self.config.method == "model":
            params["weights_sha256"] = self.config.weights_sha256
            params["backend"] = self.config.backend
            params["runtime"] = self.network().name
        return params
