"""Slider callbacks for the notebooks. Each callback is a plain function that returns text (tested
without a browser); the `*_explorer` functions only wire it to `ipywidgets.interactive`."""

from __future__ import annotations

from dataclasses import replace

import ipywidgets as W
import torch
from IPython.display import Markdown

from .config import GPTConfig
from .costs import format_bytes, format_count, model_cost, time_forward
from .evaluation import continue_text
from .model import GPT
from .moe import expert_capacity

# ------------------------------------------------------------------ 01_config
TIMING_BUDGET_FLOPS = 5e9  # forward passes above this are not timed: seconds per slider move is not "at once"


def config_report(
    n_layer: int, n_head: int, n_embd: int, block_size: int, vocab_size: int, measure_time: bool = True
) -> str:
    """A Markdown table of what the configuration costs, or the library's error when it is impossible.

    The forward pass is timed only when it costs less than TIMING_BUDGET_FLOPS (a tenth of a second or so on a laptop
    core); the counts are always computed, on the meta device, in milliseconds."""
    try:
        config = GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=n_layer, n_head=n_head,
                           n_embd=n_embd, dropout=0.0)
    except ValueError as err:
        return f"**Impossible configuration.** {err}"
    cost = model_cost(config)
    rows = [
        ("parameters (total)", f"{cost.params:,}"),
        ("parameters without embeddings", f"{cost.non_embedding_params:,}"),
        ("head size (n_embd / n_head)", f"{config.head_size}"),
        (f"training FLOPs per token (T={block_size})", format_count(cost.train_flops_per_token)),
        ("fp32 weights", format_bytes(cost.weight_bytes)),
        ("weights + gradients + AdamW state", format_bytes(cost.training_bytes)),
    ]
    forward_flops = cost.forward_flops_per_token * block_size
    if measure_time and forward_flops > TIMING_BUDGET_FLOPS:
        rows.append((f"forward pass, 1 x {block_size} tokens", f"not timed: {format_count(forward_flops)} FLOPs, "
                     f"above the {format_count(TIMING_BUDGET_FLOPS)} budget of a slider move"))
    elif measure_time:
        with torch.random.fork_rng():  # building the model must not move the notebook's random state
            torch.manual_seed(0)
            model = GPT(config)
        ms = time_forward(model, batch_size=1, repeats=3)
        rows.append((f"forward pass, 1 x {block_size} tokens (measured here)", f"{ms:.1f} ms"))
    return "| quantity | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def config_explorer(vocab_size: int, measure_time: bool = True, defaults: GPTConfig | None = None) -> W.interactive:
    """Sliders for n_layer, n_head, n_embd and block_size; the table updates when one moves."""
    d = defaults or GPTConfig(block_size=100, vocab_size=vocab_size, n_layer=4, n_head=4, n_embd=128)
    style = {"description_width": "90px"}
    # continuous_update=False: recompute when the slider is released, not at every pixel of a drag
    opts = {"style": style, "continuous_update": False}

    def show(n_layer, n_head, n_embd, block_size):
        return Markdown(config_report(n_layer, n_head, n_embd, block_size, vocab_size, measure_time))

    return W.interactive(
        show,
        {"auto_display": True},
        n_layer=W.IntSlider(value=d.n_layer, min=1, max=12, description="n_layer", **opts),
        n_head=W.IntSlider(value=d.n_head, min=1, max=16, description="n_head", **opts),
        n_embd=W.IntSlider(value=d.n_embd, min=16, max=768, step=16, description="n_embd", **opts),
        block_size=W.IntSlider(value=d.block_size, min=16, max=1024, step=4, description="block_size", **opts),
    )


# -------------------------------------------------------------------- 04_eval
def continuation_report(
    model: GPT, ids: torch.Tensor, tokenizer, temperature: float, top_k: int, seed: int,
    prefix_tokens: int = 10, new_tokens: int = 25,
) -> str:
    """The prefix and what the model writes after it; top_k=0 means no top-k filter."""
    generator = torch.Generator(device=ids.device).manual_seed(seed)
    cont = continue_text(model, ids, tokenizer, prefix_tokens, new_tokens, temperature=temperature,
                         top_k=top_k or None, generator=generator)
    mode = "greedy (top_k=1)" if top_k == 1 else f"sampled, temperature {temperature:g}, top_k {top_k or 'off'}"
    # Markdown emphasis must hug its text: the generated text usually starts with a space (" palavra")
    return f"**{mode}, seed {seed}**\n\n> *{cont.prefix.strip()}* **{cont.generated.strip()}**"


def continuation_explorer(model: GPT, ids: torch.Tensor, tokenizer, prefix_tokens: int = 10,
                          new_tokens: int = 25) -> W.interactive:
    """Sliders for temperature, top-k (0 = off) and the sampling seed; the text is generated again
    when one moves."""
    opts = {"style": {"description_width": "90px"}, "continuous_update": False}

    def show(temperature, top_k, seed):
        return Markdown(continuation_report(model, ids, tokenizer, temperature, top_k, seed, prefix_tokens,
                                            new_tokens))

    return W.interactive(
        show,
        {"auto_display": True},
        temperature=W.FloatSlider(value=1.0, min=0.05, max=2.0, step=0.05, description="temperature", **opts),
        top_k=W.IntSlider(value=0, min=0, max=50, description="top_k (0=off)", **opts),
        seed=W.IntSlider(value=0, min=0, max=20, description="seed", **opts),
    )


# --------------------------------------------------------------------- 05_moe
def moe_report(n_expert: int, top_k: int, capacity_factor: float, base: GPTConfig, ids: torch.Tensor,
               seed: int = 0) -> str:
    """Total vs active parameters of `base` with every MLP turned into n_expert experts (top_k each),
    and how many routing choices a freshly initialised model drops on the batch `ids` (B, T) at
    this training capacity factor. Impossible settings give the library's error, not a traceback."""
    try:
        config = replace(base, n_expert=n_expert, top_k=top_k, capacity_factor=capacity_factor, dropout=0.0)
    except ValueError as err:
        return f"**Impossible configuration.** {err}"
    with torch.random.fork_rng():  # a slider move must not move the notebook's random state
        torch.manual_seed(seed)
        model = GPT(config).train()  # training mode: the training capacity factor applies
        with torch.no_grad():
            _, _, moe = model(ids, with_moe=True)
    dense = model_cost(replace(base, n_expert=0))
    cost = model_cost(config)
    N = ids.numel()
    seats = expert_capacity(N, n_expert, top_k, capacity_factor)
    dropped = ", ".join(f"{s.dropped:.1%}" for s in moe.layers)
    rows = [
        ("parameters (total: memory)", f"{cost.params:,} ({cost.params / dense.params:.2f}x dense)"),
        ("active parameters per token (compute)",
         f"{cost.active_params:,} ({cost.active_params / dense.params:.2f}x dense)"),
        ("training FLOPs per token", f"{format_count(cost.train_flops_per_token)} "
                                     f"(dense: {format_count(dense.train_flops_per_token)})"),
        (f"seats per expert for {N} tokens", f"ceil({capacity_factor:g} x {N} x {top_k} / {n_expert}) = {seats}"
                                             + (f" (capped at the {N} tokens)" if seats == N else "")),
        ("choices dropped per layer (fresh router)", dropped),
    ]
    return "| quantity | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def moe_explorer(base: GPTConfig, ids: torch.Tensor) -> W.interactive:
    """Sliders for the number of experts, top-k and the capacity factor; the table follows them."""
    opts = {"style": {"description_width": "120px"}, "continuous_update": False}

    def show(n_expert, top_k, capacity_factor):
        return Markdown(moe_report(n_expert, top_k, capacity_factor, base, ids))

    return W.interactive(
        show,
        {"auto_display": True},
        n_expert=W.IntSlider(value=8, min=1, max=64, description="n_expert", **opts),
        top_k=W.IntSlider(value=2, min=1, max=4, description="top_k", **opts),
        capacity_factor=W.FloatSlider(value=1.25, min=0.25, max=4.0, step=0.25, description="capacity_factor",
                                      **opts),
    )
