"""Part 3's helpers for notebook 07: the balancing simulation, its slider table and the plots."""

from dataclasses import replace

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from nanogpt_lib import GPTConfig, TrainConfig  # noqa: E402
from nanogpt_lib.corpus_train import CorpusConfig  # noqa: E402
from nanogpt_lib.costs import model_cost  # noqa: E402
from nanogpt_lib.experiments import compare_on_corpus, modern_moe_variants  # noqa: E402
from nanogpt_lib.moe import balance_summary, bias_step, simulate_bias_balancing  # noqa: E402
from nanogpt_lib.plots import plot_balance, plot_expert_bias, plot_expert_share  # noqa: E402
from nanogpt_lib.tokens import tokens_in_memory  # noqa: E402
from nanogpt_lib.widgets import modern_moe_explorer, modern_moe_report, skewed_router_scores  # noqa: E402
from studies.modern_moe_seeds import main as seed_study  # noqa: E402

BASE = dict(block_size=16, vocab_size=64, n_layer=2, n_head=2, n_embd=16, dropout=0.0)
PART3 = dict(n_expert=6, top_k=2, expert_type="swiglu", expert_hidden=8, n_shared_expert=1)


@pytest.fixture(scope="module")
def results():
    """A Part-3 model balanced by the auxiliary loss and one balanced by the bias, trained on toy tokens."""
    rng = np.random.default_rng(0)
    data = tokens_in_memory(rng.integers(0, 64, 400), rng.integers(0, 64, 60), "toy", 64)
    configs = {
        "aux loss": GPTConfig(**BASE, **PART3),
        "bias": GPTConfig(**BASE, **PART3, router_type="sigmoid", bias_update_rate=0.05, aux_loss_weight=0.0),
    }
    return compare_on_corpus(configs, data, TrainConfig(lr=3e-3, seed=0),
                             CorpusConfig(steps=6, batch_size=2, eval_interval=3, eval_batches=1, warmup_steps=1),
                             progress=False)


def test_bias_step_raises_the_idle_and_lowers_the_busy():
    torch.testing.assert_close(bias_step(torch.tensor([5.0, 1.0, 3.0]), 0.5), torch.tensor([-0.5, 0.5, 0.0]))


def test_the_simulation_balances_a_skewed_router_at_a_good_rate_only():
    scores = skewed_router_scores(800, 8, seed=0)
    assert torch.equal(scores, skewed_router_scores(800, 8, seed=0)) and scores.shape == (800, 8)
    off = simulate_bias_balancing(scores, top_k=2, rate=0.0, steps=50)
    good = simulate_bias_balancing(scores, top_k=2, rate=0.01, steps=50)
    too_big = simulate_bias_balancing(scores, top_k=2, rate=0.5, steps=50)
    assert len(off) == 51 and len(set(off)) == 1 and off[0] > 1.4  # nothing moves without a rate
    assert good[0] == off[0] and max(good[-10:]) < 1.15  # balanced within 50 steps
    assert min(too_big[-10:]) > max(good[-10:])  # overshoots: every bias jumps by the full rate
    with pytest.raises(ValueError, match="steps=-1"):
        simulate_bias_balancing(scores, 2, 0.01, -1)


def test_modern_report_counts_what_the_library_builds():
    base = GPTConfig(**BASE, **PART3)
    text = modern_moe_report(12, 4, 3, 2, 0.01, base)
    cost = model_cost(GPTConfig(**{**base.to_dict(), "n_expert": 12, "expert_hidden": 4, "top_k": 3,
                                   "n_shared_expert": 2, "bias_update_rate": 0.01}))
    assert f"{cost.params:,}" in text and f"{cost.active_params:,}" in text
    assert "12 x swiglu 16 → 4 → 16, top-3" in text and "| 20 of 56 |" in text  # (3 + 2) x 4 of (12 + 2) x 4
    balance = simulate_bias_balancing(skewed_router_scores(800, 12), 3, 0.01, 150)
    assert f"step 0: {balance[0]:.2f}" in text and f"step 150: {balance[150]:.2f}" in text
    impossible = modern_moe_report(2, 4, 3, 0, 0.01, base)
    assert "Impossible configuration" in impossible and "top_k=3" in impossible


def test_modern_explorer_updates_when_a_slider_moves():
    w = modern_moe_explorer(GPTConfig(**BASE, **PART3, bias_update_rate=0.01))
    before = w.result.data
    w.children[3].value = 3  # shared experts
    assert w.result.data != before and "| shared experts (every token) | 3 (24 hidden units) |" in w.result.data
    w.children[4].value = 0.1  # the bias rate
    assert "balancing bias at rate 0.1:" in w.result.data


def test_balance_plot_draws_every_moe_model(results):
    assert any(d > 0 for r in results for rec in r.history.moe for d in rec["dropped"])  # capacity 1.25 drops
    fig = plot_balance(results, window=2)
    left, right = fig.axes
    assert [line.get_label() for line in left.lines][:2] == ["aux loss", "bias"]
    assert len(left.lines[0].get_xdata()) == 6 and len(right.lines) == 2
    plt.close(fig)


def test_balance_plot_leaves_out_the_dropped_panel_when_nothing_was_dropped(results):
    dropless = [replace(r, history=replace(r.history, moe=[{**rec, "dropped": [0.0] * len(rec["dropped"])}
                                                             for rec in r.history.moe])) for r in results]
    fig = plot_balance(dropless, window=2)
    (left,) = fig.axes
    assert "imbalance" in left.get_title() and len(left.lines) == 2 + 1  # two models and the balanced line
    plt.close(fig)


def test_bias_plot_and_layer_choice(results):
    aux, bias = results
    fig = plot_expert_bias(bias.history, layers=[1])
    assert len(fig.axes) == 1 and len(fig.axes[0].lines) == 6 + 1  # one line per expert, and the zero line
    plt.close(fig)
    fig = plot_expert_share(aux.history, layers=[0])
    assert len([a for a in fig.axes if a.get_title()]) == 1
    plt.close(fig)
    with pytest.raises(ValueError, match="no balancing-bias records"):
        plot_expert_bias(aux.history)
    with pytest.raises(ValueError, match=r"layers=\[2\]"):
        plot_expert_share(aux.history, layers=[2])


def test_the_notebook_variants_keep_the_active_size():
    part2 = GPTConfig(**BASE, n_expert=8, top_k=2, expert_hidden=24)
    configs = modern_moe_variants(part2)
    assert list(configs) == ["Part 2 MoE", "SwiGLU experts", "fine-grained + shared", "+ loss-free balancing"]
    swiglu, fine, free = configs["SwiGLU experts"], configs["fine-grained + shared"], configs["+ loss-free balancing"]
    assert (swiglu.expert_type, swiglu.hidden_size) == ("swiglu", 16)
    assert (fine.n_expert, fine.hidden_size, fine.top_k, fine.n_shared_expert) == (30, 4, 6, 2)
    assert (fine.top_k + fine.n_shared_expert) * fine.hidden_size == swiglu.top_k * swiglu.hidden_size
    assert free == GPTConfig(**{**fine.to_dict(), "router_type": "sigmoid", "bias_update_rate": 0.01,
                                "aux_loss_weight": 0.0, "z_loss_weight": 0.0})
    with pytest.raises(ValueError, match="expert_type='swiglu'"):
        modern_moe_variants(swiglu)


def test_the_seed_study_runs_end_to_end(capsys):
    val = seed_study(["--seeds", "1", "--steps", "6", "--ablation", "--dropless"])
    out = capsys.readouterr().out
    assert set(val) == {"softmax + aux loss", "sigmoid + aux loss", "sigmoid + bias 0.01", "sigmoid + bias 0.003",
                        "softmax + bias 0.003"}
    assert all(len(v) == 1 and v[0] > 1 for v in val.values())
    assert "6 steps, 1 seeds, cpu" in out and "imbalance" in out
    assert out.count("dropped 0.0%") == 5  # --dropless: no capacity limit, nothing dropped


def test_balance_summary_averages_layers_and_records():
    records = [{"share": [[0.5, 0.25, 0.25, 0.0], [0.25] * 4], "dropped": [0.2, 0.0]},
               {"share": [[0.25] * 4, [0.25] * 4], "dropped": [0.1, 0.1]}]
    imbalance, dropped = balance_summary(records)
    assert imbalance == pytest.approx((2.0 + 1.0 + 1.0 + 1.0) / 4) and dropped == pytest.approx(0.1)
    with pytest.raises(ValueError, match="no routing records"):
        balance_summary([])
