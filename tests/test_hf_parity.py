"""Our GPT and transformers' GPT2LMHeadModel give the same logits, in both directions."""

import pytest
import torch
from torch.testing import assert_close

from nanogpt_lib import GPT, GPTConfig
from nanogpt_lib.hf import from_hf, to_hf

transformers = pytest.importorskip("transformers")

CONFIGS = [
    GPTConfig(block_size=16, vocab_size=97, n_layer=2, n_head=2, n_embd=32),
    GPTConfig(block_size=24, vocab_size=300, n_layer=3, n_head=4, n_embd=48),
    GPTConfig(block_size=10, vocab_size=61, n_layer=1, n_head=3, n_embd=24),
]


def _random_biases(model):
    """GPT-2 starts its biases at zero; make them random so the test sees them."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"L{c.n_layer}H{c.n_head}C{c.n_embd}")
def test_ours_to_transformers_same_logits(config, bias):
    torch.manual_seed(config.n_embd + bias)
    ours = GPT(GPTConfig(**{**config.to_dict(), "bias": bias})).eval()
    if bias:
        _random_biases(ours)
    theirs = to_hf(ours).eval()
    x = torch.randint(0, config.vocab_size, (3, config.block_size))
    with torch.no_grad():
        assert_close(theirs(x).logits, ours(x)[0], atol=1e-5, rtol=0)
    assert theirs.lm_head.weight.data_ptr() == theirs.transformer.wte.weight.data_ptr()


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"L{c.n_layer}H{c.n_head}C{c.n_embd}")
def test_transformers_to_ours_same_logits(config, bias):
    torch.manual_seed(config.vocab_size + bias)
    hf_config = transformers.GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd,
        n_layer=config.n_layer, n_head=config.n_head, bos_token_id=None, eos_token_id=None,
    )
    theirs = transformers.GPT2LMHeadModel(hf_config).eval()
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1) if bias else p.zero_()
    ours = from_hf(theirs, bias=bias).eval()
    assert ours.config.bias is bias
    x = torch.randint(0, config.vocab_size, (2, config.block_size))
    with torch.no_grad():
        assert_close(ours(x)[0], theirs(x).logits, atol=1e-5, rtol=0)


def test_round_trip_keeps_every_weight():
    torch.manual_seed(0)
    ours = GPT(CONFIGS[0])
    _random_biases(ours)
    back = from_hf(to_hf(ours))
    assert back.config == ours.config
    for (name, a), (_, b) in zip(ours.state_dict().items(), back.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_nonzero_biases_cannot_become_a_bias_free_model():
    torch.manual_seed(0)
    ours = GPT(CONFIGS[0])
    _random_biases(ours)
    with pytest.raises(ValueError, match=r"transformer\.h\.0\.ln_1\.bias has non-zero values.*bias=True"):
        from_hf(to_hf(ours), bias=False)


@pytest.mark.parametrize("kwargs, message", [
    ({"activation_function": "relu"}, r"activation_function='relu' is not supported"),
    ({"n_inner": 40}, r"n_inner=40 is not supported"),
    ({"scale_attn_weights": False}, r"scale_attn_weights=False is not supported"),
    ({"scale_attn_by_inverse_layer_idx": True}, r"scale_attn_by_inverse_layer_idx=True is not supported"),
    ({"tie_word_embeddings": False}, r"lm_head.weight differs from transformer.wte.weight"),
    ({"attn_pdrop": 0.0}, r"dropouts differ"),
])
def test_transformers_models_we_cannot_reproduce_are_refused(kwargs, message):
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=50, n_positions=8, n_embd=16, n_layer=1, n_head=2, bos_token_id=None, eos_token_id=None,
        **kwargs))
    with pytest.raises(ValueError, match=message):
        from_hf(hf)
