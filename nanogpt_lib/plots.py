"""The course's figures: small, titled, axes labelled with units. Each function returns the Figure
(a notebook shows it with `plt.show()`); only `save_png` writes, for the command line.

The figures' language is one setting, English by default: `set_language("pt-br")` (or, for a block,
`with language("pt-br"):`) and every figure of this module and of `study_plots` comes out with its titles,
axes, legends and boxes in Brazilian Portuguese (`figure_language` holds the words).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch, Rectangle
from matplotlib.ticker import FuncFormatter, NullFormatter

from .atomic import atomic_path
from .config import GPTConfig
from .costs import format_count, model_cost
from .evaluation import PositionReport
from .figure_language import check_language, localise
from .model import GPT
from .moe import MoE, Routing, balance_summary, expert_capacity
from .training import History

_LANGUAGE: ContextVar[str] = ContextVar("figure_language", default="en")


def set_language(language: str) -> None:
    """The language of every figure drawn from now on: "en" (the default) or "pt-br"."""
    _LANGUAGE.set(check_language(language))


def get_language() -> str:
    return _LANGUAGE.get()


@contextlib.contextmanager
def language(name: str) -> Iterator[None]:
    """Figures drawn inside the block are in `name`; the setting is restored after it."""
    token = _LANGUAGE.set(check_language(name))
    try:
        yield
    finally:
        _LANGUAGE.reset(token)


def localised(draw: Callable[..., Figure]) -> Callable[..., Figure]:
    """Decorator of the figure functions: the Figure they return is in the language setting's words."""
    @functools.wraps(draw)
    def wrapper(*args, **kwargs) -> Figure:
        return localise(draw(*args, **kwargs), get_language())

    return wrapper


@localised
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


@localised
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


@localised
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


@localised
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


@localised
def plot_positions(reports: Mapping[str, PositionReport], vocab_size: int | None = None,
                   log_scale: bool = True) -> Figure:
    """p(true next token) at each position, one line per labelled model (e.g. per 25 % point).

    On a log scale by default: an untrained model's p is about 1/V everywhere and an early snapshot's
    a few hundredths, which a linear axis draws flat on zero. With `vocab_size`, 1/V is drawn too."""
    fig, ax = plt.subplots(figsize=(10, 3.4))
    for label, rep in reports.items():
        acc = sum(rep.correct) / max(len(rep.correct), 1)
        ax.plot(range(len(rep.target_prob)), rep.target_prob, lw=1, marker=".",
                label=f"{label} (argmax right at {acc:.0%} of positions)")
    if vocab_size is not None:
        ax.axhline(1 / vocab_size, color="grey", ls=":", label=f"1/V = 1/{vocab_size:,} (uniform guess)")
    if log_scale:
        ax.set_yscale("log")
        ax.set_ylim(top=1.5)
    else:
        ax.set_ylim(-0.02, 1.02)
    ax.set(xlabel="position t (predicting token t+1)",
           ylabel="p(true next token)" + (" (log scale)" if log_scale else ""),
           title="How sure the model is of each next token of the paragraph")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), title="snapshot")
    fig.tight_layout()
    return fig


@localised
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
@localised
def plot_routing(routing: Routing, token_labels: Sequence[str] | None = None) -> Figure:
    """Left: which expert each token chose (1st / 2nd choice), kept or dropped. Right: each expert's
    load against its capacity (the seats), kept part and dropped part stacked."""
    N, E = routing.probs.shape
    k = routing.experts.shape[1]
    fig, (ax_grid, ax_load) = plt.subplots(1, 2, figsize=(10, max(3.0, 0.32 * N + 1)),
                                           gridspec_kw={"width_ratios": [1.2, 1]})
    image = ax_grid.imshow(routing.probs.detach().cpu().numpy(), cmap="Blues", vmin=0, vmax=1, aspect="auto")
    fig.colorbar(image, ax=ax_grid, label="router probability p", fraction=0.05, pad=0.02)
    for t in range(N):
        for j in range(k):
            e, kept = int(routing.experts[t, j]), bool(routing.kept[t, j])
            mark = f"{j + 1}" if kept else f"{j + 1}✗"
            ax_grid.text(e, t, mark, ha="center", va="center", fontsize=9, fontweight="bold",
                         color="black" if kept else "red")
    ax_grid.set_xticks(range(E), [f"e{e}" for e in range(E)])
    ax_grid.set_yticks(range(N), token_labels if token_labels is not None else [f"t{t}" for t in range(N)])
    ax_grid.set(xlabel="expert", ylabel="token", title=f"Router probabilities; 1, 2: choice rank, ✗: dropped (top-{k})")
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


@localised
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


@localised
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


@localised
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


@localised
def plot_balance(results: Sequence, window: int = 10) -> Figure:
    """Per training step, for each MoE model: the busiest expert's share over the fair share (left) and
    the share of choices dropped (right), each averaged over the MoE layers and over the last `window`
    steps. `results` are `experiments.CorpusResult`s; dense models are skipped. When no model dropped a
    single choice (every one dropless) the right panel, all zeros, is left out."""
    moe_results = [r for r in results if r.history.moe]
    if not moe_results:
        raise ValueError("none of these results has MoE routing records (dense models only?)")
    summaries = {r.name: list(zip(*(balance_summary([rec]) for rec in r.history.moe), strict=True))  # per step
                 for r in moe_results}
    any_dropped = any(d > 0 for imb, drop in summaries.values() for d in drop)
    fig, axes = plt.subplots(1, 2 if any_dropped else 1, figsize=(12, 3.6) if any_dropped else (6.5, 3.6),
                             squeeze=False)
    ax_imb = axes[0][0]
    for r in moe_results:
        steps = r.history.epoch[-len(r.history.moe):]
        imb, drop = summaries[r.name]
        ax_imb.plot(steps, _rolling_mean(imb, window), lw=1.5, label=r.name)
        if any_dropped:
            axes[0][1].plot(steps, _rolling_mean([100 * d for d in drop], window), lw=1.5, label=r.name)
    ax_imb.axhline(1.0, color="grey", ls=":", label="1 = perfectly balanced")
    ax_imb.set(xlabel="step", ylabel="busiest expert / fair share",
               title=f"Load imbalance (mean over layers, {window}-step average)")
    if any_dropped:
        axes[0][1].set(xlabel="step", ylabel="% of choices dropped",
                       title=f"Dropped over capacity ({window}-step average)")
    for ax in axes[0]:
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


@localised
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


# --------------------------------------------------------------- diagrams
_COLOURS = {"data": "#eeeeee", "embed": "#dbe9f6", "norm": "#e8e8f8", "attn": "#fde3c8", "mlp": "#d9f0d3",
            "head": "#f6dbe6", "router": "#fff2b3", "expert": "#d9f0d3", "chosen": "#8fd18f", "shared": "#b8dcf0"}


def _box(ax, x: float, y: float, w: float, h: float, text: str, kind: str, fontsize: float = 8) -> None:
    """A rounded box centred on (x, y) with centred text."""
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                facecolor=_COLOURS[kind], edgecolor="black", lw=0.8))
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, family="monospace")


def _arrow(ax, start: tuple[float, float], end: tuple[float, float], **style) -> None:
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=9, shrinkA=0, shrinkB=0,
                                 **{"lw": 0.9, **style}))


def _plus(ax, x: float, y: float) -> None:
    """The residual addition: a circled plus."""
    ax.add_patch(Circle((x, y), 0.17, facecolor="white", edgecolor="black", lw=0.9))
    ax.text(x, y, "+", ha="center", va="center", fontsize=11)


def _count(module: torch.nn.Module) -> str:
    return f"{sum(p.numel() for p in module.parameters()):,} params"


@localised
def plot_gpt_diagram(config: GPTConfig, batch_size: int = 1) -> Figure:
    """GPT-2 drawn from `config`: the whole model on the left, one block on the right, each box with its
    output shape (B = batch_size, T = block_size) and its parameter count, read from the model itself
    (built on the meta device, so the counts cannot drift from `model.py`)."""
    if config.n_expert > 0:
        raise ValueError("plot_gpt_diagram draws the dense GPT (n_expert=0); use plot_moe_diagram for the MoE layer")
    with torch.device("meta"):
        model = GPT(config)
    block = model.transformer.h[0]
    B, T, C, V, H = batch_size, config.block_size, config.n_embd, config.vocab_size, config.n_head
    D = C // H
    fig, (ax_model, ax_block) = plt.subplots(1, 2, figsize=(11, 8.2), gridspec_kw={"width_ratios": [1, 1.25]})

    # the model, top to bottom
    ax = ax_model
    _box(ax, 2.5, 13.2, 3.2, 0.7, f"token ids idx\n({B}, {T}) = (B, T)", "data")
    _box(ax, 1.3, 11.6, 2.3, 0.95, f"wte  {V} x {C}\n{_count(model.transformer.wte)}", "embed")
    _box(ax, 3.8, 11.6, 2.3, 0.95, f"wpe  {T} x {C}\n{_count(model.transformer.wpe)}", "embed")
    _arrow(ax, (1.9, 12.85), (1.3, 12.08))
    _arrow(ax, (3.2, 12.85), (3.8, 12.08), ls="--")
    ax.text(4.1, 12.5, "positions 0..T-1", fontsize=7, color="dimgray")
    _plus(ax, 2.5, 10.5)
    _arrow(ax, (1.3, 11.12), (2.35, 10.6))
    _arrow(ax, (3.8, 11.12), (2.65, 10.6))
    _box(ax, 2.5, 9.55, 3.2, 0.6, f"dropout {config.dropout}\n({B}, {T}, {C}) = (B, T, C)", "data", 7.5)
    _arrow(ax, (2.5, 10.33), (2.5, 9.85))
    n_block = sum(p.numel() for p in block.parameters())
    _box(ax, 2.5, 7.6, 4.4, 2.4, f"Block  x {config.n_layer}\n(right: one block)\n\n{n_block:,} params each,\n"
                                 f"{config.n_layer * n_block:,} in all\n({B}, {T}, {C}) -> ({B}, {T}, {C})", "attn")
    _arrow(ax, (2.5, 9.25), (2.5, 8.8))
    _box(ax, 2.5, 5.6, 3.2, 0.7, f"ln_f  LayerNorm\n{_count(model.transformer.ln_f)}", "norm")
    _arrow(ax, (2.5, 6.4), (2.5, 5.95))
    _box(ax, 2.5, 4.3, 3.6, 0.9, f"lm_head  {C} -> {V}\nweight tied to wte: 0 new params", "head")
    _arrow(ax, (2.5, 5.25), (2.5, 4.75))
    _box(ax, 2.5, 3.0, 3.2, 0.6, f"logits ({B}, {T}, {V}) = (B, T, V)", "data", 7.5)
    _arrow(ax, (2.5, 3.85), (2.5, 3.3))
    _box(ax, 2.5, 1.6, 4.2, 0.9, "cross-entropy with targets\n(the -1 positions ignored)\n-> loss, a scalar", "data",
         7.5)
    _arrow(ax, (2.5, 2.7), (2.5, 2.05))
    ax.annotate("", xy=(0.15, 4.3), xytext=(0.15, 11.6),
                arrowprops={"arrowstyle": "<->", "ls": ":", "color": "dimgray", "lw": 0.9})
    ax.text(0.05, 8.0, "same matrix", rotation=90, fontsize=7, color="dimgray", ha="right", va="center")
    ax.set(xlim=(-0.4, 5.4), ylim=(0.8, 13.8),
           title=f"GPT: {model.num_params():,} parameters ({V:,}-token vocabulary)")
    ax.axis("off")

    # one block, top to bottom, the residual stream on the left
    ax = ax_block
    x_main, x_res = 3.4, 0.6
    _box(ax, x_main, 13.2, 3.4, 0.6, f"x  ({B}, {T}, {C})", "data")
    steps_attn = [
        (12.0, f"ln_1  LayerNorm  ({_count(block.ln_1)})", "norm", 0.55),
        (10.95, f"c_attn  {C} -> 3 x {C}  ({_count(block.attn.c_attn)})\nq, k, v: 3 x ({B}, {T}, {C})", "attn", 0.8),
        (9.75, f"split into heads: ({B}, {H}, {T}, {D}) = (B, H, T, D)\n"
               f"softmax(q k^T / sqrt({D}) + causal mask) v\nposition t sees positions 0..t", "attn", 1.05),
        (8.45, f"heads side by side: ({B}, {T}, {C})\nc_proj  {C} -> {C}  ({_count(block.attn.c_proj)})", "attn", 0.8),
    ]
    steps_mlp = [
        (6.65, f"ln_2  LayerNorm  ({_count(block.ln_2)})", "norm", 0.55),
        (5.6, f"c_fc  {C} -> {4 * C}  ({_count(block.mlp.c_fc)})\nGELU (tanh form)", "mlp", 0.8),
        (4.45, f"c_proj  {4 * C} -> {C}  ({_count(block.mlp.c_proj)})\ndropout {config.dropout}", "mlp", 0.8),
    ]
    previous = 12.9
    for steps, plus_y in ((steps_attn, 7.45), (steps_mlp, 3.45)):
        top = previous
        for y, text, kind, h in steps:
            _arrow(ax, (x_main, previous), (x_main, y + h / 2))
            _box(ax, x_main, y, 4.6, h, text, kind, 7.3)
            previous = y - h / 2
        _arrow(ax, (x_main, previous), (x_main, plus_y + 0.17))
        _plus(ax, x_main, plus_y)
        ax.plot([x_main - 0.3, x_res, x_res], [top + 0.15, top + 0.15, plus_y], color="black", lw=0.9)
        _arrow(ax, (x_res, plus_y), (x_main - 0.17, plus_y))
        previous = plus_y - 0.17
    ax.text(x_res - 0.1, 10.0, "residual: x + attn(ln_1(x))", rotation=90, fontsize=7, ha="right", va="center")
    ax.text(x_res - 0.1, 5.3, "residual: x + mlp(ln_2(x))", rotation=90, fontsize=7, ha="right", va="center")
    _box(ax, x_main, 2.3, 3.4, 0.6, f"out  ({B}, {T}, {C})", "data")
    _arrow(ax, (x_main, previous), (x_main, 2.6))
    ax.set(xlim=(-0.2, 6.0), ylim=(0.8, 13.8),
           title=f"One block: attention ({H} heads of {D}) then MLP, pre-norm")
    ax.axis("off")
    fig.tight_layout()
    return fig


@localised
def plot_moe_diagram(config: GPTConfig, n_tokens: int | None = None, max_experts_drawn: int = 10) -> Figure:
    """The MoE layer of `config` drawn left to right: router -> top-k -> seats -> experts -> weighted sum
    -> residual, with shapes (N = n_tokens, default one batch of block_size tokens) and parameter counts
    read from the layer itself. Shared experts (`n_shared_expert`), a sigmoid router with its balancing
    bias, and many narrow (fine-grained) experts are drawn when the config has them; with more than
    `max_experts_drawn` experts the middle ones are folded into a '...' row."""
    if config.n_expert < 2:
        raise ValueError(f"plot_moe_diagram needs an MoE config with n_expert >= 2, got n_expert={config.n_expert}")
    with torch.device("meta"):
        layer = MoE(config)
    N = n_tokens if n_tokens is not None else config.block_size
    C, E, k, S = config.n_embd, config.n_expert, config.top_k, config.n_shared_expert
    hidden = config.hidden_size
    capacity = expert_capacity(N, E, k, config.capacity_factor)
    per_expert = layer.experts.params_per_expert()
    fig, ax = plt.subplots(figsize=(12, 6.2))

    _box(ax, 0.9, 5.0, 1.5, 1.0, f"x = ln_2(h)\n({N}, {C})\nN tokens", "data")
    if config.router_type == "sigmoid":
        scoring = "sigmoid(x W_r): scores\n+ bias b (choice only)"
    else:
        scoring = "softmax(x W_r)\nprobabilities p"
    _box(ax, 3.0, 5.0, 2.2, 1.3, f"router W_r  {C} x {E}\n{_count(layer.router)}\n{scoring}\n({N}, {E})", "router", 7.3)
    _arrow(ax, (1.65, 5.0), (1.9, 5.0))
    weight_rule = "renormalised to sum 1" if (k > 1 if config.norm_topk_prob is None else config.norm_topk_prob) \
        else "raw score"
    _box(ax, 5.3, 5.0, 2.0, 1.3, f"top-{k} of {E}\nexperts ({N}, {k})\nweights w ({N}, {k})\n{weight_rule}",
         "router", 7.3)
    _arrow(ax, (4.1, 5.0), (4.3, 5.0))
    if config.capacity_factor is None:
        seats = f"seats per expert\nno limit: N = {capacity}\n(capacity_factor None)\nnothing dropped"
    else:
        seats = (f"seats per expert\nceil(f N k / E) = {capacity}\n(factor {config.capacity_factor})\n"
                 "first choices first")
        ax.text(5.3, 2.2, "a choice over its expert's\nseats is dropped (adds 0)", ha="center", va="top", fontsize=7,
                color="tab:red")
    _box(ax, 5.3, 3.1, 2.0, 1.2, seats, "router", 7.0)
    _arrow(ax, (5.3, 4.35), (5.3, 3.7))

    # the experts, one row each (the middle ones folded when there are many)
    shown = list(range(E)) if E <= max_experts_drawn else \
        list(range(max_experts_drawn - 2)) + [None, E - 1]
    top_y, row = 8.3, min(0.75, 6.4 / len(shown))
    chosen = set(range(k))  # an example token's k experts, coloured
    x_exp = 8.3
    ys = []
    for i, e in enumerate(shown):
        y = top_y - i * row
        ys.append(y)
        if e is None:
            ax.text(x_exp, y, f"... {E - len(shown) + 1} more ...", ha="center", va="center", fontsize=7)
            continue
        kind = "chosen" if e in chosen else "expert"
        _box(ax, x_exp, y, 2.4, row * 0.8, f"expert {e}: {C}->{hidden}->{C}", kind, 6.8 if row > 0.5 else 6)
        _arrow(ax, (6.3, 5.0), (x_exp - 1.2, y), color="dimgray" if e not in chosen else "black",
               lw=0.5 if e not in chosen else 1.1)
    ax.text(x_exp, top_y + 0.55, f"{E} routed experts, {per_expert:,} params each\n({config.expert_type}; "
            f"coloured: one token's top-{k})", ha="center", fontsize=7.3)
    bottom = ys[-1] - row / 2
    x_sum = 11.0
    if S:
        shared_y = bottom - 0.75
        _box(ax, x_exp, shared_y, 2.6, 0.8, f"{S} shared expert{'s' if S > 1 else ''}: every token, "
                                            f"{'w = sigmoid gate' if config.shared_expert_gate else 'w = 1'}\n"
                                            f"{_count(layer.shared_experts)}", "shared", 6.8)
        ax.plot([1.65, 1.65, x_exp - 1.3], [4.5, shared_y, shared_y], color="tab:blue", lw=0.9)
        _arrow(ax, (x_exp + 1.3, shared_y), (x_sum - 0.5, 4.8), color="tab:blue")
    for y in ys:
        if y is not None:
            _arrow(ax, (x_exp + 1.2, y), (x_sum - 0.5, 5.2), color="dimgray", lw=0.5)
    total = "sum_j w_j expert_j(x)" + ("\n+ shared(x)" if S else "")
    _box(ax, x_sum, 5.0, 1.9, 1.1, f"y = {total}\n({N}, {C})", "mlp", 7.0)
    _plus(ax, x_sum, 3.2)
    _arrow(ax, (x_sum, 4.45), (x_sum, 3.37))
    ax.text(x_sum + 0.25, 3.2, "h + y\n(residual)", va="center", fontsize=7.3)
    _box(ax, x_sum, 1.9, 1.6, 0.6, f"out ({N}, {C})", "data")
    _arrow(ax, (x_sum, 3.03), (x_sum, 2.2))
    low = 0.9
    ax.plot([0.9, 0.9, x_sum - 1.0, x_sum - 1.0], [4.5, low, low, 3.2], color="black", lw=0.7, ls=":")
    _arrow(ax, (x_sum - 1.0, 3.2), (x_sum - 0.17, 3.2), lw=0.7)
    ax.text(2.4, low + 0.1, "h, the block's input (before ln_2), skips the layer", fontsize=6.8, color="dimgray")
    active = layer.active_params()
    ax.set(xlim=(0, 12.6), ylim=(0.6, 9.3),
           title=f"MoE layer: {sum(p.numel() for p in layer.parameters()):,} parameters, {active:,} active "
                 f"per token (top-{k} of {E}{f' + {S} shared' if S else ''})")
    ax.axis("off")
    fig.tight_layout()
    return fig


@localised
def plot_active_vs_total(rows: Sequence) -> Figure:
    """Released MoE models (`real_models.table()` rows): active parameters per token (as published) against total
    parameters, both on log scales, with dashed lines where a token uses 1/4, 1/10 and 1/30 of the model."""
    fig, ax = plt.subplots(figsize=(7.5, 5))
    totals = [r.total / 1e9 for r in rows]
    actives = [r.active_as_published / 1e9 for r in rows]  # in each publisher's convention
    low, high = min(totals) / 8, max(totals) * 5  # room for the labels on both sides
    for share in (4, 10, 30):
        ax.plot([low, high], [low / share, high / share], ls="--", lw=0.8, color="lightgray", zorder=0)
        ax.text(low * 1.15, low / share * 1.35, f"1/{share}", fontsize=8, color="gray")
    ax.scatter(totals, actives, color="tab:blue", zorder=2)
    for r, x, y in zip(rows, totals, actives, strict=True):
        label = f"{r.model.name}\n{r.model.n_expert} experts, top-{r.model.top_k}" + (
            f" + {r.model.n_shared_expert} shared" if r.model.n_shared_expert else "")
        left = y / x > 0.15  # the upper points labelled on their left, the lower ones on their right
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(-7, 3) if left else (7, -3), fontsize=7.5,
                    ha="right" if left else "left", va="bottom" if left else "top")
    ax.set(xscale="log", yscale="log", xlim=(low, high), ylim=(min(actives) / 4, max(actives) * 4),
           xlabel="total parameters (billions, log scale)",
           ylabel="active parameters per token (billions, log scale)",
           title="Released MoE models: what a token uses against what is stored")
    ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    return fig


@localised
def plot_token_exchange(counts: Sequence[torch.Tensor], layer: int = 0) -> Figure:
    """One MoE layer's all-to-all under expert parallelism, drawn: `counts[s]` (E,) are the rows process s
    sends to each expert (its routing counts), process r owning the r-th block of E/P experts. Each source
    process (left) sends an arrow to each owner (right), as wide as its rows; the rows that stay on their
    process are drawn dashed (no copy over the network). The results come back the same way."""
    P, E = len(counts), int(counts[0].numel())
    if P < 2 or E % P:
        raise ValueError(f"plot_token_exchange needs 2 or more processes whose number divides E={E}, got {P}")
    rows = torch.stack([c.reshape(P, E // P).sum(1) for c in counts]).tolist()  # (P sources, P owners)
    widest = max(1, max(max(r) for r in rows))
    fig, ax = plt.subplots(figsize=(7.5, 1.6 + 1.5 * P))
    ys = [1.4 * (P - 1 - i) for i in range(P)]
    for s in range(P):
        _box(ax, 1.0, ys[s], 1.9, 0.9, f"process {s}\nits tokens' N·k\n= {sum(rows[s]):,} rows", "data")
        first = s * E // P
        _box(ax, 7.0, ys[s], 2.0, 0.9, f"process {s}\n(experts {first}..{first + E // P - 1})", "expert")
    for s in range(P):
        for r in range(P):
            n = rows[s][r]
            start, end = (2.0, ys[s] + 0.25 * (r - (P - 1) / 2)), (5.95, ys[r] + 0.25 * (s - (P - 1) / 2))
            style = dict(lw=0.6 + 6 * n / widest, color=f"C{s}", linestyle="--" if s == r else "-")
            _arrow(ax, start, end, **style)
            mid = (0.62 * start[0] + 0.38 * end[0], 0.62 * start[1] + 0.38 * end[1])
            label = f"{n:,} stay" if s == r else f"{n:,} rows"
            ax.text(*mid, label, fontsize=8, ha="center", va="bottom", color=f"C{s}",
                    bbox=dict(facecolor="white", edgecolor="none", pad=0.5))
    ax.set_xlim(-0.1, 8.2)
    ax.set_ylim(min(ys) - 0.8, max(ys) + 0.8)
    ax.axis("off")
    sent = sum(rows[s][r] for s in range(P) for r in range(P) if s != r)
    ax.set_title(f"All-to-all of MoE layer {layer}: each process sends every row to its expert's owner\n"
                 f"{sent:,} of {sum(map(sum, rows)):,} rows cross between processes; the results return the same way",
                 fontsize=10)
    fig.tight_layout()
    return fig
