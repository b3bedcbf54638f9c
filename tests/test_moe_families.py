"""Part 3 complete: the MoE block of each released family, one setting of our layer, number for number with
transformers (random weights and inputs, both dispatches, the top-k each model uses)."""

import pytest
import torch
from torch.testing import assert_close
from transformers.models.gpt_oss.modeling_gpt_oss import load_balancing_loss_func as gpt_oss_loss
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func as mixtral_loss
from transformers.models.olmoe.modeling_olmoe import load_balancing_loss_func as olmoe_loss
from transformers.models.qwen2_moe.modeling_qwen2_moe import load_balancing_loss_func as qwen2_loss
from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func as qwen3_loss

from nanogpt_lib import GPT, GPTConfig
from nanogpt_lib.hf_moe import FAMILIES, from_qwen2_moe, parity_checks, reference_block, their_output
from nanogpt_lib.moe import MoE, group_limit, load_balancing_loss, route

C, H = 32, 16
BASE = dict(block_size=16, vocab_size=64, n_layer=2, n_head=2, n_embd=C, dropout=0.0)


def inputs(seed: int = 1, B: int = 2, T: int = 40) -> torch.Tensor:
    return torch.randn(B, T, C, generator=torch.Generator().manual_seed(seed))  # (B, T, C)


# ---------------------------------------------------------------- parity, block by block
CASES = [(family, {}) for family in FAMILIES] + [
    ("Mixtral", dict(top_k=1)),
    ("Qwen3-MoE", dict(norm_topk_prob=False)),
    ("Qwen2-MoE", dict(norm_topk_prob=True)),
    ("Qwen2-MoE", dict(n_expert=64, top_k=8, shared_width=8)),  # Qwen2-57B-A14B
    ("OLMoE", dict(norm_topk_prob=True)),
    ("gpt-oss", dict(n_expert=128)),  # gpt-oss-120b
    ("DeepSeek-V3", dict(routed_scaling_factor=1.0, n_group=1, topk_group=1)),
    ("DeepSeek-V3", dict(norm_topk_prob=False)),
]


@pytest.mark.parametrize("dispatch", ["loop", "vectorised", "grouped"])
@pytest.mark.parametrize("family, overrides", CASES, ids=lambda v: v if isinstance(v, str) else
                         ",".join(f"{k}={x}" for k, x in v.items()) or "released")
def test_each_family_converts_to_our_layer_with_the_same_output(family, overrides, dispatch):
    theirs, convert = reference_block(family, C, H, seed=3, **overrides)
    ours = convert(theirs, dispatch=dispatch)
    x = inputs()
    with torch.no_grad():
        assert_close(ours(x)[0], their_output(theirs, x), atol=1e-6, rtol=1e-5)
    assert ours.top_k == {**FAMILIES[family], **overrides}["top_k"]


def test_gpt_oss_clamp_is_reproduced_where_it_bites():
    """Weights of std 1 put many gate and up values beyond the limit (7), where the clamp acts."""
    theirs, convert = reference_block("gpt-oss", C, H, seed=0, std=1.0, swiglu_limit=3.0)
    x = inputs()
    with torch.no_grad():
        h = x.reshape(-1, C) @ theirs.experts.gate_up_proj[0] + theirs.experts.gate_up_proj_bias[0]
        assert (h.abs() > 3.0).float().mean() > 0.2  # the clamp matters for a good share of the values
        for dispatch in ("loop", "vectorised"):
            assert_close(convert(theirs, dispatch=dispatch)(x)[0], their_output(theirs, x), atol=1e-4, rtol=1e-5)


def test_deepseek_group_limit_changes_choices_and_matches_their_router():
    theirs, convert = reference_block("DeepSeek-V3", C, H, seed=0)
    ours = convert(theirs)
    flat = inputs().reshape(-1, C)
    with torch.no_grad():
        _, weights, experts = theirs.gate(flat)
        routing = ours.route(flat)
        plain = route(routing.logits, 8, flat.shape[0], router_type="sigmoid", balance_bias=ours.expert_bias,
                      norm_topk_prob=True, routed_scaling_factor=2.5)
    order_ours, order_theirs = routing.experts.argsort(-1), experts.argsort(-1)
    assert torch.equal(routing.experts.gather(1, order_ours), experts.gather(1, order_theirs))
    assert_close(routing.weights.gather(1, order_ours), weights.gather(1, order_theirs))
    assert not torch.equal(plain.experts.sort(-1).values, routing.experts.sort(-1).values)  # the groups matter
    groups = routing.experts // 32  # 8 groups of 32 experts
    assert all(len(set(row)) <= 4 for row in groups.tolist())  # at most topk_group=4 groups per token
    assert_close(routing.weights.sum(-1), torch.full((flat.shape[0],), 2.5))  # renormalised, then times 2.5


def test_group_limit_keeps_the_best_groups_by_their_two_best_experts():
    choice = torch.tensor([[0.9, 0.0, 0.5, 0.5, 0.1, 0.2]])  # 3 groups of 2: sums 0.9, 1.0, 0.3
    kept = group_limit(choice, n_group=3, topk_group=2)
    assert torch.isinf(kept[0, 4:]).all() and torch.equal(kept[0, :4], choice[0, :4])
    assert torch.equal(group_limit(choice, 1, 1), choice)


def test_qwen2_shared_expert_is_scaled_by_its_own_sigmoid_gate():
    theirs, _ = reference_block("Qwen2-MoE", C, H, seed=0)
    ours = from_qwen2_moe(theirs)
    x = inputs()
    with torch.no_grad():
        flat = x.reshape(-1, C)
        gate = torch.sigmoid(flat @ theirs.shared_expert_gate.weight.t())  # (N, 1)
        routed = ours(x)[0].reshape(-1, C) - gate * ours.shared_experts(flat.unsqueeze(0)).squeeze(0)
        ours.shared_expert_gate = None  # ungated: weight 1
        assert not torch.allclose(ours(x)[0].reshape(-1, C) - routed, gate * theirs.shared_expert(flat))
    assert_close(routed + gate * theirs.shared_expert(flat), their_output(theirs, x).reshape(-1, C))


def test_qwen2_shared_width_that_is_no_multiple_is_refused():
    theirs, _ = reference_block("Qwen2-MoE", C, H, seed=0)
    theirs.shared_expert.gate_proj = torch.nn.Linear(C, H + 3, bias=False)
    with pytest.raises(ValueError, match="shared_expert_intermediate_size=19 is not a multiple"):
        from_qwen2_moe(theirs)


def test_parity_checks_cover_every_family_with_both_dispatches():
    checks = parity_checks(seed=0)
    for family in FAMILIES:
        for dispatch in ("loop", "vectorised"):
            assert any(c.name.startswith(family) and dispatch in c.name for c in checks), (family, dispatch)
    for check in checks:
        assert check.max_abs_diff <= 1e-5 * max(1.0, check.max_abs_value), check
        assert check.max_abs_value > 0.01
    assert [c.same_choices for c in checks if c.same_choices is not None] == [True]
    clamped = [c for c in checks if "the clamp cuts" in c.name]
    assert len(clamped) == 2 and all(c.name.startswith("gpt-oss") for c in clamped)


def test_the_clamped_parity_case_really_clamps():
    theirs, convert = reference_block("gpt-oss", 32, 16, seed=0, swiglu_limit=0.1)
    x = torch.randn(2, 64, 32, generator=torch.Generator().manual_seed(0))
    flat = x.reshape(-1, 32)
    with torch.no_grad():
        gate_up = flat @ theirs.experts.gate_up_proj[0] + theirs.experts.gate_up_proj_bias[0]  # expert 0, all tokens
    assert (gate_up.abs() > 0.1).float().mean() > 0.2  # a fifth of the values beyond the limit: the clamp acts


# ---------------------------------------------------------------- the balancing losses
@pytest.mark.parametrize("reference", [mixtral_loss, qwen2_loss, qwen3_loss, olmoe_loss, gpt_oss_loss],
                         ids=["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "gpt_oss"])
@pytest.mark.parametrize("top_k", [2, 4, 8])
def test_mixtral_and_qwen_conventions_equal_transformers_loss_of_each_module(reference, top_k):
    logits = tuple(torch.randn(30, 16, generator=torch.Generator().manual_seed(i)) * 2 for i in range(3))
    routing = route(torch.cat(logits), top_k, 90)
    want = reference(logits, num_experts=16, top_k=top_k)
    for convention in ("mixtral", "qwen"):
        assert_close(load_balancing_loss(routing, convention), want)
    assert_close(load_balancing_loss(routing, "switch"), want / top_k)


def paper_sequence_wise_loss(scores: torch.Tensor, top_k: int, seq_len: int) -> torch.Tensor:
    """DeepSeek-V3 (arXiv 2412.19437) eq. 17-20 with alpha = 1, written term by term, averaged over sequences."""
    N, E = scores.shape
    losses = []
    for start in range(0, N, seq_len):
        s = scores[start:start + seq_len]  # (T, E)
        T = s.shape[0]
        top = s.topk(top_k, dim=-1).indices
        f = [E / (top_k * T) * sum(int(i in top[t].tolist()) for t in range(T)) for i in range(E)]
        s_norm = s / s.sum(dim=-1, keepdim=True)  # s'_{i,t}
        P = [s_norm[:, i].sum() / T for i in range(E)]
        losses.append(sum(f[i] * P[i] for i in range(E)))
    return torch.stack(losses).mean()


def test_sequence_wise_loss_is_the_papers_formula():
    logits = torch.randn(3 * 10, 8, generator=torch.Generator().manual_seed(0)) * 2  # 3 sequences of 10 tokens
    routing = route(logits, 2, 30, router_type="sigmoid")
    assert_close(load_balancing_loss(routing, "sequence", seq_len=10),
                 paper_sequence_wise_loss(torch.sigmoid(logits), 2, 10))


def test_sequence_wise_loss_sees_a_crowded_sequence_that_the_batch_hides():
    """Two sequences, each all on its own two experts: the batch is balanced over 4 experts, each sequence is not."""
    logits = torch.full((8, 4), -5.0)
    logits[:4, :2] = 5.0
    logits[4:, 2:] = 5.0
    routing = route(logits, 2, 8, router_type="sigmoid")
    batch, per_sequence = load_balancing_loss(routing), load_balancing_loss(routing, "sequence", seq_len=4)
    assert batch.item() == pytest.approx(1.0, abs=0.02) and per_sequence.item() == pytest.approx(2.0, abs=0.02)


def test_loss_options_are_named_and_the_sequence_length_is_required():
    routing = route(torch.randn(6, 4), 2, 6)
    with pytest.raises(ValueError, match="convention='deepseek'"):
        load_balancing_loss(routing, "deepseek")
    with pytest.raises(ValueError, match="seq_len=None"):
        load_balancing_loss(routing, "sequence")
    with pytest.raises(ValueError, match="seq_len=4"):
        load_balancing_loss(routing, "sequence", seq_len=4)


@pytest.mark.parametrize("aux_loss_type", ["switch", "mixtral", "qwen", "sequence"])
def test_the_layer_returns_the_loss_its_config_names(aux_loss_type):
    torch.manual_seed(0)
    layer = MoE(GPTConfig(**BASE, n_expert=8, top_k=2, aux_loss_type=aux_loss_type)).train()
    x = inputs(T=5)
    _, out = layer(x)
    with torch.no_grad():
        routing = layer.route(x.reshape(-1, C))
    assert_close(out.aux_loss, load_balancing_loss(routing, aux_loss_type, seq_len=5))


# ---------------------------------------------------------------- the config
@pytest.mark.parametrize("bad, message", [
    (dict(n_group=3), "n_group=3 is not allowed: it must divide n_expert=8"),
    (dict(n_group=0), "n_group=0"),
    (dict(n_group=8), "n_group=8 is not allowed: a group is scored by its best 2 experts"),
    (dict(n_group=4, topk_group=5), "topk_group=5 is not allowed: it must be an integer in 1..n_group=4"),
    (dict(n_group=4, topk_group=1, top_k=3), "topk_group=1 is not allowed: 1 groups of 2 experts hold fewer"),
    (dict(routed_scaling_factor=0), "routed_scaling_factor=0"),
    (dict(routed_scaling_factor=float("inf")), "routed_scaling_factor=inf"),
    (dict(router_bias=1), "router_bias=1"),
    (dict(shared_expert_gate=True), "shared_expert_gate=True is not allowed: it gates the shared experts"),
    (dict(swiglu_alpha=-1.0), "swiglu_alpha=-1.0"),
    (dict(swiglu_limit=0), "swiglu_limit=0"),
    (dict(aux_loss_type="deepseek"), "aux_loss_type='deepseek'"),
    (dict(expert_type="geglu"), "expert_type='geglu'"),
])
def test_bad_released_model_settings_are_named(bad, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**{**BASE, "n_expert": 8, "top_k": 2, **bad})


def test_every_family_trains_as_a_whole_gpt():
    """The settings of each family build a GPT whose loss backpropagates (router bias and shared gate included)."""
    settings = [dict(expert_type="swiglu", n_expert=8, top_k=2, norm_topk_prob=True),
                dict(expert_type="swiglu", n_expert=8, top_k=2, n_shared_expert=1, shared_expert_gate=True,
                     norm_topk_prob=False),
                dict(expert_type="clamped_swiglu", n_expert=8, top_k=2, router_bias=True, norm_topk_prob=True),
                dict(expert_type="swiglu", n_expert=8, top_k=2, router_type="sigmoid", n_group=4, topk_group=2,
                     routed_scaling_factor=2.5, n_shared_expert=1, bias_update_rate=0.001, aux_loss_type="sequence")]
    for s in settings:
        torch.manual_seed(0)
        model = GPT(GPTConfig(**BASE, **s))
        idx = torch.randint(0, 64, (2, 16))
        _, loss, moe = model(idx, idx, with_moe=True)
        (loss + moe.penalty).backward()
        mlp = model.transformer.h[0].mlp
        assert mlp.router.weight.grad is not None and mlp.router.weight.grad.abs().sum() > 0
        if s.get("router_bias"):
            assert mlp.router.bias.grad.abs().sum() > 0
        if s.get("shared_expert_gate"):
            assert mlp.shared_expert_gate.weight.grad.abs().sum() > 0


def test_old_names_keep_working():
    config = GPTConfig(**BASE, n_expert=4, expert_type="swiglu", router_type="sigmoid")
    assert config.hidden_size == config.expert_width == 8 * C // 3
    layer = MoE(config)
    assert layer.update_bias == layer.update_balance_bias and layer.balance_bias is layer.expert_bias
    from nanogpt_lib.moe import LOSS_CONVENTIONS, balance_bias_step, bias_step
    assert bias_step is balance_bias_step and "mixtral" in LOSS_CONVENTIONS
