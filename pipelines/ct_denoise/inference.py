"""Model inference for ct-denoise: pinned weights, device choice, batched float32 HU residuals."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pipelines.base import FloatArray, MethodKind, ModelInfo, PipelineError, verify_weights
from pipelines.ct_denoise.pipeline import CTDenoiseParams

logger = logging.getLogger(__name__)

#: The weights shipped with radnode and their pinned SHA-256.
SHIPPED_WEIGHTS = Path(__file__).with_name("weights") / "ct_denoise_rescnn_v1.pt"
SHIPPED_SHA256 = "a290f26a75c7cb685436d1468f4f760010083c0899444d42abc799557504c60b"
MODEL_NAME = "noise-conditioned residual CNN (MONAI)"
MODEL_VERSION = "rescnn-1"


def shipped_weights() -> tuple[Path, str]:
    """Path and pinned SHA-256 of the weights shipped with the pipeline."""
    return SHIPPED_WEIGHTS, SHIPPED_SHA256


def select_device(name: str) -> str:
    """Resolve ``auto``/``cpu``/``cuda`` to a torch device name.

    Raises
    ------
    PipelineError
        When ``cuda`` is asked for and no GPU is present.
    """
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise PipelineError("ct-denoise device 'cuda' was requested but no GPU is available.")
    return name


class ModelDenoiser:
    """The trained network behind the pipeline's slice-denoiser interface.

    Parameters
    ----------
    weights
        Weights file; its SHA-256 must equal ``sha256``.
    sha256
        The pinned hash.
    device
        ``auto``, ``cpu`` or ``cuda``.
    """

    def __init__(self, weights: Path, sha256: str, device: str = "auto") -> None:
        import torch

        from pipelines.ct_denoise.network import load_weights

        verify_weights(weights, sha256)
        self.device = select_device(device)
        self._net = load_weights(weights, self.device)
        self._torch = torch
        site = weights.resolve() != SHIPPED_WEIGHTS.resolve()
        self.info = ModelInfo(
            name=MODEL_NAME + (" (site weights)" if site else ""),
            version=MODEL_VERSION if not site else f"{MODEL_VERSION}+site-{sha256[:12]}",
            kind=MethodKind.GENERATIVE,
            weights_sha256=sha256.lower(),
        )

    @classmethod
    def from_params(cls, params: CTDenoiseParams) -> ModelDenoiser:
        """Build from rule parameters: a site's own weights or the shipped ones."""
        if params.weights is not None and params.weights_sha256 is not None:
            return cls(params.weights, params.weights_sha256, params.device)
        path, sha = shipped_weights()
        return cls(path, sha, params.device)

    def denoise(self, slices: FloatArray, sigma_hu: FloatArray) -> FloatArray:
        """Denoise a batch of slices; the residual is subtracted in float32 HU."""
        from pipelines.ct_denoise.network import denoise_tensor

        torch = self._torch
        with torch.inference_mode():
            hu = torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32)).to(self.device)
            sig = torch.from_numpy(np.ascontiguousarray(sigma_hu, dtype=np.float32)).to(self.device)
            out = denoise_tensor(self._net, hu, sig)
        return np.asarray(out.cpu().numpy(), dtype=np.float32)
