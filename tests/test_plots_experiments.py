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


# ------------------------------------------------------------------ the Part 2 study's models
@pytest.fixture(scope="module")
def study_models():
    from nanogpt_lib.experiments import part2_study_models

    return part2_study_models(4096)


def test_part1_size_and_study_moe():
    from dataclasses import replace

    from nanogpt_lib.experiments import part1_size, study_moe

    base = part1_size(4096)
    assert (base.block_size, base.vocab_size, base.n_layer, base.n_head, base.n_embd) == (100, 4096, 4, 4, 128)
    assert base.dropout == 0.0 and base.n_expert == 0
    moe = study_moe(base, 8, 2, 256)
    assert moe == replace(base, n_expert=8, top_k=2, expert_hidden=256, capacity_factor=None,
                          eval_capacity_factor=None, aux_loss_weight=0.01, z_loss_weight=0.001)
    changed = study_moe(base, 4, 1, 64, capacity_factor=1.5, aux_loss_weight=0.0, n_layer=2)
    assert (changed.n_expert, changed.top_k, changed.expert_hidden) == (4, 1, 64)
    assert changed.capacity_factor == 1.5 and changed.aux_loss_weight == 0.0 and changed.n_layer == 2
    assert changed.z_loss_weight == 0.001
    assert base.n_expert == 0  # the base is not changed


def test_part2_study_models_match_in_active_and_total_parameters(study_models):
    from nanogpt_lib.costs import model_cost
    from nanogpt_lib.experiments import part1_size

    dense = model_cost(study_models["dense"])
    assert dense.params == dense.active_params
    assert study_models["dense"] == part1_size(4096)
    same_active = ("moe-8x2", "switch-8x1", "fine-16x4", "moe-8x4", "swiglu-8x2", "fine-shared-30x6",
                   "fine-shared-lossfree")
    for key in same_active:  # every MoE uses, per token, what the dense model uses (512 hidden units)
        cost = model_cost(study_models[key])
        assert abs(cost.active_params - dense.active_params) <= 0.01 * dense.active_params, key
        assert cost.params > 1.3 * dense.params, key
    for key in ("moe-8x2", "switch-8x1", "fine-16x4", "moe-8x4"):
        c = study_models[key]
        assert c.expert_hidden * c.top_k == 4 * c.n_embd, key
    wide, moe = model_cost(study_models["dense-4x-wide"]), model_cost(study_models["moe-8x2"])
    assert abs(wide.params - moe.params) <= 0.01 * moe.params  # the upper reference: as many weights as moe-8x2
    assert wide.active_params == wide.params  # one expert that every token uses
    c = study_models["dense-4x-wide"]
    assert (c.n_expert, c.top_k, c.expert_hidden, c.aux_loss_weight, c.z_loss_weight) == (1, 1, 2048, 0.0, 0.0)


def test_part2_study_models_keys_and_capacity(study_models):
    for e in (4, 8, 16):
        for suffix in ("-cf1", "-cf1.25", "-cf2", ""):
            assert f"moe-{e}x2{suffix}" in study_models
    for aux in ("0", "0.001", "0.1"):
        assert study_models[f"moe-8x2-aux{aux}"].aux_loss_weight == float(aux)
    assert {"dense", "dense-4x-wide", "switch-8x1", "fine-16x4", "moe-8x4"} <= set(study_models)
    for key, c in study_models.items():
        assert c.vocab_size == 4096 and c.block_size == 100 and c.dropout == 0.0, key
        assert c.eval_capacity_factor is None, key  # evaluation never drops a token
        if c.n_expert == 0:
            continue
        if "-cf" in key:
            assert c.capacity_factor == float(key.rsplit("-cf", 1)[1]), key
            assert (c.n_expert, c.top_k, c.expert_hidden) == (int(key[4:].split("x")[0]), 2, 256), key
        else:
            assert c.capacity_factor is None, key  # dropless
    assert study_models["moe-8x2-cf1"].capacity_factor == 1.0
    lossfree = study_models["fine-shared-lossfree"]
    assert lossfree.router_type == "sigmoid" and lossfree.bias_update_rate > 0 and lossfree.aux_loss_weight == 0
    assert study_models["swiglu-8x2"].expert_type == "swiglu"
    assert study_models["fine-shared-30x6"].n_shared_expert == 2


def test_the_study_command_names_only_known_models(study_models):
    from studies.moe_vs_dense import EXPERIMENTS

    named = {key for keys in EXPERIMENTS.values() for key in keys}
    assert named <= set(study_models), sorted(named - set(study_models))
    assert set(study_models) <= named, sorted(set(study_models) - named)  # and no model is left unused
