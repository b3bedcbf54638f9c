"""The released models' table: our counts against the published ones, and the terms added analytically."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from nanogpt_lib import GPTConfig  # noqa: E402
from nanogpt_lib.costs import moe_layer_cost  # noqa: E402
from nanogpt_lib.moe import MoE  # noqa: E402
from nanogpt_lib.plots import plot_active_vs_total  # noqa: E402
from nanogpt_lib.real_models import MODELS, Attention, count, format_table, table  # noqa: E402

ROWS = {r.model.name: r for r in table()}


@pytest.mark.parametrize("name", list(ROWS))
def test_total_and_active_are_within_two_percent_of_the_published_figures(name):
    row = ROWS[name]
    assert abs(row.total_gap) <= 0.02, (row.total, row.model.published_total)
    assert abs(row.active_gap) <= 0.02, (row.active_as_published, row.model.published_active)


def test_the_table_holds_the_seven_models_of_the_issue():
    assert set(ROWS) == {"Mixtral 8x7B", "Qwen3-30B-A3B", "Qwen3-235B-A22B", "DeepSeek-V3", "gpt-oss-20b",
                         "gpt-oss-120b", "OLMoE-1B-7B"}
    text = format_table(list(ROWS.values()))
    assert "DeepSeek-V3" in text and "bf16 GB" in text


def test_mixtral_by_hand():
    """32 layers of GQA (32 query heads, 8 key/value heads of 128), 8 SwiGLU experts of 14336, untied 32000 x 4096."""
    C, L, V = 4096, 32, 32000
    attention = C * 4096 + 2 * C * 1024 + 4096 * C
    expert = 3 * C * 14336
    total = L * (attention + 8 * expert + 8 * C + 2 * C) + C + 2 * V * C
    active = L * (attention + 2 * expert + 8 * C + 2 * C) + C + 2 * V * C
    row = ROWS["Mixtral 8x7B"]
    assert (row.total, row.active) == (total, active)
    assert row.weight_bytes_bf16 == 2 * total


def test_the_moe_part_comes_from_our_layer_on_the_meta_device():
    model = next(m for m in MODELS if m.name == "Qwen3-30B-A3B")
    cost = moe_layer_cost(model.moe_config())
    torch.manual_seed(0)
    small = GPTConfig(**{**model.moe_config().to_dict(), "n_embd": 16, "expert_hidden": 6})
    layer = MoE(small)
    assert moe_layer_cost(small).params == sum(p.numel() for p in layer.parameters())
    assert moe_layer_cost(small).active_params == layer.active_params()
    assert cost.params == 128 * 3 * 2048 * 768 + 128 * 2048
    assert cost.matmul_weights_per_token == 8 * 3 * 2048 * 768 + 128 * 2048
    assert ROWS["Qwen3-30B-A3B"].moe_total == 48 * cost.params


def test_gpt_oss_layer_counts_router_and_expert_biases():
    row = ROWS["gpt-oss-20b"]
    C, H, E = 2880, 2880, 32
    per_layer = E * (3 * C * H + 2 * H + C) + E * C + E  # experts with biases, router with its bias
    assert row.moe_total == 24 * per_layer
    assert row.active - row.active_as_published == 201088 * C  # OpenAI's active leaves the input embedding out


def test_deepseek_v3_has_dense_first_layers_and_latent_attention():
    row = ROWS["DeepSeek-V3"]
    C = 7168
    mla = Attention(n_head=128, head_dim=192, q_lora_rank=1536, kv_lora_rank=512, rope_dim=64, v_head_dim=128)
    by_hand = (C * 1536 + 1536 + 1536 * 128 * 192 + C * (512 + 64) + 512 + 512 * 128 * (128 + 128) + 128 * 128 * C)
    assert mla.params(C) == by_hand
    expert = 3 * C * 2048
    moe_layer = 256 * expert + expert + 256 * C  # routed, one shared, router
    assert row.moe_total == 58 * moe_layer
    assert row.total - row.moe_total == 61 * by_hand + 3 * 3 * C * 18432 + (2 * 61 + 1) * C + 2 * 129280 * C


def test_flops_are_two_per_weight_used_plus_attention_scores():
    row = count(next(m for m in MODELS if m.name == "Mixtral 8x7B"), seq_len=1)
    C, L = 4096, 32
    matmul = L * (C * 4096 + 2 * C * 1024 + 4096 * C + 2 * 3 * C * 14336 + 8 * C) + 32000 * C
    assert row.forward_flops_per_token == 2 * matmul + L * 2 * 1 * 32 * 256
    longer = count(row.model, seq_len=4096)
    assert longer.forward_flops_per_token - row.forward_flops_per_token == L * 2 * 4095 * 32 * 256


def test_the_figure_is_log_log_with_one_point_per_model():
    fig = plot_active_vs_total(list(ROWS.values()))
    ax = fig.axes[0]
    assert ax.get_xscale() == ax.get_yscale() == "log"
    assert "log scale" in ax.get_xlabel() and ax.get_title()
    assert len(ax.collections[0].get_offsets()) == 7
