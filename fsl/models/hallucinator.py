"""Feature hallucination (Wang, Girshick, Hebert and Hariharan, CVPR 2018).

A generator maps (a real support feature, Gaussian noise) to a new feature of the same class.
For each class of an episode one real support feature is picked at random and M features are
generated from it, all classes and all M in one batched call.

`calibrated` (CalibratedHallucinator) has no weights: it samples from a class distribution
calibrated with running base-class statistics (Yang, Liu and Xu, ICLR 2021) and acts at test time only.
"""

from __future__ import annotations

from typing import Annotated

import torch
from torch import nn

from fsl import compat
from fsl.models.distances import prototypes
from fsl.models.noise import NOISE, PAIR_NOISE, SECOND_NOISE, SEED_CHOICE, keyed_normal, keyed_uniform, stream
from fsl.settings import Setting

# The old class names that pickled registered models use (fsl.compat.CLASS_ALIASES).
__getattr__ = compat.module_getattr(__name__)

Dropout_p = Annotated[float, Setting("Dropout after the hidden layers (training only).", low=0.0, high=1.0,
                                     high_open=True)]


class Dropout(nn.Dropout):
    """nn.Dropout, with the CPU mask drawn as `rand >= p`: the same distribution, but torch's CPU
    `bernoulli_` took 2.1 ms for a 500 x 384 activation against 0.8 ms this way, and it was
    the largest part of hallucination's cost per step (BENCHMARKS.md). CUDA keeps the fused kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        return x * (torch.rand(x.shape) >= self.p) * (1.0 / (1.0 - self.p))


class Hallucinator(nn.Module):
    """The whole contract of a hallucinator; a new one is a subclass plus one line in HALLUCINATORS.

    - `forward(seeds, noise, class_means[, shots])` -> hallucinated features, all [..., D]: one
      random real feature per class, Gaussian noise, and the class's real mean; `shots` (each
      class's K) is passed only when `conditions_on_shots`;
    - `combine(real, fake, real_counts, M)` -> the prototypes, from the class means of the real
      and the hallucinated features (default: Wang's plain mean of the K + M features);
    - `observe(features, labels, ways)`: sees each training episode's labelled features
      (default: nothing);
    - `trains_with_encoder`: False for a test-time hallucinator, which is off in training mode
      (the encoder then trains exactly as a ProtoNet's, and a sweep tests every M of one model);
    - `extra_loss(features, labels, ways, keys)` -> a term added to the training loss, or None;
    - `uses_base_statistics` / `calibrate(features, labels, classes)`: statistics of all the
      base classes, given by pre-training (which has no episodes to `observe`).
    Constructors take the feature size, then its settings as keyword-only parameters declared
    with `fsl.settings.Setting` and kept under their own names (`--hallucinator-arg NAME=VALUE`):
    a checkpoint saves them and rebuilds the hallucinator with them.
    """

    trains_with_encoder: bool = True
    conditions_on_shots: bool = False
    uses_base_statistics: bool = False

    def combine(self, real: torch.Tensor, fake: torch.Tensor, real_counts: torch.Tensor, M: int) -> torch.Tensor:
        """Prototype = the mean of the K real and M hallucinated features of each class.

        real, fake: class means [..., N, D]; real_counts: K per class [..., N] -> [..., N, D].
        """
        k = real_counts.unsqueeze(-1).to(real.dtype)
        return (k * real + M * fake) / (k + M)

    def observe(self, features: torch.Tensor, labels: torch.Tensor, ways: int) -> None:
        """features [E, S, D], labels int64 [E, S] of a training episode; nothing by default."""

    def extra_loss(self, features: torch.Tensor, labels: torch.Tensor, ways: int,
                   keys: torch.Tensor) -> torch.Tensor | None:
        """A term added to the episode's loss (support features [E, S, D], the classes' noise keys
        [E, ways]); none by default."""
        return None

    def calibrate(self, features: torch.Tensor, labels: torch.Tensor, classes: int) -> None:
        """features [N, D], labels [N] of the base classes; read only where `uses_base_statistics`."""


class WangHallucinator(Hallucinator):
    """The original implementation's generator: [feature, noise] (2d) -> 1.5d -> 1.5d -> d.

    Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear, ReLU; with d = 1600 this is
    3200 -> 2400 -> 2400 -> 1600. The final ReLU matches Conv-4 features, which are >= 0.
    """

    def __init__(self, feature_dim: int, *, dropout: Dropout_p = 0.5) -> None:
        super().__init__()
        hidden = feature_dim * 3 // 2
        self.feature_dim, self.dropout = feature_dim, dropout
        self.net = nn.Sequential(
            nn.Linear(2 * feature_dim, hidden), nn.ReLU(inplace=True), Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True), Dropout(dropout),
            nn.Linear(hidden, feature_dim), nn.ReLU(inplace=True),
        )

    def forward(self, seeds: torch.Tensor, noise: torch.Tensor, class_means: torch.Tensor) -> torch.Tensor:
        """seeds [..., D], noise [..., D], class_means [..., D] (unused here) -> [..., D]."""
        return self.net(torch.cat([seeds, noise], dim=-1))


class PrototypeResidualHallucinator(Hallucinator):
    """The `improved` hallucinator: conditioned on the class, residual, and mixed by a learned weight.

    Why: Wang's prototype is the plain mean of K real and M hallucinated features, so the
    hallucinations weigh M / (K + M): 99% of a 1-shot prototype at M = 100. Whatever bias the
    generator has then becomes the prototype's, and accuracy falls as M grows (our M table and
    the original study's flat curve both show it). Three changes:
    (1) The prototype is (1 - a) * mean(real) + a * mean(hallucinated) with a learned a (started
        at 0.1): how much to trust hallucinations is learned, and no longer grows with M; more
        samples only reduce the noise of their mean.
    (2) The generator sees the class mean of the real support as well as one seed, so it knows
        the class and not only one example, and predicts a gated residual around the seed, so
        at initialisation it already proposes plausible features of the right class.
    (3) A small mode-seeking term (Mao et al. 2019, as in AFHN, Li et al. 2020; weight
        `diversity_weight`) keeps different noises from giving the same feature.
    """

    def __init__(self, feature_dim: int, *, dropout: Dropout_p = 0.1,
                 initial_mix: Annotated[float, Setting("The starting weight of the hallucinated mean in the prototype "
                                                       "(learned from there).", low=0.0, high=1.0, low_open=True,
                                                       high_open=True)] = 0.1,
                 diversity_weight: Annotated[float, Setting("Weight of the anti-collapse (mode-seeking) term of the "
                                                            "training loss.", low=0.0)] = 0.1) -> None:
        super().__init__()
        hidden = feature_dim * 3 // 2
        self.feature_dim, self.dropout, self.initial_mix = feature_dim, dropout, initial_mix
        self.diversity_weight = diversity_weight
        self.net = nn.Sequential(
            nn.Linear(3 * feature_dim, hidden), nn.ReLU(inplace=True), Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, 2 * feature_dim),
        )
        self.mix_logit = nn.Parameter(torch.logit(torch.tensor(initial_mix)))

    def extra_loss(self, features: torch.Tensor, labels: torch.Tensor, ways: int,
                   keys: torch.Tensor) -> torch.Tensor | None:
        if not self.diversity_weight:
            return None
        return self.diversity_weight * mode_seeking_loss(self, features, labels, ways, keys)

    def forward(self, seeds: torch.Tensor, noise: torch.Tensor, class_means: torch.Tensor) -> torch.Tensor:
        """seeds, noise, class_means: [..., D] -> hallucinated features [..., D] (>= 0)."""
        delta, gate = self.net(torch.cat([seeds, noise, class_means], dim=-1)).chunk(2, dim=-1)
        return torch.relu(seeds + torch.sigmoid(gate) * delta)

    def combine(self, real: torch.Tensor, fake: torch.Tensor, real_counts: torch.Tensor, M: int) -> torch.Tensor:
        """Prototype = (1 - a) * real class mean + a * hallucinated class mean, a learned."""
        a = torch.sigmoid(self.mix_logit.float())
        return (1 - a) * real + a * fake


class CalibratedHallucinator(Hallucinator):
    """`calibrated`: hallucinate from a class distribution calibrated with base-class statistics.

    After distribution calibration (Yang, Liu and Xu, ICLR 2021, "Free Lunch for Few-shot
    Learning"): a class seen through K shots is given the spread of the base (training) classes
    and a centre moved from its shot mean towards what the base classes say class centres look
    like; M features are then drawn from that distribution. Why this and not a learned
    generator: with a prototype that is a mean, zero-mean noise around the real features cannot
    move the prototype, so any gain must come from a better estimate of the class centre. On
    trained ProtoNet features of the built-in data (benchmarks/calibration_probe.py of commit 305bf4b, 5-way
    1-shot) the paper's own recipe lost accuracy: the centre (shot + k nearest base means) /
    (k + 1) cost 1-3 points raw and 2-7 with Tukey's transform, and Tukey-transformed queries
    cost 9-12 (the encoder is trained for L2 on raw features). The empirical-Bayes form of the
    same idea, a shrinkage of each dimension towards the base-class grand mean, gained 3.6 and
    4.1 points on two encoders (seeds 0, 1), and about +0.5 at 5-shot:

        centre ~ N(g, T)        per dimension, T_d = between-class variance of base class centres
        feature ~ N(centre, S)  S_d = within-class variance of the base classes
        centre | K shots with mean x  ~  N((1 - a) x + a g, a T),   a_d = (S_d / K) / (S_d / K + T_d)

    which is the Bayes-optimal (James-Stein-like) centre for the nearest-prototype rule when the
    query has the same within-class variance for every class. Hallucinations are drawn from the
    posterior predictive N((1 - a) x + a g, S + a T), so the spread is the base classes' (as in
    the paper) and the prototype, the plain mean of K real and M hallucinated features (Wang's
    rule), tends to the posterior centre as M grows. Noise is used in antithetic pairs (z, -z),
    so the hallucinations' mean carries no sampling noise and M = 10 is as good as M = 100.

    g, S and T are running averages (buffers, so a checkpoint carries them) gathered by
    `observe` from the training episodes, support and query, with episode labels only. The
    generator has no weights and does not act during training: the encoder is trained exactly
    as a ProtoNet (the same seed gives the same training steps), so the whole gain is the
    calibration; before any `observe` it hallucinates the real mean itself (ProtoNet prototypes).
    """

    trains_with_encoder = False   # FewShotClassifier: no hallucination in training mode
    conditions_on_shots = True    # hallucinate(): pass each class's K to forward
    uses_base_statistics = True   # fit(): `calibrate` after each pre-training epoch
    # buffers (register_buffer), declared for the type checker
    grand_mean: torch.Tensor
    within_var: torch.Tensor
    between_var: torch.Tensor
    observed: torch.Tensor

    def __init__(self, feature_dim: int, *,
                 momentum: Annotated[float, Setting("Weight of each new training episode in the running base-class "
                                                    "statistics, after the first 1 / momentum.", low=0.0, high=1.0,
                                                    low_open=True)] = 0.01) -> None:
        super().__init__()
        self.feature_dim, self.momentum = feature_dim, momentum
        self.register_buffer("grand_mean", torch.zeros(feature_dim))    # g   [D]
        self.register_buffer("within_var", torch.zeros(feature_dim))    # S   [D]
        self.register_buffer("between_var", torch.zeros(feature_dim))   # T   [D]
        self.register_buffer("observed", torch.zeros((), dtype=torch.long))  # episodes seen

    @torch.no_grad()
    def observe(self, features: torch.Tensor, labels: torch.Tensor, ways: int) -> None:
        """Update g, S, T from labelled training episodes (support and query together).

        features float [E, S, D], labels int64 [E, S] in 0..ways-1 (at least 2 per class).
        S: pooled within-class variance; T: variance of the class means across the episode's
        classes (unbiased over classes), less the part due to estimating each mean from n images.
        The first episodes are averaged equally, later ones with weight `momentum` (EMA), so
        the statistics follow the encoder as it trains.
        """
        f = features.detach().to(self.grand_mean.dtype)
        onehot = torch.nn.functional.one_hot(labels, ways).to(f.dtype)             # [E, S, N]
        counts = onehot.sum(-2)                                                     # [E, N]
        means = onehot.transpose(-1, -2) @ f / counts.unsqueeze(-1)                 # [E, N, D]
        resid = f - onehot @ means                                                  # [E, S, D]
        within = (resid ** 2).sum((0, 1)) / (f.shape[0] * (f.shape[1] - ways))
        spread = ((means - means.mean(-2, keepdim=True)) ** 2).sum(-2) / (ways - 1)  # [E, D]
        n_harmonic = ways / (1.0 / counts).sum(-1, keepdim=True)                    # [E, 1]
        between = (spread - within / n_harmonic).mean(0).clamp_min(0)
        w = (1.0 / (self.observed + 1).float()).clamp_min(self.momentum)  # a device tensor: no host sync
        for buffer, value in ((self.grand_mean, f.mean((0, 1))), (self.within_var, within),
                              (self.between_var, between)):
            buffer.lerp_(value, w)
        self.observed += 1

    @torch.no_grad()
    def calibrate(self, features: torch.Tensor, labels: torch.Tensor, classes: int) -> None:
        """Set g, S, T afresh from labelled base-class features: features float [N, D], labels
        int64 [N] in 0..classes-1 (at least 2 images per class). For an encoder trained without
        episodes (pre-training), where `observe` never ran; one `observe` of all classes at once."""
        f = features.detach().to(self.grand_mean.dtype)
        counts = torch.bincount(labels, minlength=classes).to(f.dtype)                     # [C]
        present = counts > 0
        means = torch.zeros(classes, f.shape[-1], device=f.device, dtype=f.dtype).index_add_(0, labels, f)
        means = means[present] / counts[present, None]                                       # [C', D]
        resid = f - means[torch.cumsum(present.long(), 0)[labels] - 1]
        ways = int(present.sum())
        within = (resid ** 2).sum(0) / (f.shape[0] - ways)
        spread = ((means - means.mean(0)) ** 2).sum(0) / (ways - 1)
        n_harmonic = ways / (1.0 / counts[present]).sum()
        # the formulas of `observe` for one episode of all classes, without its [N, C] one-hot
        self.grand_mean.copy_(f.mean(0))
        self.within_var.copy_(within)
        self.between_var.copy_((spread - within / n_harmonic).clamp_min(0))
        self.observed.fill_(1)

    def posterior(self, class_means: torch.Tensor, shots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """class_means [..., D] (the mean of K real shots), shots [...] (K) ->
        (posterior centre [..., D], predictive std [..., D])."""
        noise_var = self.within_var / shots.unsqueeze(-1).to(class_means.dtype)      # S / K
        a = noise_var / (noise_var + self.between_var).clamp_min(1e-12)             # 0 before observe
        centre = class_means + a * (self.grand_mean - class_means)
        return centre, (self.within_var + a * self.between_var).sqrt()

    def forward(self, seeds: torch.Tensor, noise: torch.Tensor, class_means: torch.Tensor,
                shots: torch.Tensor | None = None) -> torch.Tensor:
        """seeds (unused), noise, class_means: [..., M, D]; shots: K per row [..., M] (default 1)
        -> hallucinated features [..., M, D], >= 0 like Conv-4 features.

        Noise along the M axis is made antithetic: the second half is minus the first, so the
        mean of an even number of hallucinations is exactly the posterior centre.
        """
        if shots is None:
            shots = torch.ones(class_means.shape[:-1], device=class_means.device)
        half = noise.shape[-2] // 2
        if noise.dim() >= 2 and half:
            noise = torch.cat([noise[..., :half, :], -noise[..., :half, :], noise[..., 2 * half:, :]], dim=-2)
        dtype = self.grand_mean.dtype  # float32, or float64 in a fp64 model
        centre, std = self.posterior(class_means.to(dtype), shots)
        return torch.relu(centre + std * noise.to(dtype)).to(class_means.dtype)


def pick_seeds(features: torch.Tensor, labels: torch.Tensor, ways: int, keys: torch.Tensor) -> torch.Tensor:
    """For each class, the row of one support feature chosen uniformly at random.

    features [..., S, D], labels int64 [..., S] in 0..ways-1, keys int64 [..., ways] (the classes'
    noise keys, `fsl.models.noise`) -> int64 [..., ways] (row indices into S). The choice is a
    rank among the class's rows ordered by their features, drawn from the class's key: the same
    feature is picked whatever the order of the support rows.
    """
    u = keyed_uniform(stream(keys, SEED_CHOICE), features.device, torch.float64)          # [..., ways]
    member = labels.unsqueeze(-2) == torch.arange(ways, device=labels.device).unsqueeze(-1)  # [..., ways, S]
    counts = member.sum(-1)
    rank = (u * counts).floor().long().clamp(min=0).minimum(counts - 1)
    score = features.detach().double().sum(-1).unsqueeze(-2).expand(member.shape)
    order = torch.where(member, score, torch.full_like(score, float("inf"))).argsort(dim=-1, stable=True)
    return order.gather(-1, rank.unsqueeze(-1)).squeeze(-1)


def seeds_and_means(features: torch.Tensor, labels: torch.Tensor, ways: int,
                    keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The generator's inputs per class: one random real feature, and the real class mean.

    features [..., S, D], labels [..., S], keys int64 [..., ways] -> (seeds [..., ways, D], means [..., ways, D]).
    """
    rows = pick_seeds(features, labels, ways, keys)
    seeds = features.gather(-2, rows.unsqueeze(-1).expand(*rows.shape, features.shape[-1]))
    return seeds, prototypes(features, labels, ways)


def hallucinate(hallucinator: Hallucinator, features: torch.Tensor, labels: torch.Tensor, ways: int, M: int,
                keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """M new features per class, all in one generator call.

    features: [..., S, D] real support features; labels: int64 [..., S] in 0..ways-1; keys: int64
    [..., ways], each class's noise key (`fsl.models.noise.episode_keys`): the seed choice and the
    noise of a class depend on its key alone, not on where it sits in the episode or the batch.
    Returns (hallucinated [..., ways*M, D], their labels int64 [..., ways*M]), class-major.
    """
    seeds, means = seeds_and_means(features, labels, ways, keys)           # [..., ways, D] each
    shape = (*seeds.shape[:-1], M, features.shape[-1])                          # [..., ways, M, D]
    noise = keyed_normal(stream(keys, NOISE), shape[-2:], features.device, features.dtype)
    extra = {}
    if hallucinator.conditions_on_shots:  # K real shots per class, for a K-aware generator
        shots = torch.nn.functional.one_hot(labels, ways).sum(-2)                # [..., ways]
        extra["shots"] = shots.unsqueeze(-1).expand(shape[:-1])
    fake = hallucinator(seeds.unsqueeze(-2).expand(shape), noise, means.unsqueeze(-2).expand(shape), **extra)
    fake_labels = torch.arange(ways, device=labels.device).repeat_interleave(M)
    fake_labels = fake_labels.expand(*labels.shape[:-1], ways * M)
    return fake.reshape(*shape[:-3], ways * M, shape[-1]), fake_labels


def mode_seeking_loss(hallucinator: Hallucinator, features: torch.Tensor, labels: torch.Tensor, ways: int,
                      keys: torch.Tensor) -> torch.Tensor:
    """Anti-collapse regulariser: mean of |z1 - z2| / |g(z1) - g(z2)| over one pair per class.

    Small when different noises give different features; it grows without bound as the
    generator collapses (Mao et al., CVPR 2019). features [..., S, D], keys [..., ways]; a scalar.
    """
    seeds, means = seeds_and_means(features, labels, ways, keys)
    z1 = keyed_normal(stream(keys, PAIR_NOISE), seeds.shape[-1:], features.device, features.dtype)
    z2 = keyed_normal(stream(keys, SECOND_NOISE), seeds.shape[-1:], features.device, features.dtype)
    out_gap = (hallucinator(seeds, z1, means) - hallucinator(seeds, z2, means)).abs().mean(-1)
    noise_gap = (z1 - z2).abs().mean(-1)
    return (noise_gap / (out_gap + 1e-5)).mean()

