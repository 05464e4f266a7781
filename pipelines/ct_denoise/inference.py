"""Model inference for ct-denoise: pinned weights, device and backend, batched float32 HU."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pipelines.backend import Network, load_backend, resolve_device
from pipelines.base import FloatArray, MethodKind, ModelInfo, verify_weights
from pipelines.ct_denoise.params import CTDenoiseParams

logger = logging.getLogger(__name__)

#: The weights shipped with radnode and their pinned SHA-256.
SHIPPED_WEIGHTS = Path(__file__).with_name("weights") / "ct_denoise_rescnn_v3.pt"
SHIPPED_SHA256 = "a0d15605684caa970a8532d302c3242015cca0821434989a53b4a06e74d09d38"
MODEL_NAME = "noise-conditioned residual CNN (MONAI)"
MODEL_VERSION = "rescnn-3"
#: Largest difference, in HU, allowed between a backend's denoised slices and
#: torch's. OpenVINO at float32 on an AVX-512 CPU measured 0 HU on 512 x 512
#: slices (both run oneDNN's kernels) and at most 3e-5 HU on other sizes.
TOLERANCE_HU = 0.05


def shipped_weights() -> tuple[Path, str]:
    """Path and pinned SHA-256 of the weights shipped with the pipeline."""
    return SHIPPED_WEIGHTS, SHIPPED_SHA256


def weights_for(params: CTDenoiseParams) -> tuple[Path, str]:
    """The weights the model method loads: a site's own, else the shipped ones."""
    if params.weights is not None and params.weights_sha256 is not None:
        return params.weights, params.weights_sha256
    return shipped_weights()


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
    backend
        ``auto`` (OpenVINO on the CPU), ``openvino`` or ``torch``; see
        :func:`pipelines.backend.load_backend`.
    """

    def __init__(
        self, weights: Path, sha256: str, device: str = "auto", backend: str = "auto"
    ) -> None:
        from pipelines.ct_denoise.network import RESIDUAL_SCALE, load_weights

        verify_weights(weights, sha256)
        # OpenVINO runs on the CPU: asking for it picks the CPU over a GPU.
        self.device = resolve_device(device, backend, "ct-denoise")
        self.network: Network = load_backend(
            load_weights(weights, self.device),
            probe_inputs(),
            key=f"{MODEL_NAME} {sha256.lower()}",
            tolerance=TOLERANCE_HU / RESIDUAL_SCALE,
            backend=backend,
            device=self.device,
            channels_last=True,
        )
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
        return cls(*weights_for(params), params.device, params.backend)

    @property
    def runtime(self) -> str:
        """The backend running the network, in words."""
        return self.network.name

    def denoise(self, slices: FloatArray, sigma_hu: FloatArray) -> FloatArray:
        """Denoise a batch of slices; the residual is subtracted in float32 HU."""
        return denoise_array(self.network, slices, sigma_hu)


def denoise_array(network: Network, hu: FloatArray, sigma_hu: FloatArray) -> FloatArray:
    """Denoised slices in HU with any backend: input minus the predicted noise, in float32.

    ``hu`` is ``(n, H, W)`` in any size; it is padded by reflection up to a
    multiple of the network's :data:`~.network.MULTIPLE` and cropped back.
    The scalings are the same float32 operations, so the torch backend gives
    exactly :func:`~.network.denoise_tensor`'s output.
    """
    from pipelines.ct_denoise.network import HU_SCALE, MULTIPLE, RESIDUAL_SCALE, SIGMA_SCALE

    hu = np.ascontiguousarray(hu, dtype=np.float32)
    _, h, w = hu.shape
    x = (hu / np.float32(HU_SCALE))[:, None]
    pad = ((0, 0), (0, 0), (0, (-h) % MULTIPLE), (0, (-w) % MULTIPLE))
    if any(p[1] for p in pad):
        x = np.pad(x, pad, mode="reflect")
    sigma = np.asarray(sigma_hu, dtype=np.float32) / np.float32(SIGMA_SCALE)
    noise = network(x, sigma)[:, 0, :h, :w] * np.float32(RESIDUAL_SCALE)
    return np.asarray(hu - noise, dtype=np.float32)


def probe_inputs() -> tuple[FloatArray, FloatArray]:
    """Two 64 x 64 body sections at 20 and 40 HU noise, scaled as the network sees them.

    A backend is accepted only if its output on these agrees with torch's.
    """
    from pipelines.ct_denoise.network import HU_SCALE, SIGMA_SCALE
    from pipelines.ct_denoise.phantoms import body_slice

    rng = np.random.default_rng(0)
    sigma = np.array([20.0, 40.0], dtype=np.float32)
    hu = np.stack([body_slice(rng, 64, 6.0) for _ in sigma])
    hu = hu + rng.normal(0.0, 1.0, hu.shape).astype(np.float32) * sigma[:, None, None]
    x = (hu / np.float32(HU_SCALE))[:, None].astype(np.float32)
    return x, sigma / np.float32(SIGMA_SCALE)
