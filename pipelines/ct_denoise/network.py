"""The noise-conditioned residual CNN (MONAI blocks) that removes low-dose CT noise."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from monai.networks.blocks.convolutions import Convolution
from torch import nn
from torch.nn import functional as nnf

#: HU are divided by this before the network: soft tissue lands near 0,
#: bone near 2, air at -2, so no input saturates an activation.
HU_SCALE = 500.0
#: Noise SD in HU is divided by this to make the conditioning channel.
SIGMA_SCALE = 50.0
#: The network's output times this is the noise estimate in HU.
RESIDUAL_SCALE = 50.0
#: Input sizes must be multiples of this (pixel unshuffle and one stride-2 level).
MULTIPLE = 4


@dataclass(frozen=True)
class NetworkConfig:
    """Width of the network; stored inside the weights file."""

    channels: int = 24

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> NetworkConfig:
        """Rebuild from the dictionary kept in a weights file."""
        return cls(channels=int(data["channels"]))


def _conv(cin: int, cout: int, *, stride: int = 1, last: bool = False) -> nn.Module:
    return Convolution(
        spatial_dims=2,
        in_channels=cin,
        out_channels=cout,
        strides=stride,
        kernel_size=3,
        act=None if last else ("leakyrelu", {"negative_slope": 0.1, "inplace": True}),
        norm=None,
        conv_only=last,
    )


class ResidualDenoiser(nn.Module):
    """Predicts the noise of a CT slice from the slice and its noise level.

    The slice is folded 2x2 into four channels (pixel unshuffle), so every
    convolution runs on a quarter of the pixels; a second, stride-2 level
    widens the receptive field to the ~20 mm over which CT noise is
    correlated. The noise SD estimated from the slice enters as a constant
    channel, so one network serves every dose and leaves a normal-dose slice
    nearly unchanged (it learned the identity at low noise levels).
    """

    def __init__(self, config: NetworkConfig | None = None) -> None:
        super().__init__()
        self.config = config or NetworkConfig()
        c = self.config.channels
        self.enc = nn.Sequential(_conv(5, c), _conv(c, c))
        self.down = nn.Sequential(
            _conv(c, 2 * c, stride=2), _conv(2 * c, 2 * c), _conv(2 * c, 2 * c)
        )
        self.up = Convolution(
            spatial_dims=2,
            in_channels=2 * c,
            out_channels=c,
            strides=2,
            kernel_size=2,
            is_transposed=True,
            act=("leakyrelu", {"negative_slope": 0.1, "inplace": True}),
            norm=None,
            padding=0,
            output_padding=0,
        )
        self.dec = nn.Sequential(_conv(c, c), _conv(c, 4, last=True))

    def forward(self, hu_scaled: torch.Tensor, sigma_scaled: torch.Tensor) -> torch.Tensor:
        """Noise in units of :data:`RESIDUAL_SCALE` HU.

        Parameters
        ----------
        hu_scaled
            ``(n, 1, H, W)`` slices divided by :data:`HU_SCALE`; H and W are
            multiples of :data:`MULTIPLE`.
        sigma_scaled
            ``(n,)`` noise SD divided by :data:`SIGMA_SCALE`.
        """
        folded = nnf.pixel_unshuffle(hu_scaled, 2)
        n, _, h, w = folded.shape
        level = sigma_scaled.reshape(n, 1, 1, 1).expand(n, 1, h, w)
        skip = self.enc(torch.cat((folded, level), dim=1))
        feat = self.up(self.down(skip)) + skip
        return nnf.pixel_shuffle(self.dec(feat), 2)


def save_weights(net: ResidualDenoiser, path: Path, meta: Mapping[str, Any]) -> None:
    """Write the state dict with the network config and training facts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()},
        "config": asdict(net.config),
        "meta": dict(meta),
    }
    torch.save(payload, path)


def load_weights(path: Path, device: torch.device | str = "cpu") -> ResidualDenoiser:
    """Build the network stored in ``path`` (tensors only; no code is unpickled).

    Callers verify the file's SHA-256 first (:func:`pipelines.base.verify_weights`).
    """
    payload = torch.load(path, map_location="cpu", weights_only=True)
    net = ResidualDenoiser(NetworkConfig.from_mapping(payload["config"]))
    net.load_state_dict(payload["state_dict"])
    net.to(device)
    net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return net.eval()
