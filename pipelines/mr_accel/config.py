"""Rule parameters of the mr-accel pipeline, validated into one typed object."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pipelines.backend import BACKENDS
from pipelines.base import ParamValue, PipelineError, unknown_option_message

#: Weights shipped with the package, pinned by SHA-256 below.
BUNDLED_WEIGHTS = Path(__file__).resolve().parent / "weights" / "mr_accel_v2.pt"
BUNDLED_WEIGHTS_SHA256 = "8f2e4ae498b263d44b499285e0e574cd96b48cc7637fc1bbbee856866659fb69"
MODEL_VERSION = "2.0.0"

METHODS = ("model", "classical")
DEVICES = ("auto", "cpu", "cuda")
KNOWN_PARAMS = (
    "method",
    "weights",
    "weights_sha256",
    "device",
    "backend",
    "phase_coverage",
    "partial_fourier",
    "batch_size",
)


@dataclass(frozen=True)
class MRAccelConfig:
    """Validated parameters.

    Parameters
    ----------
    method
        ``"model"`` (the trained network, default) or ``"classical"``
        (non-local means denoising).
    weights, weights_sha256
        Weights file and its pinned SHA-256; the bundled weights by default.
    device
        ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
    backend
        ``"auto"`` (OpenVINO on the CPU, torch on CUDA), ``"openvino"`` or
        ``"torch"``; see :func:`pipelines.backend.load_backend`.
    phase_coverage
        Known centred fraction of phase-encode lines acquired (e.g. 0.5), or
        ``None`` when the acceleration is unknown. Enables data consistency.
    partial_fourier
        Known partial-Fourier fraction of the acquired lines (0.5 < f <= 1).
    batch_size
        Slices per network call.
    """

    method: str = "model"
    weights: Path = BUNDLED_WEIGHTS
    weights_sha256: str = BUNDLED_WEIGHTS_SHA256
    device: str = "auto"
    backend: str = "auto"
    phase_coverage: float | None = None
    partial_fourier: float = 1.0
    batch_size: int = 4

    @classmethod
    def from_params(cls, params: Mapping[str, ParamValue]) -> MRAccelConfig:
        """Validate a rule's ``params``; errors name the key and the bad value."""
        for key in params:
            if key not in KNOWN_PARAMS:
                raise PipelineError(
                    "mr-accel: " + unknown_option_message("parameter", key, KNOWN_PARAMS)
                )
        method = str(params.get("method", "model"))
        if method not in METHODS:
            raise PipelineError("mr-accel: " + unknown_option_message("method", method, METHODS))
        device = str(params.get("device", "auto"))
        if device not in DEVICES:
            raise PipelineError("mr-accel: " + unknown_option_message("device", device, DEVICES))
        backend = str(params.get("backend", "auto"))
        if backend not in BACKENDS:
            raise PipelineError("mr-accel: " + unknown_option_message("backend", backend, BACKENDS))
        if "weights" in params:
            if "weights_sha256" not in params:
                raise PipelineError(
                    "mr-accel: parameter 'weights' needs 'weights_sha256' (the file's SHA-256)."
                )
            weights = Path(str(params["weights"]))
            sha = str(params["weights_sha256"]).strip().lower()
        elif "weights_sha256" in params:
            raise PipelineError("mr-accel: 'weights_sha256' given without 'weights'.")
        else:
            weights, sha = BUNDLED_WEIGHTS, BUNDLED_WEIGHTS_SHA256
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise PipelineError(f"mr-accel: 'weights_sha256' must be 64 hex digits. Found {sha!r}.")
        coverage = _fraction(params, "phase_coverage", low=0.1, default=None)
        pf = _fraction(params, "partial_fourier", low=0.5, default=1.0, open_low=True)
        assert pf is not None  # it has a default
        batch = params.get("batch_size", 4)
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise PipelineError(f"mr-accel: 'batch_size' must be an integer >= 1. Found {batch!r}.")
        return cls(
            method=method,
            weights=weights,
            weights_sha256=sha,
            device=device,
            backend=backend,
            phase_coverage=coverage,
            partial_fourier=pf,
            batch_size=batch,
        )


def _fraction(
    params: Mapping[str, ParamValue],
    key: str,
    *,
    low: float,
    default: float | None,
    open_low: bool = False,
) -> float | None:
    """``params[key]`` in [``low``, 1] (in (``low``, 1] with ``open_low``), else ``default``."""
    if key not in params:
        return default
    value = params[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PipelineError(f"mr-accel: {key!r} must be a number. Found {value!r}.")
    above_low = float(value) > low if open_low else float(value) >= low
    if not (above_low and float(value) <= 1.0):
        bracket = "(" if open_low else "["
        raise PipelineError(f"mr-accel: {key!r} must be in {bracket}{low}, 1]. Found {value}.")
    return float(value)
