import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from nanogpt_lib import GPT, GPTConfig, TrainConfig, evaluate, fit, shift_targets  # noqa: E402
from nanogpt_lib.evaluation import PositionReport  # noqa: E402
from nanogpt_lib.experiments import capacity_sweep  # noqa: E402
from nanogpt_lib.plots import (  # noqa: E402
    plot_capacity,
    plot_history,
    plot_params_vs_width,
    plot_positions,
    plot_shift,
)


def _check_labelled(fig, n_axes):
    axes = [ax for ax in fig.axes if ax.axison]
    assert len(axes) == n_axes
    assert fig.axes[0].get_title()
    for i, ax in enumerate(axes):
        assert ax.get_xlabel() and ax.get_title()
        assert ax.get_ylabel() or (i > 0 and ax.get_shared_y_axes().joined(ax, axes[0]))  # shared y: one label
    plt.close(fig)


@pytest.fixture
def batch():
    x = torch.randint(0, 50, (1, 12), generator=torch.Generator().manual_seed(0))
    return x, shift_targets(x)


def test_capacity_sweep_is_seeded_per_config(batch, tiny_config):
    x, y = batch
    small = GPTConfig(block_size=16, vocab_size=50, n_layer=1, n_head=1, n_embd=8)
    cfg = TrainConfig(epochs=3)
    both = capacity_sweep({"small": small, "tiny": tiny_config}, x, y, cfg, progress=False)
    alone = capacity_sweep({"tiny": tiny_config}, x, y, cfg, progress=False)
    assert [r.name for r in both] == ["small", "tiny"]
    assert both[1].train_loss == alone[0].train_loss  # the order of the sweep does not matter
    assert both[1].final_loss == alone[0].final_loss
    torch.manual_seed(cfg.seed)
    model = GPT(tiny_config)
    history = fit(model, (x, y), cfg, progress=False)
    assert alone[0].train_loss == history.loss
    assert alone[0].final_loss == evaluate(model, x, y).loss
    assert alone[0].params == model.num_params() and alone[0].seconds > 0
    _check_labelled(plot_capacity(both), 2)


def test_capacity_sweep_rejects_bad_input(batch):
    x, y = batch
    with pytest.raises(ValueError, match="configs is empty"):
        capacity_sweep({}, x, y, TrainConfig(epochs=1))
    with pytest.raises(ValueError, match=r"configs\['a'\] is a dict, not a GPTConfig"):
        capacity_sweep({"a": {}}, x, y, TrainConfig(epochs=1), progress=False)


def test_history_plot_marks_the_quarters(batch, tiny_model):
    x, y = batch

    def on_quarter(epoch, percent, history):
        r = evaluate(tiny_model, x, y)
        return {"eval_loss": r.loss, "eval_perplexity": r.perplexity}

    history = fit(tiny_model, (x, y), TrainConfig(epochs=8), on_quarter=on_quarter, progress=False)
    fig = plot_history(history, vocab_size=50)
    loss_ax, ppl_ax = fig.axes
    assert ppl_ax.get_yscale() == "log"
    eval_line = [ln for ln in loss_ax.get_lines() if ln.get_label().startswith("eval loss")][0]
    assert list(eval_line.get_xdata()) == [2, 4, 6, 8]
    _check_labelled(fig, 2)


def test_params_and_positions_and_shift_plots():
    fig = plot_params_vs_width(vocab_size=100, block_size=16, widths=[16, 32], depths=[1, 2])
    assert len(fig.axes[0].get_lines()) == 4  # total and non-embedding per depth
    _check_labelled(fig, 1)
    rep = PositionReport(target_prob=[0.1, 0.9], loss=[2.3, 0.1], correct=[False, True])
    fig = plot_positions({"25 %": rep, "100 %": rep})
    assert "50% of positions" in fig.axes[0].get_lines()[0].get_label()
    _check_labelled(fig, 1)
    tokens = [f"t{i}" for i in range(12)]
    fig = plot_shift(tokens, tokens[1:] + ["-1"], first=4, last=2)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "..." in texts and "t0" in texts and "-1" in texts and "t6" not in texts
    plt.close(fig)
    with pytest.raises(ValueError, match="3 inputs but 2 targets"):
        plot_shift(["a", "b", "c"], ["b", "c"])


def test_corpus_history_plot_and_atomic_png(tmp_path):
    from nanogpt_lib import History
    from nanogpt_lib.plots import plot_corpus_history, save_png

    history = History(epoch=[1, 2, 3], loss=[5.0, 4.0, 3.5],
                      evals=[{"step": 0, "train_loss": 6.0, "val_loss": 6.1, "lr": 0.0},
                             {"step": 3, "train_loss": 3.4, "val_loss": 3.9, "lr": 1e-4}])
    fig = plot_corpus_history(history)
    ax = fig.axes[0]
    assert [ln.get_label().split(" ")[0] for ln in ax.get_lines()] == ["train", "train", "validation"]
    _check_labelled(fig, 1)
    path = save_png(fig, tmp_path / "loss.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["loss.png"]  # no temporary file left behind
