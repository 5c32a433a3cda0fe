"""fsl.models.head_maths: the batched test-time heads.

Hand-computable cases, batched == per-episode loop, class and query permutation equivariance,
unequal shots, logistic sample weights, and small independent one-episode re-derivations of each
iterative head written from the papers / reference repositories (plain 2-D tensors, Python loops),
which check the batched maths and its per-episode stopping rules."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fsl.models import head_maths as hm

# fast settings for the heavy iterative heads where the test is about structure, not defaults
FAST = {"tim": {"iterations": 60, "lr": 1e-3}, "logistic": {"steps": 60}, "pt_map": {"sinkhorn_iters": 200}}
ALL = sorted(hm.HEADS)


def make_episodes(E=4, ways=5, shots=(1, 1, 1, 1, 1), queries=4, D=16, sep=0.6, seed=0):
    """Non-negative (post-ReLU-like) Gaussian clusters: support [E, S, D], labels [E, S] (class
    rows shuffled), queries [E, Q, D], query labels [E, Q]."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(E, ways, D, generator=g) * sep + 1.0
    ls = torch.cat([torch.full((k,), n) for n, k in enumerate(shots)])
    ls = torch.stack([ls[torch.randperm(len(ls), generator=g)] for _ in range(E)])
    lq = torch.arange(ways).repeat(queries).expand(E, -1).contiguous()
    pick = lambda lab: centres.gather(1, lab.unsqueeze(-1).expand(-1, -1, D))  # noqa: E731
    s = (pick(ls) + 0.5 * torch.randn(E, ls.shape[1], D, generator=g)).relu()
    q = (pick(lq) + 0.5 * torch.randn(E, lq.shape[1], D, generator=g)).relu()
    return s, ls, q, lq


def inputs_for(name, s, q):
    """PT-MAP preprocesses raw non-negative features itself; the others get l2-normalised ones,
    as their references do."""
    if name == "pt_map":
        return s, q
    return F.normalize(s, dim=-1), F.normalize(q, dim=-1)


def run(name, s, ls, q, ways, loop=False, **hyper):
    fn = hm.HEADS[name]
    fn = hm.per_episode(fn) if loop else fn
    s, q = inputs_for(name, s, q)
    return fn(s, ls, q, ways, **{**FAST.get(name, {}), **hyper})


# ----------------------------------------------------------------------------------------------
# hand-computable cases


def test_prototype_logits_equal_hand_computed_values():
    support = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [4.0, 0.0]]])  # class 1 = mean of (2,0), (4,0) = (3,0)
    labels = torch.tensor([[0, 1, 1]])
    queries = torch.tensor([[[0.0, 1.0], [3.0, 0.5]]])
    expected = -torch.tensor([[[1.0, 10.0], [9.25, 0.25]]])
    assert torch.allclose(hm.prototype_logits(support, labels, queries, 2), expected)


def two_way_separated(E=2):
    """2-way, 2 shots, class 0 near e0 and class 1 near e1 in D=4, all non-negative; queries
    alternate 0, 1, 0, 1, ..."""
    base = torch.tensor([[1.0, 0.1, 0.0, 0.2], [0.1, 1.0, 0.2, 0.0]])
    s = torch.stack([base[0], base[1], base[0] + 0.05, base[1] + 0.05]).expand(E, -1, -1).clone()
    ls = torch.tensor([0, 1, 0, 1]).expand(E, -1).contiguous()
    q = torch.stack([base[k % 2] + 0.03 * k for k in range(6)]).expand(E, -1, -1).clone()
    lq = torch.tensor([0, 1, 0, 1, 0, 1]).expand(E, -1)
    return s, ls, q, lq


@pytest.mark.parametrize("name", ALL)
def test_two_way_well_separated_points_get_the_right_labels(name):
    s, ls, q, lq = two_way_separated()
    out = run(name, s, ls, q, 2)
    assert out.shape == (2, 6, 2) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert torch.equal(out.argmax(-1), lq)


@pytest.mark.parametrize("name", ["laplacian", "pt_map"])
def test_log_probability_heads_return_normalised_log_probabilities(name):
    s, ls, q, _ = make_episodes()
    out = run(name, s, ls, q, 5)
    assert torch.allclose(out.exp().sum(-1), torch.ones(out.shape[:2]), atol=1e-5)


# ----------------------------------------------------------------------------------------------
# batched == per-episode, equivariance, unequal shots


@pytest.mark.parametrize("name", ALL)
def test_batched_equals_per_episode_loop(name):
    s, ls, q, _ = make_episodes(E=5, shots=(1, 2, 1, 3, 1), seed=1)
    batched = run(name, s, ls, q, 5)
    looped = run(name, s, ls, q, 5, loop=True)
    assert torch.allclose(batched, looped, atol=1e-4, rtol=0)
    assert torch.equal(batched.argmax(-1), looped.argmax(-1))


def test_laplacian_early_stop_is_decided_per_episode():
    """With the reference's tol each episode stops on its own (fp64, so rounding cannot decide)."""
    s, ls, q, _ = make_episodes(E=4, queries=6, seed=11)
    s, q = F.normalize(s.double(), dim=-1), F.normalize(q.double(), dim=-1)
    batched = hm.laplacian_logits(s, ls, q, 5, tol=1e-6)
    assert torch.allclose(batched, hm.per_episode(hm.laplacian_logits)(s, ls, q, 5, tol=1e-6), atol=1e-10)
    assert not torch.allclose(batched, hm.laplacian_logits(s, ls, q, 5), atol=1e-10)  # it did stop early


@pytest.mark.parametrize("name", ["tim", "logistic"])  # pt_map's defaults: the derivation test below
def test_batched_equals_loop_with_default_iterations(name):
    s, ls, q, _ = make_episodes(E=2, seed=2)
    fn = hm.HEADS[name]
    s, q = inputs_for(name, s, q)
    assert torch.allclose(fn(s, ls, q, 5), hm.per_episode(fn)(s, ls, q, 5), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ALL)
def test_class_permutation_permutes_the_output_columns(name):
    s, ls, q, _ = make_episodes(seed=3)
    perm = torch.tensor([3, 0, 4, 1, 2])  # class n is called perm[n]
    out = run(name, s, ls, q, 5)
    relabelled = run(name, s, perm[ls], q, 5)
    # rtol: the logs of PT-MAP's tiny probabilities compare relatively
    assert torch.allclose(relabelled[..., perm], out, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ALL)
def test_query_permutation_permutes_the_output_rows(name):
    s, ls, q, _ = make_episodes(seed=4)
    perm = torch.randperm(q.shape[1], generator=torch.Generator().manual_seed(0))
    out = run(name, s, ls, q, 5)
    shuffled = run(name, s, ls, q[:, perm], 5)
    assert torch.allclose(shuffled, out[:, perm], atol=1e-4, rtol=1e-4)  # log of tiny PT-MAP probabilities: relative


@pytest.mark.parametrize("name", ALL)
def test_support_row_order_does_not_matter(name):
    s, ls, q, _ = make_episodes(seed=5, shots=(2, 1, 3, 1, 1))
    perm = torch.randperm(s.shape[1], generator=torch.Generator().manual_seed(1))
    shuffled = run(name, s[:, perm], ls[:, perm], q, 5)
    assert torch.allclose(shuffled, run(name, s, ls, q, 5), atol=1e-4, rtol=1e-4)  # rtol: as above


@pytest.mark.parametrize("name", ALL)
def test_unequal_shots_are_finite_and_mostly_right(name):
    s, ls, q, lq = make_episodes(E=3, ways=3, shots=(1, 4, 2), queries=6, D=32, sep=1.5, seed=6)
    # at C=1 on unit-norm features the fit is mostly bias, i.e. the shot counts (sklearn agrees:
    # test_logistic_matches_sklearn); a weaker penalty lets the features speak
    out = run(name, s, ls, q, 3, **({"C": 100.0, "steps": 300} if name == "logistic" else {}))
    assert out.shape == (3, 18, 3) and torch.isfinite(out).all()
    assert (out.argmax(-1) == lq).float().mean() >= 0.9


def test_fp64_inputs_stay_fp64():
    s, ls, q, _ = make_episodes()
    assert hm.prototype_logits(s.double(), ls, q.double(), 5).dtype == torch.float64


def test_bad_shapes_raise():
    s, ls, q, _ = make_episodes()
    with pytest.raises(ValueError):
        hm.prototype_logits(s, ls[:, :-1], q, 5)
    with pytest.raises(ValueError):
        hm.tim_logits(s, ls, q[..., :-1], 5)


# ----------------------------------------------------------------------------------------------
# power transform, logistic regression


def test_power_transform_is_tukeys_ladder_and_refuses_negatives():
    x = torch.tensor([0.0, 1.0, 4.0])
    assert torch.allclose(hm.power_transform(x), (x + 1e-6).sqrt())
    assert torch.allclose(hm.power_transform(x, beta=0.0), torch.log(x + 1e-6))
    with pytest.raises(ValueError, match="non-negative"):
        hm.power_transform(torch.tensor([1.0, -0.5]))


def test_logistic_zero_weight_rows_are_ignored():
    s, ls, q, _ = make_episodes(E=3, seed=7)
    s, q = F.normalize(s, dim=-1), F.normalize(q, dim=-1)
    junk = torch.randn(3, 4, s.shape[2], generator=torch.Generator().manual_seed(3))
    junk_labels = torch.tensor([0, 1, 2, 0]).expand(3, -1)
    weights = torch.cat([torch.ones(ls.shape), torch.zeros(3, 4)], 1)
    with_junk = hm.logistic_logits(torch.cat([s, junk], 1), torch.cat([ls, junk_labels], 1), q, 5,
                                   sample_weights=weights, init="prototypes")
    without = hm.logistic_logits(s, ls, q, 5, init="prototypes")
    assert torch.allclose(with_junk, without, atol=1e-5)


def test_logistic_weight_two_equals_a_duplicated_row():
    s, ls, q, _ = make_episodes(E=2, seed=8)
    s, q = F.normalize(s, dim=-1), F.normalize(q, dim=-1)
    weights = torch.ones(ls.shape)
    weights[:, 0] = 2.0
    weighted = hm.logistic_logits(s, ls, q, 5, sample_weights=weights)
    duplicated = hm.logistic_logits(torch.cat([s, s[:, :1]], 1), torch.cat([ls, ls[:, :1]], 1), q, 5)
    assert torch.allclose(weighted, duplicated, atol=1e-5)


def test_logistic_and_tim_work_under_no_grad_and_do_not_track_inputs():
    s, ls, q, _ = make_episodes(E=2)
    s, q = F.normalize(s, dim=-1).requires_grad_(), F.normalize(q, dim=-1)
    with torch.no_grad():
        a = hm.logistic_logits(s, ls, q, 5, steps=5)
        b = hm.tim_logits(s, ls, q, 5, iterations=5)
    assert torch.allclose(a, hm.logistic_logits(s, ls, q, 5, steps=5))
    assert not a.requires_grad and not b.requires_grad and s.grad is None


def test_logistic_matches_sklearn():
    """The objective is sklearn's LogisticRegression(C) (multinomial, unpenalised intercept), which
    rfs and Free Lunch use: the default 100 Adam steps land on its optimum, logits up to a per-row
    constant (softmax-invariant) within 0.01, unequal shots included."""
    LogisticRegression = pytest.importorskip("sklearn.linear_model").LogisticRegression
    s, ls, q, _ = make_episodes(E=3, ways=3, shots=(1, 4, 2), queries=6, D=32, sep=1.5, seed=6)
    s, q = F.normalize(s, dim=-1), F.normalize(q, dim=-1)
    ref = torch.stack([torch.as_tensor(LogisticRegression(C=1.0, max_iter=5000, tol=1e-10)
                                       .fit(s[e].numpy(), ls[e].numpy()).decision_function(q[e].numpy()))
                       for e in range(3)]).float()
    out = hm.logistic_logits(s, ls, q, 3)
    centre = lambda z: z - z.mean(-1, keepdim=True)  # noqa: E731
    assert torch.equal(out.argmax(-1), ref.argmax(-1))
    assert torch.allclose(centre(out), centre(ref), atol=1e-2)


def test_logistic_matches_a_hand_checked_two_point_optimum():
    """D=1, x = +1 (class 1) and x = -1 (class 0), no bias, C=1. A common shift of W0 and W1 moves
    both logits equally (CE unchanged) and only adds penalty, so the optimum is W = (-a, a), where
    L(a) = log(1 + exp(-2a)) + (2 a^2) / (2 * C * 2) and L'(a) = a - 2 / (1 + exp(2a)) = 0."""
    s = torch.tensor([[[1.0], [-1.0]]], dtype=torch.float64)
    ls = torch.tensor([[1, 0]])
    out = hm.logistic_logits(s, ls, s, 2, steps=2000, lr=0.01, bias=False)
    # root of L'(a) by bisection
    lo, hi = 0.0, 5.0
    for _ in range(100):
        mid = (lo + hi) / 2
        grad = -2 / (1 + math.exp(2 * mid)) + mid
        lo, hi = (mid, hi) if grad < 0 else (lo, mid)
    assert out[0, 0, 1] - out[0, 0, 0] == pytest.approx(2 * lo, abs=1e-4)


# ----------------------------------------------------------------------------------------------
# independent one-episode re-derivations


def ref_bd_cspn(s, ls, q, ways, epsilon=10.0):
    """Paper sec. 3, one episode, one class at a time."""
    q = q + s.mean(0) - q.mean(0)
    protos = torch.stack([s[ls == n].mean(0) for n in range(ways)])
    pred = (F.normalize(q, dim=-1) @ F.normalize(protos, dim=-1).T).argmax(-1)
    rect = []
    for n in range(ways):
        members = torch.cat([s[ls == n], q[pred == n]])
        w = torch.softmax(epsilon * F.cosine_similarity(members, protos[n][None], dim=-1), 0)
        rect.append((w[:, None] * members).sum(0))
    return epsilon * F.normalize(q, dim=-1) @ F.normalize(torch.stack(rect), dim=-1).T


def ref_laplacian(s, ls, q, ways, knn=3, lam=1.0, iterations=20, epsilon=10.0):
    """imtiazziko/LaplacianShot with proto_rect, one episode, with its early stop."""
    q = q + s.mean(0) - q.mean(0)
    aug = torch.cat([s, q])
    base = torch.stack([s[ls == n].mean(0) for n in range(ways)])
    cos = F.cosine_similarity(aug[:, None], base[None], dim=-1)
    pred, W = cos.argmax(-1), torch.softmax(epsilon * cos, -1)
    protos = torch.stack([(W[pred == n, n][:, None] * aug[pred == n]).mean(0) for n in range(ways)])
    unary = ((q[:, None] - protos[None]) ** 2).sum(-1)
    dist = torch.cdist(q, q)
    K = torch.zeros(len(q), len(q), dtype=q.dtype)
    for i in range(len(q)):
        order = [j for j in dist[i].argsort().tolist() if j != i]
        K[i, order[:knn - 1]] = 1
    Y, old = torch.softmax(-unary, -1), float("inf")
    for i in range(iterations):
        Y = torch.softmax(-unary + lam * K @ Y, -1)
        E = float((Y * Y.clamp_min(1e-20).log() + unary * Y - lam * (K @ Y) * Y).sum())
        if i > 1 and abs(E - old) <= 1e-6 * abs(old):
            break
        old = E
    return Y


def ref_sinkhorn(M, lam, c, eps=1e-6, maxiters=1000):
    """Row then column scaling of exp(-lam M) until the rows miss 1 by <= eps after a column step
    (the reference stops on the change of the row sums instead: see hm.sinkhorn)."""
    P = torch.exp(-lam * M)
    for _ in range(maxiters):
        P = P / P.sum(1, keepdim=True)
        P = P * (c / P.sum(0))[None]
        if (P.sum(1) - 1).abs().max() <= eps:
            break
    return P


def ref_pt_map(s, ls, q, ways, lam=10.0, alpha=0.2, iterations=20):
    """yhu01/PT-MAP test_standard.py on one episode (no QR: an isometry)."""
    s, q = F.normalize((s + 1e-6) ** 0.5, dim=-1), F.normalize((q + 1e-6) ** 0.5, dim=-1)
    s, q = F.normalize(s - s.mean(0), dim=-1), F.normalize(q - q.mean(0), dim=-1)
    X, c = torch.cat([s, q]), len(q) / ways
    mus = torch.stack([s[ls == n].mean(0) for n in range(ways)])
    for _ in range(iterations):
        P = ref_sinkhorn(((q[:, None] - mus[None]) ** 2).sum(-1), lam, c)
        mask = torch.cat([F.one_hot(ls, ways).float(), P])
        mus = mus + alpha * (mask.T @ X / mask.sum(0)[:, None] - mus)
    P = ref_sinkhorn(((q[:, None] - mus[None]) ** 2).sum(-1), lam, c)
    return P / P.sum(1, keepdim=True)


def ref_tim(s, ls, q, ways, iterations=60, lr=1e-3, T=15.0, weights=(0.1, 1.0, 0.1)):
    """mboudiaf/TIM TIM_GD on one episode."""
    w = torch.stack([s[ls == n].mean(0) for n in range(ways)]).requires_grad_()
    opt = torch.optim.Adam([w], lr=lr)
    logits = lambda x: -T / 2 * ((x[:, None] - w[None]) ** 2).sum(-1)  # noqa: E731
    for _ in range(iterations):
        ce = -(F.one_hot(ls, ways) * torch.log(logits(s).softmax(-1) + 1e-12)).sum(-1).mean()
        p = logits(q).softmax(-1)
        cond = -(p * torch.log(p + 1e-12)).sum(-1).mean()
        ent = -(p.mean(0) * torch.log(p.mean(0) + 1e-12)).sum()
        loss = weights[0] * ce - (weights[1] * ent - weights[2] * cond)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return logits(q).detach()


@pytest.mark.parametrize("name, ref, log", [("bd_cspn", ref_bd_cspn, False), ("laplacian", ref_laplacian, True),
                                            ("pt_map", ref_pt_map, True), ("tim", ref_tim, False)])
def test_batched_head_matches_an_independent_one_episode_derivation(name, ref, log):
    s, ls, q, _ = make_episodes(E=2, shots=(1, 2, 1, 1, 3), queries=5, seed=9)
    hyper = {}
    if name == "pt_map":  # fp64 on both sides: Sinkhorn's stopping step is then not decided by rounding
        s, q, hyper = s.double(), q.double(), {"sinkhorn_iters": 1000}
    if name == "laplacian":  # the reference's early stop on the bound's relative change
        s, q, hyper = s.double(), q.double(), {"tol": 1e-6}
    out = run(name, s, ls, q, 5, **hyper)
    si, qi = inputs_for(name, s, q)
    expected = torch.stack([ref(si[e], ls[e], qi[e], 5) for e in range(2)])
    expected = expected.log() if log else expected
    assert torch.allclose(out, expected, atol=1e-4, rtol=1e-4)


def test_sinkhorn_meets_both_marginals():
    cost = torch.rand(3, 12, 4, generator=torch.Generator().manual_seed(0))
    plan = hm.sinkhorn(cost, lam=10.0, col_mass=3.0)
    assert torch.allclose(plan.sum(2), torch.ones(3, 12), atol=1e-5)
    assert torch.allclose(plan.sum(1), torch.full((3, 4), 3.0), atol=1e-5)


def knn_affinity(x, knn):
    """The dense affinity K [E, Q, Q] of `hm.knn_indices`: K_qr = 1 if r is one of q's neighbours."""
    E, Q, _ = x.shape
    return torch.zeros(E, Q, Q, dtype=x.dtype).scatter_(-1, hm.knn_indices(x, knn), 1.0)


def test_knn_affinity_has_knn_minus_one_neighbours_and_no_self_loops():
    x = torch.rand(2, 7, 3, generator=torch.Generator().manual_seed(0))
    K = knn_affinity(x, 3)
    assert torch.equal(K.sum(-1), torch.full((2, 7), 2.0))
    assert torch.equal(K.diagonal(dim1=1, dim2=2), torch.zeros(2, 7))


def test_bd_cspn_with_top_z_zero_uses_the_support_only():
    s, ls, q, _ = make_episodes(seed=10)  # 1-shot: the rectified prototype is the support row itself
    s, q = F.normalize(s, dim=-1), F.normalize(q, dim=-1)
    shifted = q + s.mean(1, keepdim=True) - q.mean(1, keepdim=True)
    protos = hm.class_means(s, ls, 5)
    expected = 10.0 * hm.cosine_similarity(shifted, protos)
    assert torch.allclose(hm.bd_cspn_logits(s, ls, q, 5, top_z=0), expected, atol=1e-5)


def test_tim_written_out_gradient_equals_autograd_of_its_loss():
    """`_tim_logit_gradient` against autograd of TIM's loss (log(p + eps) as the reference), fp64."""
    g = torch.Generator().manual_seed(3)
    E, N, S, Q = 3, 4, 6, 9
    logits = (3 * torch.randn(E, N, S + Q, generator=g, dtype=torch.float64)).requires_grad_()
    labels = torch.randint(0, N, (E, S), generator=g)
    target = F.one_hot(labels, N).double().transpose(1, 2)
    p = logits.softmax(1)
    ce = -(target * p[..., :S].log()).sum(1).mean(1)
    pq = p[..., S:]
    cond = -(pq * torch.log(pq + 1e-12)).sum(1).mean(1)
    pbar = pq.mean(2)
    marginal = -(pbar * torch.log(pbar + 1e-12)).sum(1)
    (0.1 * ce - (1.0 * marginal - 0.3 * cond)).sum().backward()
    written = hm._tim_logit_gradient(logits.detach(), target, 0.1, 1.0, 0.3)
    assert torch.allclose(written, logits.grad, atol=1e-12, rtol=1e-10)


def test_neighbour_sum_equals_the_dense_affinity_product():
    x = torch.rand(3, 9, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    y = torch.rand(3, 5, 9, generator=torch.Generator().manual_seed(5), dtype=torch.float64)  # [E, N, Q]
    dense = (knn_affinity(x, 4) @ y.transpose(1, 2)).transpose(1, 2)
    assert torch.allclose(hm.neighbour_sum(y, hm.knn_indices(x, 4)), dense, atol=1e-14)
