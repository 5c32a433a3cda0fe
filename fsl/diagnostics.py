"""Hallucination diagnostics: how the hallucinated features of test episodes relate to the real ones.

Logged as metrics of every hallucination run (M > 0), computed on its test episodes (the first
`max_episodes` of them) with the best-by-val model in eval mode. In each episode, for each class c:

- the real features x of c are its support and query features, mu_c their mean, and the real
  within-class spread is sigma_real = sqrt(mean ||x - mu_c||^2) (RMS distance to the class mean,
  over every real feature of every class and episode);
- the hallucinations f of c are the M features the model generates from c's support (as at test
  time), h_c their mean.

Metrics (ratios of sums over all episodes and classes, so no small denominator dominates):

- `halluc_mean_offset` = mean_c ||h_c - mu_c|| / mean_{c != c'} ||mu_c - mu_c'||, in [0, inf):
  how far the hallucinated class mean lies from the real one, in units of the distance between
  real class means. 0: centred on the class; 0.5: half-way to another class.
- `halluc_spread_ratio` = sqrt(mean ||f - h_c||^2) / sigma_real, in [0, inf): the spread of the
  hallucinations around their own mean relative to the real spread. 1: as varied as real
  features; near 0: M copies of one point.
- `halluc_collapse` = 1 - min(1, sqrt(mean ||g(x, z1) - g(x, z2)||^2) / (sqrt(2) * sigma_real)),
  in [0, 1]: how little the output moves when only the noise changes (same seed feature x, the
  first support shot of each class, and the same class mean; z1, z2 independent). Two
  independent draws of a distribution with RMS spread sigma lie sqrt(2) sigma apart on
  average, so 0 means the noise alone spreads the outputs as widely as real class variation,
  and 1 means the generator ignores its noise (mode collapse).
- `halluc_support_offset` and `halluc_prototype_offset`, in [0, inf), in the same units as
  `halluc_mean_offset`: how far the real prototype (the support mean, ProtoNet's) and the final
  prototype (after mixing in the hallucinations, what queries are scored against) lie from the
  real class mean mu_c. Hallucination can only help the nearest-prototype rule where the second
  is smaller than the first.
- `halluc_mix_weight` in [0, 1]: the weight of the hallucinated class mean in the final
  prototype, read off the model's own `combine` as combine(real=0, fake=1) at the test shots K
  and M: Wang's plain mean gives M / (K + M), `improved` gives sigmoid(mix_logit). It works for
  any generator whose `combine(real, fake, real_counts, m)` mixes the two means.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from fsl.evaluate import encode_rows
from fsl.models.distances import prototypes
from fsl.models.noise import PAIR_NOISE, SECOND_NOISE, episode_keys, stream

if TYPE_CHECKING:
    from fsl.models.hallucinator import Hallucinator

METRICS = ("halluc_mean_offset", "halluc_spread_ratio", "halluc_collapse", "halluc_mix_weight",
           "halluc_support_offset", "halluc_prototype_offset")
_SUMS = ("offset", "n_classes", "between", "n_pairs", "fake_sq", "n_fake", "real_sq", "n_real", "noise_sq", "n_noise",
         "support_offset", "prototype_offset")


def diagnostic_sums(real: torch.Tensor, real_labels: torch.Tensor, fake: torch.Tensor, fake_labels: torch.Tensor,
                    noise_a: torch.Tensor, noise_b: torch.Tensor, ways: int,
                    support_protos: torch.Tensor | None = None, final_protos: torch.Tensor | None = None
                    ) -> dict[str, float]:
    """The sums behind the metrics, for E episodes (add the dicts of several batches).

    real [E, R, D] with real_labels int64 [E, R]; fake [E, F, D] with fake_labels [E, F], all
    labels in 0..ways-1; noise_a, noise_b [E, P, D]: generator outputs that differ only in the
    noise, row by row; support_protos, final_protos [E, ways, D]: the real and final prototypes
    (the prototype offsets are left out without them).
    """
    real, fake, noise_a, noise_b = (t.double() for t in (real, fake, noise_a, noise_b))
    mu = prototypes(real, real_labels, ways)                                   # [E, ways, D]
    offsets = {}
    if support_protos is not None and final_protos is not None:
        offsets = {"support_offset": float((support_protos.double() - mu).norm(dim=-1).sum()),
                   "prototype_offset": float((final_protos.double() - mu).norm(dim=-1).sum())}
    h = prototypes(fake, fake_labels, ways)
    between = torch.cdist(mu, mu)                                              # [E, ways, ways]
    return {
        "offset": float((h - mu).norm(dim=-1).sum()), "n_classes": mu.shape[0] * ways,
        "between": float(between.sum()), "n_pairs": mu.shape[0] * ways * (ways - 1),
        "fake_sq": float(((fake - h.gather(-2, _rows(fake_labels, fake))) ** 2).sum()),
        "n_fake": fake.shape[0] * fake.shape[1],
        "real_sq": float(((real - mu.gather(-2, _rows(real_labels, real))) ** 2).sum()),
        "n_real": real.shape[0] * real.shape[1],
        "noise_sq": float(((noise_a - noise_b) ** 2).sum()), "n_noise": noise_a.shape[0] * noise_a.shape[1],
    } | offsets


def _rows(labels: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Gather index that picks each row's class row: labels [E, S] -> [E, S, D]."""
    return labels.unsqueeze(-1).expand(*labels.shape, like.shape[-1])


def add_sums(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: a.get(k, 0) + b.get(k, 0) for k in _SUMS}


def diagnostics_from_sums(s: dict[str, float]) -> dict[str, float]:
    """halluc_mean_offset, halluc_spread_ratio, halluc_collapse and, when the sums have them, the
    prototype offsets (module docstring) from the sums. NaN where a denominator is 0 (one way;
    identical real features)."""
    def ratio(a: float, b: float) -> float:
        return a / b if b > 0 else float("nan")

    sigma = math.sqrt(ratio(s["real_sq"], s["n_real"]))
    noise_rms = math.sqrt(ratio(s["noise_sq"], s["n_noise"]))
    between = ratio(s["between"], s["n_pairs"])
    offsets = {f"halluc_{key}": ratio(ratio(s[key], s["n_classes"]), between)
               for key in ("support_offset", "prototype_offset") if key in s}
    return offsets | {
        "halluc_mean_offset": ratio(ratio(s["offset"], s["n_classes"]), between),
        "halluc_spread_ratio": ratio(math.sqrt(ratio(s["fake_sq"], s["n_fake"])), sigma),
        "halluc_collapse": 1 - min(1.0, ratio(noise_rms, math.sqrt(2) * sigma)),
    }


def feature_diagnostics(real, real_labels, fake, fake_labels, noise_a, noise_b, ways: int) -> dict[str, float]:
    """`diagnostic_sums` then `diagnostics_from_sums`: the metrics of one batch of episodes."""
    return diagnostics_from_sums(diagnostic_sums(real, real_labels, fake, fake_labels, noise_a, noise_b, ways))


@torch.no_grad()
def mix_weight(hallucinator: "Hallucinator", shots: int, M: int) -> float:
    """The weight of the hallucinated mean in the prototype: combine(real=0, fake=1) at K = shots."""
    real, fake = torch.zeros(1, 1, 1), torch.ones(1, 1, 1)
    param = next(hallucinator.parameters(), None)
    if param is not None:
        real, fake = real.to(param.device), fake.to(param.device)
    out = hallucinator.combine(real, fake, torch.full((1, 1), shots, device=real.device), M)
    return float(out.float().mean())


def episode_prototypes(model, support: torch.Tensor, labels: torch.Tensor, ways: int,
                       keys: torch.Tensor | None = None, M: int | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """The real and the final prototypes of episodes, as `FewShotClassifier.logits_from_features`
    makes them (a test checks they give its logits).

    support [E, S, D], labels int64 [E, S], keys int64 [E, ways] (the classes' noise keys) ->
    (real [E, ways, D]: class means of the support;
    final [E, ways, D]: after `combine` with the hallucinations (= real when there are none);
    (fake [E, ways*M, D], fake_labels [E, ways*M]) or None).
    """
    labels = labels.to(support.device)
    real = prototypes(support, labels, ways)
    hallucinated = model.hallucinate_support(support, labels, ways, M, keys)
    if hallucinated is None:
        return real, real, None
    fake, fake_labels = hallucinated
    counts = torch.nn.functional.one_hot(labels, ways).sum(-2)
    final = model.hallucinator.combine(real, prototypes(fake, fake_labels, ways), counts, fake.shape[-2] // ways)
    return real, final, hallucinated


@torch.no_grad()
def hallucination_diagnostics(model, store, episodes, noise_seed: int = 0, max_episodes: int = 100,
                              batch: int = 8) -> dict[str, float]:
    """The six `halluc_*` metrics (module docstring) of `model` on the first `max_episodes` of
    `episodes` (EpisodeIndices of `store`), with the noise the evaluation of the same episodes
    draws (keyed by noise_seed, episode, class). {} for a model that does not hallucinate; a
    metric with no value (NaN: one way, identical features) is left out."""
    M = model.M
    if M <= 0:
        return {}
    shape = episodes.shape
    device = model.device
    episodes = episodes.slice(0, max_episodes)
    rows = torch.unique(torch.cat([episodes.support.flatten(), episodes.query.flatten()]))
    features = encode_rows(model, store.images, rows)
    support_labels = episodes.support_labels().to(device)
    query_labels = episodes.query_labels().to(device)
    first_shots = torch.arange(shape.ways, device=device) * shape.shots  # support is class-major
    sums: dict[str, float] = {}
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(episodes), batch):
            chunk = episodes.slice(start, start + batch)
            e = len(chunk)
            support = features[torch.searchsorted(rows, chunk.support.contiguous()).to(device)]
            query = features[torch.searchsorted(rows, chunk.query.contiguous()).to(device)]
            keys = episode_keys(noise_seed, torch.arange(start, start + e), chunk.classes)
            labels = support_labels.expand(e, -1)
            support_protos, final_protos, (fake, fake_labels) = episode_prototypes(model, support, labels,
                                                                                   shape.ways, keys)
            one, one_labels = support[:, first_shots], support_labels[first_shots].expand(e, -1)
            a = model.hallucinate_support(one, one_labels, shape.ways, keys=stream(keys, SECOND_NOISE))[0]
            b = model.hallucinate_support(one, one_labels, shape.ways, keys=stream(keys, PAIR_NOISE))[0]
            real = torch.cat([support, query], 1)
            real_labels = torch.cat([labels, query_labels.expand(e, -1)], 1)
            sums = add_sums(sums, diagnostic_sums(real, real_labels, fake, fake_labels, a, b, shape.ways,
                                                  support_protos, final_protos))
    finally:
        model.train(was_training)
    metrics = diagnostics_from_sums(sums) | {"halluc_mix_weight": mix_weight(model.hallucinator, shape.shots, M)}
    if next(model.hallucinator.parameters(), None) is None:
        metrics.pop("halluc_collapse")  # a sampler without weights (calibrated) cannot collapse: an empty chart
    return {key: value for key, value in metrics.items() if not math.isnan(value)}
