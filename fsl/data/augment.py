"""Training-time augmentation on the device, batched: no PIL, no per-image Python."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_affine(x: torch.Tensor, rng: torch.Generator | None, max_shift: float = 0.1,
                  max_degrees: float = 15.0, scale: tuple[float, float] = (0.9, 1.1)) -> torch.Tensor:
    """A random rotation, scale and shift per image. x: float [B, C, H, W] -> [B, C, H, W].

    Borders are replicated (a white Omniglot page stays white). `rng` lives on x's device.
    """
    b = x.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(b, generator=rng, device=x.device)

    angle = uniform(-1, 1) * math.radians(max_degrees)
    s = uniform(*scale)
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.stack([torch.stack([cos, -sin, uniform(-max_shift, max_shift) * 2], -1),
                         torch.stack([sin, cos, uniform(-max_shift, max_shift) * 2], -1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
