"""Low-dose CT enhancement: the ``ct-denoise`` pipeline entry."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pipelines.base import ParamValue, Pipeline, PipelineEntry

NAME = "ct-denoise"


def _factory(params: Mapping[str, ParamValue]) -> Pipeline:
    from pipelines.ct_denoise.pipeline import build_pipeline

    return build_pipeline(params)


def _check(params: Mapping[str, ParamValue], weights: bool) -> None:
    from pipelines.ct_denoise.params import check_params

    check_params(params, weights)


def _train(argv: Sequence[str]) -> int:
    from pipelines.ct_denoise.train import main

    return main(argv)


def _evaluate(argv: Sequence[str]) -> int:
    from pipelines.ct_denoise.evaluate import main

    return main(argv)


def entry() -> PipelineEntry:
    """The registry entry of the low-dose CT enhancement pipeline.

    Importing this package loads neither torch nor scikit-image; the factory,
    ``train`` and ``evaluate`` import them when called.
    """
    return PipelineEntry(
        name=NAME,
        factory=_factory,
        modalities=("CT",),
        summary=(
            "Low-dose CT enhancement in HU: a residual CNN trained on physics-simulated "
            "dose reduction (or non-local means), with a reference-free QA gate."
        ),
        train=_train,
        evaluate=_evaluate,
        check=_check,
        path_params=("weights",),
    )
