"""Rule parameters of ``ct-denoise``: validated without building the pipeline.

Kept apart from :mod:`pipelines.ct_denoise.pipeline` so that settings
validation at start-up imports neither torch nor SciPy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pipelines.backend import BACKENDS
from pipelines.base import ParamValue, PipelineError, unknown_option_message, verify_weights

NAME = "ct-denoise"
METHODS = ("model", "classical")
#: The method a rule gets when it names none.
DEFAULT_METHOD = "model"
DEVICES = ("auto", "cpu", "cuda")
KNOWN_PARAMS = ("method", "weights", "weights_sha256", "device", "backend", "batch_size")


@dataclass(frozen=True)
class CTDenoiseParams:
    """Validated rule parameters of the ct-denoise pipeline."""

    method: str = DEFAULT_METHOD
    weights: Path | None = None
    weights_sha256: str | None = None
    device: str = "auto"
    backend: str = "auto"
    batch_size: int = 8

    def as_mapping(self) -> dict[str, ParamValue]:
        """The parameters as recorded in an output's provenance."""
        out: dict[str, ParamValue] = {
            "method": self.method,
            "device": self.device,
            "backend": self.backend,
            "batch_size": self.batch_size,
        }
        if self.weights is not None:
            out["weights"] = self.weights.name
        if self.weights_sha256 is not None:
            out["weights_sha256"] = self.weights_sha256
        return out


def parse_params(params: Mapping[str, ParamValue]) -> CTDenoiseParams:
    """Validate rule parameters; errors name the key and the bad value.

    Raises
    ------
    PipelineError
        On an unknown key, an unknown method, device or backend, a non-positive batch
        size, or ``weights`` and ``weights_sha256`` not given together.
    """
    for key in params:
        if key not in KNOWN_PARAMS:
            raise PipelineError(unknown_option_message("ct-denoise parameter", key, KNOWN_PARAMS))
    method = str(params.get("method", DEFAULT_METHOD))
    if method not in METHODS:
        raise PipelineError(unknown_option_message("ct-denoise method", method, METHODS))
    device = str(params.get("device", "auto"))
    if device not in DEVICES:
        raise PipelineError(unknown_option_message("ct-denoise device", device, DEVICES))
    backend = str(params.get("backend", "auto"))
    if backend not in BACKENDS:
        raise PipelineError(unknown_option_message("ct-denoise backend", backend, BACKENDS))
    raw_batch = params.get("batch_size", 8)
    if isinstance(raw_batch, bool) or not isinstance(raw_batch, int | str):
        raise PipelineError(f"ct-denoise batch_size must be an integer. Found {raw_batch!r}.")
    try:
        batch = int(raw_batch)
    except ValueError:
        raise PipelineError(
            f"ct-denoise batch_size must be an integer. Found {raw_batch!r}."
        ) from None
    if batch < 1:
        raise PipelineError(f"ct-denoise batch_size must be at least 1. Found {batch}.")
    weights = params.get("weights")
    sha = params.get("weights_sha256")
    if weights is not None and sha is None:
        raise PipelineError(
            "ct-denoise parameter 'weights' needs 'weights_sha256': a site's own "
            "weights are pinned by their hash like the shipped ones."
        )
    if sha is not None and weights is None:
        # The shipped weights carry their own pin; a hash alone would be
        # recorded in the provenance for a file that was never loaded.
        raise PipelineError("ct-denoise parameter 'weights_sha256' given without 'weights'.")
    if sha is not None and (len(str(sha)) != 64 or not _is_hex(str(sha))):
        raise PipelineError(
            f"ct-denoise weights_sha256 must be 64 hexadecimal digits. Found {sha!r}."
        )
    return CTDenoiseParams(
        method=method,
        weights=Path(str(weights)) if weights is not None else None,
        weights_sha256=str(sha).lower() if sha is not None else None,
        device=device,
        backend=backend,
        batch_size=batch,
    )


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)


def check_params(params: Mapping[str, ParamValue], weights: bool = True) -> None:
    """Validate rule parameters; with ``weights``, verify those the model method would load.

    Raises
    ------
    PipelineError
        As :func:`parse_params`; :class:`~pipelines.base.WeightsError` when the
        weights file is missing or its SHA-256 is not the pinned one.
    """
    parsed = parse_params(params)
    if weights and parsed.method == "model":
        from pipelines.ct_denoise.inference import weights_for

        verify_weights(*weights_for(parsed))
