"""Research probe (issue 10 §3): how far can a 1-shot prototype move towards its class centre
using base-class statistics, on a frozen trained encoder? Not part of the package.

    python -m benchmarks.calibration_probe train --seed 0 --out /tmp/h10/protonet_s0.pt
    python -m benchmarks.calibration_probe probe /tmp/h10/protonet_s0.pt

`probe` encodes the train and test splits once, then scores prototype rules on the study's
600 fixed 5-way 1-shot test episodes (test_seed=2) from the cached features.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from fsl.config import TrainConfig
from fsl.data import load_dataset
from fsl.evaluate import sample_episodes
from fsl.models.classifier import FewShotClassifier, load_checkpoint
from fsl.runtime import seed_everything
from fsl.train import train


def study_cfg(seed: int, shots: int = 1, **kw) -> TrainConfig:
    return TrainConfig(shots=shots, epochs=4, episodes_per_epoch=500, val_episodes=100, seed=seed, **kw).resolved()


def do_train(seed: int, out: str, shots: int = 1) -> None:
    torch.set_num_threads(1)
    data = load_dataset("synthetic")
    cfg = study_cfg(seed, shots)
    seed_everything(seed)
    model = FewShotClassifier.for_data(data, precision="fp32")
    t0 = time.perf_counter()
    result = train(model, data, cfg, torch.device("cpu"))
    torch.save(result.model.checkpoint(), out)
    print(json.dumps({"seed": seed, "val": result.best_val_acc, "s": time.perf_counter() - t0}))


@torch.no_grad()
def features(model, store) -> torch.Tensor:
    return torch.cat([model.embed(store.images[i:i + 500]) for i in range(0, len(store.images), 500)])


@torch.no_grad()
def probe(path: str, shots: int = 1) -> None:
    torch.set_num_threads(1)
    model = load_checkpoint(path).eval()
    data = load_dataset("synthetic")
    tr, te = data.split("train"), data.split("test")
    ftr, fte = features(model, tr), features(model, te)
    ytr = tr.labels
    C = int(ytr.max()) + 1
    base_means = torch.stack([ftr[ytr == c].mean(0) for c in range(C)])          # [C, D]
    within_var = torch.stack([ftr[ytr == c].var(0) for c in range(C)]).mean(0)    # [D]
    g = ftr.mean(0)
    between_var = base_means.var(0)                                               # [D]
    tuk = lambda x: x.clamp_min(0).sqrt()
    ttr = tuk(ftr)
    t_means = torch.stack([ttr[ytr == c].mean(0) for c in range(C)])
    t_within = torch.stack([ttr[ytr == c].var(0) for c in range(C)]).mean(0)
    t_between = t_means.var(0)
    cfg = study_cfg(0, shots)
    eps = sample_episodes(te.to("cpu"), cfg.test_shape, 600, 2, "test")
    S, Q = fte[eps.support], fte[eps.query]                                       # [E, N*K, D], [E, N*Q, D]
    E, N, K = S.shape[0], cfg.test_shape.ways, shots
    x = S.view(E, N, K, -1).mean(2)                                               # [E, N, D]
    qy = torch.arange(N).repeat_interleave(cfg.test_shape.queries)

    def acc(protos, queries=Q):
        d = torch.cdist(queries, protos) ** 2
        return float((d.argmin(-1) == qy).float().mean() * 100)

    def knn_prior(x, means, k):
        d = torch.cdist(x.reshape(-1, x.shape[-1]), means)
        idx = d.topk(k, largest=False).indices                                   # [E*N, k]
        return means[idx].mean(1).view_as(x)

    res = {"protonet": acc(x)}
    # per-dim empirical-Bayes weight on the prior (global mean)
    a_d = within_var / K / (within_var / K + between_var)
    res["eb_global_perdim"] = acc((1 - a_d) * x + a_d * g)
    a_s = float((within_var / K).sum() / ((within_var / K).sum() + between_var.sum()))
    res["eb_global_scalar(a=%.2f)" % a_s] = acc((1 - a_s) * x + a_s * g)
    for a in (0.1, 0.2, 0.3, 0.5):
        res[f"global a={a}"] = acc((1 - a) * x + a * g)
    for k in (1, 2, 3, 5, 10):
        p = knn_prior(x, base_means, k)
        res[f"DC raw k={k} (x+sum)/(k+1)"] = acc((x + k * p) / (k + 1))
        for a in (0.2, 0.35, 0.5):
            res[f"knn raw k={k} a={a}"] = acc((1 - a) * x + a * p)
        tx = tuk(x)
        tp = knn_prior(tx, t_means, k)
        res[f"DC tukey k={k} back^2"] = acc(((tx + k * tp) / (k + 1)) ** 2)
        for a in (0.2, 0.35, 0.5):
            res[f"knn tukey k={k} a={a} back^2"] = acc(((1 - a) * tx + a * tp) ** 2)
        res[f"DC tukey k={k}, queries tukey"] = acc((tx + k * tp) / (k + 1), tuk(Q))
    res["tukey both, no calib"] = acc(tuk(x), tuk(Q))
    a_t = t_within / K / (t_within / K + t_between)
    res["eb tukey perdim back^2"] = acc(((1 - a_t) * tuk(x) + a_t * tuk(g)) ** 2)
    res["eb tukey perdim, queries tukey"] = acc((1 - a_t) * tuk(x) + a_t * ttr.mean(0), tuk(Q))
    # oracle: the true test class mean (upper bound for moving the prototype)
    print(json.dumps({"a_scalar": a_s, "within": float(within_var.sum()), "between": float(between_var.sum())}))
    for k, v in res.items():
        print(f"{v:6.2f}  {v - res['protonet']:+5.2f}  {k}")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["train", "probe"])
    p.add_argument("path", nargs="?")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shots", type=int, default=1)
    p.add_argument("--out")
    a = p.parse_args()
    if a.what == "train":
        do_train(a.seed, a.out, a.shots)
    else:
        probe(a.path, a.shots)
