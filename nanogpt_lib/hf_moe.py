"""Our MoE layer from the MoE blocks of `transformers` (5.x): Mixtral, Qwen3-MoE, Qwen2-MoE, OLMoE,
gpt-oss and DeepSeek-V3, and the parity checks of Part 3.

Storage differs, the arithmetic does not:

    transformers                               ours (`moe.MoE`)
    gate.weight               (E, C)           router.weight              (E, C)    same layout
    experts.gate_up_proj      (E, 2H, C)       experts.gate_up_proj.weight (E, C, 2H) transposed (x @ W)
    experts.down_proj         (E, C, H)        experts.down_proj.weight    (E, H, C)  transposed
    gate.e_score_correction_bias (E,)          expert_bias                 (E,)      DeepSeek-V3's balancing bias
    shared_experts.{gate,up,down}_proj          shared_experts (one expert of width n_shared * H)
    shared_expert / shared_expert_gate          shared_experts / shared_expert_gate   Qwen2-MoE
    gpt-oss: router.{weight,bias}               router.{weight,bias}
             experts.gate_up_proj (E, C, 2H)    experts.gate_up_proj.weight (E, C, 2H) gate and up interleaved
                                                                                       there, side by side here

Both fused tensors keep the gate's H rows before the up projection's H rows (gpt-oss alternates them:
column 2j is gate unit j, column 2j + 1 its up unit). Mixtral renormalises the chosen weights for
every k (even k = 1, where the weight becomes 1), so the converted layer has `norm_topk_prob=True`;
Qwen3-MoE, Qwen2-MoE and OLMoE carry their own `norm_topk_prob`. gpt-oss's softmax over the k chosen
logits equals the full softmax renormalised over the k (the normaliser cancels), so it converts to
`norm_topk_prob=True` with a router bias. Every converter returns an eval-mode layer without capacity
limit; `dispatch` picks the loop, vectorised or grouped one (the same numbers).

Names: `transformers`' `hidden_size` is our `n_embd` (the residual width); its `moe_intermediate_size`
(or `intermediate_size` in an MoE model's experts) is our `expert_width`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import GPTConfig
from .moe import MoE, load_balancing_loss, route


def _check_silu(act_fn, where: str) -> None:
    probe = torch.linspace(-4.0, 4.0, 9)
    if not torch.allclose(act_fn(probe), torch.nn.functional.silu(probe)):
        raise ValueError(f"the {where} use {type(act_fn).__name__}: our SwiGLU experts use silu "
                         f"(hidden_act='silu'), so only silu experts convert")


def _layer_config(n_embd: int, n_expert: int, width: int, top_k: int, dispatch: str, **moe) -> GPTConfig:
    """A GPTConfig describing one MoE layer (attention settings are placeholders): SwiGLU experts
    without biases unless `moe` says otherwise, no capacity limit."""
    settings = {"expert_type": "swiglu", "bias": False, **moe}
    return GPTConfig(block_size=1, vocab_size=1, n_layer=1, n_head=1, n_embd=n_embd, dropout=0.0,
                     n_expert=n_expert, top_k=top_k, expert_hidden=width, capacity_factor=None,
                     eval_capacity_factor=None, moe_dispatch=dispatch, **settings)


def _experts_config(experts, top_k: int, dispatch: str, **moe) -> GPTConfig:
    """The layer of a block whose experts are stored as transformers' (E, 2H, C) and (E, C, H) tensors."""
    _check_silu(experts.act_fn, "experts")
    E, two_h, C = experts.gate_up_proj.shape
    return _layer_config(C, E, two_h // 2, top_k, dispatch, **moe)


@torch.no_grad()
def _copy_experts(layer: MoE, experts) -> None:
    """transformers' (E, out, in) expert tensors into our (E, in, out) ones."""
    layer.experts.gate_up_proj.weight.copy_(experts.gate_up_proj.transpose(1, 2))  # (E, C, 2H)
    layer.experts.down_proj.weight.copy_(experts.down_proj.transpose(1, 2))  # (E, H, C)


@torch.no_grad()
def _copy_shared(layer: MoE, mlp) -> None:
    """A transformers SwiGLU MLP (gate_proj, up_proj, down_proj Linears) into our shared experts."""
    _check_silu(mlp.act_fn, "shared experts")
    fused = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])  # (2 * S * H, C): [gate; up]
    layer.shared_experts.gate_up_proj.weight[0].copy_(fused.t())
    layer.shared_experts.down_proj.weight[0].copy_(mlp.down_proj.weight.t())


def _softmax_top_k(block, norm_topk_prob: bool, dispatch: str, **moe) -> MoE:
    """Mixtral, Qwen3-MoE, OLMoE (and Qwen2-MoE's routed part): softmax over all experts, top-k."""
    layer = MoE(_experts_config(block.experts, block.gate.top_k, dispatch, norm_topk_prob=norm_topk_prob, **moe))
    with torch.no_grad():
        layer.router.weight.copy_(block.gate.weight)
    _copy_experts(layer, block.experts)
    return layer


def from_mixtral(block, dispatch: str = "vectorised") -> MoE:
    """Our MoE layer computing what `MixtralSparseMoeBlock` computes (it always renormalises)."""
    return _softmax_top_k(block, True, dispatch).eval()


def from_qwen3_moe(block, dispatch: str = "vectorised") -> MoE:
    """Our MoE layer computing what `Qwen3MoeSparseMoeBlock` computes: Mixtral's block with its own
    `norm_topk_prob` (True in the released Qwen3-MoE models) and many fine-grained experts."""
    return _softmax_top_k(block, block.gate.norm_topk_prob, dispatch).eval()


def from_olmoe(block, dispatch: str = "vectorised") -> MoE:
    """Our MoE layer computing what `OlmoeSparseMoeBlock` computes (released with norm_topk_prob=False)."""
    return _softmax_top_k(block, block.gate.norm_topk_prob, dispatch).eval()


def from_qwen2_moe(block, dispatch: str = "vectorised") -> MoE:
    """Our MoE layer computing what `Qwen2MoeSparseMoeBlock` computes: softmax top-k routed experts, and
    one shared expert (its width a multiple of the routed width) scaled by sigmoid(x w_g)."""
    width = block.experts.gate_up_proj.shape[1] // 2
    shared_width = block.shared_expert.gate_proj.out_features
    if shared_width % width:
        raise ValueError(f"shared_expert_intermediate_size={shared_width} is not a multiple of the experts' "
                         f"width {width}: our shared experts are n_shared_expert experts of that width")
    layer = _softmax_top_k(block, block.gate.norm_topk_prob, dispatch, n_shared_expert=shared_width // width,
                           shared_expert_gate=True)
    _copy_shared(layer, block.shared_expert)
    with torch.no_grad():
        layer.shared_expert_gate.weight.copy_(block.shared_expert_gate.weight)  # (1, C)
    return layer.eval()


def from_gpt_oss(block, dispatch: str = "vectorised") -> MoE:
    """Our MoE layer computing what `GptOssMLP` computes: a router with a bias, softmax over the k chosen
    logits, experts with biases and the clamped SwiGLU."""
    experts = block.experts
    E, C, two_h = experts.gate_up_proj.shape  # gpt-oss stores (E, in, out), as we do
    layer = MoE(_layer_config(C, E, two_h // 2, block.router.top_k, dispatch, expert_type="clamped_swiglu",
                              bias=True, router_bias=True, norm_topk_prob=True, swiglu_alpha=experts.alpha,
                              swiglu_limit=experts.limit))
    with torch.no_grad():
        layer.router.weight.copy_(block.router.weight)
        layer.router.bias.copy_(block.router.bias)
        ours = layer.experts
        # interleaved [g0, u0, g1, u1, ...] -> side by side [g0, g1, ... | u0, u1, ...]
        ours.gate_up_proj.weight.copy_(torch.cat([experts.gate_up_proj[..., ::2], experts.gate_up_proj[..., 1::2]], -1))
        ours.gate_up_proj.bias.copy_(torch.cat([experts.gate_up_proj_bias[..., ::2],
                                                experts.gate_up_proj_bias[..., 1::2]], -1))
        ours.down_proj.weight.copy_(experts.down_proj)  # (E, H, C)
        ours.down_proj.bias.copy_(experts.down_proj_bias)  # (E, C)
    return layer.eval()


def from_deepseek_v3(block, dispatch: str = "vectorised") -> MoE:
    """Our MoE layer computing what `DeepseekV3MoE` computes: sigmoid router with its balancing bias,
    group-limited top-k, routed weights scaled by `routed_scaling_factor`, routed and shared SwiGLU experts."""
    config = block.config
    shared = block.shared_experts
    n_shared = shared.gate_proj.out_features // config.moe_intermediate_size
    # bias_update_rate 0: the imported balancing bias is kept as it is (frozen); set a rate to keep balancing
    layer = MoE(_experts_config(block.experts, config.num_experts_per_tok, dispatch, router_type="sigmoid",
                                norm_topk_prob=config.norm_topk_prob, n_shared_expert=n_shared,
                                n_group=config.n_group, topk_group=config.topk_group,
                                routed_scaling_factor=config.routed_scaling_factor))
    with torch.no_grad():
        layer.router.weight.copy_(block.gate.weight)
        layer.expert_bias.copy_(block.gate.e_score_correction_bias)
    if n_shared > 0:
        _copy_shared(layer, shared)
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


# the released models' routing, as `reference_block` builds it: (experts, top-k, other settings)
FAMILIES = {
    "Mixtral": dict(n_expert=8, top_k=2),  # Mixtral 8x7B
    "Qwen3-MoE": dict(n_expert=128, top_k=8, norm_topk_prob=True),  # Qwen3-30B-A3B, Qwen3-235B-A22B
    "Qwen2-MoE": dict(n_expert=60, top_k=4, norm_topk_prob=False, shared_width=4),  # Qwen1.5-MoE-A2.7B
    "OLMoE": dict(n_expert=64, top_k=8, norm_topk_prob=False),  # OLMoE-1B-7B
    "gpt-oss": dict(n_expert=32, top_k=4, swiglu_limit=7.0),  # gpt-oss-20b (120b: 128 experts, top-4)
    "DeepSeek-V3": dict(n_expert=256, top_k=8, n_group=8, topk_group=4, routed_scaling_factor=2.5,
                        n_shared_expert=1, norm_topk_prob=True),
}


def reference_block(family: str, n_embd: int = 32, width: int = 16, seed: int = 0, std: float = 0.1, **overrides):
    """`transformers`' MoE block of `family` (a key of FAMILIES, with `overrides` of its settings) at a
    small width, random N(0, std) weights (a random balancing bias for DeepSeek-V3), eval mode, and
    the converter that turns it into our layer: (block, from_...)."""
    from transformers import DeepseekV3Config, GptOssConfig, MixtralConfig, OlmoeConfig, Qwen2MoeConfig, Qwen3MoeConfig
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssMLP
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock
    from transformers.models.olmoe.modeling_olmoe import OlmoeSparseMoeBlock
    from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

    if family not in FAMILIES:
        raise ValueError(f"family={family!r} is not known; choose one of {tuple(FAMILIES)}")
    s = {**FAMILIES[family], **overrides}
    E, k = s["n_expert"], s["top_k"]
    common = dict(hidden_size=n_embd, num_experts_per_tok=k, hidden_act="silu", experts_implementation="eager")
    torch.manual_seed(seed)
    if family == "Mixtral":
        block = MixtralSparseMoeBlock(MixtralConfig(intermediate_size=width, num_local_experts=E,
                                                    router_jitter_noise=0.0, **common))
        convert = from_mixtral
    elif family == "Qwen3-MoE":
        block = Qwen3MoeSparseMoeBlock(Qwen3MoeConfig(moe_intermediate_size=width, num_experts=E,
                                                      norm_topk_prob=s["norm_topk_prob"], **common))
        convert = from_qwen3_moe
    elif family == "Qwen2-MoE":
        block = Qwen2MoeSparseMoeBlock(Qwen2MoeConfig(
            moe_intermediate_size=width, shared_expert_intermediate_size=s["shared_width"] * width, num_experts=E,
            norm_topk_prob=s["norm_topk_prob"], **common))
        convert = from_qwen2_moe
    elif family == "OLMoE":
        block = OlmoeSparseMoeBlock(OlmoeConfig(intermediate_size=width, num_experts=E,
                                                norm_topk_prob=s["norm_topk_prob"], **common))
        convert = from_olmoe
    elif family == "gpt-oss":
        block = GptOssMLP(GptOssConfig(intermediate_size=width, num_local_experts=E, swiglu_limit=s["swiglu_limit"],
                                       **{**common, "hidden_act": "silu"}))
        convert = from_gpt_oss
    else:
        block = DeepseekV3MoE(DeepseekV3Config(
            moe_intermediate_size=width, n_routed_experts=E, n_group=s["n_group"], topk_group=s["topk_group"],
            routed_scaling_factor=s["routed_scaling_factor"], norm_topk_prob=s["norm_topk_prob"],
            n_shared_experts=s["n_shared_expert"], **common))
        convert = from_deepseek_v3
    randomise_parameters(block, std)
    if family == "DeepSeek-V3":
        with torch.no_grad():
            block.gate.e_score_correction_bias.normal_(0.0, 0.3)  # a buffer, not a parameter
    return block.eval(), convert


def their_output(block, x: torch.Tensor) -> torch.Tensor:
    """The block's output (B, T, C) (gpt-oss's block also returns its router scores)."""
    out = block(x.clone())
    return out[0] if isinstance(out, tuple) else out


def parity_checks(seed: int = 0, n_embd: int = 32, width: int = 16, tokens: int = 128) -> list[ParityCheck]:
    """Part 3's checks against transformers, on random weights and inputs (float32, CPU):

    1. each family's block (FAMILIES: the released top-k, groups, scaling) against our layer converted
       from it, with both dispatches: Mixtral also at top-1, Qwen3-MoE also with norm_topk_prob=False,
       gpt-oss also with a limit small enough for its clamp to cut;
    2. our balancing loss, Mixtral and Qwen conventions == `load_balancing_loss_func` of the Mixtral and
       Qwen3-MoE modules (3 layers of logits);
    3. our sigmoid router with a bias == `DeepseekV3TopkRouter` with 8 groups, top-4 groups (same
       experts, same weights).
    """
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func as mixtral_loss
    from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func as qwen_loss

    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, tokens // 2, n_embd, generator=generator)  # (B, T, C)
    cases = [(family, {}) for family in FAMILIES]
    cases.insert(1, ("Mixtral", dict(top_k=1)))
    cases.insert(3, ("Qwen3-MoE", dict(norm_topk_prob=False)))
    # gpt-oss's limit of 7 is far above what small random weights reach: a limit of 0.1 makes the clamp cut
    cases.insert(cases.index(("gpt-oss", {})) + 1, ("gpt-oss", dict(swiglu_limit=0.1)))
    checks = []
    for family, overrides in cases:
        theirs, convert = reference_block(family, n_embd, width, seed, **overrides)
        settings = {**FAMILIES[family], **overrides}
        label = f"{family} (top-{settings['top_k']} of {settings['n_expert']}" + (
            f", norm_topk_prob={overrides['norm_topk_prob']}" if "norm_topk_prob" in overrides else "") + (
            f", limit {overrides['swiglu_limit']}: the clamp cuts" if "swiglu_limit" in overrides else "") + ")"
        with torch.no_grad():
            want = their_output(theirs, x)
            for dispatch in ("loop", "vectorised"):
                ours = convert(theirs, dispatch=dispatch)
                checks.append(_compare(f"{label}, {dispatch} dispatch", ours(x)[0], want))

    logits = tuple(torch.randn(tokens, 8, generator=generator) * 2 for _ in range(3))  # 3 layers, 8 experts
    routing = route(torch.cat(logits), 2, 3 * tokens)
    for convention, reference in (("mixtral", mixtral_loss), ("qwen", qwen_loss)):
        checks.append(_compare(f"balancing loss ({convention}) vs load_balancing_loss_func",
                               load_balancing_loss(routing, convention), reference(logits, num_experts=8, top_k=2)))

    theirs, _ = reference_block("DeepSeek-V3", n_embd, width, seed)
    ours = from_deepseek_v3(theirs)
    flat = x.reshape(-1, n_embd)  # (N, C)
    with torch.no_grad():
        _, their_weights, their_experts = theirs.gate(flat)
        routing = ours.route(flat)
        e1, w1 = sort_choices_by_expert(routing.experts, routing.weights)
        e2, w2 = sort_choices_by_expert(their_experts, their_weights)
        checks.append(_compare("DeepSeek-V3 router (8 groups, top-4 groups) vs DeepseekV3TopkRouter, weights",
                               w1, w2, same_choices=bool(torch.equal(e1, e2))))
    return checks
