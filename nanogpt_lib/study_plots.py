"""Figures of a study's results (`study_results.Study`): curves with error bars, paired differences, the
balance and capacity grids and expert specialisation. Like `plots.py`, each returns the Figure."""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from .plots import localised
from .specialisation import Specialisation
from .study_results import Study


def _ink(shade: float) -> str:
    """Text colour readable on a diverging colour map at `shade` in [0, 1] (dark at both ends)."""
    return "white" if shade < 0.2 or shade > 0.8 else "black"


def _tokens_per_step(study: Study) -> int:
    protocol = study.data["protocol"]
    return protocol["batch_size"] * protocol["block_size"]


@localised
def plot_study_curves(study: Study, models: Sequence[str], labels: dict[str, str] | None = None) -> Figure:
    """Validation loss (fixed sample, mean over seeds, band = ± 1 standard error) against training tokens,
    and against seconds (each model's interleaved median step time x steps), with the bigram baseline."""
    labels = labels or {}
    per_second = all(study.seconds_per_step(m) for m in models)
    fig, axes = plt.subplots(1, 2 if per_second else 1, figsize=(11, 4.2) if per_second else (6.5, 4.2),
                             squeeze=False)
    bigram = study.data.get("baselines", {}).get("bigram")
    for model in models:
        steps, mean, se = study.curve(model)
        n = len(study.of(model))
        xs = [[s * _tokens_per_step(study) / 1e6 for s in steps]]
        if per_second:
            xs.append([s * study.seconds_per_step(model) for s in steps])
        for ax, x in zip(axes[0], xs, strict=False):
            (line,) = ax.plot(x[1:], mean[1:], "o-", ms=3, label=f"{labels.get(model, model)} ({n} seeds)")
            ax.fill_between(x[1:], np.subtract(mean[1:], se[1:]), np.add(mean[1:], se[1:]),
                            color=line.get_color(), alpha=0.2)
    for ax, xlabel in zip(axes[0], ("training tokens seen (millions)", "training time (s, this study's CPU timing)"),
                          strict=False):
        if bigram is not None:
            ax.axhline(bigram, ls="--", color="gray", lw=1)
            ax.text(ax.get_xlim()[1], bigram, " bigram", va="center", ha="left", fontsize=8, color="gray")
        ax.set(xlabel=xlabel, ylabel="validation loss (nats per token)")
        ax.grid(alpha=0.3)
    axes[0][0].set_title("Per token: the same windows for every model")
    if per_second:
        axes[0][1].set_title("Per second: step time measured interleaved")
    axes[0][0].legend(fontsize="small")
    fig.tight_layout()
    return fig


@localised
def plot_paired_differences(study: Study, models: Sequence[str], baseline: str = "dense",
                            labels: dict[str, str] | None = None) -> Figure:
    """Each model's final whole-split val loss minus the baseline's, seed by seed (dots), with the mean
    and ± 1 standard error (bar). Below zero: the model is better."""
    labels = labels or {}
    fig, ax = plt.subplots(figsize=(7.5, 0.6 * len(models) + 1.6))
    base = study.final(baseline)
    for i, model in enumerate(models):
        own = study.final(model)
        d = [own[s] - base[s] for s in sorted(set(own) & set(base))]
        ax.scatter(d, [i] * len(d), color="tab:blue", alpha=0.6, s=18, zorder=2)
        diff = study.versus(model, baseline)
        err = 0.0 if math.isnan(diff.se) else diff.se
        ax.errorbar(diff.mean, i, xerr=err, fmt="D", color="black", capsize=4, ms=5, zorder=3)
    ax.axvline(0, color="gray", lw=1)
    ax.set_yticks(range(len(models)), [labels.get(m, m) for m in models])
    ax.invert_yaxis()
    ax.set(xlabel=f"final validation loss minus {baseline}'s (nats per token; < 0: better)",
           title="Paired by seed: dots are seeds, diamonds the mean ± 1 SE")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig


@localised
def plot_balance_runs(study: Study, models: Sequence[str], ceiling: float,
                      labels: dict[str, str] | None = None) -> Figure:
    """Load imbalance (busiest expert's share over the fair share, mean over layers and seeds) per step in
    the first steps, then at each evaluation (mean of the 10 steps before), with the ceiling E/k marked."""
    labels = labels or {}
    fig, (early, late) = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    for model in models:
        runs = list(study.of(model).values())
        first = np.mean([r["routing"]["early_imbalance"] for r in runs], axis=0)
        (line,) = early.plot(range(1, len(first) + 1), first, label=f"{labels.get(model, model)}")
        late.plot(runs[0]["steps"][1:], np.mean([r["routing"]["imbalance"] for r in runs], axis=0), "o-", ms=3,
                  color=line.get_color())
    for ax in (early, late):
        ax.axhline(ceiling, ls="--", color="firebrick", lw=1)
        ax.axhline(1, ls=":", color="gray", lw=1)
        ax.grid(alpha=0.3)
    early.text(1, ceiling * 1.01, f"E/k = {ceiling:g}: every token sends a choice to the busiest expert", va="bottom",
               fontsize=8,
               color="firebrick")
    early.set_ylim(top=ceiling * 1.12)
    early.set(xlabel="training step", ylabel="imbalance (busiest / fair share)",
              title=f"Steps 1-{len(first)}, every step")
    late.set(xlabel="training step", title="Whole run: mean of the 10 steps before each evaluation")
    early.legend(fontsize="small")
    fig.tight_layout()
    return fig


@localised
def plot_expert_shares(study: Study, model: str, seed: int) -> Figure:
    """One run's expert shares at the end of training (mean of its last 10 steps), layer x expert, on a
    diverging colour map centred on the fair share 1/E."""
    run = study.of(model)[seed]
    share = np.asarray(run["routing"]["final_share"])  # (layers, E)
    n_layers, E = share.shape
    fig, ax = plt.subplots(figsize=(6.5, 0.5 * n_layers + 1.8))
    norm = TwoSlopeNorm(vcenter=1 / E, vmin=0, vmax=max(share.max(), 2 / E))
    image = ax.imshow(share, cmap="RdBu_r", norm=norm, aspect="auto")
    for (i, j), v in np.ndenumerate(share):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color=_ink(float(norm(v))))
    ax.set(xlabel="expert", ylabel="MoE layer", xticks=range(E), yticks=range(n_layers),
           title=f"{model}, seed {seed}: share of routing choices (fair share {1 / E:.3f})")
    fig.colorbar(image, ax=ax, label="share of the layer's choices")
    fig.tight_layout()
    return fig


@localised
def plot_grid(study: Study, rows: Sequence[str], columns: Sequence[str], keys: dict[tuple[str, str], str],
              value: str, row_label: str, column_label: str, title: str) -> Figure:
    """A heatmap over a grid of models (keys[(row, column)] = model), coloured by `value`: 'dropped' (the
    dropped share of routing choices at the end of training), 'peak_dropped' (the largest dropped share of
    one of the first steps) or 'val_loss' (final whole-split val loss), each the mean over seeds, with the
    number in each cell; missing cells stay blank."""
    if value not in ("dropped", "peak_dropped", "val_loss"):
        raise ValueError(f"value must be 'dropped', 'peak_dropped' or 'val_loss', got {value!r}")
    share = value != "val_loss"
    measure = {"dropped": study.dropped, "peak_dropped": study.peak_dropped,
               "val_loss": lambda model: study.summary(model).mean}[value]
    known = set(study.models())
    grid = np.full((len(rows), len(columns)), np.nan)
    for i, r in enumerate(rows):
        for j, c in enumerate(columns):
            model = keys.get((r, c))
            if model in known:
                grid[i, j] = measure(model)
    fig, ax = plt.subplots(figsize=(6.5, 0.6 * len(rows) + 2))
    image = ax.imshow(grid, cmap="viridis", aspect="auto")
    for (i, j), v in np.ndenumerate(grid):
        if not math.isnan(v):
            ax.text(j, i, f"{v:.1%}" if share else f"{v:.3f}", ha="center", va="center", fontsize=8,
                    color="white" if v < np.nanmean(grid) else "black")
    ax.set(xticks=range(len(columns)), xticklabels=columns, yticks=range(len(rows)), yticklabels=rows,
           xlabel=column_label, ylabel=row_label, title=title)
    fig.colorbar(image, ax=ax, label="dropped share of choices" if share else "validation loss (nats per token)")
    fig.tight_layout()
    return fig


@localised
def plot_specialisation(spec: Specialisation, layer: int, title: str) -> Figure:
    """Enrichment P(expert | label) / P(expert) of one layer as a heatmap, log2 scale, centred on 1 (blue: the
    expert avoids the label, red: prefers it), with each label's token count on its row."""
    enrich = spec.enrichment(layer)
    counts = spec.counts[layer].sum(axis=1)
    with np.errstate(divide="ignore"):
        logged = np.log2(enrich)
    finite = np.abs(logged[np.isfinite(logged)])
    limit = min(4.0, float(finite.max())) if finite.size and finite.max() > 0 else 1.0  # beyond 16x: saturated
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * len(spec.labels) + 1.8))
    image = ax.imshow(np.clip(logged, -limit, limit), cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    for (i, j), v in np.ndenumerate(enrich):
        if np.isfinite(v):
            shade = (np.clip(logged[i, j], -limit, limit) + limit) / (2 * limit)
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=7, color=_ink(float(shade)))
    ax.set(xticks=range(enrich.shape[1]), yticks=range(len(spec.labels)),
           yticklabels=[f"{name} ({n:,})" for name, n in zip(spec.labels, counts, strict=True)],
           xlabel="expert (top-1 choice)", title=title)
    bar = fig.colorbar(image, ax=ax)
    bar.set_label(f"log2 enrichment (0: fair share; saturates at ±{limit:g})")
    fig.tight_layout()
    return fig


@localised
def plot_early_vs_final(study: Study, models: Sequence[str], step: int = 100,
                        labels: dict[str, str] | None = None) -> Figure:
    """Each run's validation loss at `step` (fixed sample) against its final one, one colour per model: how
    much of a run's outcome is decided early."""
    labels = labels or {}
    fig, ax = plt.subplots(figsize=(6.5, 4.6))
    for model in models:
        runs = list(study.of(model).values())
        at = runs[0]["steps"].index(step)
        ax.scatter([r["val_loss"][at] for r in runs], [r["val_loss"][-1] for r in runs], s=28,
                   label=labels.get(model, model))
    ax.set(xlabel=f"validation loss at step {step} (nats per token, fixed sample)",
           ylabel="validation loss at the end (nats per token, fixed sample)",
           title=f"A run's fate is visible by step {step}: one dot per run")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


@localised
def plot_upcycling_curves(study: Study, models: Sequence[str], labels: dict[str, str] | None = None) -> Figure:
    """Validation loss (fixed sample, mean over seeds, band = ± 1 SE) against training compute (FLOPs, every
    step counted at the model it ran on) and, with the study's timing, against seconds; the upcycling step
    marked. The continued arms share the dense run's curve up to that step."""
    labels = labels or {}
    per_second = study.data.get("timing") is not None
    fig, axes = plt.subplots(1, 2 if per_second else 1, figsize=(11, 4.8) if per_second else (6.5, 4.8),
                             squeeze=False)
    units = ("flops", "seconds") if per_second else ("flops",)
    switch = study.data["protocol"]["switch_step"]
    for model in models:
        steps, mean, se = study.curve(model)
        n = len(study.of(model))
        for ax, unit in zip(axes[0], units, strict=False):
            x = np.array(study.cost(model, steps, unit)) / (1e15 if unit == "flops" else 1.0)
            (line,) = ax.plot(x[1:], mean[1:], "o-", ms=2.5, label=f"{labels.get(model, model)} ({n} seeds)")
            ax.fill_between(x[1:], np.subtract(mean[1:], se[1:]), np.add(mean[1:], se[1:]),
                            color=line.get_color(), alpha=0.2)
    # zoom on the part after the switch, where the arms differ: up to a little above the dense loss there
    steps, mean, _ = study.curve("phase1")
    at_switch = mean[steps.index(switch)]
    lowest = min(min(study.curve(m)[1]) for m in models)
    for ax, unit in zip(axes[0], units, strict=False):
        at = study.cost("phase1", [switch], unit)[0] / (1e15 if unit == "flops" else 1.0)
        ax.axvline(at, ls=":", color="gray", lw=1)
        ax.set_ylim(lowest - 0.05, at_switch + 0.25)
        ax.set_xlim(left=at / 2)
        ax.text(at, lowest - 0.04, f" step {switch}: upcycling", va="bottom", ha="left", fontsize=8, color="gray")
        ax.set(xlabel="training compute (PFLOP)" if unit == "flops" else "training time (s, this study's CPU timing)",
               ylabel="validation loss (nats per token)")
        ax.grid(alpha=0.3)
    axes[0][0].set_title("Per FLOP (after the upcycling step)")
    if per_second:
        axes[0][1].set_title("Per second (step times measured interleaved)")
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.legend(handles, names, loc="lower center", ncol=3, fontsize="small", frameon=False)
    return fig


@localised
def plot_expert_divergence(study: Study, models: Sequence[str], labels: dict[str, str] | None = None) -> Figure:
    """How upcycled copies become different experts: left, the spread of each layer's experts (mean pairwise
    distance over the norm of their mean, averaged over layers and seeds) after the upcycling step; right, the
    router's entropy per step (mean over layers and seeds) from each MoE's first step, with ln E marked."""
    labels = labels or {}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.9))
    n_expert = study.data["protocol"]["n_expert"]
    apart = []  # models whose experts start apart (random weights): on another scale, so given as text
    for model in models:
        runs = list(study.of(model).values())
        start = runs[0]["spread_steps"][0]
        steps = np.array(runs[0]["spread_steps"]) - start
        spread = np.mean([r["spread"] for r in runs], axis=0)
        label = f"{labels.get(model, model)} ({len(runs)} seeds)"
        if spread[0] > 0:
            (line,) = left.plot([], [])  # keeps the model's colour the same in both panels
            apart.append(f"{labels.get(model, model)}: {spread[0]:.1f} at the start, {spread[-1]:.1f} at the end")
        else:
            (line,) = left.plot(steps, spread, label=label)
        entropy = np.mean([r["entropy"] for r in runs], axis=0)
        right.plot(range(1, len(entropy) + 1), entropy, color=line.get_color(), lw=1, label=label)
    if apart:
        left.text(0.02, 0.97, "off this scale (random starts):\n" + "\n".join(apart), transform=left.transAxes,
                  va="top", fontsize=8, color="dimgray")
    right.axhline(math.log(n_expert), ls="--", color="gray", lw=1)
    right.text(right.get_xlim()[1] * 0.98, math.log(n_expert) - 0.005, f"ln {n_expert}: uniform router", va="top",
               ha="right", fontsize=8, color="gray")
    left.set(xlabel="steps since the MoE started", ylabel="expert spread (relative distance)",
             title="Experts: mean pairwise distance / norm of their mean")
    right.set(xlabel="steps since the MoE started", ylabel="router entropy (nats)",
              title="Router: entropy of the expert probabilities")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    left.legend(fontsize="small", loc="lower right")
    right.legend(fontsize="small", loc="upper right", bbox_to_anchor=(1, 0.92))
    fig.tight_layout()
    return fig
