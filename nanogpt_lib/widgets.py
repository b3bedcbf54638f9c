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
from .moe import expert_capacity, simulate_bias_balancing


def _table(rows: list[tuple[str, str]]) -> str:
    """A two-column Markdown table of (quantity, value) rows."""
    return "| quantity | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


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
    return _table(rows)


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
    return _table(rows)


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


# ------------------------------------------------------------------ 07_modern_moe
BALANCING_STEPS = (0, 10, 25, 50, 150)  # steps at which the balancing simulation is reported


def skewed_router_scores(n_tokens: int, n_expert: int, seed: int = 0) -> torch.Tensor:
    """(N, E) sigmoid scores of a toy router that prefers the first experts: logits N(0, 0.6^2) plus a
    per-expert offset from +0.3 (expert 0) down to -0.3 (the last one). Reproducible from `seed`."""
    generator = torch.Generator().manual_seed(seed)
    offset = torch.linspace(0.3, -0.3, n_expert)  # (E,)
    return torch.sigmoid(torch.randn(n_tokens, n_expert, generator=generator) * 0.6 + offset)


def modern_moe_report(n_expert: int, expert_hidden: int, top_k: int, n_shared_expert: int, bias_update_rate: float,
                      base: GPTConfig, n_tokens: int = 800) -> str:
    """Total vs active parameters of `base` with n_expert routed experts of width expert_hidden (top_k
    each) and n_shared_expert shared ones, and what the balancing bias at this rate does to a skewed
    toy router (`skewed_router_scores`, frozen) over 150 steps. Impossible settings give the library's error."""
    try:
        config = replace(base, n_expert=n_expert, expert_hidden=expert_hidden, top_k=top_k,
                         n_shared_expert=n_shared_expert, bias_update_rate=bias_update_rate)
    except ValueError as err:
        return f"**Impossible configuration.** {err}"
    dense, cost = model_cost(replace(base, n_expert=0, n_shared_expert=0)), model_cost(config)
    C, H = config.n_embd, config.hidden_size
    balance = simulate_bias_balancing(skewed_router_scores(n_tokens, n_expert), top_k, bias_update_rate,
                                      BALANCING_STEPS[-1])
    rows = [
        ("routed experts", f"{n_expert} x {config.expert_type} {C} → {H} → {C}, top-{top_k} per token"),
        ("shared experts (every token)", f"{n_shared_expert}" + (f" ({n_shared_expert * H} hidden units)"
                                                                 if n_shared_expert else "")),
        ("expert hidden units a token uses", f"{(top_k + n_shared_expert) * H} of {(n_expert + n_shared_expert) * H}"),
        ("parameters (total: memory)", f"{cost.params:,} ({cost.params / dense.params:.2f}x dense)"),
        ("active parameters per token (compute)",
         f"{cost.active_params:,} ({cost.active_params / dense.params:.2f}x dense)"),
        ("training FLOPs per token", f"{format_count(cost.train_flops_per_token)} "
                                     f"(dense: {format_count(dense.train_flops_per_token)})"),
        (f"balancing bias at rate {bias_update_rate:g}: busiest expert / fair share, toy router",
         " → ".join(f"step {s}: {balance[s]:.2f}" for s in BALANCING_STEPS)),
    ]
    return _table(rows)


def modern_moe_explorer(base: GPTConfig) -> W.interactive:
    """Sliders for routed experts, their width, top-k, shared experts and the bias rate; the table follows."""
    opts = {"style": {"description_width": "130px"}, "continuous_update": False}

    def show(n_expert, expert_hidden, top_k, n_shared_expert, bias_update_rate):
        return Markdown(modern_moe_report(n_expert, expert_hidden, top_k, n_shared_expert, bias_update_rate, base))

    return W.interactive(
        show,
        {"auto_display": True},
        n_expert=W.IntSlider(value=base.n_expert, min=1, max=64, description="n_expert", **opts),
        expert_hidden=W.IntSlider(value=base.hidden_size, min=8, max=512, step=2, description="expert_hidden",
                                  **opts),
        top_k=W.IntSlider(value=base.top_k, min=1, max=8, description="top_k", **opts),
        n_shared_expert=W.IntSlider(value=base.n_shared_expert, min=0, max=4, description="n_shared_expert",
                                    **opts),
        bias_update_rate=W.FloatLogSlider(value=max(base.bias_update_rate, 1e-3), base=10, min=-4, max=-0.5,
                                          step=0.25, description="bias_update_rate", **opts),
    )
