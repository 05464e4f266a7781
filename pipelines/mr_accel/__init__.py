"""Accelerated-MRI enhancement: restore fast MR acquisitions from their magnitude images.

Series acquired with fewer phase-encode lines, partial Fourier or fewer averages
arrive blurred along the phase-encode direction, ringing and noisy. This
pipeline restores them toward the fully sampled, fully averaged image with a
small residual MONAI network trained on physics-simulated data, keeps the
acquired central k-space where the acceleration is known, and gates every slice
through a QA check. Heavy imports (torch, MONAI) happen inside functions only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pipelines.base import ParamValue, Pipeline, PipelineEntry

NAME = "mr-accel"


def create(params: Mapping[str, ParamValue]) -> Pipeline:
    """Build the pipeline from a rule's parameters (see :mod:`.config`)."""
    from pipelines.mr_accel.config import MRAccelConfig
    from pipelines.mr_accel.pipeline import MRAccelPipeline

    return MRAccelPipeline(MRAccelConfig.from_params(params))


def _check(params: Mapping[str, ParamValue], weights: bool) -> None:
    """Validate a rule's parameters; with ``weights``, verify those the model would load."""
    from pipelines.base import verify_weights
    from pipelines.mr_accel.config import MRAccelConfig

    config = MRAccelConfig.from_params(params)
    if weights and config.method == "model":
        verify_weights(config.weights, config.weights_sha256)


def _train(argv: Sequence[str]) -> int:
    from pipelines.mr_accel.train import main

    return main(argv)


def _evaluate(argv: Sequence[str]) -> int:
    from pipelines.mr_accel.evaluate import main

    return main(argv)


def entry() -> PipelineEntry:
    """The registry entry for ``mr-accel``."""
    return PipelineEntry(
        name=NAME,
        factory=create,
        modalities=("MR",),
        summary=(
            "Accelerated-MRI enhancement: restores reduced phase-encode, partial-Fourier "
            "and few-average MR magnitude images toward the fully sampled image."
        ),
        train=_train,
        evaluate=_evaluate,
        check=_check,
        path_params=("weights",),
    )
