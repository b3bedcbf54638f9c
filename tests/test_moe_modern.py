"""Part 3: SwiGLU and shared experts, the sigmoid router with its balancing bias, and parity with transformers."""

import copy
import math

import pytest
import torch
from transformers.models.deepseek_v3.configuration_deepseek_v3 import DeepseekV3Config
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE
from transformers.models.mixtral.configuration_mixtral import MixtralConfig
from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock, load_balancing_loss_func

from nanogpt_lib import GPT, GPTConfig, TrainConfig, fit, load_checkpoint, make_optimizer, save_checkpoint, train_step
from nanogpt_lib.hf_moe import (
    from_deepseek_v3,
    from_mixtral,
    parity_checks,
    randomise_parameters,
    sort_choices_by_expert,
)
from nanogpt_lib.moe import Experts, MoE, load_balancing_loss, route, update_expert_biases
from nanogpt_lib.train import main

C, H = 32, 24  # width of the residual stream, hidden width of one expert
BASE = dict(block_size=16, vocab_size=64, n_layer=2, n_head=2, n_embd=C, dropout=0.0)


def config(**overrides) -> GPTConfig:
    return GPTConfig(**{**BASE, "n_expert": 8, "top_k": 2, **overrides})


def modern_layer(seed: int = 0, **overrides) -> MoE:
    """An eval-mode SwiGLU MoE layer without biases or capacity limit: what Mixtral and DeepSeek compute."""
    torch.manual_seed(seed)
    settings = dict(expert_type="swiglu", expert_hidden=H, bias=False, capacity_factor=None, **overrides)
    return MoE(config(**settings)).eval()


# ------------------------------------------------------------------ the config
@pytest.mark.parametrize("bad, message", [
    (dict(expert_type="relu"), "expert_type='relu'"),
    (dict(router_type="tanh"), "router_type='tanh'"),
    (dict(n_shared_expert=-1), "n_shared_expert=-1"),
    (dict(n_expert=0, n_shared_expert=1), "n_shared_expert=1"),
    (dict(norm_topk_prob="yes"), "norm_topk_prob='yes'"),
    (dict(bias_update_rate=-0.1), "bias_update_rate=-0.1"),
    (dict(bias_update_rate=float("nan")), "bias_update_rate=nan"),
])
def test_bad_part3_settings_are_named(bad, message):
    with pytest.raises(ValueError, match=message):
        config(**bad)


def test_the_default_swiglu_width_keeps_the_dense_mlp_weights():
    gelu, swiglu = config(), config(expert_type="swiglu")
    assert gelu.hidden_size == 4 * C and swiglu.hidden_size == 8 * C // 3
    assert abs(3 * C * swiglu.hidden_size - 2 * C * gelu.hidden_size) <= 3 * C  # 8 C^2 each, up to rounding
    assert config(expert_type="swiglu", expert_hidden=10).hidden_size == 10


# ------------------------------------------------------------------ the experts
def test_a_swiglu_expert_is_silu_gate_times_up_then_down():
    torch.manual_seed(0)
    experts = Experts(3, C, H, kind="swiglu", bias=True)
    x = torch.randn(5, C)
    W, b = experts.gate_up_proj.weight[1], experts.gate_up_proj.bias[1]  # (C, 2H), (2H,)
    gate, up = x @ W[:, :H] + b[:H], x @ W[:, H:] + b[H:]
    want = (torch.nn.functional.silu(gate) * up) @ experts.down_proj.weight[1] + experts.down_proj.bias[1]
    torch.testing.assert_close(experts.one(1, x), want)
    batched = experts(x.expand(3, 5, C))  # (E, S, C): every expert on the same rows
    torch.testing.assert_close(batched[1], want)
    assert experts.params_per_expert() == 3 * C * H + 2 * H + C
    assert experts.matmul_weights_per_expert() == 3 * C * H


def test_an_unknown_expert_kind_is_named():
    with pytest.raises(ValueError, match="expert kind 'relu'"):
        Experts(2, C, H, kind="relu")


@pytest.mark.parametrize("kind", ["gelu", "swiglu"])
def test_n_shared_experts_are_one_mlp_n_times_as_wide(kind):
    """Two width-H experts added together equal one width-2H expert holding both (without output biases,
    which would be counted twice)."""
    torch.manual_seed(0)
    wide = Experts(1, C, 2 * H, kind=kind, bias=False)
    narrow = Experts(2, C, H, kind=kind, bias=False)
    fc_wide, proj_wide = wide.linears
    fc, proj = narrow.linears
    with torch.no_grad():
        W = fc_wide.weight[0]  # (C, 2H) for GELU; (C, 4H) = [gate | up] for SwiGLU
        parts = W.chunk(2, dim=1) if kind == "gelu" else (
            torch.cat([W[:, :H], W[:, 2 * H:3 * H]], dim=1), torch.cat([W[:, H:2 * H], W[:, 3 * H:]], dim=1))
        fc.weight.copy_(torch.stack(parts))
        proj.weight.copy_(torch.stack(proj_wide.weight[0].chunk(2, dim=0)))  # (2, H, C)
    x = torch.randn(6, C)
    torch.testing.assert_close(wide.one(0, x), narrow.one(0, x) + narrow.one(1, x))


def test_shared_experts_see_every_token_and_count_as_active():
    layer = modern_layer(n_shared_expert=2)
    x = torch.randn(2, 5, C)
    y, _ = layer(x)
    routed_only = modern_layer(n_shared_expert=0)  # same seed: router and routed experts are the same
    shared = layer.shared_experts(x.reshape(1, 10, C)).view(2, 5, C)
    torch.testing.assert_close(y, routed_only(x)[0] + shared)
    per_expert = 3 * C * H
    assert layer.shared_experts.params_per_expert() == 2 * per_expert
    assert layer.active_params() == 8 * C + 2 * per_expert + 2 * per_expert  # router, top-2, 2 shared
    assert layer.matmul_weights_per_token() == 4 * per_expert


def test_model_counts_follow_the_experts():
    torch.manual_seed(0)
    model = GPT(config(expert_type="swiglu", expert_hidden=H, n_shared_expert=1, top_k=3))
    dense_part = GPT(GPTConfig(**BASE)).num_params() - BASE["n_layer"] * (8 * C * C + 5 * C)  # minus dense MLPs
    per_expert = 3 * C * H + 2 * H + C  # SwiGLU with biases
    shared = 3 * C * H + 2 * H + C
    router = 8 * C
    assert model.num_params() == dense_part + 2 * (router + 8 * per_expert + shared)
    assert model.num_active_params() == dense_part + 2 * (router + 3 * per_expert + shared)
    forward = model.flops_per_token(training=False)
    torch.manual_seed(0)
    no_shared = GPT(config(expert_type="swiglu", expert_hidden=H, top_k=3)).flops_per_token(training=False)
    assert forward - no_shared == 2 * 2 * 3 * C * H  # 2 FLOPs per weight, 2 layers, one shared expert each


def test_swiglu_down_projections_start_small_like_gpt2_residual_projections():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**BASE, "n_layer": 8, "n_embd": 64}, n_expert=4, expert_type="swiglu"))
    down = model.transformer.h[0].mlp.experts.down_proj.weight
    up = model.transformer.h[0].mlp.experts.gate_up_proj.weight
    assert down.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.1)
    assert up.std().item() == pytest.approx(0.02, rel=0.1)


# ------------------------------------------------------------- parity: Mixtral
def randomised(module):
    """transformers leaves expert tensors uninitialised outside a model: random weights, outputs of order 1."""
    return randomise_parameters(module, 0.1).eval()


def mixtral_block(top_k: int) -> MixtralSparseMoeBlock:
    return randomised(MixtralSparseMoeBlock(MixtralConfig(
        hidden_size=C, intermediate_size=H, num_local_experts=8, num_experts_per_tok=top_k, hidden_act="silu",
        router_jitter_noise=0.0, experts_implementation="eager")))


@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("dispatch", ["vectorised", "loop"])
def test_swiglu_moe_equals_transformers_mixtral_block(top_k, dispatch):
    torch.manual_seed(1)
    theirs = mixtral_block(top_k)
    ours = from_mixtral(theirs)
    ours.dispatch = dispatch
    # Mixtral renormalises the chosen weights even for k = 1 (the weight is then 1)
    assert ours.norm_topk_prob is True and ours.experts.kind == "swiglu" and ours.shared_experts is None
    torch.testing.assert_close(ours.router.weight, theirs.gate.weight)  # both (E, C): copied as is
    torch.testing.assert_close(ours.experts.down_proj.weight[3], theirs.experts.down_proj[3].t())  # (H, C)
    x = torch.randn(3, 7, C)
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[0], theirs(x.clone()))


def test_the_comparison_is_not_vacuous():
    """A wrong convention shows: our k = 1 default (raw probability) differs from Mixtral's weight 1."""
    torch.manual_seed(1)
    theirs = mixtral_block(1)
    ours = from_mixtral(theirs)
    ours.norm_topk_prob = None
    x = torch.randn(2, 5, C)
    with torch.no_grad():
        assert (ours(x)[0] - theirs(x.clone())).abs().max() > 1e-2


@pytest.mark.parametrize("top_k", [1, 2, 3])
@pytest.mark.parametrize("layers", [1, 3])
def test_balancing_loss_in_the_mixtral_convention_equals_transformers(top_k, layers):
    torch.manual_seed(top_k)
    logits = tuple(torch.randn(20, 8) * 2 for _ in range(layers))  # one (B * T, E) tensor per layer
    want = load_balancing_loss_func(logits, num_experts=8, top_k=top_k)
    routing = route(torch.cat(logits), top_k, capacity=20 * layers)  # their pooling = the layers concatenated
    got = load_balancing_loss(routing, convention="mixtral")
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(load_balancing_loss(routing), want / top_k)  # Switch convention: 1 at balance


def test_an_unknown_loss_convention_is_named():
    with pytest.raises(ValueError, match="convention='deepseek'"):
        load_balancing_loss(route(torch.randn(4, 3), 1, 4), convention="deepseek")


# ----------------------------------------------------------- parity: DeepSeek-V3
def deepseek_block(top_k: int, n_shared: int = 1, **overrides) -> DeepseekV3MoE:
    """One group (no group-limited routing), no extra scaling of the weights, renormalised top-k."""
    settings = {**dict(n_group=1, topk_group=1, routed_scaling_factor=1.0, norm_topk_prob=True, hidden_act="silu"),
                **overrides}
    block = randomised(DeepseekV3MoE(DeepseekV3Config(
        hidden_size=C, moe_intermediate_size=H, n_routed_experts=8, num_experts_per_tok=top_k,
        n_shared_experts=n_shared, experts_implementation="eager", **settings)))
    with torch.no_grad():
        block.gate.e_score_correction_bias.copy_(torch.randn(8) * 0.3)  # large enough to change choices
    return block


@pytest.mark.parametrize("top_k", [1, 2, 4])
def test_sigmoid_router_with_bias_equals_transformers_deepseek_v3(top_k):
    torch.manual_seed(top_k)
    theirs = deepseek_block(top_k)
    ours = from_deepseek_v3(theirs)
    assert ours.router_type == "sigmoid" and ours.bias_update_rate == 0  # the imported bias is kept frozen
    torch.testing.assert_close(ours.expert_bias, theirs.gate.e_score_correction_bias)
    x = torch.randn(40, C)
    _, their_weights, their_indices = theirs.gate(x)
    routing = ours.route(x)
    got = sort_choices_by_expert(routing.experts, routing.weights)
    want = sort_choices_by_expert(their_indices, their_weights)
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
    # the bias decided some choices: without it, some tokens choose differently
    unbiased = route(routing.logits, top_k, 40, router_type="sigmoid", norm_topk_prob=True)
    assert not torch.equal(sort_choices_by_expert(unbiased.experts, unbiased.weights)[0], got[0])


@pytest.mark.parametrize("n_shared", [1, 2])
def test_moe_with_sigmoid_router_and_shared_experts_equals_deepseek_v3_moe_block(n_shared):
    torch.manual_seed(3)
    theirs = deepseek_block(top_k=2, n_shared=n_shared)
    ours = from_deepseek_v3(theirs)
    assert ours.shared_experts.params_per_expert() == n_shared * 3 * C * H
    x = torch.randn(2, 9, C)
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[0], theirs(x))


@pytest.mark.parametrize("overrides, message", [
    (dict(hidden_act="gelu"), "only silu experts convert"),
])
def test_deepseek_settings_without_a_counterpart_are_refused(overrides, message):
    torch.manual_seed(0)
    with pytest.raises(ValueError, match=message):
        from_deepseek_v3(deepseek_block(2, **overrides))


def test_parity_checks_report_float_rounding_only():
    checks = parity_checks(seed=0)
    assert len(checks) == 21
    for check in checks:
        assert check.max_abs_diff <= 1e-5 * max(1.0, check.max_abs_value), check
        assert check.max_abs_value > 0.01  # compared values of a meaningful size
    routers = [c for c in checks if c.same_choices is not None]
    assert len(routers) == 1 and routers[0].same_choices


# ------------------------------------------------------------ routing details
def test_the_bias_moves_choices_but_never_weights():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    for router_type in ("softmax", "sigmoid"):
        plain = route(logits, 1, 1, router_type=router_type)
        pushed = route(logits, 1, 1, router_type=router_type, balance_bias=torch.tensor([0.0, 0.0, 0.0, 5.0]))
        assert plain.experts.item() == 0 and pushed.experts.item() == 3
        scores = logits.softmax(-1) if router_type == "softmax" else logits.sigmoid()
        torch.testing.assert_close(pushed.weights[0, 0], scores[0, 3])  # k = 1: the unbiased score itself


def test_sigmoid_probabilities_are_scores_normalised_and_weights_follow_norm_topk_prob():
    logits = torch.tensor([[1.0, 0.0, -1.0]])
    s = logits.sigmoid()
    r = route(logits, 2, 1, router_type="sigmoid")
    torch.testing.assert_close(r.probs, s / s.sum())
    torch.testing.assert_close(r.weights, s[:, :2] / s[:, :2].sum())  # None and k = 2: renormalised
    raw = route(logits, 2, 1, router_type="sigmoid", norm_topk_prob=False)
    torch.testing.assert_close(raw.weights, s[:, :2])
    one = route(logits, 1, 1, norm_topk_prob=True)
    assert one.weights.item() == 1.0  # Mixtral's k = 1: the weight is the constant 1


def test_an_unknown_router_type_is_named():
    with pytest.raises(ValueError, match="router_type='tanh'"):
        route(torch.zeros(2, 3), 1, 2, router_type="tanh")


# ------------------------------------------------------- loss-free balancing
def test_update_bias_follows_the_sign_of_the_load_error():
    layer = modern_layer(n_expert=4, top_k=1, bias_update_rate=0.1).train()
    layer.load = torch.tensor([10.0, 0.0, 3.0, 3.0])  # mean 4
    layer.update_bias()
    torch.testing.assert_close(layer.expert_bias, torch.tensor([-0.1, 0.1, 0.1, 0.1]))
    assert layer.load is None
    layer.update_bias()  # nothing counted since: no change
    torch.testing.assert_close(layer.expert_bias, torch.tensor([-0.1, 0.1, 0.1, 0.1]))


def test_the_load_is_counted_in_training_only_and_over_micro_batches():
    layer = modern_layer(n_expert=4, top_k=2, bias_update_rate=0.1)
    x = torch.randn(1, 6, C)
    layer.eval()(x)
    assert layer.load is None
    layer.train()
    with torch.no_grad():  # an inspection, not a training forward
        layer(x)
    assert layer.load is None
    layer(x)
    layer(x)
    assert layer.load.sum().item() == 2 * 6 * 2  # two micro-batches of 6 tokens, 2 choices each


def test_the_bias_is_a_buffer_saved_in_checkpoints_not_a_parameter(tmp_path):
    torch.manual_seed(0)
    model = GPT(config(router_type="sigmoid", bias_update_rate=0.01, aux_loss_weight=0.0))
    names = dict(model.named_parameters())
    assert not any("expert_bias" in n for n in names)
    assert "transformer.h.0.mlp.expert_bias" in model.state_dict()
    x = torch.randint(0, 64, (4, 16))
    history = fit(model, (x, x), TrainConfig(epochs=5, lr=1e-3), progress=False)
    bias = model.transformer.h[0].mlp.expert_bias.clone()
    assert bias.abs().sum() > 0 and torch.all((bias / 0.01).round() == bias / 0.01)  # steps of the rate
    assert history.moe[-1]["bias"][0] != history.moe[0]["bias"][0]  # logged: the bias of each step
    loaded = load_checkpoint(save_checkpoint(tmp_path / "m.pt", model)).model
    torch.testing.assert_close(loaded.transformer.h[0].mlp.expert_bias, bias)


def test_a_learned_bias_can_be_kept_frozen():
    """Rate 0 with a sigmoid router: the buffer is there (a checkpoint's bias loads into it) and training
    leaves it as it is, as DeepSeek-V3 did for the end of its training."""
    torch.manual_seed(0)
    trained = GPT(config(router_type="sigmoid", bias_update_rate=0.01, aux_loss_weight=0.0))
    x = torch.randint(0, 64, (4, 16))
    fit(trained, (x, x), TrainConfig(epochs=3, lr=1e-3), progress=False)
    frozen = GPT(config(router_type="sigmoid", bias_update_rate=0.0, aux_loss_weight=0.0))
    frozen.load_state_dict(trained.state_dict())  # strict: the same buffers
    learned = frozen.transformer.h[0].mlp.expert_bias.clone()
    assert learned.abs().sum() > 0
    fit(frozen, (x, x), TrainConfig(epochs=3, lr=1e-3), progress=False)
    torch.testing.assert_close(frozen.transformer.h[0].mlp.expert_bias, learned, rtol=0, atol=0)
    assert frozen.transformer.h[0].mlp.load is None  # rate 0: nothing is even counted


def test_a_model_without_the_bias_has_none_and_logs_none():
    torch.manual_seed(0)
    model = GPT(config())
    assert model.transformer.h[0].mlp.expert_bias is None
    assert not any("expert_bias" in k for k in model.state_dict())
    x = torch.randint(0, 64, (2, 16))
    log: list = []
    train_step(model, make_optimizer(model, TrainConfig()), (x, x), log)
    assert "bias" not in log[0]


def test_the_bias_balances_a_router_that_favours_one_expert():
    """A router whose scores favour expert 0 for every token: the bias alone (frozen router, no loss)
    spreads the choices. Imbalance = busiest expert's share over the fair share."""
    torch.manual_seed(0)
    layer = modern_layer(n_expert=4, top_k=1, router_type="sigmoid", bias_update_rate=0.02).train()
    with torch.no_grad():
        layer.router.weight.normal_(0.0, 0.1)
        layer.router.weight[0] += 0.3  # expert 0 scores higher for most inputs
    x = torch.randn(1, 256, C).abs()  # positive inputs: expert 0's row adds to every score
    imbalances = []
    for _ in range(60):
        layer(x)  # a training forward: counts the load
        with torch.no_grad():
            routing = layer.route(x[0])
        imbalances.append(routing.expert_share().max().item() * 4)
        update_expert_biases(layer)
    assert imbalances[0] > 3.0 and max(imbalances[-10:]) < 1.5


def test_the_corpus_loop_counts_every_micro_batch():
    """The bias after one accumulated step is the rule applied to the load of both micro-batches."""
    torch.manual_seed(0)
    model = GPT(config(bias_update_rate=0.01))
    batches = [(x, x) for x in torch.randint(0, 64, (2, 2, 16), generator=torch.Generator().manual_seed(1))]

    def bias_after(forwards):
        clone = copy.deepcopy(model).train()
        for x, _ in forwards:
            clone(x)
        update_expert_biases(clone)
        return clone.transformer.h[0].mlp.expert_bias

    both, last_only = bias_after(batches), bias_after(batches[1:])
    assert not torch.equal(both, last_only)  # the test can tell the two apart
    train_step(model, make_optimizer(model, TrainConfig()), batches, grad_clip=1.0)
    torch.testing.assert_close(model.transformer.h[0].mlp.expert_bias, both, rtol=0, atol=0)


def test_a_sigmoid_router_has_no_z_loss():
    torch.manual_seed(0)
    x = torch.randint(0, 64, (2, 16))
    for router_type, has_z in (("softmax", True), ("sigmoid", False)):
        _, _, moe = GPT(config(router_type=router_type))(x, with_moe=True)
        assert (moe.z_loss.item() > 0) == has_z


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")  # their empty shared MLP
def test_a_deepseek_block_without_shared_experts_converts():
    torch.manual_seed(0)
    theirs = deepseek_block(top_k=2, n_shared=0)
    ours = from_deepseek_v3(theirs)
    assert ours.shared_experts is None
    x = torch.randn(1, 5, C)
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[0], theirs(x))


def test_one_expert_without_shared_experts_ignores_the_part3_router_options():
    """With nothing to choose, a sigmoid router setting cannot change the dense computation."""
    torch.manual_seed(0)
    a = GPT(GPTConfig(**BASE, n_expert=1, top_k=1, capacity_factor=None))
    torch.manual_seed(0)
    b = GPT(GPTConfig(**BASE, n_expert=1, top_k=1, capacity_factor=None, router_type="sigmoid"))
    x = torch.randint(0, 64, (2, 16))
    torch.testing.assert_close(a.eval()(x)[0], b.eval()(x)[0])


# ------------------------------------------------------------- command line
def test_command_line_trains_a_part3_model(capsys):
    main(["--epochs", "4", "--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--n-expert", "6", "--top-k", "2",
          "--expert-type", "swiglu", "--expert-hidden", "16", "--n-shared-expert", "1", "--router-type", "sigmoid",
          "--norm-topk-prob", "true", "--bias-update-rate", "0.01", "--aux-loss-weight", "0", "--no-progress"])
    out = capsys.readouterr().out
    assert "6 experts, top-2 (swiglu experts, 1 shared, sigmoid router, balancing bias)" in out


def test_command_line_refuses_a_bad_norm_topk_prob(capsys):
    with pytest.raises(SystemExit):
        main(["--n-expert", "4", "--norm-topk-prob", "maybe", "--no-progress"])
    assert "'maybe' is not one of true, false, none" in capsys.readouterr().err
