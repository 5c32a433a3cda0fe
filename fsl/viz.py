"""Plots (matplotlib, Agg backend): learning curves, t-SNE of real vs hallucinated features,
and accuracy against M. Each function writes a PNG and returns its path."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from fsl.config import TrainConfig
    from fsl.models.classifier import FewShotClassifier


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display anywhere fsl runs: servers, CI, torchrun ranks
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    """Lay out, write the PNG, free the figure; returns path."""
    plt = _pyplot()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


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
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no 1.2, 1.4, ...
    return _save(fig, path)


def tsne(real: np.ndarray, real_labels: np.ndarray, fake: np.ndarray, fake_labels: np.ndarray,
         class_names: Sequence[str], path: Path, seed: int = 0,
         prototypes: tuple[np.ndarray, np.ndarray] | None = None) -> Path:
    """Real and hallucinated features embedded together by t-SNE; colour = class,
    marker = real (circle) or hallucinated (cross). real [R, D], fake [F, D].
    prototypes: (real [C, D], final [C, D]), row c of class c: the class mean of the real support
    (star) and the prototype after combining with the hallucinations (diamond), embedded
    with the features."""
    from sklearn.manifold import TSNE

    plt = _pyplot()
    extra = np.concatenate(prototypes) if prototypes is not None else np.zeros((0, real.shape[1]))
    points = np.concatenate([real, fake, extra]).astype(np.float64)
    perplexity = float(min(30, max(2, (len(points) - 1) // 3)))
    xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(points)
    fig, ax = plt.subplots(figsize=(7, 6))
    colours = plt.get_cmap("tab10")
    n_real, n_fake, n_protos = len(real), len(fake), len(extra) // 2
    for c, name in enumerate(class_names):
        r = xy[:n_real][real_labels == c]
        f = xy[n_real:n_real + n_fake][fake_labels == c]
        ax.scatter(f[:, 0], f[:, 1], marker="x", s=14, alpha=0.6, color=colours(c % 10))
        ax.scatter(r[:, 0], r[:, 1], marker="o", s=40, edgecolor="black", color=colours(c % 10), label=name)
        if c < n_protos:
            p_real, p_final = xy[n_real + n_fake + c], xy[n_real + n_fake + n_protos + c]
            ax.scatter(*p_real, marker="*", s=320, edgecolor="black", linewidth=1.2, color=colours(c % 10), zorder=3)
            ax.scatter(*p_final, marker="D", s=110, edgecolor="black", linewidth=1.2, color=colours(c % 10), zorder=3)
            ax.annotate("", xy=p_final, xytext=p_real, arrowprops={"arrowstyle": "->", "color": "black", "lw": 1})
    ax.scatter([], [], marker="o", color="grey", edgecolor="black", label="real (o)")
    ax.scatter([], [], marker="x", color="grey", label="hallucinated (x)")
    if n_protos:
        ax.scatter([], [], marker="*", s=120, color="grey", edgecolor="black", label="real prototype")
        ax.scatter([], [], marker="D", s=50, color="grey", edgecolor="black", label="final prototype")
    ax.legend(fontsize=8, loc="best")
    ax.set(title="t-SNE of real and hallucinated test features", xticks=[], yticks=[])
    return _save(fig, path)


def x_axis(positions: Sequence[float]) -> tuple[float, float, list[float]]:
    """The x limits and ticks of a sweep plot over every point's x (baselines included, so
    ProtoNet's M = 0 is on the axis): a margin of 5% of the span, or of 1 around a single value
    (matplotlib's default would span 9.6 to 10.4 around M = 10)."""
    low, high = min(positions), max(positions)
    margin = 0.05 * (high - low) if high > low else max(1.0, 0.5 * abs(low))
    return low - margin, high + margin, list(positions)


def sweep_plot(rows: Sequence[dict], x: str, group_fields: Sequence[str], path: Path) -> Path:
    """A sweep's mean test accuracy over seeds against `x` (e.g. M), one line per combination of
    `group_fields` (e.g. per hallucinator) with its 95% CI over seeds as a band, and each
    baseline point (`is_baseline` true, e.g. ProtoNet at M = 0) as a horizontal band. Where the
    rows are paired with a baseline (`diff_vs_baseline`), a second panel draws each point's
    paired difference with its t-CI over seeds and says whether the CI excludes 0: with few seeds
    the per-point bands overlap while the paired test is decisive, and this panel is the test.

    rows: `fsl.sweeps.aggregate` rows (test_acc, test_acc_ci95; NaN CI with one seed draws
    no band). Non-numeric x values are placed in their first-seen order."""
    plt = _pyplot()
    paired = [r for r in rows if r.get("diff_vs_baseline") is not None and not r.get("is_baseline")]
    fig, axes = plt.subplots(1, 2 if paired else 1, figsize=(13 if paired else 7, 4.5), squeeze=False)
    position, ticks = _accuracy_panel(axes[0][0], rows, x, group_fields)
    if paired:
        _difference_panel(axes[0][1], paired, x, group_fields, position, ticks)
    return _save(fig, path)


def _x_positions(rows: Sequence[dict], x: str) -> tuple[dict, list | None]:
    """Where each x value sits: its number, or (non-numeric) its first-seen index and the tick labels."""
    try:
        return {v: float(v) for v in {r[x] for r in rows}}, None
    except ValueError:
        ticks = list(dict.fromkeys(r[x] for r in rows))
        return {v: float(i) for i, v in enumerate(ticks)}, ticks


def _set_x_axis(ax, position: dict, ticks: list | None, x: str) -> None:
    low, high, at = x_axis(sorted(set(position.values())))
    ax.set_xlim(low, high)
    if ticks is not None:
        ax.set_xticks(range(len(ticks)), ticks)
    elif len(at) <= 12:
        ax.set_xticks(at, [f"{v:g}" for v in at])
    ax.set_xlabel(x)


def _group(row: dict, group_fields: Sequence[str]) -> str:
    return ",".join(f"{f}={row[f]}" for f in group_fields)


def _accuracy_panel(ax, rows: Sequence[dict], x: str, group_fields: Sequence[str]) -> tuple[dict, list | None]:
    plt = _pyplot()
    colours = plt.get_cmap("tab10")
    baselines = [r for r in rows if r.get("is_baseline")]
    lines = [r for r in rows if not r.get("is_baseline")]
    position, ticks = _x_positions(rows, x)
    groups = list(dict.fromkeys(_group(r, group_fields) for r in lines))
    for i, g in enumerate(groups):
        sel = sorted((r for r in lines if _group(r, group_fields) == g), key=lambda r: position[r[x]])
        xs = np.array([position[r[x]] for r in sel])
        mean = np.array([float(r["test_acc"]) for r in sel])
        half = np.array([float(r.get("test_acc_ci95", np.nan)) for r in sel])
        if len(xs) == 1:  # a band needs two points: one point gets an error bar
            ax.errorbar(xs, mean, yerr=None if np.isnan(half[0]) else half, fmt="o", capsize=4,
                        color=colours(i % 10), label=g or "test accuracy")
        else:
            ax.plot(xs, mean, marker="o", color=colours(i % 10), label=g or "test accuracy")
            ax.fill_between(xs, mean - half, mean + half, color=colours(i % 10), alpha=0.2)
    for j, r in enumerate(baselines):
        colour = "black" if j == 0 else colours((len(groups) + j) % 10)
        kind = "ProtoNet" if r.get("hallucinator") == "none" or r.get("M") == "0" else "baseline"
        level, spread = float(r["test_acc"]), float(r.get("test_acc_ci95", np.nan))
        ax.axhline(level, color=colour, linestyle="--", linewidth=1, label=f"{kind} ({r['point']})")
        if not np.isnan(spread):
            ax.axhspan(level - spread, level + spread, color=colour, alpha=0.12)
    _set_x_axis(ax, position, ticks, x)
    n = max((int(r.get("n_seeds", 1)) for r in rows), default=1)
    ax.set(ylabel="test accuracy (%)", title=f"Mean test accuracy over {n} seed{'s' if n != 1 else ''} ± 95% CI")
    ax.legend(fontsize=8, loc="best")
    return position, ticks


def _difference_panel(ax, paired: Sequence[dict], x: str, group_fields: Sequence[str], position: dict,
                      ticks: list | None) -> None:
    """Each point's paired difference to its baseline ± t-CI over seeds; filled: the CI excludes 0."""
    plt = _pyplot()
    colours = plt.get_cmap("tab10")
    groups = list(dict.fromkeys(_group(r, group_fields) for r in paired))
    width = 0.08 * max(1.0, np.ptp(list(position.values())) if len(position) > 1 else 1.0)
    for i, g in enumerate(groups):
        for r in (r for r in paired if _group(r, group_fields) == g):
            at = position[r[x]] + (i - (len(groups) - 1) / 2) * width
            half = float(r.get("diff_vs_baseline_ci95", np.nan))
            excludes = bool(r.get("diff_excludes_0"))
            ax.errorbar([at], [float(r["diff_vs_baseline"])], yerr=None if np.isnan(half) else [[half], [half]],
                        fmt="o", capsize=4, color=colours(i % 10), markerfacecolor=colours(i % 10) if excludes else
                        "white", label=g if r is next(q for q in paired if _group(q, group_fields) == g) else None)
            ax.annotate("excludes 0" if excludes else "includes 0", (at, float(r["diff_vs_baseline"])),
                        textcoords="offset points", xytext=(6, 6), fontsize=7)
    ax.axhline(0, color="black", linewidth=1)
    _set_x_axis(ax, position, ticks, x)
    baseline = paired[0].get("baseline", "the baseline")
    ax.set(ylabel="paired difference (points)", title=f"Paired difference to {baseline} ± 95% t-CI over seeds "
           "(filled: CI excludes 0)")
    if any(groups):
        ax.legend(fontsize=8, loc="best")


TSNE_CLASSES, TSNE_PER_CLASS = 5, 40


def tsne_size(store, M: int, classes: int = TSNE_CLASSES, per_class: int = TSNE_PER_CLASS) -> int:
    """How many points `tsne_plot` embeds: real features, M hallucinations per class, prototypes."""
    classes = min(classes, store.n_classes)
    counts = store.images_per_class()[:classes].clamp(max=per_class)
    return int(counts.sum()) + classes * (M + 2)


def tsne_plot(model: FewShotClassifier, store, cfg: TrainConfig, path: Path, classes: int = TSNE_CLASSES,
              per_class: int = TSNE_PER_CLASS) -> Path:
    """t-SNE of real test features and M hallucinated ones for `classes` fixed test classes,
    with each class's real prototype (mean of its support) and final prototype (after combining
    with the hallucinations, as the classifier does).

    The generator is seeded with `test_shots` real images of each class, as at test time.
    """
    import torch

    from fsl.diagnostics import episode_prototypes
    from fsl.models.noise import episode_keys

    classes = min(classes, store.n_classes)
    labels = store.labels
    rows = torch.cat([(labels == c).nonzero().flatten()[:per_class] for c in range(classes)])
    shots = cfg.test_shape.shots
    seeds = torch.cat([(labels == c).nonzero().flatten()[:shots] for c in range(classes)])
    seed_labels = torch.arange(classes, device=model.device).repeat_interleave(shots)
    model.eval()
    with torch.no_grad():
        real = model.embed(store.images[rows])
        support = model.embed(store.images[seeds])
        keys = episode_keys(cfg.test_seed, [0], torch.arange(classes)[None])
        real_protos, final_protos, (fake, fake_labels) = episode_prototypes(model, support[None], seed_labels[None],
                                                                            classes, keys)
        fake, fake_labels = fake[0], fake_labels[0]
    return tsne(real.cpu().numpy(), labels[rows].cpu().numpy(), fake.float().cpu().numpy(),
                    fake_labels.cpu().numpy(), store.class_names[:classes], path, seed=cfg.test_seed,
                    prototypes=(real_protos[0].cpu().numpy(), final_protos[0].float().cpu().numpy()))
