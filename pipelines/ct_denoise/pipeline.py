"""The ct-denoise pipeline: per-slice noise estimation, denoising and the QA gate."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np

from pipelines.base import (
    SMOOTHING,
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
from pipelines.ct_denoise.params import NAME, CTDenoiseParams, parse_params
from pipelines.qa import GateThresholds, estimate_noise_sd, gate_slice

logger = logging.getLogger(__name__)

#: The HU range the methods see. Values outside it (padding outside the
#: reconstruction circle, e.g. -2048 or -3024, and metal above 3071) are not
#: tissue and are returned exactly as they came in.
HU_MIN = -1024.0
HU_MAX = 3071.0


class SliceDenoiser(Protocol):
    """A denoiser of a batch of slices in HU, given each slice's noise SD."""

    info: ModelInfo

    @property
    def runtime(self) -> str:
        """What computes it, in words (recorded in the provenance)."""
        ...

    def denoise(self, slices: FloatArray, sigma_hu: FloatArray) -> FloatArray:
        """Denoise ``(n, rows, cols)`` slices; ``sigma_hu`` is ``(n,)``."""
        ...


class ClassicalDenoiser:
    """Noise-adaptive non-local means, slice by slice."""

    def __init__(self) -> None:
        self.info = ModelInfo(
            name="non-local means, noise-adaptive (classical)",
            version="nlm-1",
            kind=MethodKind.CLASSICAL,
        )
        self.runtime = "scikit-image non-local means, CPU"

    def denoise(self, slices: FloatArray, sigma_hu: FloatArray) -> FloatArray:
        """Denoise each slice with NLM at its own noise level."""
        from pipelines.ct_denoise.classical import nlm_denoise

        out = np.empty_like(slices)
        for i in range(slices.shape[0]):
            out[i] = nlm_denoise(slices[i], float(sigma_hu[i]))
        return out


class CTDenoisePipeline:
    """Low-dose CT enhancement of one series, in HU, with a per-slice QA gate.

    Parameters
    ----------
    denoiser
        The method (trained model or classical filter).
    params
        The validated rule parameters, recorded in the result.
    thresholds
        QA gate limits.
    """

    name = NAME
    modalities: tuple[str, ...] = ("CT",)

    def __init__(
        self,
        denoiser: SliceDenoiser,
        params: CTDenoiseParams,
        thresholds: GateThresholds | None = None,
    ) -> None:
        self._denoiser = denoiser
        self._params = params
        self._thresholds = thresholds or GateThresholds()

    def model_info(self) -> ModelInfo:
        """Describe the method and its version without running it."""
        return self._denoiser.info

    @property
    def denoiser(self) -> SliceDenoiser:
        """The method the pipeline runs slices through."""
        return self._denoiser

    @property
    def parameters(self) -> dict[str, ParamValue]:
        """The rule parameters as recorded in an output's provenance."""
        return self._params.as_mapping()

    def _denoise(self, volume: Volume, pool: ThreadPoolExecutor) -> tuple[FloatArray, FloatArray]:
        """The method's output for the clipped input (outside values not yet put back)."""
        if volume.unit != "HU":
            raise PipelineError(f"ct-denoise needs voxels in HU. Found unit {volume.unit!r}.")
        out = np.clip(volume.voxels, np.float32(HU_MIN), np.float32(HU_MAX))
        sigma = np.array(list(pool.map(estimate_noise_sd, out)), dtype=np.float32)
        step = self._params.batch_size
        for start in range(0, out.shape[0], step):
            stop = start + step
            # Each batch of the clipped input is replaced by its output.
            out[start:stop] = self._denoiser.denoise(out[start:stop], sigma[start:stop])
        return out, sigma

    def run(self, volume: Volume) -> Result:
        """Enhance ``volume``; failed slices are passed through unchanged and flagged."""
        if volume.modality not in self.modalities:
            raise PipelineError(f"ct-denoise accepts modality CT. Found {volume.modality!r}.")
        with slice_pool() as pool:
            out, sigma = self._denoise(volume, pool)

            def judge(i: int) -> SliceQA:
                _keep_outside(out[i], volume.voxels[i])
                return gate_slice(
                    volume.voxels[i],
                    out[i],
                    volume.pixel_spacing,
                    self._thresholds,
                    input_noise_sd=float(sigma[i]),
                )

            qa = tuple(pool.map(judge, range(out.shape[0])))
        for i, verdict in enumerate(qa):
            if not verdict.passed:
                # The gate's rule: never send a slice it doubts; the input goes out
                # instead and the flag travels with the series' provenance.
                out[i] = volume.voxels[i]
                logger.warning("QA gate flagged slice %d: %s", i, "; ".join(verdict.reasons))
        info = self._denoiser.info
        return Result(
            volume=volume.with_voxels(out),
            qa=qa,
            model=info,
            derivation=SMOOTHING,
            description=f"Low-dose CT enhancement: {info.name}, version {info.version}",
            parameters={**self.parameters, "runtime": self._denoiser.runtime},
        )


def _keep_outside(out: FloatArray, raw: FloatArray) -> None:
    """Put the input's values outside the methods' HU range back into ``out``, in place."""
    np.copyto(out, raw, where=(raw < HU_MIN) | (raw > HU_MAX))


def build_pipeline(params: Mapping[str, ParamValue]) -> CTDenoisePipeline:
    """Build the pipeline from rule parameters (the registry's factory)."""
    parsed = parse_params(params)
    denoiser: SliceDenoiser
    if parsed.method == "classical":
        denoiser = ClassicalDenoiser()
    else:
        from pipelines.ct_denoise.inference import ModelDenoiser

        denoiser = ModelDenoiser.from_params(parsed)
    return CTDenoisePipeline(denoiser, parsed)
