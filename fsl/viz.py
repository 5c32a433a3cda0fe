"""Plots (matplotlib, Agg backend): learning curves, t-SNE of real vs hallucinated features,
and accuracy against M. Each function writes a PNG and returns its path."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display anywhere fsl runs: servers, CI, torchrun ranks
    import matplotlib.pyplot as plt

    return plt


def learning_curve(history: Sequence, path: Path) -> Path:
    """Train loss, train accuracy and val accuracy per epoch (accuracies in percent)."""
    plt = _pyplot()
    epochs = [h.epoch for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h.train_loss for h in history], marker="o")
    ax_loss.set(xlabel="epoch", ylabel="train loss", title="Training loss")
    ax_acc.plot(epochs, [h.train_acc for h in history], marker="o", label="train")
    ax_acc.plot(epochs, [h.val_acc for h in history], marker="s", label="val")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Episode accuracy")
    ax_acc.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def tsne(real: np.ndarray, real_labels: np.ndarray, fake: np.ndarray, fake_labels: np.ndarray,
         class_names: Sequence[str], path: Path, seed: int = 0) -> Path:
    """Real and hallucinated features embedded together by t-SNE; colour = class,
    marker = real (circle) or hallucinated (cross). real [R, D], fake [F, D]."""
    from sklearn.manifold import TSNE

    plt = _pyplot()
    points = np.concatenate([real, fake]).astype(np.float64)
    perplexity = float(min(30, max(2, (len(points) - 1) // 3)))
    xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(points)
    fig, ax = plt.subplots(figsize=(7, 6))
    colours = plt.get_cmap("tab10")
    for c, name in enumerate(class_names):
        r = xy[: len(real)][real_labels == c]
        f = xy[len(real):][fake_labels == c]
        ax.scatter(f[:, 0], f[:, 1], marker="x", s=14, alpha=0.6, color=colours(c % 10))
        ax.scatter(r[:, 0], r[:, 1], marker="o", s=40, edgecolor="black", color=colours(c % 10), label=name)
    ax.scatter([], [], marker="o", color="grey", edgecolor="black", label="real (o)")
    ax.scatter([], [], marker="x", color="grey", label="hallucinated (x)")
    ax.legend(fontsize=8, loc="best")
    ax.set(title="t-SNE of real and hallucinated test features", xticks=[], yticks=[])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def metric_vs_value(rows: Sequence[dict], x: str, path: Path, group: str | None = None) -> Path:
    """Test accuracy ± 95% CI against a swept value (e.g. M), one line per `group` value."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    groups = sorted({str(r[group]) for r in rows}) if group else [None]
    for g in groups:
        sel = [r for r in rows if group is None or str(r[group]) == g]
        sel.sort(key=lambda r: float(r[x]))
        ax.errorbar([float(r[x]) for r in sel], [r["test_acc"] for r in sel],
                    yerr=[r["test_ci95"] for r in sel], marker="o", capsize=3, label=g)
    ax.set(xlabel=x, ylabel="test accuracy (%)", title=f"Test accuracy ± 95% CI against {x}")
    if group:
        ax.legend(title=group)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
