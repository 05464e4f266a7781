"""The restoration network: a small residual MONAI UNet and its hash-pinned weights."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.base import FloatArray, WeightsError, verify_weights

if TYPE_CHECKING:
    import torch

    from pipelines.backend import Network

#: Architecture of the shipped model; stored in the checkpoint and checked at load.
ARCHITECTURE: dict[str, Any] = {
    "net": "monai.networks.nets.UNet",
    "channels": [12, 24, 48, 96],
    "strides": [2, 2, 2],
    "num_res_units": 1,
    "norm": None,
    "features_out": 8,
    "head": "conv1x1-zero-init",
}
#: The UNet downsamples three times, so inputs are padded to a multiple of 8.
MULTIPLE = 8
#: Largest difference allowed between a backend's output and torch's, in units
#: of the slice's robust scale (the network's inputs are divided by it);
#: OpenVINO on float32 measures about 2e-7.
TOLERANCE = 1e-4


def build_network() -> torch.nn.Module:
    """A residual UNet: the output is the input plus a learned correction.

    Learning the correction (not the image) keeps an already good input nearly
    unchanged and makes the mapping easy to train; most of the work happens at
    half resolution and below, which keeps a 512x512 slice cheap on a CPU.
    """
    import torch
    from monai.networks.nets import UNet  # type: ignore[attr-defined]

    class ResidualUNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.unet = UNet(
                spatial_dims=2,
                in_channels=1,
                out_channels=int(ARCHITECTURE["features_out"]),
                channels=tuple(ARCHITECTURE["channels"]),
                strides=tuple(ARCHITECTURE["strides"]),
                num_res_units=int(ARCHITECTURE["num_res_units"]),
                # No normalisation layers: instance statistics of a training
                # patch differ from those of a whole slice with its background,
                # and absolute (normalised) intensity tells the network how
                # large the Rician noise floor is.
                norm=ARCHITECTURE["norm"],
            )
            # The correction starts at exactly zero, so training starts from
            # the identity instead of first unlearning a random residual.
            self.head = torch.nn.Conv2d(int(ARCHITECTURE["features_out"]), 1, kernel_size=1)
            torch.nn.init.zeros_(self.head.weight)
            if self.head.bias is not None:
                torch.nn.init.zeros_(self.head.bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            rows, cols = x.shape[-2:]
            pad_r = (-rows) % MULTIPLE
            pad_c = (-cols) % MULTIPLE
            # Reflection padding avoids a false edge at the border.
            xp = torch.nn.functional.pad(x, (0, pad_c, 0, pad_r), mode="reflect")
            out: torch.Tensor = xp + self.head(self.unet(xp))
            return out[..., :rows, :cols]

    return ResidualUNet()


def save_checkpoint(net: torch.nn.Module, path: Path, meta: dict[str, Any]) -> None:
    """Write the network's weights with the architecture and training facts."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    torch.save({"architecture": ARCHITECTURE, "meta": meta, "state_dict": state}, path)


def load_network(path: Path, sha256: str, device: str = "cpu") -> torch.nn.Module:
    """Load weights after checking their pinned SHA-256; refuse anything else.

    Raises
    ------
    WeightsError
        If the file is missing, its hash differs, or its architecture is not
        the one this code builds.
    """
    import torch

    verify_weights(path, sha256)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if checkpoint.get("architecture") != ARCHITECTURE:
        raise WeightsError(
            f"Weights {path.name!r} were trained for architecture "
            f"{checkpoint.get('architecture')!r}, not {ARCHITECTURE!r}."
        )
    net = build_network()
    net.load_state_dict(checkpoint["state_dict"])
    net.eval()
    return net.to(device)


def load_backend_network(path: Path, sha256: str, device: str, backend: str) -> Network:
    """Load the pinned weights and run them with ``backend`` (see :mod:`pipelines.backend`)."""
    from pipelines.backend import load_backend

    return load_backend(
        load_network(path, sha256, device),
        probe_inputs(),
        key=f"mr-accel {sha256.lower()}",
        tolerance=TOLERANCE,
        backend=backend,
        device=device,
    )


def probe_inputs() -> tuple[FloatArray]:
    """Two 64 x 64 procedural slices with noise, normalised as the pipeline's inputs.

    A backend is accepted only if its output on these agrees with torch's.
    """
    from pipelines.mr_accel.anatomy import procedural_anatomy

    rng = np.random.default_rng(0)
    slices = np.stack([procedural_anatomy(rng, (64, 64)) for _ in range(2)])
    noisy = np.abs(slices + rng.normal(0.0, 0.03, slices.shape))
    return (noisy[:, None].astype(np.float32),)
