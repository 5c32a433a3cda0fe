"""Training-time augmentation on the device, batched: no PIL, no per-image Python.

Every policy draws its parameters per image (`per_image=True`, training) or once for the whole
batch (`per_image=False`: one fixed transform, what a test-time view is, so that an image's view
does not depend on the batch it arrives in).

`fsl.components.AUGMENTATIONS` names the `--augment` policies: `omniglot` (small affine jitter of strokes),
`standard` (random resized crop, flip and colour jitter, for RGB photographs) and `none`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_affine(x: torch.Tensor, rng: torch.Generator | None, max_shift: float = 0.1,
                  max_degrees: float = 15.0, scale: tuple[float, float] = (0.9, 1.1),
                  per_image: bool = True) -> torch.Tensor:
    """A random rotation, scale and shift per image (or one for all). x: float [B, C, H, W] -> [B, C, H, W].

    Borders are replicated (a white Omniglot page stays white). `rng` lives on x's device.
    """
    b = x.shape[0] if per_image else 1

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(b, generator=rng, device=x.device)

    angle = uniform(-1, 1) * math.radians(max_degrees)
    s = uniform(*scale)
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.stack([torch.stack([cos, -sin, uniform(-max_shift, max_shift) * 2], -1),
                         torch.stack([sin, cos, uniform(-max_shift, max_shift) * 2], -1)], 1)
    grid = F.affine_grid(theta.to(x.dtype).expand(x.shape[0], -1, -1), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_resized_crop_flip(x: torch.Tensor, rng: torch.Generator | None, scale: tuple[float, float] = (0.35, 1.0),
                             ratio: tuple[float, float] = (3 / 4, 4 / 3), per_image: bool = True) -> torch.Tensor:
    """Per image: a random crop of `scale` of the area with aspect in `ratio`, resized back to the
    full side, and a horizontal flip with probability 1/2. x: float [B, C, H, W] -> [B, C, H, W].

    One affine resampling does both (bilinear, borders replicated), so the batch stays on the
    device. The smallest share is 0.35, not torchvision's 0.08: few-shot images are 32-84 px.
    """
    b = x.shape[0] if per_image else 1

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(b, generator=rng, device=x.device)

    area = uniform(*scale)
    aspect = torch.exp(uniform(math.log(ratio[0]), math.log(ratio[1])))
    width = (area * aspect).sqrt().clamp(max=1.0)      # crop side over image side, in [0, 1]
    height = (area / aspect).sqrt().clamp(max=1.0)
    flip = torch.where(torch.rand(b, generator=rng, device=x.device) < 0.5, -1.0, 1.0)
    centre_x = uniform(-1, 1) * (1 - width)            # the crop stays inside the image
    centre_y = uniform(-1, 1) * (1 - height)
    zero = torch.zeros_like(width)
    theta = torch.stack([torch.stack([width * flip, zero, centre_x], -1),
                         torch.stack([zero, height, centre_y], -1)], 1)
    grid = F.affine_grid(theta.to(x.dtype).expand(x.shape[0], -1, -1), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def colour_jitter(x: torch.Tensor, rng: torch.Generator | None, brightness: float = 0.4, contrast: float = 0.4,
                  saturation: float = 0.4, per_image: bool = True) -> torch.Tensor:
    """Random brightness, contrast and saturation factors in [1 - v, 1 + v] per image, in that
    order, as torchvision's ColorJitter (without hue). x: float [B, C, H, W] in [0, 1] -> same.
    Saturation acts on 3-channel images only."""
    b = x.shape[0] if per_image else 1

    def factor(v: float) -> torch.Tensor:
        return (1 - v + 2 * v * torch.rand(b, generator=rng, device=x.device)).view(b, 1, 1, 1).to(x.dtype)

    def grey(t: torch.Tensor) -> torch.Tensor:
        if t.shape[1] != 3:
            return t
        weights = torch.tensor([0.299, 0.587, 0.114], device=t.device, dtype=t.dtype).view(1, 3, 1, 1)
        return (t * weights).sum(1, keepdim=True)

    x = (x * factor(brightness)).clamp(0, 1)
    mean = grey(x).mean((1, 2, 3), keepdim=True)
    x = ((x - mean) * factor(contrast) + mean).clamp(0, 1)
    s = factor(saturation)  # drawn for every image, so the stream does not depend on the channels
    if x.shape[1] == 3:
        g = grey(x)
        x = ((x - g) * s + g).clamp(0, 1)
    return x


def standard_augment(x: torch.Tensor, rng: torch.Generator | None, mean: torch.Tensor,
                     std: torch.Tensor, per_image: bool = True) -> torch.Tensor:
    """The RGB recipe of Chen et al. 2019 and Tian et al. 2020: random resized crop, horizontal
    flip, colour jitter. x: normalised float [B, C, H, W]; mean, std: [1, C, 1, 1], the model's
    normalisation, undone for the jitter (which acts on [0, 1] pixels) and applied again."""
    x = random_resized_crop_flip(x, rng, per_image=per_image)
    return (colour_jitter(x * std + mean, rng, per_image=per_image) - mean) / std


def omniglot_augment(x: torch.Tensor, rng: torch.Generator | None, mean: torch.Tensor,
                     std: torch.Tensor, per_image: bool = True) -> torch.Tensor:
    """Small random rotation, scale and shift (the `--augment` of fsl 0.1: Omniglot strokes).
    Geometric only, so it acts on the normalised batch as it is."""
    return random_affine(x, rng, per_image=per_image)

