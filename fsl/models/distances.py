"""Distances between queries and prototypes, and the prototypes themselves: pure functions.

Every function takes an optional leading episode dimension E, so a batch of evaluation
episodes runs as one call. Logits are the negative distance (Snell et al., 2017, eq. 2).
"""

from __future__ import annotations

import torch

from fsl.components import DISTANCES

EPS = 1e-8


def prototypes(features: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
    """Class means. features: [..., S, D]; labels: int64 [..., S] in 0..ways-1 -> [..., ways, D].

    Computed as one-hot^T @ features / counts: a single matmul whatever the order of the rows,
    so episodes from files with uneven shots work too.
    """
    one_hot = torch.nn.functional.one_hot(labels, ways).to(features.dtype)  # [..., S, ways]
    sums = one_hot.transpose(-1, -2) @ features
    counts = one_hot.sum(dim=-2).unsqueeze(-1)
    return sums / counts.clamp_min(1)


def l2(queries: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distance. queries [..., Q, D], protos [..., N, D] -> [..., Q, N]."""
    # |q|^2 - 2 q.p + |p|^2 is one matmul instead of a [Q, N, D] difference tensor (30-way x 1600-d).
    sq = (queries * queries).sum(-1, keepdim=True) - 2 * queries @ protos.transpose(-1, -2) \
        + (protos * protos).sum(-1).unsqueeze(-2)
    return sq.clamp_min(0)


def euclidean(queries: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """Euclidean distance, not squared (easyfsl's `-cdist` logits: a smaller logit scale than
    Snell's squared one). [..., Q, D], [..., N, D] -> [..., Q, N]; the square root is taken of the
    squared distance floored at 1e-12, so its gradient stays finite where a query is a prototype."""
    return l2(queries, protos).clamp_min(1e-12).sqrt()


def cosine(queries: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """1 - cos(q, p), each vector divided by (its norm + 1e-8). [..., Q, D], [..., N, D] -> [..., Q, N]."""
    q = queries / (queries.norm(dim=-1, keepdim=True) + EPS)
    p = protos / (protos.norm(dim=-1, keepdim=True) + EPS)
    return 1 - q @ p.transpose(-1, -2)


def dot(queries: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """Negative dot product. [..., Q, D], [..., N, D] -> [..., Q, N]."""
    return -(queries @ protos.transpose(-1, -2))


def logits(queries: torch.Tensor, protos: torch.Tensor, distance: str) -> torch.Tensor:
    """Negative distance under the named metric, in fp32 whatever the autocast (fp64 stays
    fp64): [..., Q, N]."""
    dtype = torch.promote_types(torch.promote_types(queries.dtype, protos.dtype), torch.float32)
    return -DISTANCES[distance](queries.to(dtype), protos.to(dtype))
