import pytest
import torch

from nanogpt_lib import GPT, GPTConfig, part1_config
from nanogpt_lib.costs import format_bytes, format_count, model_cost, param_breakdown, time_forward


@pytest.mark.parametrize("config", [
    GPTConfig(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=16),
    GPTConfig(block_size=16, vocab_size=50, n_layer=1, n_head=1, n_embd=8, bias=False),
    part1_config(4096),
])
def test_counts_equal_the_built_model(config):
    torch.manual_seed(0)
    model = GPT(config)
    cost = model_cost(config)
    assert cost.params == model.num_params() == sum(p.numel() for p in model.parameters())
    assert cost.non_embedding_params == model.num_params(non_embedding=True)
    assert cost.train_flops_per_token == model.flops_per_token(training=True) == 3 * cost.forward_flops_per_token
    assert cost.weight_bytes == 4 * cost.params
    assert cost.training_bytes == 16 * cost.params  # weights, gradients, two AdamW moments


def test_part1_figures():
    cost = model_cost(part1_config(4096))
    assert (cost.params, cost.non_embedding_params) == (1_330_432, 793_344)
    # by hand: 2 x (matmul weights: 4 blocks x 12 C^2 + the V x C output layer) + 4 T C per layer
    assert cost.forward_flops_per_token == 2 * (4 * 12 * 128**2 + 4096 * 128) + 4 * 4 * 100 * 128 == 2_826_240
    assert cost.train_flops_per_token == 3 * 2_826_240


def test_counting_allocates_nothing_and_leaves_the_random_state_alone():
    state = torch.get_rng_state()
    model_cost(GPTConfig(n_layer=48, n_head=25, n_embd=1600))  # GPT-2 XL: 1.5 billion parameters
    assert torch.equal(state, torch.get_rng_state())


def test_formatting():
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(20 * 2**20) == "20.0 MiB"
    assert format_bytes(3 * 2**40) == "3072.0 GiB"
    assert format_count(950) == "950"
    assert format_count(1_330_432) == "1.33M"
    assert format_count(124_000_000) == "124M"
    assert format_count(8.48e9) == "8.48G"


def test_time_forward(tiny_model):
    tiny_model.train()
    state = torch.get_rng_state()
    ms = time_forward(tiny_model, batch_size=2, repeats=2)
    assert 0 < ms < 10_000
    assert tiny_model.training
    assert torch.equal(state, torch.get_rng_state())
    with pytest.raises(ValueError, match="repeats=0"):
        time_forward(tiny_model, repeats=0)
    with pytest.raises(ValueError, match="seq_len=17 must be in"):
        time_forward(tiny_model, seq_len=17)


def test_param_breakdown_adds_up_and_follows_the_formulas():
    config = part1_config(4096)
    parts = param_breakdown(config)
    assert sum(parts.values()) == model_cost(config).params
    C, L = config.n_embd, config.n_layer
    assert parts["wte (tokens, tied with lm_head)"] == 4096 * C
    assert parts["wpe (positions)"] == config.block_size * C
    assert parts["attention (c_attn, c_proj)"] == L * (4 * C * C + 4 * C)  # 3C x C + C x C, biases
    assert parts["MLP (c_fc, c_proj)"] == L * (8 * C * C + 5 * C)  # 4C x C + C x 4C, biases
    assert parts["LayerNorms (ln_1, ln_2, ln_f)"] == (2 * L + 1) * 2 * C
