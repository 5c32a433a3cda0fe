"""Feature extractors. Conv-4 is the backbone of Snell et al. (2017) and of most few-shot papers."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class Conv4(nn.Module):
    """Four blocks of conv3x3(pad 1) -> BatchNorm -> ReLU -> max-pool 2, flattened.

    [B, C, S, S] -> [B, out_dim] with out_dim = hidden * (S // 16)^2 after four floor-halvings:
    84 -> 1600, 32 -> 256, 28 -> 64.
    """

    def __init__(self, in_channels: int = 3, image_size: int = 84, hidden: int = 64) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(conv_block(in_channels if i == 0 else hidden, hidden) for i in range(4)))
        side = image_size
        for _ in range(4):
            side //= 2
        if side < 1:
            raise ValueError(f"Conv-4 needs images of at least 16x16, got {image_size}")
        self.out_dim = hidden * side * side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x).flatten(1)


ENCODERS: dict[str, Callable[..., nn.Module]] = {"conv4": Conv4}
