"""Part 2's helpers for the notebooks: in-memory token data, the model comparison, the MoE plots and slider."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from nanogpt_lib import GPTConfig, TrainConfig, part1_config  # noqa: E402
from nanogpt_lib.corpus_train import CorpusConfig  # noqa: E402
from nanogpt_lib.costs import model_cost  # noqa: E402
from nanogpt_lib.experiments import compare_on_corpus  # noqa: E402
from nanogpt_lib.moe import route  # noqa: E402
from nanogpt_lib.plots import plot_expert_share, plot_moe_training, plot_routing, plot_val_perplexity  # noqa: E402
from nanogpt_lib.tokens import TokenFileError, tokens_in_memory  # noqa: E402
from nanogpt_lib.training import History  # noqa: E402
from nanogpt_lib.widgets import moe_explorer, moe_report  # noqa: E402

BASE = dict(block_size=16, vocab_size=64, n_layer=2, n_head=2, n_embd=16, dropout=0.0)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return tokens_in_memory(rng.integers(0, 64, 400), rng.integers(0, 64, 60), "toy", 64)


def test_tokens_in_memory_checks_and_fingerprints(data):
    assert data.train.dtype == np.uint16 and data.meta.tokens == {"train": 400, "val": 60}
    same = tokens_in_memory(np.asarray(data.train), np.asarray(data.val), "toy", 64)
    assert same.meta.fingerprint == data.meta.fingerprint
    with pytest.raises(TokenFileError, match=r"\[0, 64\)"):
        tokens_in_memory(np.array([1, 64]), np.array([1, 2]), "toy", 64)
    with pytest.raises(TokenFileError, match="non-empty 1-D"):
        tokens_in_memory(np.array([], dtype=np.int64), np.array([1, 2]), "toy", 64)


def test_compare_on_corpus_trains_each_model_from_the_same_seed(data):
    configs = {"dense": GPTConfig(**BASE), "moe": GPTConfig(**BASE, n_expert=4, top_k=2, expert_hidden=32)}
    corpus = CorpusConfig(steps=6, batch_size=4, eval_interval=3, eval_batches=1, warmup_steps=1)
    results = compare_on_corpus(configs, data, TrainConfig(lr=3e-3, seed=3), corpus, progress=False)
    again = compare_on_corpus({"moe": configs["moe"]}, data, TrainConfig(lr=3e-3, seed=3), corpus, progress=False)
    assert [r.name for r in results] == ["dense", "moe"]
    assert results[1].history.loss == again[0].history.loss  # independent of what ran before
    assert results[0].history.moe == [] and len(results[1].history.moe) == 6
    assert results[1].params > results[1].active_params and results[0].params == results[0].active_params
    assert results[1].final_val_loss == results[1].history.evals[-1]["val_loss"]
    for fig in (plot_val_perplexity(results), plot_expert_share(results[1].history),
                plot_moe_training(results[1].history)):
        assert fig.axes
        plt.close(fig)
    with pytest.raises(ValueError, match="no MoE routing records"):
        plot_expert_share(History())
    with pytest.raises(ValueError, match="configs is empty"):
        compare_on_corpus({}, data, TrainConfig(), corpus)


def test_routing_plot_marks_dropped_choices():
    r = route(torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]), 2, capacity=2)
    fig = plot_routing(r, ["a", "b", "c"])
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts.count("2✗") == 2 and texts.count("1") == 3
    assert fig.axes[0].get_ylabel() == "token" and fig.axes[-1].get_ylabel() == "router probability p"  # colour bar
    plt.close(fig)


def test_moe_report_counts_what_the_library_builds():
    base = part1_config(vocab_size=4096)
    ids = torch.randint(0, 4096, (2, 100), generator=torch.Generator().manual_seed(0))
    state = torch.random.get_rng_state()
    text = moe_report(8, 2, 1.0, base, ids)
    assert torch.equal(state, torch.random.get_rng_state())  # the notebook's random state is untouched
    cost = model_cost(GPTConfig(**{**base.to_dict(), "n_expert": 8, "top_k": 2}))
    assert f"{cost.params:,}" in text and f"{cost.active_params:,}" in text
    assert "ceil(1 x 200 x 2 / 8) = 50" in text
    assert "Impossible configuration" in moe_report(2, 3, 1.0, base, ids) and "top_k=3" in moe_report(2, 3, 1.0,
                                                                                                    base, ids)


def test_moe_explorer_updates_when_a_slider_moves():
    base = GPTConfig(**BASE)
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    w = moe_explorer(base, ids)
    before = w.result.data
    w.children[0].value = 16  # n_expert
    assert w.result.data != before and "/ 16)" in w.result.data
    w.children[2].value = 0.5  # capacity factor: fewer seats
    assert "ceil(0.5 x 32 x 2 / 16) = 2" in w.result.data
