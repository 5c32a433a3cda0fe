"""Heads: the classifier of a batch of episodes on their features, chosen at test time (`--head`).

A head is called on E episodes at once, on the device, with no Python loop over episodes:

    head(support [E, S, D], labels int64 [E, S] in 0..N-1, queries [E, Q, D], ways N,
         weights [E, S] or None) -> logits or log-probabilities [E, Q, N]

`weights` say how much each support row counts (a hallucinated row may count less than a real
one: `hallucinated_weight`); a head that cannot weigh rows ignores them. The maths are the pure
functions of `fsl.models.head_maths` (equations, shapes and sources in their docstrings); a
class here only declares the head's settings (`fsl.settings`) and whether it is transductive
(it reads the episode's queries as unlabelled data; such a result is never ranked against
inductive ones without saying so). A new head is one class and one line in `fsl.components.HEADS`.

`prototype` is the model's own rule (its distance, logit scale, CL2N and the hallucinator's
combine rule: `FewShotClassifier.logits_from_features`); it is what training and validation use,
whatever `--head` says.
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F

from fsl.models import head_maths
from fsl.settings import Setting

Iterations = Annotated[int, Setting("Iterations of the head's optimisation or updates.", low=1, high=100_000)]
HallucinatedWeight = Annotated[float, Setting("How much a hallucinated support feature counts against a real one "
                                              "(1: the same).", low=0.0)]


class Head:
    """The contract of a head (see the module docstring). `own_features`: the head transforms the
    raw features itself (PT-MAP), so the model's --feature-transform does not apply to them.
    `wants_features`: the feature transform the head's reference code feeds it (LaplacianShot:
    CL2N); a model with another gets a warning line (`fsl.config.head_feature_warning`).
    `cpu_chunk_bytes`: on a CPU, the episodes go through `classify` in chunks whose features take
    about this many bytes (None: all at once). Each episode's answer is its own, so chunks change
    no result; they keep a chunk's intermediates in the CPU's caches. At D = 1600 the 1,000-episode
    batch of BD-CSPN was 3x slower than chunks of 25 episodes (13 MB), slower than the loop over
    single episodes (BENCHMARKS.md §9); on a GPU one large batch is best."""

    transductive: bool = False
    own_features: bool = False
    cpu_chunk_bytes: int | None = None
    wants_features: str | None = None  # the --feature-transform its reference feeds it: other features warn

    def __call__(self, support: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor, ways: int,
                 weights: torch.Tensor | None = None) -> torch.Tensor:
        E, S, D = support.shape
        per_episode = max(1, (S + queries.shape[1]) * D * support.element_size())
        step = E if self.cpu_chunk_bytes is None or support.device.type != "cpu" \
            else max(1, self.cpu_chunk_bytes // per_episode)
        if step >= E:
            return self.classify(support, labels, queries, ways, weights)
        return torch.cat([self.classify(support[i:i + step], labels[i:i + step], queries[i:i + step], ways,
                                        None if weights is None else weights[i:i + step]) for i in range(0, E, step)])

    def classify(self, support: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor, ways: int,
                 weights: torch.Tensor | None = None) -> torch.Tensor:
        """The head on a batch of episodes: the contract's shapes (module docstring)."""
        raise NotImplementedError


class Prototype(Head):
    """Nearest prototype (Snell et al. 2017): the model's own rule. Inductive."""

    def classify(self, support, labels, queries, ways, weights=None):
        return head_maths.prototype_logits(support, labels, queries, ways)


class Logistic(Head):
    """Multinomial logistic regression on the (l2-normalised) support features, Adam for `steps`
    steps with an L2 penalty 1/C (Tian et al. 2020; Free Lunch, Yang et al. 2021). Inductive."""

    cpu_chunk_bytes = 64 << 20  # 100 episodes at D = 1600: 1.4x faster than 1,000 at once on CPU-4

    def __init__(self, *, steps: Iterations = 100,
                 lr: Annotated[float, Setting("Adam's learning rate.", low=0.0, low_open=True)] = 0.1,
                 C: Annotated[float, Setting("Inverse L2 penalty, as sklearn's C.", low=0.0, low_open=True)] = 1.0,
                 normalise: Annotated[bool, Setting("l2-normalise the features first (they then are of order "
                                                    "one, which lr assumes).")] = True,
                 hallucinated_weight: HallucinatedWeight = 1.0) -> None:
        self.steps, self.lr, self.C, self.normalise = steps, lr, C, normalise
        self.hallucinated_weight = hallucinated_weight

    def classify(self, support, labels, queries, ways, weights=None):
        if self.normalise:
            support, queries = F.normalize(support, dim=-1), F.normalize(queries, dim=-1)
        return head_maths.logistic_logits(support, labels, queries, ways, steps=self.steps, lr=self.lr, C=self.C,
                                          sample_weights=weights)


class BDCSPN(Head):
    """BD-CSPN prototype rectification (Liu et al. 2020). Transductive."""

    transductive = True
    cpu_chunk_bytes = 16 << 20  # 25-40 episodes at D = 1600: 3x faster than 1,000 at once on CPU-4

    def __init__(self, *, epsilon: Annotated[float, Setting("Softmax scale of the cosine weights.", low=0.0,
                                                            low_open=True)] = 10.0) -> None:
        self.epsilon = epsilon

    def classify(self, support, labels, queries, ways, weights=None):
        return head_maths.bd_cspn_logits(support, labels, queries, ways, epsilon=self.epsilon)


class Laplacian(Head):
    """LaplacianShot (Ziko et al. 2020): bound updates over a k-nearest-neighbour graph of the
    queries. Transductive. Its reference feeds it CL2N features: on the Omniglot recipe's own
    (non-negative, uncentred) features it scores near chance (BENCHMARKS.md §9)."""

    transductive = True
    wants_features = "cl2n"
    cpu_chunk_bytes = 16 << 20  # 1.6x faster than 1,000 episodes at once at D = 1600 on CPU-4

    def __init__(self, *, knn: Annotated[int, Setting("Neighbours in the query graph (itself included, as "
                                                      "the reference).", low=2, high=1000)] = 3,
                 lam: Annotated[float, Setting("Weight of the Laplacian term.", low=0.0)] = 1.0,
                 iterations: Iterations = 20) -> None:
        self.knn, self.lam, self.iterations = knn, lam, iterations

    def classify(self, support, labels, queries, ways, weights=None):
        return head_maths.laplacian_logits(support, labels, queries, ways, knn=self.knn, lam=self.lam,
                                           iterations=self.iterations)


class TIM(Head):
    """TIM-GD (Boudiaf et al. 2020): mutual information of the queries and their predictions,
    maximised by gradient descent from the prototypes. Transductive; assumes balanced queries."""

    transductive = True
    cpu_chunk_bytes = 16 << 20  # 1.15-1.25x faster than 1,000 episodes at once at D = 1600 on CPU-4

    def __init__(self, *, iterations: Iterations = 1000,
                 lr: Annotated[float, Setting("Adam's learning rate.", low=0.0, low_open=True)] = 1e-4,
                 temperature: Annotated[float, Setting("Scale of the logits.", low=0.0, low_open=True)] = 15.0) -> None:
        self.iterations, self.lr, self.temperature = iterations, lr, temperature

    def classify(self, support, labels, queries, ways, weights=None):
        support, queries = F.normalize(support, dim=-1), F.normalize(queries, dim=-1)  # as the reference
        return head_maths.tim_logits(support, labels, queries, ways, iterations=self.iterations, lr=self.lr,
                                     temperature=self.temperature)


class PTMap(Head):
    """PT-MAP (Hu et al. 2021): power transform, then iterated optimal transport of the queries to
    the class centres. Transductive; assumes balanced queries; needs non-negative features."""

    transductive = True
    own_features = True  # its power transform, l2 and centring replace the model's feature transform

    def __init__(self, *, beta: Annotated[float, Setting("Power of Tukey's transform (features >= 0).", low=0.0,
                                                         low_open=True, high=1.0)] = 0.5,
                 lam: Annotated[float, Setting("Entropic regularisation of the transport.", low=0.0,
                                               low_open=True)] = 10.0,
                 alpha: Annotated[float, Setting("Step of the centre update.", low=0.0, high=1.0)] = 0.2,
                 iterations: Iterations = 20) -> None:
        self.beta, self.lam, self.alpha, self.iterations = beta, lam, alpha, iterations

    def classify(self, support, labels, queries, ways, weights=None):
        return head_maths.pt_map_logits(support, labels, queries, ways, beta=self.beta, lam=self.lam,
                                        alpha=self.alpha, iterations=self.iterations)
