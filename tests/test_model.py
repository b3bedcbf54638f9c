import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from nanogpt_lib import GPT, GPTConfig, shift_targets


def test_forward_returns_logits_for_every_position_and_the_loss(tiny_model, tiny_config):
    x = torch.randint(0, tiny_config.vocab_size, (3, 10))
    logits, loss = tiny_model(x)
    assert logits.shape == (3, 10, tiny_config.vocab_size)
    assert loss is None
    y = torch.randint(0, tiny_config.vocab_size, (3, 10))
    logits2, loss = tiny_model(x, targets=y)
    assert_close(logits2, logits)
    assert_close(loss, F.cross_entropy(logits.reshape(30, -1), y.reshape(30)))


def test_targets_of_minus_one_are_ignored(tiny_model, tiny_config):
    x = torch.randint(0, tiny_config.vocab_size, (1, 12))
    y = torch.randint(0, tiny_config.vocab_size, (1, 12))
    y[0, -1] = -1
    logits, loss = tiny_model(x, targets=y)
    assert_close(loss, F.cross_entropy(logits[0, :-1], y[0, :-1]))


def test_initial_loss_is_close_to_log_vocab():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, vocab_size=4096, n_layer=2, n_head=2, n_embd=64))
    x = torch.randint(0, 4096, (4, 64))
    _, loss = model(x, targets=torch.randint(0, 4096, (4, 64)))
    assert abs(loss.item() - math.log(4096)) / math.log(4096) < 0.05


def test_causality_changing_token_t_never_changes_earlier_logits(tiny_model, tiny_config):
    tiny_model.eval()
    x = torch.randint(0, tiny_config.vocab_size, (2, tiny_config.block_size))
    base, _ = tiny_model(x)
    for t in (0, 5, tiny_config.block_size - 1):
        x2 = x.clone()
        x2[:, t] = (x2[:, t] + 1) % tiny_config.vocab_size
        out, _ = tiny_model(x2)
        assert_close(out[:, :t], base[:, :t], atol=0, rtol=0)
        assert not torch.allclose(out[:, t], base[:, t])


def test_weights_are_tied_and_gpt2_names_are_used(tiny_model):
    assert tiny_model.transformer.wte.weight is tiny_model.lm_head.weight
    names = set(dict(tiny_model.named_parameters()))
    for name in ("transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.attn.c_attn.weight",
                 "transformer.h.1.attn.c_proj.bias", "transformer.h.0.mlp.c_fc.weight",
                 "transformer.h.0.mlp.c_proj.weight", "transformer.ln_f.weight", "transformer.h.0.ln_1.bias"):
        assert name in names


def test_gpt2_init_scales_residual_projections():
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=8, vocab_size=64, n_layer=8, n_head=4, n_embd=256)
    model = GPT(cfg)
    scaled = 0.02 / math.sqrt(2 * cfg.n_layer)
    for proj in (model.transformer.h[3].mlp.c_proj.weight, model.transformer.h[5].attn.c_proj.weight):
        assert abs(proj.std().item() - scaled) < 5e-4
    for plain in (model.transformer.h[3].mlp.c_fc.weight, model.transformer.h[0].attn.c_attn.weight,
                  model.transformer.wte.weight, model.transformer.wpe.weight):
        assert abs(plain.std().item() - 0.02) < 1e-3
    assert torch.count_nonzero(model.transformer.h[0].attn.c_attn.bias) == 0


def test_bias_false_has_no_biases():
    model = GPT(GPTConfig(block_size=8, vocab_size=20, n_layer=1, n_head=2, n_embd=8, bias=False))
    assert not [n for n, _ in model.named_parameters() if n.endswith("bias")]


@pytest.mark.parametrize(
    "idx, message",
    [
        (torch.zeros(5, dtype=torch.long), r"2-D integer tensor.*shape \(5,\)"),
        (torch.zeros(1, 5), r"2-D integer tensor.*torch.float32"),
        (torch.zeros(1, 5, dtype=torch.bool), r"2-D integer tensor.*torch.bool"),
        ([[1, 2, 3]], r"2-D integer tensor.*got list"),
        (torch.zeros(1, 0, dtype=torch.long), r"idx is empty"),
        (torch.zeros(1, 17, dtype=torch.long), r"T=17 exceeds block_size=16"),
        (torch.tensor([[1, 50]]), r"token id 50 is outside the vocabulary \[0, 50\)"),
        (torch.tensor([[-2, 3]]), r"token id -2 is outside the vocabulary"),
    ],
)
def test_bad_idx_gets_a_clear_error(tiny_model, idx, message):
    with pytest.raises(ValueError, match=message):
        tiny_model(idx)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int16, torch.uint8, torch.uint16])
def test_any_integer_dtype_works_for_ids_and_targets(tiny_model, dtype):
    x = torch.randint(0, 50, (2, 6))
    y = shift_targets(x)
    ref_logits, ref_loss = tiny_model(x, targets=y)
    logits, _ = tiny_model(x.to(dtype))
    assert_close(logits, ref_logits)
    _, loss = tiny_model(x, targets=y.to(torch.int32))
    assert_close(loss, ref_loss)


def test_bad_targets_get_a_clear_error(tiny_model):
    x = torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match=r"targets have shape \(2, 4\) but idx has shape \(2, 5\)"):
        tiny_model(x, targets=torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"target 50 is not allowed.*\[0, 50\) or -1"):
        tiny_model(x, targets=torch.full((2, 5), 50))
    with pytest.raises(ValueError, match=r"target -5 is not allowed"):
        tiny_model(x, targets=torch.full((2, 5), -5))
    with pytest.raises(ValueError, match="integer tensor"):
        tiny_model(x, targets=torch.zeros(2, 5))


def _greedy_by_hand(model, idx, n):
    for _ in range(n):
        logits, _ = model(idx[:, -model.config.block_size:])
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


def test_generate_top_k_1_is_greedy_and_crops_the_context(tiny_model, tiny_config):
    tiny_model.eval()
    start = torch.randint(0, tiny_config.vocab_size, (2, tiny_config.block_size + 5))  # longer than context
    out = tiny_model.generate(start, 12, temperature=0.7, top_k=1)
    assert out.shape == (2, tiny_config.block_size + 17)
    assert torch.equal(out[:, : start.shape[1]], start)
    with torch.no_grad():
        assert torch.equal(out, _greedy_by_hand(tiny_model, start, 12))


def test_generate_top_k_is_clamped_and_restricts_choices(tiny_model, tiny_config):
    tiny_model.eval()
    start = torch.randint(0, tiny_config.vocab_size, (1, 4))
    g = torch.Generator().manual_seed(0)
    out = tiny_model.generate(start, 5, top_k=10**6, generator=g)  # larger than the vocabulary
    assert out.shape == (1, 9)
    # with top_k=3 every sampled token is among the 3 most likely at its step
    g = torch.Generator().manual_seed(1)
    out = tiny_model.generate(start, 20, temperature=5.0, top_k=3, generator=g)
    with torch.no_grad():
        for t in range(4, out.shape[1]):
            logits, _ = tiny_model(out[:, :t][:, -tiny_config.block_size:])
            assert out[0, t] in torch.topk(logits[0, -1], 3).indices


def test_generate_with_a_tiny_temperature_is_greedy_not_nan(tiny_model):
    tiny_model.eval()
    start = torch.randint(0, 50, (2, 3))
    out = tiny_model.generate(start, 6, temperature=1e-45, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, tiny_model.generate(start, 6, top_k=1))


def test_generate_is_reproducible_with_a_generator(tiny_model):
    tiny_model.eval()
    start = torch.zeros(1, 2, dtype=torch.long)
    a = tiny_model.generate(start, 10, generator=torch.Generator().manual_seed(7))
    b = tiny_model.generate(start, 10, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": 0.0}, r"temperature=0.0 is not allowed.*> 0"),
    ({"temperature": -1}, r"temperature=-1 is not allowed"),
    ({"temperature": float("inf")}, r"temperature=inf is not allowed"),
    ({"top_k": 0}, r"top_k=0 is not allowed"),
    ({"max_new_tokens": -1}, r"max_new_tokens=-1"),
    ({"temperature": True}, r"temperature=True is not allowed"),
    ({"idx": torch.zeros(4, dtype=torch.long)}, r"idx must be a 2-D integer tensor"),
    ({"idx": torch.tensor([[1, 99]])}, r"token id 99 is outside the vocabulary"),
])
def test_generate_bad_arguments(tiny_model, kwargs, message):
    args = {"idx": torch.zeros(1, 2, dtype=torch.long), "max_new_tokens": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        tiny_model.generate(**args)


def test_parameter_counts_follow_the_formula():
    V, T, L, C = 300, 20, 3, 24
    for bias in (True, False):
        model = GPT(GPTConfig(block_size=T, vocab_size=V, n_layer=L, n_head=4, n_embd=C, bias=bias))
        per_block = 12 * C * C + (9 * C if bias else 0) + (4 * C if bias else 2 * C)  # weights, biases, 2 LN
        ln_f = 2 * C if bias else C
        assert model.num_params(non_embedding=True) == L * per_block + ln_f
        assert model.num_params() == L * per_block + ln_f + V * C + T * C  # tied wte counted once


def test_flops_per_token_follow_the_palm_estimate():
    V, T, L, C = 300, 20, 3, 24
    model = GPT(GPTConfig(block_size=T, vocab_size=V, n_layer=L, n_head=4, n_embd=C))
    forward = 2 * (12 * L * C * C + V * C) + 4 * L * T * C
    assert model.flops_per_token(training=False) == forward
    assert model.flops_per_token() == 3 * forward
    assert model.flops_per_token(seq_len=10, training=False) == forward - 4 * L * 10 * C


def test_dropout_is_active_only_in_training():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=8, vocab_size=30, n_layer=1, n_head=2, n_embd=16, dropout=0.5))
    x = torch.randint(0, 30, (1, 8))
    model.train()
    assert not torch.equal(model(x)[0], model(x)[0])
    model.eval()
    assert torch.equal(model(x)[0], model(x)[0])


def test_gpt_rejects_something_that_is_not_a_config():
    with pytest.raises(TypeError, match="GPTConfig"):
        GPT({"n_layer": 2})
