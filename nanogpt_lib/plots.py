"""The course's figures: small, titled, axes labelled with units. Each function returns the Figure
(a notebook shows it with `plt.show()`); only `save_png` writes, for the command line."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, Rectangle
from matplotlib.ticker import FuncFormatter, NullFormatter

from .atomic import atomic_path
from .config import GPTConfig
from .costs import format_count, model_cost
from .evaluation import PositionReport
from .moe import Routing, balance_summary
from .training import History


def plot_params_vs_width(
    vocab_size: int, block_size: int, widths: Sequence[int], depths: Sequence[int]
) -> Figure:
    """Total (solid) and non-embedding (dashed) parameters against n_embd, one colour per n_layer.

    n_head is left out on purpose: splitting n_embd into heads does not change the parameter count.
    """
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for depth in depths:
        costs = [model_cost(GPTConfig(block_size, vocab_size, depth, 1, w)) for w in widths]
        (line,) = ax.plot(widths, [c.params for c in costs], marker="o", label=f"n_layer={depth}")
        ax.plot(widths, [c.non_embedding_params for c in costs], ls="--", color=line.get_color())
    ax.set_yscale("log")
    ax.set_xlabel("n_embd (width of the residual stream)")
    ax.set_ylabel("parameters (log scale)")
    ax.set_title(f"Parameters vs width (vocab {vocab_size:,}, context {block_size}); dashed: without embeddings")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def plot_history(history: History, vocab_size: int) -> Figure:
    """Training loss (nats) and perplexity (log scale) per epoch, with the 25 % eval points."""
    fig, (ax_loss, ax_ppl) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax_loss.plot(history.epoch, history.loss, lw=1, label="training loss (dropout on)")
    ax_loss.axhline(math.log(vocab_size), color="grey", ls=":", label=f"ln(vocab) = {math.log(vocab_size):.2f}")
    ax_ppl.plot(history.epoch, history.perplexity, lw=1, label="training perplexity")
    quarters = [q for q in history.quarters if "eval_loss" in q]
    if quarters:
        epochs = [q["epoch"] for q in quarters]
        ax_loss.plot(epochs, [q["eval_loss"] for q in quarters], "o", label="eval loss at 25 % points")
        ax_ppl.plot(epochs, [q["eval_perplexity"] for q in quarters], "o", label="eval perplexity")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy (nats/token)", title="Loss")
    ax_ppl.set(xlabel="epoch", ylabel="perplexity (log scale)", yscale="log", title="Perplexity = exp(loss)")
    for ax in (ax_loss, ax_ppl):
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def plot_corpus_history(history: History) -> Figure:
    """A corpus run: training loss per step and the periodic train / validation evaluations.

    Built on a bare `Figure` (no pyplot state), so the command line can draw it without a display."""
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    ax.plot(history.epoch, history.loss, lw=0.8, alpha=0.5, label="train (per step, dropout on)")
    steps = [e["step"] for e in history.evals]
    ax.plot(steps, [e["train_loss"] for e in history.evals], "o-", label="train (eval mode, fixed batches)")
    ax.plot(steps, [e["val_loss"] for e in history.evals], "s-", label="validation (eval mode, fixed batches)")
    ax.set(xlabel="optimisation step", ylabel="cross-entropy (nats/token)", title="Corpus run: loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def save_png(fig: Figure, path: str | Path) -> Path:
    """Write the figure as a PNG, atomically (a temporary file renamed into place)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    return path


def plot_capacity(results: Sequence) -> Figure:
    """Final loss against parameters and against training seconds, one point per configuration
    (`results` are `experiments.SweepResult`)."""
    fig, (ax_p, ax_s) = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for i, r in enumerate(results):
        offset = (5, 5) if i % 2 == 0 else (5, -11)  # alternate above/below so close labels stay apart
        for ax, x in ((ax_p, r.params), (ax_s, r.seconds)):
            ax.plot(x, r.final_loss, "o")
            ax.annotate(r.name, (x, r.final_loss), textcoords="offset points", xytext=offset, fontsize=8)
    ax_p.set(xscale="log", xlabel="parameters (log scale)", ylabel="eval loss after training (nats/token)",
             title="Capacity: loss vs size")
    ticks = [m * 10**e for e in range(3, 10) for m in (1, 2, 5)]
    lo, hi = min(r.params for r in results), max(r.params for r in results)
    ax_p.set_xticks([t for t in ticks if lo / 1.5 <= t <= hi * 1.5] or [lo], minor=False)
    ax_p.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: format_count(v)))
    ax_p.xaxis.set_minor_formatter(NullFormatter())  # after set_xscale, which resets the formatters
    ax_s.set(xlabel="training time (seconds, this machine)", title="Cost: loss vs time")
    for ax in (ax_p, ax_s):
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


def plot_positions(reports: Mapping[str, PositionReport]) -> Figure:
    """p(true next token) at each position, one line per labelled model (e.g. per 25 % point)."""
    fig, ax = plt.subplots(figsize=(10, 3.2))
    for label, rep in reports.items():
        acc = sum(rep.correct) / max(len(rep.correct), 1)
        ax.plot(range(len(rep.target_prob)), rep.target_prob, lw=1, marker=".",
                label=f"{label} (argmax right at {acc:.0%} of positions)")
    ax.set(xlabel="position t (predicting token t+1)", ylabel="p(true next token)", ylim=(-0.02, 1.02),
           title="How sure the model is of each next token of the paragraph")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), title="snapshot")
    fig.tight_layout()
    return fig


def plot_shift(inputs: Sequence[str], targets: Sequence[str], first: int = 5, last: int = 3) -> Figure:
    """The shift drawn: inputs on top, targets below, each input pointing at the token it must
    predict; the last target is the ignored -1. Shows the first and last few positions."""
    if len(inputs) != len(targets):
        raise ValueError(f"{len(inputs)} inputs but {len(targets)} targets; the shift keeps the length")
    n = len(inputs)
    shown = list(range(n)) if n <= first + last else list(range(first)) + [None] + list(range(n - last, n))
    fig, ax = plt.subplots(figsize=(min(1.1 * len(shown) + 1.2, 10), 2.3))
    for col, pos in enumerate(shown):
        if pos is None:
            for y in (1.5, 0.2):
                ax.text(col + 0.5, y + 0.3, "...", ha="center", va="center", fontsize=14)
            continue
        target_colour = "#eeeeee" if pos == n - 1 else "#fde3c8"  # the ignored last target in grey
        for y, text, colour in ((1.5, inputs[pos], "#dbe9f6"), (0.2, targets[pos], target_colour)):
            ax.add_patch(Rectangle((col + 0.05, y), 0.9, 0.6, facecolor=colour, edgecolor="black", lw=0.8))
            ax.text(col + 0.5, y + 0.3, text, ha="center", va="center", fontsize=8, family="monospace")
        ax.text(col + 0.5, 2.25, f"t={pos}", ha="center", fontsize=7, color="dimgray")
        ax.add_patch(FancyArrowPatch((col + 0.5, 1.48), (col + 0.5, 0.82), arrowstyle="->", mutation_scale=10))
    ax.text(-0.1, 1.8, "input", ha="right", va="center", fontsize=9)
    ax.text(-0.1, 0.5, "target", ha="right", va="center", fontsize=9)
    ax.set(xlim=(-1.2, len(shown)), ylim=(0, 2.5),
           title="targets = inputs shifted left by one; the last target is -1 (ignored by the loss)")
    ax.axis("off")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------ Part 2: MoE
def plot_routing(routing: Routing, token_labels: Sequence[str] | None = None) -> Figure:
    """Left: which expert each token chose (1st / 2nd choice), kept or dropped. Right: each expert's
    load against its capacity (the seats), kept part and dropped part stacked."""
    N, E = routing.probs.shape
    k = routing.experts.shape[1]
    fig, (ax_grid, ax_load) = plt.subplots(1, 2, figsize=(10, max(3.0, 0.32 * N + 1)),
                                           gridspec_kw={"width_ratios": [1.2, 1]})
    ax_grid.imshow(routing.probs.detach().cpu().numpy(), cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for t in range(N):
        for j in range(k):
            e, kept = int(routing.experts[t, j]), bool(routing.kept[t, j])
            mark = f"{j + 1}" if kept else f"{j + 1}✗"
            ax_grid.text(e, t, mark, ha="center", va="center", fontsize=9, fontweight="bold",
                         color="black" if kept else "red")
    ax_grid.set_xticks(range(E), [f"e{e}" for e in range(E)])
    ax_grid.set_yticks(range(N), token_labels if token_labels is not None else [f"t{t}" for t in range(N)])
    ax_grid.set(xlabel="expert", title=f"Router probabilities; 1, 2: choice rank, ✗: dropped (top-{k})")
    kept_counts = [int((routing.kept & (routing.experts == e)).sum()) for e in range(E)]
    wanted = [int((routing.experts == e).sum()) for e in range(E)]
    ax_load.bar(range(E), kept_counts, color="tab:blue", label="kept")
    ax_load.bar(range(E), [w - c for w, c in zip(wanted, kept_counts, strict=True)], bottom=kept_counts,
                color="tab:red", alpha=0.6, label="dropped (expert full)")
    ax_load.axhline(routing.capacity, color="black", ls="--", lw=1, label=f"capacity = {routing.capacity} seats")
    ax_load.set_xticks(range(E), [f"e{e}" for e in range(E)])
    ax_load.set(xlabel="expert", ylabel="choices received", title="Load per expert")
    ax_load.legend(fontsize="small")
    fig.tight_layout()
    return fig


def plot_val_perplexity(results: Sequence) -> Figure:
    """Train (dashed) and validation (solid) perplexity at each evaluation, one colour per model.

    `results` are `experiments.CorpusResult`s: the same data, windows and recipe for every model."""
    fig, ax = plt.subplots(figsize=(7.5, 4))
    for r in results:
        steps = [e["step"] for e in r.history.evals]
        (line,) = ax.plot(steps, [math.exp(e["val_loss"]) for e in r.history.evals], "o-", ms=3,
                          label=f"{r.name}: validation")
        ax.plot(steps, [math.exp(e["train_loss"]) for e in r.history.evals], "--", color=line.get_color(),
                label=f"{r.name}: train")
    ax.set(xlabel="optimisation step", ylabel="perplexity (log scale)", yscale="log",
           title="Train (dashed) and validation (solid) perplexity, eval mode")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def _chosen_layers(layers: Sequence[int] | None, count: int) -> list[int]:
    chosen = list(range(count)) if layers is None else list(layers)
    bad = [i for i in chosen if not 0 <= i < count]
    if not chosen or bad:
        raise ValueError(f"layers={layers!r}: choose MoE layer indices in 0..{count - 1}")
    return chosen


def plot_expert_share(history: History, title: str = "", layers: Sequence[int] | None = None) -> Figure:
    """One heatmap per MoE layer (all, or the indices in `layers`): the share of routing choices each
    expert received at each step.

    1 / E everywhere is perfect balance; a bright row is an expert that attracts the tokens."""
    if not history.moe:
        raise ValueError("this history has no MoE routing records (a dense model?)")
    shares = torch.tensor([r["share"] for r in history.moe])  # (steps, layers, E)
    steps, n_layers, E = shares.shape
    chosen = _chosen_layers(layers, n_layers)
    fig, axes = plt.subplots(1, len(chosen), figsize=(4.2 * len(chosen), 3.2), squeeze=False)
    first = history.epoch[0] if history.epoch else 1
    for i, ax in zip(chosen, axes[0], strict=True):
        image = ax.imshow(shares[:, i, :].T.numpy(), aspect="auto", cmap="viridis", vmin=0,
                          vmax=max(2.0 / E, float(shares.max())), origin="lower",
                          extent=(first - 0.5, first + steps - 0.5, -0.5, E - 0.5))
        ax.set(xlabel="step", ylabel="expert", title=f"MoE layer {i}: share per expert")
        fig.colorbar(image, ax=ax, fraction=0.046, label=f"share (balanced: {1 / E:.3f})")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_moe_training(history: History) -> Figure:
    """Per step: the dropped fraction of each MoE layer, the load-balancing loss and the router z-loss."""
    if not history.moe:
        raise ValueError("this history has no MoE routing records (a dense model?)")
    steps = history.epoch[-len(history.moe):]
    fig, (ax_drop, ax_aux, ax_z) = plt.subplots(1, 3, figsize=(12, 3.2))
    dropped = torch.tensor([r["dropped"] for r in history.moe])  # (steps, layers)
    for i in range(dropped.shape[1]):
        ax_drop.plot(steps, 100 * dropped[:, i].numpy(), lw=1, label=f"layer {i}")
    ax_drop.set(xlabel="step", ylabel="% of choices dropped", title="Dropped (over capacity)")
    ax_drop.legend(fontsize="small")
    ax_aux.plot(steps, [r["aux_loss"] for r in history.moe], lw=1)
    ax_aux.axhline(1.0, color="grey", ls=":", label="1 = perfectly balanced")
    ax_aux.set(xlabel="step", ylabel="E · Σ f·P", title="Load-balancing loss")
    ax_aux.legend(fontsize="small")
    ax_z.plot(steps, [r["z_loss"] for r in history.moe], lw=1)
    ax_z.set(xlabel="step", ylabel="mean logsumexp²", title="Router z-loss")
    for ax in (ax_drop, ax_aux, ax_z):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------ Part 3: modern MoE
def _rolling_mean(values: Sequence[float], window: int) -> list[float]:
    """Mean of the last `window` values at each position (fewer at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def plot_balance(results: Sequence, window: int = 10) -> Figure:
    """Per training step, for each MoE model: the busiest expert's share over the fair share (left) and
    the share of choices dropped (right), each averaged over the MoE layers and over the last `window`
    steps. `results` are `experiments.CorpusResult`s; dense models are skipped."""
    moe_results = [r for r in results if r.history.moe]
    if not moe_results:
        raise ValueError("none of these results has MoE routing records (dense models only?)")
    fig, (ax_imb, ax_drop) = plt.subplots(1, 2, figsize=(12, 3.6))
    for r in moe_results:
        steps = r.history.epoch[-len(r.history.moe):]
        imb, drop = zip(*(balance_summary([rec]) for rec in r.history.moe), strict=True)  # per step
        drop = [100 * d for d in drop]
        ax_imb.plot(steps, _rolling_mean(imb, window), lw=1.5, label=r.name)
        ax_drop.plot(steps, _rolling_mean(drop, window), lw=1.5, label=r.name)
    ax_imb.axhline(1.0, color="grey", ls=":", label="1 = perfectly balanced")
    ax_imb.set(xlabel="step", ylabel="busiest expert / fair share",
               title=f"Load imbalance (mean over layers, {window}-step average)")
    ax_drop.set(xlabel="step", ylabel="% of choices dropped", title=f"Dropped over capacity ({window}-step average)")
    for ax in (ax_imb, ax_drop):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def plot_expert_bias(history: History, title: str = "", layers: Sequence[int] | None = None) -> Figure:
    """The balancing bias of every expert over training, one panel per MoE layer (all, or those in
    `layers`). Auxiliary-loss-free balancing: it rises for experts that get too few tokens and falls
    for those that get too many."""
    if not history.moe or "bias" not in history.moe[0]:
        raise ValueError("this history has no balancing-bias records (bias_update_rate was 0, or a dense model)")
    bias = torch.tensor([r["bias"] for r in history.moe])  # (steps, layers, E)
    steps = history.epoch[-len(history.moe):]
    chosen = _chosen_layers(layers, bias.shape[1])
    fig, axes = plt.subplots(1, len(chosen), figsize=(3.6 * len(chosen), 3.2), squeeze=False, sharey=True)
    for i, ax in zip(chosen, axes[0], strict=True):
        ax.plot(steps, bias[:, i, :].numpy(), lw=0.8)
        ax.axhline(0.0, color="grey", ls=":")
        ax.set(xlabel="step", title=f"MoE layer {i}")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("bias (one line per expert)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
