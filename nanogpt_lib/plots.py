"""The course's figures: small, titled, axes labelled with units. Each function returns the Figure
(a notebook shows it with `plt.show()`); only `save_png` writes, for the command line."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, Rectangle
from matplotlib.ticker import FuncFormatter, NullFormatter

from .atomic import atomic_path
from .config import GPTConfig
from .costs import format_count, model_cost
from .evaluation import PositionReport
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
