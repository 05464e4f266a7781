"""The registry of radnode's built-in pipelines."""

from __future__ import annotations

from pipelines.base import Registry


def default_registry() -> Registry:
    """Build a registry holding every built-in pipeline.

    Pipelines import torch and MONAI lazily, inside their factories, so
    building the registry is cheap (settings validation uses it).
    """
    from pipelines import ct_denoise, mr_accel

    registry = Registry()
    registry.register(ct_denoise.entry())
    registry.register(mr_accel.entry())
    return registry
