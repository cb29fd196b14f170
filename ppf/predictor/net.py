"""The CNN that reads a pruning mask as an image and predicts the pruned model's signal
(``predictor.signal``: NLL above dense by default; the paper's JS divergence, or KL).

The paper's design ("CNN-based Performance Prediction Model"), read top to bottom:

1. three 3x3 convolutions with growing dilation — a mask is noisy pixel by pixel, dilation widens
   the receptive field (neighbouring layers and heads) without downsampling a 30x9 image;
2. spatial attention (CBAM-style: channel mean and max → conv → sigmoid) weights the positions
   that matter — keeping or dropping a critical head is what moves the signal;
3. two poolings of the attended features: spatial pyramid pooling (fixed n x n grids, so layout
   survives and ANY mask size gives the same feature length) and global average pooling;
4. a density branch: the global average of the raw input, i.e. the fraction of units kept;
5. the branches concatenated → three fully connected layers → one number.

The target is standardised with the training set's mean and std, kept as buffers so that a saved
network predicts JS in its own units; with ``log_target`` the network fits the LOG of the signal
(standardised the same way) and answers exp of it, so that a signal spanning 20x (the NLL above
dense from 10 % to 70 % pruning) weighs a small model's differences as much as a large one's. A
training set with values <= 0 (an NLL above dense can be negative) is shifted up first, by
``target_shift`` (0 when every value is positive), which the answer takes off again.
Every branch can be switched off for the ablations.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class NetConfig:
    """The architecture. ``in_channels`` is the number of planes in the mask image."""

    in_channels: int = 1
    width: int = 32
    dilations: tuple[int, ...] = (1, 2, 3)
    spp_levels: tuple[int, ...] = (1, 2, 4)
    attention: bool = True
    spp: bool = True
    density: bool = True
    hidden: tuple[int, int] = (128, 32)
    log_target: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "NetConfig":
        """From :meth:`to_dict`'s form; a file written before ``log_target`` existed fits the signal itself."""
        d = {"log_target": False, **d}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


class SpatialAttention(nn.Module):
    """A [B, 1, H, W] weight map from the channel-wise mean and max of the features."""

    def __init__(self, kernel: int = 5):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(pooled))


class PredictorNet(nn.Module):
    """Mask image [B, C, L, G] (any L, G) → the predicted signal [B]."""

    def __init__(self, config: NetConfig):
        super().__init__()
        self.config = c = config
        convs, channels = [], c.in_channels
        for d in c.dilations:
            convs += [nn.Conv2d(channels, c.width, 3, padding=d, dilation=d), nn.ReLU()]
            channels = c.width
        self.features = nn.Sequential(*convs)
        self.attention = SpatialAttention() if c.attention else nn.Identity()
        n = c.width  # global average pooling is always there
        if c.spp:
            n += c.width * sum(k * k for k in c.spp_levels)
        if c.density:
            n += c.in_channels
        h1, h2 = c.hidden
        self.head = nn.Sequential(nn.Linear(n, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU(), nn.Linear(h2, 1))
        self.register_buffer("target_mean", torch.zeros(()))
        self.register_buffer("target_std", torch.ones(()))
        if c.log_target:
            self.register_buffer("target_shift", torch.zeros(()))

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """The standardised prediction (what training fits)."""
        f = self.attention(self.features(x))
        parts = [f.mean(dim=(2, 3))]
        if self.config.spp:
            parts += [F.adaptive_max_pool2d(f, k).flatten(1) for k in self.config.spp_levels]
        if self.config.density:
            parts.append(x.mean(dim=(2, 3)))
        return self.head(torch.cat(parts, dim=1)).squeeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.raw(x) * self.target_std + self.target_mean
        return out.exp() - self.target_shift if self.config.log_target else out
