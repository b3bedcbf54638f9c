"""Our MoE layer from `transformers`' Mixtral and DeepSeek-V3 MoE blocks, and the parity checks of Part 3.

Storage differs, the arithmetic does not:

    transformers                               ours (`moe.MoE`)
    gate.weight               (E, C)           router.weight              (E, C)    same layout
    experts.gate_up_proj      (E, 2H, C)       experts.gate_up_proj.weight (E, C, 2H) transposed (x @ W)
    experts.down_proj         (E, C, H)        experts.down_proj.weight    (E, H, C)  transposed
    gate.e_score_correction_bias (E,)          expert_bias                 (E,)      DeepSeek-V3 only
    shared_experts.{gate,up,down}_proj          shared_experts (one expert of width n_shared * H)

Both fused tensors keep the gate's H rows before the up projection's H rows. Mixtral renormalises
the chosen weights for every k (even k = 1, where the weight becomes 1), so the converted layer has
`norm_topk_prob=True`. DeepSeek-V3's group-limited routing with one group is plain top-k; more
groups, or a `routed_scaling_factor` other than 1, have no counterpart here and are refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import GPTConfig
from .moe import MoE, load_balancing_loss, route


def _layer_config(experts, top_k: int, **moe) -> GPTConfig:
    """A GPTConfig describing one SwiGLU MoE layer shaped like `experts` (attention settings are placeholders)."""
    probe = torch.linspace(-4.0, 4.0, 9)
    if not torch.allclose(experts.act_fn(probe), torch.nn.functional.silu(probe)):
        raise ValueError(f"the experts use {type(experts.act_fn).__name__}: our SwiGLU experts use silu "
                         f"(hidden_act='silu'), so only silu experts convert")
    E, two_h, C = experts.gate_up_proj.shape
    return GPTConfig(block_size=1, vocab_size=1, n_layer=1, n_head=1, n_embd=C, dropout=0.0, bias=False,
                     n_expert=E, top_k=top_k, expert_hidden=two_h // 2, expert_type="swiglu",
                     capacity_factor=None, eval_capacity_factor=None, **moe)


@torch.no_grad()
def _copy_experts(layer: MoE, experts) -> None:
    """transformers' (E, out, in) expert tensors into our (E, in, out) ones."""
    layer.experts.gate_up_proj.weight.copy_(experts.gate_up_proj.transpose(1, 2))  # (E, C, 2H)
    layer.experts.down_proj.weight.copy_(experts.down_proj.transpose(1, 2))  # (E, H, C)


def from_mixtral(block) -> MoE:
    """Our MoE layer (eval mode, no capacity limit) computing what `MixtralSparseMoeBlock` computes."""
    layer = MoE(_layer_config(block.experts, block.gate.top_k, norm_topk_prob=True))
    with torch.no_grad():
        layer.router.weight.copy_(block.gate.weight)
    _copy_experts(layer, block.experts)
    return layer.eval()


def from_deepseek_v3(block) -> MoE:
    """Our MoE layer (eval mode, no capacity limit) computing what `DeepseekV3MoE` computes:
    sigmoid router, balancing bias, routed and shared SwiGLU experts."""
    config = block.config
    if config.n_group != 1 or config.topk_group != 1:
        raise ValueError(f"n_group={config.n_group}, topk_group={config.topk_group}: group-limited routing has no "
                         f"counterpart here; only n_group=1, topk_group=1 (plain top-k) converts")
    if config.routed_scaling_factor != 1.0:
        raise ValueError(f"routed_scaling_factor={config.routed_scaling_factor}: our weights are not rescaled; "
                         f"only 1.0 converts")
    shared = block.shared_experts
    n_shared = shared.gate_proj.out_features // config.moe_intermediate_size
    # bias_update_rate 0: the imported bias is kept as it is (frozen); set a rate to keep balancing
    layer = MoE(_layer_config(block.experts, config.num_experts_per_tok, router_type="sigmoid",
                              norm_topk_prob=config.norm_topk_prob, n_shared_expert=n_shared))
    with torch.no_grad():
        layer.router.weight.copy_(block.gate.weight)
        layer.expert_bias.copy_(block.gate.e_score_correction_bias)
        if n_shared > 0:
            fused = torch.cat([shared.gate_proj.weight, shared.up_proj.weight])  # (2 * N * H, C): [gate; up]
            layer.shared_experts.gate_up_proj.weight[0].copy_(fused.t())
            layer.shared_experts.down_proj.weight[0].copy_(shared.down_proj.weight.t())
    _copy_experts(layer, block.experts)
    return layer.eval()


# ------------------------------------------------------------------ parity checks
@dataclass(frozen=True)
class ParityCheck:
    """One comparison of ours with transformers on the same weights and inputs."""

    name: str
    max_abs_diff: float  # largest |ours - theirs| over the compared values
    max_abs_value: float  # largest |theirs|: the scale the difference is measured against
    same_choices: bool | None = None  # routers: the same experts for every token (None: not a router check)


def randomise_parameters(module: torch.nn.Module, std: float) -> torch.nn.Module:
    """transformers leaves expert tensors uninitialised until a model's init runs: give every parameter N(0, std)."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, std)
    return module


def _compare(name: str, ours: torch.Tensor, theirs: torch.Tensor, same_choices: bool | None = None) -> ParityCheck:
    return ParityCheck(name, max_abs_diff=(ours - theirs).abs().max().item(),
                       max_abs_value=theirs.abs().max().item(), same_choices=same_choices)


def sort_choices_by_expert(experts: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's choices ordered by expert index (transformers' DeepSeek top-k is unsorted)."""
    order = experts.argsort(dim=-1)
    return experts.gather(1, order), weights.gather(1, order)


def parity_checks(seed: int = 0, n_embd: int = 64, hidden: int = 48, n_expert: int = 8,
                  tokens: int = 128) -> list[ParityCheck]:
    """Part 3's three checks against transformers, on random weights and inputs (float32, CPU):

    1. our SwiGLU MoE (no capacity limit) == `MixtralSparseMoeBlock`, top-1 and top-2;
    2. our balancing loss, Mixtral convention == `load_balancing_loss_func` (3 layers of logits);
    3. our sigmoid router with a bias == `DeepseekV3TopkRouter` with one group (choices and weights),
       and the whole `DeepseekV3MoE` block with its shared expert.
    """
    from transformers import DeepseekV3Config, MixtralConfig
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock, load_balancing_loss_func

    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, tokens // 2, n_embd, generator=generator)  # (B, T, C)
    checks = []
    torch.manual_seed(seed)
    for top_k in (1, 2):
        theirs = MixtralSparseMoeBlock(MixtralConfig(
            hidden_size=n_embd, intermediate_size=hidden, num_local_experts=n_expert, num_experts_per_tok=top_k,
            hidden_act="silu", router_jitter_noise=0.0, experts_implementation="eager")).eval()
        randomise_parameters(theirs, 0.1)
        ours = from_mixtral(theirs)
        with torch.no_grad():
            checks.append(_compare(f"MoE block vs MixtralSparseMoeBlock, top-{top_k}", ours(x)[0], theirs(x.clone())))

    logits = tuple(torch.randn(tokens, n_expert, generator=generator) * 2 for _ in range(3))  # 3 layers
    theirs_loss = load_balancing_loss_func(logits, num_experts=n_expert, top_k=2)
    ours_loss = load_balancing_loss(route(torch.cat(logits), 2, 3 * tokens), convention="mixtral")
    checks.append(_compare("balancing loss (Mixtral convention) vs load_balancing_loss_func", ours_loss, theirs_loss))

    theirs = DeepseekV3MoE(DeepseekV3Config(
        hidden_size=n_embd, moe_intermediate_size=hidden, n_routed_experts=n_expert, num_experts_per_tok=2,
        n_group=1, topk_group=1, routed_scaling_factor=1.0, norm_topk_prob=True, n_shared_experts=1,
        hidden_act="silu", experts_implementation="eager")).eval()
    randomise_parameters(theirs, 0.1)
    with torch.no_grad():
        theirs.gate.e_score_correction_bias.copy_(torch.randn(n_expert, generator=generator) * 0.3)
    ours = from_deepseek_v3(theirs)
    flat = x.reshape(-1, n_embd)  # (N, C)
    with torch.no_grad():
        _, their_weights, their_experts = theirs.gate(flat)
        routing = ours.route(flat)
        e1, w1 = sort_choices_by_expert(routing.experts, routing.weights)
        e2, w2 = sort_choices_by_expert(their_experts, their_weights)
        checks.append(_compare("sigmoid router + bias vs DeepseekV3TopkRouter (1 group), weights", w1, w2,
                               same_choices=bool(torch.equal(e1, e2))))
        checks.append(_compare("MoE block + 1 shared expert vs DeepseekV3MoE", ours(x)[0], theirs(x)))
    return checks
