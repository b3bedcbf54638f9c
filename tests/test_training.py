import math

import pytest
import torch

from nanogpt_lib import (
    GPT,
    GPTConfig,
    TrainConfig,
    bundled_paragraph,
    encode,
    fit,
    is_quarter,
    make_optimizer,
    quarter_points,
    shift_targets,
    train_step,
)


def test_train_config_defaults_are_the_seeds():
    c = TrainConfig()
    assert (c.epochs, c.lr, c.weight_decay, c.betas, c.cont_prefix_tokens) == (500, 1e-4, 1e-2, (0.9, 0.95), 10)
    assert (c.cont_new_tokens, c.cont_temperature, c.cont_top_k) == (25, 0.1, 1)
    assert TrainConfig(betas=[0.8, 0.9]).betas == (0.8, 0.9)


@pytest.mark.parametrize("kwargs, message", [
    ({"epochs": 0}, r"epochs=0 .*integer >= 1"),
    ({"lr": 0}, r"lr=0 .*> 0"),
    ({"lr": float("nan")}, r"lr=nan"),
    ({"weight_decay": -1}, r"weight_decay=-1"),
    ({"betas": (0.9, 1.0)}, r"betas=\(0.9, 1.0\)"),
    ({"cont_prefix_tokens": 0}, r"cont_prefix_tokens=0"),
    ({"seed": 1.5}, r"seed=1.5"),
    ({"lr": True}, r"lr=True"),
    ({"betas": 0.9}, r"betas=0.9 .*two numbers"),
    ({"betas": ("a", "b")}, r"betas=\('a', 'b'\)"),
    ({"cont_temperature": 0}, r"cont_temperature=0 .*> 0"),
    ({"cont_top_k": 0}, r"cont_top_k=0"),
])
def test_train_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


@pytest.mark.parametrize("total, expected", [
    (500, {125: 25, 250: 50, 375: 75, 500: 100}),
    (10, {3: 25, 5: 50, 8: 75, 10: 100}),  # the seed's e % (10 // 4) fired 5 times
    (7, {2: 25, 4: 50, 6: 75, 7: 100}),
    (4, {1: 25, 2: 50, 3: 75, 4: 100}),
    (3, {1: 25, 2: 50, 3: 100}),
    (2, {1: 50, 2: 100}),
    (1, {1: 100}),  # the seed divided by zero here
])
def test_quarter_points_edge_cases(total, expected):
    assert quarter_points(total) == expected
    assert [e for e in range(1, total + 1) if is_quarter(e, total)] == sorted(expected)


def test_quarters_agree_with_the_seed_when_epochs_divide_by_four():
    total = 40
    seed_rule = [e for e in range(1, total + 1) if e == total or e % (total // 4) == 0]
    assert [e for e in range(1, total + 1) if is_quarter(e, total)] == seed_rule


def test_quarter_points_reject_bad_totals():
    with pytest.raises(ValueError, match="total epochs=0"):
        quarter_points(0)


def test_weight_decay_applies_to_matrices_only(tiny_model):
    opt = make_optimizer(tiny_model, TrainConfig())
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 1e-2 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    n = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n == tiny_model.num_params()
    assert opt.defaults["betas"] == (0.9, 0.95) and opt.defaults["lr"] == 1e-4


def _paragraph_run(tokenizer, epochs, seed=0, lr=1e-3, **fit_kwargs):
    ids = encode(tokenizer, bundled_paragraph())
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=100, vocab_size=len(tokenizer), n_layer=2, n_head=2, n_embd=64, dropout=0.1))
    cfg = TrainConfig(epochs=epochs, lr=lr, seed=seed)
    return model, fit(model, (ids, shift_targets(ids)), cfg, progress=False, **fit_kwargs)


def test_a_short_real_run_lowers_the_loss(tokenizer):
    _, history = _paragraph_run(tokenizer, epochs=40)
    assert history.epoch == list(range(1, 41))
    assert history.loss[0] > 8.0  # about ln(4096) = 8.3 at the start
    assert history.loss[-1] < 0.6 * history.loss[0]
    assert history.perplexity[-1] == pytest.approx(math.exp(history.loss[-1]))


def test_same_seed_same_losses_other_seed_other_losses(tokenizer):
    _, a = _paragraph_run(tokenizer, epochs=8, seed=3)
    _, b = _paragraph_run(tokenizer, epochs=8, seed=3)
    _, c = _paragraph_run(tokenizer, epochs=8, seed=4)
    assert a.loss == b.loss
    assert a.loss != c.loss


def test_quarter_callbacks_are_called_and_recorded(tokenizer):
    seen = []

    def on_quarter(epoch, percent, history):
        seen.append((epoch, percent, len(history.loss)))
        return {"note": f"{percent}%"} if percent > 50 else None

    _, history = _paragraph_run(tokenizer, epochs=6, on_quarter=on_quarter)
    assert seen == [(2, 25, 2), (3, 50, 3), (5, 75, 5), (6, 100, 6)]
    assert history.quarters == [
        {"epoch": 5, "percent": 75, "note": "75%"},
        {"epoch": 6, "percent": 100, "note": "100%"},
    ]


def test_fit_accepts_a_batch_function_and_train_step_updates(tiny_model, tiny_config):
    data = torch.randint(0, tiny_config.vocab_size, (400,))
    calls = []

    def batches(epoch):
        calls.append(epoch)
        g = torch.Generator().manual_seed(epoch)
        starts = torch.randint(0, 400 - 9, (4,), generator=g)
        x = torch.stack([data[s:s + 8] for s in starts])
        y = torch.stack([data[s + 1:s + 9] for s in starts])
        return x, y

    before = tiny_model.lm_head.weight.detach().clone()
    history = fit(tiny_model, batches, TrainConfig(epochs=5, lr=1e-3), progress=False)
    assert calls == [1, 2, 3, 4, 5] and len(history.loss) == 5
    assert not torch.equal(before, tiny_model.lm_head.weight)
    opt = make_optimizer(tiny_model, TrainConfig(lr=1e-3))
    loss = train_step(tiny_model, opt, batches(9))
    assert isinstance(loss, float) and loss > 0


def test_a_diverging_run_stops_with_a_clear_error(tiny_model, tiny_config):
    x = torch.randint(0, tiny_config.vocab_size, (1, 8))
    with torch.no_grad():
        tiny_model.lm_head.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="loss became nan at epoch 1"):
        fit(tiny_model, (x, shift_targets(x)), TrainConfig(epochs=3), progress=False)


def test_no_weight_decay_on_any_bias_moe_experts_included():
    from nanogpt_lib import GPT, GPTConfig

    model = GPT(GPTConfig(block_size=8, vocab_size=32, n_layer=1, n_head=1, n_embd=8, n_expert=2, top_k=1))
    decay, no_decay = make_optimizer(model, TrainConfig()).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(not names[id(p)].endswith("bias") for p in decay["params"])
    assert "transformer.h.0.mlp.experts.c_fc.bias" in {names[id(p)] for p in no_decay["params"]}
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] > 0
