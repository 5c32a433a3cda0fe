"""Test-time few-shot classifiers ("heads") as pure, batched torch functions.

Every head takes a batch of E episodes at once and never loops over them in Python; the
iterative ones run each iteration for all episodes together. Common signature:

    head(support [E, S, D] float, labels int64 [E, S] in 0..N-1, queries [E, Q, D], ways N, **hyper)
        -> [E, Q, N] float32 logits (or log-probabilities, said per head)

Every class must have at least one support row; shots may differ between classes. Each episode's
answer depends on that episode alone (episode-wise losses are summed, so autograd and Adam, which
is element-wise, treat the episodes independently; iterations that stop on a tolerance keep a
per-episode "still running" mask). `per_episode(head)` runs a head one E=1 slice at a time: the
reference that the batched form must match. Compute is in fp32 (fp64 inputs stay fp64).

The maths, defaults and their sources are written up in /work/notes/heads_spec.md.
Heads: `prototype_logits`, `logistic_logits`, `bd_cspn_logits`, `laplacian_logits`, `tim_logits`,
`pt_map_logits`; plus `power_transform` (Tukey's ladder of powers).
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F

Head = Callable[..., torch.Tensor]

NORM_EPS = 1e-12  # F.normalize's default: a zero vector stays zero instead of becoming NaN
LOG_EPS = 1e-12   # inside log(p) of entropies, as in the TIM reference (src/utils.py)


# ----------------------------------------------------------------------------------------------
# shared pieces


def _dtype(*tensors: torch.Tensor) -> torch.dtype:
    """fp32, or fp64 when an input is fp64 (half inputs are promoted: iterative heads need fp32)."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _check(support: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor, ways: int) -> None:
    """Shape checks only: label values are not read, so no host-device sync."""
    if support.dim() != 3 or queries.dim() != 3 or labels.dim() != 2:
        raise ValueError(f"expected support [E, S, D], labels [E, S], queries [E, Q, D]; got "
                         f"{tuple(support.shape)}, {tuple(labels.shape)}, {tuple(queries.shape)}")
    if support.shape[:2] != labels.shape or support.shape[0] != queries.shape[0] \
            or support.shape[2] != queries.shape[2]:
        raise ValueError(f"shapes disagree: support {tuple(support.shape)}, labels {tuple(labels.shape)}, "
                         f"queries {tuple(queries.shape)}")
    if ways < 1:
        raise ValueError(f"ways must be >= 1, got {ways}")


def one_hot(labels: torch.Tensor, ways: int, dtype: torch.dtype) -> torch.Tensor:
    """int64 [E, S] -> [E, S, N] of 0/1 in `dtype`."""
    return F.one_hot(labels, ways).to(dtype)


def class_means(support: torch.Tensor, labels: torch.Tensor, ways: int,
                weights: torch.Tensor | None = None) -> torch.Tensor:
    """(Weighted) class means mu_n = sum_i w_i [y_i = n] x_i / sum_i w_i [y_i = n]:
    [E, S, D], [E, S] (, [E, S]) -> [E, N, D]. One matmul, so unequal shots cost nothing."""
    onehot = one_hot(labels, ways, support.dtype)  # [E, S, N]
    if weights is not None:
        onehot = onehot * weights.to(support.dtype).unsqueeze(-1)
    sums = onehot.transpose(1, 2) @ support  # [E, N, D]
    return sums / onehot.sum(1).unsqueeze(-1).clamp_min(torch.finfo(support.dtype).tiny)


def sq_norms(x: torch.Tensor) -> torch.Tensor:
    """|x|^2 over the last dimension, kept: [..., D] -> [..., 1]. vector_norm reads x once; (x * x).sum
    first writes the whole product (10x slower on [1000, 75, 1600])."""
    return torch.linalg.vector_norm(x, dim=-1, keepdim=True).square()


def sq_distances(a: torch.Tensor, b: torch.Tensor, a_sq: torch.Tensor | None = None) -> torch.Tensor:
    """||a_i - b_j||^2: [E, A, D], [E, B, D] -> [E, A, B], as |a|^2 - 2 a.b + |b|^2 (one bmm, no
    [E, A, B, D] difference tensor; clamped at 0 against rounding). a_sq: |a|^2 [E, A, 1] if known.
    The 2 scales the [E, A, B] product, not a: `2 * a @ b` doubles all of a first (Python reads it
    (2 * a) @ b), which was half of PT-MAP's time at D = 1600. Doubling is exact, so the numbers
    are the same bits."""
    a_sq = sq_norms(a) if a_sq is None else a_sq
    return (a_sq - (a @ b.transpose(1, 2)).mul_(2) + sq_norms(b).transpose(1, 2)).clamp_min(0)


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """cos(a_i, b_j): [E, A, D], [E, B, D] -> [E, A, B]."""
    return F.normalize(a, dim=-1, eps=NORM_EPS) @ F.normalize(b, dim=-1, eps=NORM_EPS).transpose(1, 2)


def power_transform(x: torch.Tensor, beta: float = 0.5, eps: float = 1e-6) -> torch.Tensor:
    """Tukey's ladder of powers, as in PT-MAP (Hu, Gripon, Pateux, ICANN 2021, eq. 1) and Free
    Lunch (Yang, Liu, Xu, ICLR 2021, eq. 3), element-wise on any shape:

        f(x) = (x + eps)^beta   if beta != 0
        f(x) = log(x + eps)     if beta == 0

    REQUIRES x >= 0 (features after a ReLU / average pool): a fractional power of a negative
    number is NaN, so negative inputs raise ValueError instead of silently poisoning every head
    downstream (this check reads the tensor: one host-device sync). beta = 0.5 is the papers'
    value; eps = 1e-6 keeps the derivative finite at 0 (PT-MAP's test_standard.py uses 1e-6).
    """
    if bool((x < 0).any()):
        raise ValueError("power_transform needs non-negative inputs (e.g. post-ReLU features); "
                         f"min is {x.min().item():.4g}")
    if beta == 0:
        return torch.add(x, eps).log_()
    return torch.add(x, eps).pow_(beta)  # in place on the one new tensor: these are the big ones


def per_episode(head: Head) -> Head:
    """The plain reference of a batched head: run it on each E=1 slice and stack the answers.

    `per_episode(tim_logits)(support, labels, queries, ways, **hyper)` does the same maths one
    episode at a time (tolerance-based stopping is then decided per episode by construction), so
    tests and benchmarks can compare it with the batched call. Keyword tensors whose leading
    dimension is E (e.g. `sample_weights` [E, S]) are sliced with the episodes; others pass as is.
    """
    @functools.wraps(head)
    def loop(support: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor, ways: int,
             **hyper: object) -> torch.Tensor:
        E = support.shape[0]
        outs = []
        for e in range(E):
            sliced = {k: v[e:e + 1] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == E else v
                      for k, v in hyper.items()}
            outs.append(head(support[e:e + 1], labels[e:e + 1], queries[e:e + 1], ways, **sliced))
        return torch.cat(outs, 0)
    return loop


class Adam:
    """Adam (Kingma and Ba, 2015) with torch.optim.Adam's defaults (betas 0.9, 0.999, eps 1e-8, no
    weight decay), element-wise on a list of tensors, so E episodes stacked in one tensor are E
    independent optimisations. Written out because torch.optim's per-step bookkeeping made a
    one-episode 5-way step 45% slower (0.28 vs 0.19 ms, one thread), which the loop pays E times."""

    def __init__(self, params: list[torch.Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.params, self.lr, self.betas, self.eps, self.t = params, lr, betas, eps, 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    def step(self, grads: tuple[torch.Tensor, ...]) -> None:
        """p <- p - lr mhat / (sqrt(vhat) + eps), in place, without autograd."""
        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        with torch.no_grad():
            for p, g, m, v in zip(self.params, grads, self.m, self.v):
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                p.addcdiv_(m, (v / c2).sqrt_().add_(self.eps), value=-self.lr / c1)


# ----------------------------------------------------------------------------------------------
# 1. ProtoNet


def prototype_logits(support: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor,
                     ways: int) -> torch.Tensor:
    """Nearest class mean (Snell, Swersky, Zemel, NeurIPS 2017, eq. 1-2). Inductive.

        mu_n = mean_{i: y_i = n} x_i                 [E, N, D]
        logit_{q,n} = -||x_q - mu_n||^2              [E, Q, N]
    """
    _check(support, labels, queries, ways)
    dtype = _dtype(support, queries)
    s, q = support.to(dtype), queries.to(dtype)
    return -sq_distances(q, class_means(s, labels, ways))


# ----------------------------------------------------------------------------------------------
# 2. logistic regression


def logistic_logits(support: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor, ways: int, *,
                    steps: int = 100, lr: float = 0.1, C: float = 1.0, bias: bool = True,
                    init: str = "zeros", sample_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Multinomial logistic regression fitted on the support features; logits of the queries.
    Inductive. The classifier of Tian et al. 2020 ("Rethinking Few-Shot Image Classification",
    rfs eval/meta_eval.py) and of Yang et al. ICLR 2021 ("Free Lunch", evaluate_DC.py), both
    sklearn LogisticRegression(C=1, lbfgs, max_iter=1000), whose objective this minimises:

        z_i = W x_i + b                 W [E, N, D], b [E, N], z [E, S, N]
        L_e = sum_i w_i CE(z_i, y_i) / sum_i w_i  +  ||W_e||_F^2 / (2 C sum_i w_i)

    i.e. sklearn's C sum_i w_i CE_i + ||W||^2 / 2 divided by C sum_i w_i (same minimiser; the bias
    is not penalised, as in sklearn). Optimiser: `steps` full-batch Adam steps of rate `lr` on the
    sum over episodes of L_e (Adam is element-wise, so episodes do not interact; L-BFGS would mix
    them through its line search). Adam's steps do not depend on the scale of the features, but
    `lr` does assume features of order one: the caller normalises (l2, Tukey, ...).

    init: "zeros" (sklearn's start) or "prototypes": W = mu, b = -||mu||^2 / 2, where the first
    step already is the nearest-mean rule (mu weighted by sample_weights).
    sample_weights [E, S] >= 0: how much each support row counts (e.g. hallucinated rows less than
    real ones); a row of weight 0 has no effect at all. None: all 1.
    Runs under torch.no_grad() too (the fit enables grad locally); inputs are not differentiated.
    """
    _check(support, labels, queries, ways)
    dtype = _dtype(support, queries)
    s, q = support.detach().to(dtype), queries.detach().to(dtype)
    w = torch.ones(labels.shape, dtype=dtype, device=s.device) if sample_weights is None \
        else sample_weights.detach().to(dtype)
    total = w.sum(1).clamp_min(torch.finfo(dtype).tiny)  # [E]
    onehot = one_hot(labels, ways, dtype)
    W, b = _logistic_init(s, labels, ways, w, init, bias)
    params = [W, b] if bias else [W]
    with torch.enable_grad():
        opt = Adam(params, lr=lr)
        for _ in range(steps):
            logits = s @ W.transpose(1, 2) + b.unsqueeze(1)  # [E, S, N]
            ce = -(onehot * logits.log_softmax(-1)).sum(-1)  # [E, S]
            loss_e = (w * ce).sum(1) / total + (W * W).sum((1, 2)) / (2 * C * total)
            opt.step(torch.autograd.grad(loss_e.sum(), params))
    return (q @ W.transpose(1, 2) + b.unsqueeze(1)).detach()


def _logistic_init(s: torch.Tensor, labels: torch.Tensor, ways: int, w: torch.Tensor, init: str,
                   bias: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Leaf tensors W [E, N, D], b [E, N] for `logistic_logits` (b stays 0 and is not trained
    without bias)."""
    E, _, D = s.shape
    if init == "zeros":
        W = torch.zeros(E, ways, D, dtype=s.dtype, device=s.device)
        b = torch.zeros(E, ways, dtype=s.dtype, device=s.device)
    elif init == "prototypes":
        W = class_means(s, labels, ways, w)
        b = -0.5 * (W * W).sum(-1) if bias else torch.zeros(E, ways, dtype=s.dtype, device=s.device)
    else:
        raise ValueError(f"init must be 'zeros' or 'prototypes', got {init!r}")
    return W.clone().requires_grad_(True), b.clone().requires_grad_(bias)


# ----------------------------------------------------------------------------------------------
# 3. BD-CSPN


def bd_cspn_logits(support: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor, ways: int, *,
                   epsilon: float = 10.0, top_z: int | None = None) -> torch.Tensor:
    """BD-CSPN prototype rectification (Liu, Song, Qin, ECCV 2020, "Prototype Rectification for
    Few-Shot Learning", sec. 3). Transductive (uses the query set's mean and pseudo-labels).

    Cross-class bias (feature shifting):
        xi = mean_i s_i - mean_q x_q        [E, 1, D];   x~_q = x_q + xi          [E, Q, D]
    Intra-class bias (pseudo-labels and weighted prototypes), P_n = class means [E, N, D]:
        yhat_q = argmax_n cos(x~_q, P_n)    pseudo-labels; with top_z, only the top_z queries of
                                            each class by softmax_n(epsilon cos) are kept
        X'_n = {s_i: y_i = n} U {x~_q: yhat_q = n}
        w_{i,n} = exp(epsilon cos(X'_i, P_n)) / sum_{j in X'_n} exp(epsilon cos(X'_j, P_n))
        P'_n = sum_{i in X'_n} w_{i,n} X'_i                                      [E, N, D]
    Output: logits epsilon * cos(x~_q, P'_n)   [E, Q, N] (cosine classification; the scale only
    makes softmax(logits) a usable probability, argmax is that of the cosine).

    epsilon = 10 (the LaplacianShot authors' BD-CSPN code; easyfsl uses 1); top_z = None keeps
    every query (easyfsl and that code; the paper keeps the top Z per class).
    """
    _check(support, labels, queries, ways)
    dtype = _dtype(support, queries)
    s, q = support.to(dtype), queries.to(dtype)
    q = q + (s.mean(1, keepdim=True) - q.mean(1, keepdim=True))
    protos = class_means(s, labels, ways)
    conf = (epsilon * cosine_similarity(q, protos)).softmax(-1)  # [E, Q, N]
    member_q = F.one_hot(conf.argmax(-1), ways).bool()  # [E, Q, N]
    if top_z is not None:
        score = conf.masked_fill(~member_q, float("-inf"))
        rank = score.argsort(dim=1, descending=True).argsort(dim=1)  # rank of q within its class
        member_q = member_q & (rank < top_z)
    members = torch.cat([F.one_hot(labels, ways).bool(), member_q], 1)  # [E, S+Q, N]
    x_aug = torch.cat([s, q], 1)  # [E, S+Q, D]
    # softmax over the members of each class (dim 1), non-members at -inf: every class has a support row
    weights = (epsilon * cosine_similarity(x_aug, protos)).masked_fill(~members, float("-inf")).softmax(1)
    rectified = weights.transpose(1, 2) @ x_aug  # [E, N, D]
    return epsilon * cosine_similarity(q, rectified)


# ----------------------------------------------------------------------------------------------
# 4. LaplacianShot


def laplacian_logits(support: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor, ways: int, *,
                     knn: int = 3, lam: float = 1.0, iterations: int = 20, rectify: bool = True,
                     epsilon: float = 10.0, tol: float | None = None) -> torch.Tensor:
    """LaplacianShot (Ziko, Dolz, Granger, Ben Ayed, ICML 2020, "Laplacian Regularized Few-Shot
    Learning"), as its reference imtiazziko/LaplacianShot (src/train_lshot.py, src/lshot_update.py)
    does it. Transductive. Returns log-probabilities log Y [E, Q, N].

    Prototype rectification (`rectify`, on in the reference's run.sh; its own variant):
        x~_q = x_q + mean_i s_i - mean_q x_q;   X' = [s; x~] [E, S+Q, D];  P = class means
        yhat_i = argmax_n cos(X'_i, P_n) (support rows too);  W_{i,n} = softmax_n(epsilon cos(X'_i, P_n))
        m_n = mean_{i: yhat_i = n} W_{i,n} X'_i        (a class nobody picks keeps P_n)
    Unary a_{q,n} = ||x~_q - m_n||^2 [E, Q, N]. Affinity K [E, Q, Q]: K_{qr} = 1 if r is one of the
    knn - 1 nearest other queries of q (the reference asks sklearn for knn neighbours, itself
    included, and drops itself; K is not symmetrised).
    Bound optimisation (paper Algorithm 1), Y0 = softmax(-a), for `iterations` steps:
        Y <- softmax(-a + lam K Y)
    With `tol` (the reference: 1e-6) an episode also stops, after its update, from the third step
    on when its bound E(Y) = sum Y log Y + sum a Y - lam sum (K Y) Y changes by <= tol |E_old|.
    Default tol None: all steps run. In fp32 the energy's own rounding (a sum of Q N terms) is of
    the order of 1e-6 relative, so that stop was decided by rounding, and near a minimum the
    energy is flat: one step more or less moved log Y by up to 2e-4 and flipped 1 query in 75,000
    between the batched call and the loop (1,000 5-way episodes). The extra steps only get closer
    to the same fixed point.
    Defaults: knn 3, lam 1.0 (reference default; it re-tunes lam on validation from
    {0.1, 0.3, 0.5, 0.7, 0.8, 1.0, 1.2, 1.5}), 20 iterations, epsilon 10.
    Features as given: the reference feeds CL2N features (minus the base-class mean, then l2).
    """
    _check(support, labels, queries, ways)
    dtype = _dtype(support, queries)
    s, q = support.to(dtype), queries.to(dtype)
    if rectify:
        q = q + (s.mean(1, keepdim=True) - q.mean(1, keepdim=True))
        protos = _laplacian_prototypes(s, labels, q, ways, epsilon)
    else:
        protos = class_means(s, labels, ways)
    unary = sq_distances(q, protos).transpose(1, 2)  # [E, N, Q]: class-major, see _bound_updates
    return _bound_updates(unary, knn_indices(q, knn), lam, iterations, tol).transpose(1, 2)


def _laplacian_prototypes(s: torch.Tensor, labels: torch.Tensor, q: torch.Tensor, ways: int,
                          epsilon: float) -> torch.Tensor:
    """m_n = mean over the rows of X' = [s; q] predicted n of softmax_n(epsilon cos) X': [E, N, D]."""
    base = class_means(s, labels, ways)
    x_aug = torch.cat([s, q], 1)  # [E, S+Q, D]
    cos = cosine_similarity(x_aug, base)  # [E, S+Q, N]
    member = F.one_hot(cos.argmax(-1), ways).to(s.dtype)  # [E, S+Q, N]
    weights = (epsilon * cos).softmax(-1) * member
    count = member.sum(1).unsqueeze(-1)  # [E, N, 1]
    rectified = weights.transpose(1, 2) @ x_aug / count.clamp_min(1)
    # the reference would drop a class no row picks (and misalign the rest): keep its support mean
    return torch.where(count > 0, rectified, base)


def knn_indices(x: torch.Tensor, knn: int) -> torch.Tensor:
    """The knn - 1 nearest rows of each row other than itself: [E, Q, D] -> int64 [E, Q, k],
    k = min(knn - 1, Q - 1) (ties: topk's order). Row q of the affinity K is 1 at these columns."""
    k = min(knn - 1, x.shape[1] - 1)
    if k <= 0:
        return torch.empty(*x.shape[:2], 0, dtype=torch.long, device=x.device)
    dist = sq_distances(x, x)
    dist.diagonal(dim1=1, dim2=2).fill_(float("inf"))  # never one's own neighbour
    return dist.topk(k, dim=-1, largest=False).indices


def neighbour_sum(y: torch.Tensor, nearest: torch.Tensor) -> torch.Tensor:
    """(K Y) for the k-nearest-neighbour affinity, class-major: y [E, N, Q], nearest [E, Q, k] ->
    [E, N, Q], sum_j y[:, :, nearest[:, q, j]]. A gather of k columns per query instead of the dense
    [E, Q, Q] product, which cost more than the rest of LaplacianShot's iterations together."""
    E, N, Q = y.shape
    k = nearest.shape[2]
    # neighbour-major ([E, N, k, Q]): a sum over a last dimension of k = 2 was 10x slower in ATen
    index = nearest.transpose(1, 2).reshape(E, 1, k * Q).expand(E, N, k * Q)
    return y.gather(2, index).view(E, N, k, Q).sum(2)


def _bound_updates(unary: torch.Tensor, nearest: torch.Tensor, lam: float, iterations: int,
                   tol: float | None) -> torch.Tensor:
    """LaplacianShot's bound iterations for all episodes, each stopping on its own, class-major
    (a softmax over 5 classes in the last dimension was 13x slower in ATen than over the middle):
    unary [E, N, Q], nearest [E, Q, k] -> log Y [E, N, Q]."""
    z = -unary
    y = z.softmax(1)
    energy_old = torch.full(unary.shape[:1], float("inf"), dtype=unary.dtype, device=unary.device)
    active = torch.ones(unary.shape[:1], dtype=torch.bool, device=unary.device)
    for i in range(iterations):
        z_new = neighbour_sum(y, nearest).mul_(lam).sub_(unary)  # -a + lam K Y, rounded as written
        y_new = z_new.softmax(1)
        if tol is None:  # every episode runs every step: nothing to mask
            z, y = z_new, y_new
            continue
        keep = active.view(-1, 1, 1)
        z, y = torch.where(keep, z_new, z), torch.where(keep, y_new, y)
        energy = (y_new * y_new.clamp_min(1e-20).log() + unary * y_new
                  - lam * neighbour_sum(y_new, nearest) * y_new).sum((1, 2))  # [E]
        converged = (energy - energy_old).abs() <= tol * energy_old.abs() if i > 1 else torch.zeros_like(active)
        energy_old = torch.where(active, energy, energy_old)
        active = active & ~converged
        if not bool(active.any()):
            break
    return z.log_softmax(1)


# ----------------------------------------------------------------------------------------------
# 5. TIM-GD


def tim_logits(support: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor, ways: int, *,
               iterations: int = 1000, lr: float = 1e-4, temperature: float = 15.0,
               ce_weight: float = 0.1, marginal_weight: float = 1.0, cond_weight: float = 0.1) -> torch.Tensor:
    """TIM-GD (Boudiaf, Ziko, Rony, Dolz, Piantanida, Ben Ayed, NeurIPS 2020, "Information
    Maximization for Few-Shot Learning"; reference mboudiaf/TIM src/tim.py). Transductive.

        logits(x) = -T/2 ||x - w_n||^2 = T (x.w_n - |w_n|^2/2 - |x|^2/2)      w [E, N, D]
        p_q = softmax(logits(x_q))  [E, Q, N];   pbar = mean_q p_q  [E, N]
        L_e = lam CE(support) - H(pbar) + alpha H(Y|X)
            = lam mean_i -log p_i[y_i]  +  sum_n pbar_n log pbar_n  -  alpha mean_q sum_n p_qn log p_qn
    w starts at the class means; `iterations` Adam steps (lr) on sum_e L_e. Returns the query
    logits -T/2 ||x_q - w_n||^2 [E, Q, N]. Defaults are the paper's / reference's TIM-GD:
    T = 15, lam = 0.1 (ce_weight), H(Y) weight 1, alpha = 0.1 (cond_weight), lr 1e-4, 1000 iterations
    (scripts/evaluate/tim_gd/*.sh set tim.iter=1000; the config default 150 is TIM's other uses).
    The -H(pbar) term pushes predictions towards uniform class marginals: it assumes roughly
    balanced queries. Features as given: the reference l2-normalises them (src/eval.py).

    The gradient is written out (`_tim_logit_gradient`), not taken by autograd: the same numbers
    (1e-14 apart in fp64) at half the cost, and the tensors are kept class-major ([E, N, rows]),
    because a softmax over a last dimension of 5 classes was 13x slower in ATen than over the
    middle one. Per step the cost is two [E, N, S+Q] x D matrix products and Adam on E N D numbers.
    """
    _check(support, labels, queries, ways)
    dtype = _dtype(support, queries)
    s, q = support.detach().to(dtype), queries.detach().to(dtype)
    x = torch.cat([s, q], 1)  # [E, S+Q, D]: support rows, then queries
    x_sq = sq_norms(x).transpose(1, 2)  # [E, 1, S+Q], once: the features do not move
    target = one_hot(labels, ways, dtype).transpose(1, 2)  # [E, N, S]
    with torch.no_grad():
        w = class_means(s, labels, ways)
        opt = Adam([w], lr=lr)
        for _ in range(iterations):
            grad_logits = _tim_logit_gradient(_tim_class_logits(x, w, temperature, x_sq), target,
                                              ce_weight, marginal_weight, cond_weight)  # [E, N, S+Q]
            # d logit_an / d w_n = T (x_a - w_n)
            grad_w = grad_logits @ x - grad_logits.sum(-1, keepdim=True) * w
            opt.step((grad_w.mul_(temperature),))
        return _tim_class_logits(q, w, temperature, x_sq[..., s.shape[1]:]).transpose(1, 2)


def _tim_class_logits(x: torch.Tensor, w: torch.Tensor, temperature: float, x_sq: torch.Tensor) -> torch.Tensor:
    """T (x.w - |w|^2/2 - |x|^2/2) = -T/2 ||x - w||^2, class-major: x [E, A, D], w [E, N, D],
    x_sq = |x|^2 [E, 1, A] -> [E, N, A]."""
    return temperature * (w @ x.transpose(1, 2) - 0.5 * (sq_norms(w) + x_sq))


def _tim_logit_gradient(logits: torch.Tensor, target: torch.Tensor, lam: float, beta: float,
                        alpha: float) -> torch.Tensor:
    """d L_e / d logits for TIM's loss (see `tim_logits`), class-major: logits [E, N, S+Q] (the S
    support rows first), target one-hot [E, N, S] -> [E, N, S+Q]. With p = softmax over classes,
    and the reference's log(p + eps), whose derivative is log(p + eps) + p / (p + eps) =: f(p):
        support i:  lam / S (p_ni - y_ni)                          (cross-entropy)
        query q:    p_nq (c_nq - sum_m p_mq c_mq) / Q,   c_nq = beta f(pbar_n) - alpha f(p_nq)
    (the marginal term -beta H(pbar) and the conditional alpha H(Y|X), through the softmax)."""
    S = target.shape[2]
    p = logits.softmax(1)
    p_support, p_query = p[..., :S], p[..., S:]
    pbar = p_query.mean(2, keepdim=True)  # [E, N, 1]
    c = beta * (torch.log(pbar + LOG_EPS) + pbar / (pbar + LOG_EPS)) \
        - alpha * (torch.log(p_query + LOG_EPS) + p_query / (p_query + LOG_EPS))  # [E, N, Q]
    grad_query = p_query * (c - (p_query * c).sum(1, keepdim=True)) / p_query.shape[2]
    return torch.cat([(p_support - target) * (lam / S), grad_query], 2)


# ----------------------------------------------------------------------------------------------
# 6. PT-MAP


def pt_map_preprocess(support: torch.Tensor, queries: torch.Tensor, beta: float = 0.5,
                      eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """PT-MAP's feature pipeline (yhu01/PT-MAP test_standard.py), per episode:
    power transform (needs x >= 0) -> l2-normalise -> centre the support by the support mean and the
    queries by the query mean, separately -> l2-normalise again. The reference also applies a QR
    reduction after the power transform; it is an isometry of the episode's span (norms, means and
    distances unchanged), so it is left out."""
    s = F.normalize(power_transform(support, beta, eps), dim=-1, eps=NORM_EPS)
    q = F.normalize(power_transform(queries, beta, eps), dim=-1, eps=NORM_EPS)
    s = F.normalize(s - s.mean(1, keepdim=True), dim=-1, eps=NORM_EPS)
    q = F.normalize(q - q.mean(1, keepdim=True), dim=-1, eps=NORM_EPS)
    return s, q


def sinkhorn(cost: torch.Tensor, lam: float, col_mass: float, tol: float = 1e-6,
             max_iters: int = 1000) -> torch.Tensor:
    """Entropic optimal transport of PT-MAP (paper eq. 3-4): the plan P [E, Q, N] of
    P = diag(u) exp(-lam cost) diag(v) with rows summing to 1 and columns to `col_mass` (Q / N:
    balanced classes). Each episode alternates row and column scaling until, after a column
    scaling, its rows miss their sum 1 by at most `tol`, or for max_iters iterations.

    The reference stops instead when the row sums *move* by at most tol between two iterations,
    judged over all episodes at once. That test is weaker (slow convergence moves little while
    still far off) and in fp32 its stopping step is decided by rounding, so reordering queries or
    classes changed log-probabilities by up to 1e-2 (1e-4 with this test).
    Same fixed point. Computed class-major ([E, N, Q] in memory; returned as an [E, Q, N] view): in
    ATen a sum over the 5 classes in the last dimension took 8x as long as over the middle one."""
    cost = cost.transpose(1, 2).contiguous()  # [E, N, Q]
    # exp(-lam (cost - row min)): a row scaling, which the Sinkhorn plan ignores, against underflow
    plan = torch.exp(-lam * (cost - cost.amin(1, keepdim=True)))
    work = plan / plan.sum(1, keepdim=True)  # row step of the first iteration
    idx = torch.arange(cost.shape[0], device=cost.device)  # episodes still iterating: `work` rows
    for _ in range(max_iters):
        new = work * (col_mass / work.sum(2, keepdim=True))  # columns: exactly col_mass
        rows = new.sum(1, keepdim=True)  # [e, 1, Q]
        done = (rows - 1).abs().amax((1, 2)) <= tol
        if bool(done.any()):
            # finished episodes leave the working set: the batch costs the sum of the episodes'
            # iterations, not E times the slowest one's
            plan[idx[done]] = new[done]
            idx, new, rows = idx[~done], new[~done], rows[~done]
            if idx.numel() == 0:
                return plan.transpose(1, 2)
        work = new / rows
    plan[idx] = work
    return plan.transpose(1, 2)


def pt_map_logits(support: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor, ways: int, *,
                  preprocess: bool = True, beta: float = 0.5, lam: float = 10.0, alpha: float = 0.2,
                  iterations: int = 20, sinkhorn_tol: float = 1e-6, sinkhorn_iters: int = 1000) -> torch.Tensor:
    """PT-MAP (Hu, Gripon, Pateux, ICANN 2021, "Leveraging the Feature Distribution in
    Transfer-based Few-Shot Learning"; reference yhu01/PT-MAP test_standard.py). Transductive.
    Returns log-probabilities log P [E, Q, N] (rows of the final transport plan).

    Features: `pt_map_preprocess` (power transform beta, l2, separate support / query centring, l2)
    when preprocess (inputs must then be >= 0); else as given.
        mu = class means of the support                               [E, N, D]
        repeat `iterations` times:
            P = sinkhorn(||x_q - mu_n||^2, lam), rows 1, columns Q/N  [E, Q, N]
            M = [onehot(support); P]                                  [E, S+Q, N]
            mu <- mu + alpha (M^T X / sum_i M_in - mu),   X = [s; x]   [E, S+Q, D]
        P = sinkhorn(||x_q - mu_n||^2, lam)
    Defaults (test_standard.py): beta 0.5, lam 10, alpha 0.2, 20 iterations, Sinkhorn tol 1e-6 and
    at most 1000 iterations. The column constraint Q/N assumes balanced queries.
    """
    _check(support, labels, queries, ways)
    dtype = _dtype(support, queries)
    s, q = support.to(dtype), queries.to(dtype)
    if preprocess:
        s, q = pt_map_preprocess(s, q, beta)
    col_mass = q.shape[1] / ways
    x_all = torch.cat([s, q], 1)
    onehot = one_hot(labels, ways, dtype)
    mu = class_means(s, labels, ways)
    q_sq = sq_norms(q)  # the queries do not move: their norms once
    for _ in range(iterations):
        plan = sinkhorn(sq_distances(q, mu, q_sq), lam, col_mass, sinkhorn_tol, sinkhorn_iters)
        mask = torch.cat([onehot, plan], 1)  # [E, S+Q, N]
        estimate = mask.transpose(1, 2) @ x_all / mask.sum(1).unsqueeze(-1)
        mu = mu + alpha * (estimate - mu)
    plan = sinkhorn(sq_distances(q, mu, q_sq), lam, col_mass, sinkhorn_tol, sinkhorn_iters)
    probs = plan / plan.sum(-1, keepdim=True)
    return probs.clamp_min(torch.finfo(dtype).tiny).log()


HEADS: dict[str, Head] = {
    "prototype": prototype_logits,
    "logistic": logistic_logits,
    "bd_cspn": bd_cspn_logits,
    "laplacian": laplacian_logits,
    "tim": tim_logits,
    "pt_map": pt_map_logits,
}
