"""Mixture of Experts: routing, capacity, the two dispatches, the losses, and the model around them."""

import math

import pytest
import torch

from nanogpt_lib import GPT, GPTConfig
from nanogpt_lib.moe import (
    MoE,
    dispatch_vectorised,
    expert_capacity,
    layer_stats,
    load_balancing_loss,
    route,
    router_z_loss,
)

BASE = dict(block_size=16, vocab_size=64, n_layer=2, n_head=2, n_embd=16, dropout=0.0)


def moe_config(**overrides) -> GPTConfig:
    return GPTConfig(**{**BASE, "n_expert": 4, "top_k": 2, **overrides})


def dense_to_one_expert(dense: GPT, moe: GPT) -> None:
    """Copy a dense model's weights into a one-expert MoE model (Linear (out, in) -> expert (1, in, out))."""
    state = dense.state_dict()
    for name in list(state):
        for lin in ("c_fc", "c_proj"):
            if f".mlp.{lin}." in name:
                new = name.replace(f".mlp.{lin}.", f".mlp.experts.{lin}.")
                value = state.pop(name)
                state[new] = value.t().unsqueeze(0) if name.endswith("weight") else value.unsqueeze(0)
    moe.load_state_dict(state)


# ------------------------------------------------------------------ the config
@pytest.mark.parametrize("bad, message", [
    (dict(n_expert=-1), "n_expert=-1"),
    (dict(n_expert=2, top_k=3), "top_k=3"),
    (dict(n_expert=2, top_k=0), "top_k=0"),
    (dict(n_expert=2, top_k=1, moe_every=3), "moe_every=3"),
    (dict(n_expert=2, top_k=1, capacity_factor=0.0), "capacity_factor=0.0"),
    (dict(n_expert=2, top_k=1, eval_capacity_factor=float("inf")), "eval_capacity_factor=inf"),
    (dict(n_expert=2, top_k=1, aux_loss_weight=-1.0), "aux_loss_weight=-1.0"),
    (dict(n_expert=2, top_k=1, moe_dispatch="fast"), "moe_dispatch='fast'"),
    (dict(n_expert=2, top_k=1, expert_hidden=0), "expert_hidden=0"),
])
def test_bad_moe_settings_are_named(bad, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        GPTConfig(**{**BASE, **bad})


def test_moe_every_picks_the_blocks():
    assert GPTConfig(**{**BASE, "n_layer": 4, "n_expert": 2, "moe_every": 2}).moe_layers == [1, 3]
    assert GPTConfig(**{**BASE, "n_layer": 4, "n_expert": 2}).moe_layers == [0, 1, 2, 3]
    assert GPTConfig(**BASE).moe_layers == []


# ------------------------------------------------------------- one expert = dense
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dispatch", ["vectorised", "loop"])
def test_one_expert_is_exactly_the_dense_model(bias, dispatch):
    torch.manual_seed(0)
    dense = GPT(GPTConfig(**{**BASE, "bias": bias}))
    moe = GPT(GPTConfig(**{**BASE, "bias": bias, "n_expert": 1, "top_k": 1, "moe_dispatch": dispatch}))
    assert moe.num_params() == dense.num_params() == moe.num_active_params()
    assert moe.flops_per_token() == dense.flops_per_token()
    dense_to_one_expert(dense, moe)
    x = torch.randint(0, 64, (3, 16))
    for mode in ("train", "eval"):  # capacity factor 1.25 and 2.0: one expert never drops at factor >= 1
        getattr(dense, mode)(), getattr(moe, mode)()
        ref_logits, ref_loss = dense(x, targets=x)
        logits, loss, out = moe(x, targets=x, with_moe=True)
        torch.testing.assert_close(logits, ref_logits)
        torch.testing.assert_close(loss, ref_loss)
        assert out.z_loss.item() == 0.0 and out.aux_loss.item() == 1.0  # nothing to balance
        assert all(s.dropped == 0.0 for s in out.layers)


# ------------------------------------------------------------- routing, capacity
def test_weights_are_renormalised_for_top2_and_the_probability_for_top1():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    p = torch.softmax(logits, -1)[0]
    two = route(logits, 2, capacity=1)
    torch.testing.assert_close(two.weights[0], torch.stack([p[0], p[1]]) / (p[0] + p[1]))
    assert two.experts.tolist() == [[0, 1]]
    one = route(logits, 1, capacity=1)
    torch.testing.assert_close(one.weights[0], p[:1])  # Switch: not renormalised to the constant 1


def test_first_choices_take_seats_before_second_choices():
    # 3 tokens, 2 experts, top-2, 2 seats each. First choices: t0 -> e1, t1 -> e0, t2 -> e0.
    logits = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    r = route(logits, 2, capacity=2)
    assert r.experts.tolist() == [[1, 0], [0, 1], [0, 1]]
    # e0's seats go to t1's and t2's first choices: t0's second choice finds it full, though t0 comes first
    assert r.slot.tolist() == [[0, 2], [0, 1], [1, 2]]
    assert r.kept.tolist() == [[True, False], [True, True], [True, False]]
    assert r.dropped_fraction.item() == pytest.approx(2 / 6)


def test_capacity_formula():
    assert expert_capacity(100, 8, 2, 1.25) == math.ceil(1.25 * 100 * 2 / 8) == 32
    assert expert_capacity(100, 8, 2, None) == 100
    assert expert_capacity(10, 2, 2, 4.0) == 10  # never more seats than tokens


def test_dropped_tokens_get_zero_expert_output_and_keep_the_residual():
    torch.manual_seed(0)
    layer = MoE(moe_config(top_k=1, capacity_factor=0.25))
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[0] += 1.0  # every token prefers expert 0 when its features sum > 0
    x = torch.ones(1, 8, 16)  # 8 identical tokens, all to expert 0, which seats ceil(0.25 * 8 / 4) = 1
    y, out = layer(x)
    assert out.stats.dropped == pytest.approx(7 / 8)
    assert y[0, 0].abs().sum() > 0 and torch.equal(y[0, 1:], torch.zeros(7, 16))
    # in the block, a dropped token leaves the MoE half unchanged: x + 0
    block = GPT(moe_config(top_k=1, capacity_factor=0.25)).transformer.h[0]
    with torch.no_grad():
        block.mlp.router.weight.zero_()  # equal logits: all 8 tokens pick the same expert, 1 seat
        x = torch.randn(1, 8, 16)
        after_attention = x + block.attn(block.ln_1(x))
        out = block(x)
    torch.testing.assert_close(out[0, 1:], after_attention[0, 1:])
    assert not torch.allclose(out[0, 0], after_attention[0, 0])


def test_each_token_gets_the_weighted_sum_of_its_experts():
    torch.manual_seed(1)
    layer = MoE(moe_config(capacity_factor=None))
    x = torch.randn(5, 16)
    r = layer.route(x)
    y = dispatch_vectorised(x, r, layer.experts)
    for t in range(5):
        want = sum(r.weights[t, j] * layer.experts.one(int(r.experts[t, j]), x[t : t + 1])[0] for j in range(2))
        torch.testing.assert_close(y[t], want)


# --------------------------------------------------------- loop = vectorised
@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("factor", [None, 1.0, 0.5])
@pytest.mark.parametrize("bias", [True, False])
def test_loop_and_vectorised_dispatch_agree_values_and_gradients(top_k, factor, bias):
    torch.manual_seed(2)
    config = moe_config(n_expert=8, top_k=top_k, capacity_factor=factor, bias=bias)
    a = MoE(config)
    b = MoE(config)
    b.load_state_dict(a.state_dict())
    b.dispatch = "loop"
    x = torch.randn(4, 12, 16)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    (ya, oa), (yb, ob) = a(xa), b(xb)
    torch.testing.assert_close(ya, yb)
    assert oa.stats.dropped == ob.stats.dropped
    if factor == 0.5:
        assert oa.stats.dropped > 0  # the comparison covers dropped choices
    (ya.square().sum() + oa.aux_loss).backward()
    (yb.square().sum() + ob.aux_loss).backward()
    torch.testing.assert_close(xa.grad, xb.grad)
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_model_logits_agree_between_dispatches():
    torch.manual_seed(3)
    a = GPT(moe_config(n_expert=8, capacity_factor=0.75))
    b = GPT(moe_config(n_expert=8, capacity_factor=0.75, moe_dispatch="loop"))
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, 64, (4, 16))
    a.train(), b.train()
    torch.testing.assert_close(a(x, targets=x)[0], b(x, targets=x)[0])


# ------------------------------------------------------------------- the losses
def test_router_learns_from_the_language_model_loss_alone():
    for top_k in (1, 2):
        torch.manual_seed(4)
        model = GPT(moe_config(top_k=top_k, aux_loss_weight=0.0, z_loss_weight=0.0))
        x = torch.randint(0, 64, (2, 16))
        _, loss, out = model(x, targets=x, with_moe=True)
        assert out.penalty.item() == 0.0
        (loss + out.penalty).backward()
        for block in model.transformer.h:
            assert block.mlp.router.weight.grad.abs().sum() > 0, f"top_k={top_k}"


def test_balancing_loss_is_one_for_an_even_split_and_grows_with_skew():
    E, N = 8, 256
    token = torch.arange(N)
    logits = torch.randn(N, E) * 0.1
    logits[token, token % E] += 5.0  # each expert is the first choice of N / E tokens
    even = route(logits, 1, N)
    assert even.expert_share().tolist() == [1 / E] * E
    assert load_balancing_loss(even).item() == pytest.approx(1.0)  # f uniform: 1 whatever P is
    skew = torch.linspace(0, 1, E)  # expert E-1 preferred, more so as the scale grows
    values = [load_balancing_loss(route(torch.randn(N, E) * 0.1 + s * skew, 1, N)).item() for s in (0, 2, 5, 20, 100)]
    assert values == sorted(values) and values[-1] == pytest.approx(E, rel=1e-3)  # collapse: E
    # not a strict minimum: hard counts f against soft means P can score below 1
    p = torch.tensor([[0.51, 0.49]] * 3 + [[0.0, 1.0]])
    assert load_balancing_loss(route(p.log(), 1, 4)).item() == pytest.approx(0.8825, abs=1e-4)


def test_z_loss_is_the_squared_logsumexp():
    logits = torch.tensor([[0.0, 0.0], [3.0, -1.0]])
    want = (math.log(2) ** 2 + math.log(math.exp(3) + math.exp(-1)) ** 2) / 2
    assert router_z_loss(logits).item() == pytest.approx(want, rel=1e-6)


def test_penalty_is_the_weighted_sum_and_reaches_the_gradient():
    torch.manual_seed(6)
    model = GPT(moe_config(aux_loss_weight=0.5, z_loss_weight=0.25))
    x = torch.randint(0, 64, (2, 16))
    _, _, out = model(x, targets=x, with_moe=True)
    torch.testing.assert_close(out.penalty, 0.5 * out.aux_loss + 0.25 * out.z_loss)
    out.penalty.backward()  # the auxiliary losses alone move the router
    assert model.transformer.h[0].mlp.router.weight.grad.abs().sum() > 0


def test_dense_model_has_a_zero_penalty_and_no_layers():
    model = GPT(GPTConfig(**BASE))
    _, _, out = model(torch.zeros(1, 4, dtype=torch.long), with_moe=True)
    assert out.penalty.item() == 0.0 and out.layers == []


# ------------------------------------------------------------------- metrics
def test_layer_stats():
    r = route(torch.zeros(10, 4), 1, 10)
    s = layer_stats(r)
    assert s.entropy == pytest.approx(math.log(4)) and s.max_prob == pytest.approx(0.25)
    assert s.share.sum().item() == pytest.approx(1.0) and s.dropped == 0.0


def test_active_parameters_and_flops():
    C = BASE["n_embd"]
    dense = GPT(GPTConfig(**BASE))
    # 8 experts of half the dense width, top-2: each token uses as many expert weights as the dense MLP
    moe = GPT(moe_config(n_expert=8, top_k=2, expert_hidden=2 * C))
    routers = 2 * C * 8  # two MoE layers, one (C, E) router each
    extra_bias = 2 * C  # two experts' c_proj biases (C each) where the dense MLP has one, in 2 layers
    assert moe.num_active_params() == dense.num_params() + routers + extra_bias
    assert moe.flops_per_token() == dense.flops_per_token() + 3 * 2 * routers  # biases are not matmul FLOPs
    per_expert = (C * 2 * C + 2 * C) + (2 * C * C + C)
    assert moe.num_params() == moe.num_active_params() + 2 * (8 - 2) * per_expert


def test_eval_uses_its_own_capacity_and_noise_is_for_training_only():
    torch.manual_seed(7)
    layer = MoE(moe_config(capacity_factor=0.5, eval_capacity_factor=None, router_noise=1.0))
    x = torch.randn(20, 16)
    layer.train()
    assert layer.route(x).capacity == expert_capacity(20, 4, 2, 0.5)
    assert not torch.equal(layer.route(x).logits, layer.route(x).logits)  # noisy
    layer.eval()
    assert layer.route(x).capacity == 20
    torch.testing.assert_close(layer.route(x).logits, layer.router(x))  # clean


def test_moe_model_generates_the_same_tokens_with_and_without_the_cache():
    torch.manual_seed(8)
    model = GPT(moe_config(eval_capacity_factor=None)).eval()  # no limit: a token's route never depends on others
    idx = torch.randint(0, 64, (2, 5))
    a = model.generate(idx, 10, top_k=1, use_cache=True)
    b = model.generate(idx, 10, top_k=1, use_cache=False)
    assert torch.equal(a, b)


def test_to_hf_refuses_an_moe_model():
    from nanogpt_lib.hf import to_hf

    with pytest.raises(ValueError, match="n_expert=4"):
        to_hf(GPT(moe_config()))


def test_imbalance_is_busiest_over_fair_share():
    from nanogpt_lib.moe import imbalance, mean_imbalance

    assert imbalance([0.25] * 4) == 1.0 and imbalance([1.0, 0, 0, 0]) == 4.0
    records = [{"share": [[0.5, 0.5], [1.0, 0.0]]}, {"share": [[0.75, 0.25], [0.5, 0.5]]}]
    assert mean_imbalance(records) == [1.25, 1.5]
    with pytest.raises(ValueError, match="no routing records"):
        mean_imbalance([])


def test_losses_and_stats_are_computed_only_when_asked(monkeypatch):
    torch.manual_seed(9)
    model = GPT(moe_config()).eval()
    x = torch.randint(0, 64, (2, 16))
    wanted = model(x, with_moe=True)[0]

    def must_not_run(routing):
        raise AssertionError("routing statistics computed for a plain forward")

    monkeypatch.setattr("nanogpt_lib.moe.layer_stats", must_not_run)
    torch.testing.assert_close(model(x)[0], wanted)  # evaluation and generation skip that work
    model.generate(x[:, :4], 3, top_k=1)
    assert model.transformer.h[0].mlp(torch.randn(1, 4, 16), collect=False)[1] is None
