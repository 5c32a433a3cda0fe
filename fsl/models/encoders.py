"""Feature extractors: images [B, C, S, S] -> features [B, out_dim].

`fsl.components.ENCODERS` is the one table: the `--encoder` choices, the checkpoint's `encoder`
key and the model's constructor all read it, so a new backbone is one class plus one line. Every
encoder takes (in_channels, image_size) and sets `out_dim`; its settings are keyword-only and
declared with `fsl.settings.Setting` (`--encoder-arg width=0.25`). `width` multiplies every
channel count (1.0 is the published network; CI trains the same classes at 0.25).

- `conv4`: the backbone of Snell et al. (2017) and of most few-shot papers.
- `resnet12`: the 4-stage ResNet-12 of TADAM, MetaOptNet, FEAT and Meta-Baseline, 64-160-320-640
  channels, leaky ReLU, max-pool per stage, global average pooling.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Annotated, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from fsl.components import ENCODERS
from fsl.settings import Setting

MIN_IMAGE_SIZE = 16  # both encoders halve the input four times
# The width multiplier of both encoders: at least one channel in their narrowest stage (64), at
# most ResNet-12 x 8 (5,120 channels in its last stage).
Width = Annotated[float, Setting("Multiply every channel count (1 = the published network; 0.25 for a quick CPU "
                                 "run).", low=1 / 64, high=8.0)]


def scaled(channels: int, width: float) -> int:
    """A channel count under a width multiplier, never below 1."""
    return max(1, round(channels * width))


def _check_size(name: str, image_size: int) -> None:
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"{name} needs images of at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}, got {image_size}")


class EpisodeBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics can be each episode's own: with `episodes` E > 1 (set
    by the trainer for one call, `episode_groups`), a batch of E episodes' images (episode-major,
    as many per episode) is normalised with each episode's mean and variance, and the running
    statistics are updated as E calls one after the other would have. E = 1, or eval mode, is
    plain BatchNorm2d (the same state dict, the same numbers)."""

    episodes: int = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.episodes
        if e == 1 or not self.training:
            return super().forward(x)
        b, c, h, w = x.shape[0] // e, x.shape[1], x.shape[2], x.shape[3]
        # [E*B, C, H, W] -> [B, E*C, H, W]: BatchNorm's statistics per (episode, channel)
        grouped = x.reshape(e, b, c, h, w).transpose(0, 1).reshape(b, e * c, h, w)
        out = F.batch_norm(grouped, None, None, self.weight.repeat(e), self.bias.repeat(e), True, 0.0, self.eps)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                n = b * h * w
                # as BatchNorm's kernels: statistics in fp32 at least (bf16 and fp16 under autocast)
                stats = grouped.float() if grouped.element_size() < 4 else grouped
                mean = stats.mean((0, 2, 3)).view(e, c)
                var = stats.var((0, 2, 3), unbiased=True).view(e, c) if n > 1 else torch.zeros_like(mean)
                for i in range(e):  # as E calls in a row: each moves the running statistics
                    if self.num_batches_tracked is not None:
                        self.num_batches_tracked += 1
                    # momentum None: BatchNorm's cumulative average (1 / batches seen), 0: frozen
                    factor = self.momentum if self.momentum is not None else \
                        1.0 / float(self.num_batches_tracked if self.num_batches_tracked is not None else 1)
                    self.running_mean.lerp_(mean[i].to(self.running_mean.dtype), factor)
                    self.running_var.lerp_(var[i].to(self.running_var.dtype), factor)
        return out.reshape(b, e, c, h, w).transpose(0, 1).reshape(e * b, c, h, w)


@contextlib.contextmanager
def episode_groups(module: nn.Module, episodes: int) -> Iterator[bool]:
    """Set every EpisodeBatchNorm2d of `module` to take `episodes` groups for the block; yields
    whether every BatchNorm of it can (an encoder with other BatchNorm layers cannot: the trainer
    then encodes one episode at a time)."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    groupable = [m for m in norms if isinstance(m, EpisodeBatchNorm2d)]
    able = len(groupable) == len(norms)
    for m in groupable if able else []:
        m.episodes = episodes
    try:
        yield able
    finally:
        for m in groupable if able else []:
            m.episodes = 1


def fused_for_inference(encoder: nn.Module) -> nn.Module:
    """An eval-mode copy of `encoder` in which every Conv2d that a BatchNorm2d follows in a
    Sequential (Conv-4's blocks, a ResNet-12's bodies and shortcuts) is one convolution with the
    BatchNorm folded in (`torch.nn.utils.fusion.fuse_conv_bn_eval`): the same features up to float
    rounding, and Conv-4 at 84 px encodes about 1.4x faster on a 2-core CPU (BENCHMARKS.md §8).
    A pair in another arrangement would be copied as it is. For inference only: the copy has no
    BatchNorm, so it neither trains nor updates running statistics. `encoder` is not changed."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    fused = copy.deepcopy(encoder).eval()
    for module in fused.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for i in range(len(module) - 1):
            conv, norm = module[i], module[i + 1]
            if type(conv) is nn.Conv2d and isinstance(norm, nn.BatchNorm2d) and norm.running_mean is not None \
                    and norm.running_var is not None:
                module[i], module[i + 1] = fuse_conv_bn_eval(conv, norm), nn.Identity()
    return fused


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        EpisodeBatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class Encoder(nn.Module):
    """What every encoder is: a module [B, C, S, S] -> [B, out_dim]."""

    out_dim: int


class Conv4(Encoder):
    """Four blocks of conv3x3(pad 1) -> BatchNorm -> ReLU -> max-pool 2, flattened.

    [B, C, S, S] -> [B, out_dim] with out_dim = hidden * (S // 16)^2 after four floor-halvings:
    84 -> 1600, 32 -> 256, 28 -> 64 (hidden = 64 x width).
    """

    def __init__(self, in_channels: int = 3, image_size: int = 84, hidden: int = 64, *, width: Width = 1.0) -> None:
        super().__init__()
        _check_size("Conv-4", image_size)
        self.width = width
        hidden = scaled(hidden, width)
        self.blocks = nn.Sequential(*(conv_block(in_channels if i == 0 else hidden, hidden) for i in range(4)))
        side = image_size
        for _ in range(4):
            side //= 2
        self.out_dim = hidden * side * side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x).flatten(1)


class DropBlock(nn.Module):
    """DropBlock (Ghiasi et al. 2018): drops square blocks of a feature map in training.

    `drop_rate` is the share of units dropped; 0 makes it the identity. The kept units are
    rescaled so that the expected activation is unchanged. Uses the global random generator.
    """

    def __init__(self, drop_rate: float = 0.0, block_size: int = 5) -> None:
        super().__init__()
        self.drop_rate, self.block_size = drop_rate, block_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_rate <= 0:
            return x
        side = x.shape[-1]
        block = min(self.block_size, side)
        valid = max(side - block + 1, 1)
        gamma = self.drop_rate / block ** 2 * side ** 2 / valid ** 2
        centres = (torch.rand(x.shape[0], x.shape[1], valid, valid, device=x.device) < gamma).to(x.dtype)
        pad = block - 1
        mask = 1 - F.max_pool2d(F.pad(centres, (pad, pad, pad, pad)), block, stride=1)[..., :side, :side]
        return x * mask * (mask.numel() / mask.sum().clamp_min(1.0))


class ResidualStage(nn.Module):
    """3 x (conv3x3 -> BN -> leaky ReLU 0.1), the last without its ReLU, plus a 1x1 conv + BN
    shortcut; then leaky ReLU, max-pool 2 and DropBlock. [B, Ci, S, S] -> [B, Co, S//2, S//2]."""

    def __init__(self, in_channels: int, out_channels: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(3):
            layers += [nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1, bias=False),
                       EpisodeBatchNorm2d(out_channels)]
            if i < 2:
                layers.append(nn.LeakyReLU(0.1))
        self.body = nn.Sequential(*layers)
        self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                                      EpisodeBatchNorm2d(out_channels))
        self.pool = nn.MaxPool2d(2)
        self.drop = DropBlock(drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.pool(F.leaky_relu(self.body(x) + self.shortcut(x), 0.1)))


class ResNet12(Encoder):
    """The standard few-shot ResNet-12: four residual stages of 64-160-320-640 channels (times
    `width`), each halving the side, then global average pooling.

    [B, C, S, S] -> [B, out_dim], out_dim = 640 x width whatever S (>= 16). `drop_rate` > 0 adds
    DropBlock to the last two stages (off by default: it needs long schedules to pay).
    """

    CHANNELS = (64, 160, 320, 640)

    def __init__(self, in_channels: int = 3, image_size: int = 84, *, width: Width = 1.0,
                 drop_rate: Annotated[float, Setting("DropBlock's share of dropped units in the last two stages "
                                                     "(0 = off).", low=0.0, high=1.0, high_open=True)] = 0.0) -> None:
        super().__init__()
        _check_size("ResNet-12", image_size)
        self.width, self.drop_rate = width, drop_rate
        widths = [scaled(c, width) for c in self.CHANNELS]
        ins = [in_channels, *widths[:-1]]
        self.stages = nn.Sequential(*(ResidualStage(i, o, drop_rate if k >= 2 else 0.0)
                                      for k, (i, o) in enumerate(zip(ins, widths))))
        self.out_dim = widths[-1]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x).mean((-2, -1))


def build_encoder(name: str, in_channels: int, image_size: int, **settings) -> Encoder:
    """The registered encoder `name` (fsl.components.ENCODERS) with its settings; ValueError naming
    the choices for an unknown one."""
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; choose from {', '.join(ENCODERS)}")
    return ENCODERS.create(name, in_channels, image_size, **settings)
