"""A study's results read back (nanogpt_lib/study_results.py) and drawn (nanogpt_lib/study_plots.py), on run
files written here in the format of `studies/moe_vs_dense.py`'s `train_one`."""

import json
import math
import statistics
from dataclasses import asdict, replace

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from nanogpt_lib import GPTConfig  # noqa: E402
from nanogpt_lib.specialisation import Specialisation  # noqa: E402
from nanogpt_lib.study_plots import (  # noqa: E402
    plot_balance_runs,
    plot_early_vs_final,
    plot_expert_shares,
    plot_grid,
    plot_paired_differences,
    plot_specialisation,
    plot_study_curves,
)
from nanogpt_lib.study_results import (  # noqa: E402
    EARLY_STEPS,
    Study,
    format_capacity_grid,
    format_table,
    load_study,
    markdown_table,
    study_path,
    summarise_runs,
)

DENSE = GPTConfig(block_size=100, vocab_size=4096, n_layer=2, n_head=4, n_embd=128, dropout=0.0)
MOE = replace(DENSE, n_expert=4, top_k=2, expert_hidden=256, capacity_factor=None)
CONFIG_KEYS = {"n_expert", "top_k", "expert_hidden", "capacity_factor", "aux_loss_weight", "z_loss_weight",
               "expert_type", "n_shared_expert", "router_type", "bias_update_rate"}


def _routing(steps: int, layers: int, experts: int, seed: int) -> dict:
    """A routing log as `routing_log` writes it: per step and layer, imbalance and dropped share."""
    rng = np.random.default_rng(seed)
    share = rng.dirichlet(np.ones(experts), size=layers)
    return {
        "imbalance": [[round(1 + 2 / (t + 1) + 0.1 * layer + 0.01 * rng.random(), 4) for layer in range(layers)]
                      for t in range(steps)],
        "dropped": [[round(0.05 * layer + 0.001 * t, 4) for layer in range(layers)] for t in range(steps)],
        "aux_loss": [round(0.02 + 0.0001 * t, 4) for t in range(steps)],
        "final_share": share.tolist(),
    }


def _record(model: str, seed: int, config: GPTConfig, steps: int, eval_every: int, final: dict,
            losses: list[float] | None = None, layers: int = 2) -> dict:
    """One run file's content, in the format of studies/moe_vs_dense.py's train_one."""
    evals = sorted({*range(0, steps + 1, eval_every), steps})
    losses = losses or [round(8.3 - 0.01 * s - 0.1 * seed + 0.123456789, 7) for s in evals]
    moe = config.n_expert > 1
    return {
        "model": model, "seed": seed, "config": asdict(config),
        "protocol": {"steps": steps, "batch_size": 16, "lr": 3e-3, "eval_interval": eval_every},
        "params": 2_000_000 if moe else 1_330_432, "active_params": 1_335_040 if moe else 1_330_432,
        "evals": [{"step": s, "val_loss": v, "train_batch_loss": v + 0.1} for s, v in zip(evals, losses, strict=True)],
        "final": final, "train_loss": [5.0] * steps,
        "routing": _routing(steps, layers, config.n_expert, seed) if moe else {},
        "train_seconds": 12.5 + seed,
        "machine": {"device": "cpu", "threads": 2, "torch": "2.x", "cpu_capability": "AVX2", "platform": "Linux",
                    "cuda": None},
    }


def _write(runs_dir, record: dict) -> dict:
    path = runs_dir / record["model"] / f"seed{record['seed']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record), encoding="utf-8")
    return record


# ------------------------------------------------------------------ summarise_runs
def test_summarise_runs_condenses_each_run(tmp_path):
    runs = tmp_path / "runs"
    moe = _write(runs, _record("moe-4x2", 0, MOE, steps=25, eval_every=10,
                               final={"val_loss": 4.5, "val_loss_train_capacity": 4.6}))
    dense = _write(runs, _record("dense", 1, DENSE, steps=25, eval_every=10, final={"val_loss": 4.7}))
    (runs / "notes.json").write_text("{}", encoding="utf-8")  # not a run file
    (runs / "dense" / "claim.json").write_text("{}", encoding="utf-8")
    summary = summarise_runs(runs, {"protocol": {"batch_size": 16, "block_size": 100}, "timing": {"x": 1}})
    assert summary["protocol"] == {"batch_size": 16, "block_size": 100} and summary["timing"] == {"x": 1}
    assert [(r["model"], r["seed"]) for r in summary["runs"]] == [("dense", 1), ("moe-4x2", 0)]
    d, m = summary["runs"]
    for run, record in ((d, dense), (m, moe)):
        assert set(run) >= {"model", "seed", "params", "active_params", "final", "train_seconds", "config", "steps",
                            "val_loss", "machine"}
        assert "evals" not in run and "train_loss" not in run and "protocol" not in run
        assert run["final"] == record["final"] and run["train_seconds"] == record["train_seconds"]
        assert run["params"] == record["params"] and run["active_params"] == record["active_params"]
        assert set(run["config"]) == CONFIG_KEYS
        assert all(run["config"][k] == record["config"][k] for k in CONFIG_KEYS)
        assert run["machine"] == {"device": "cpu", "threads": 2, "cpu_capability": "AVX2"}
        assert run["steps"] == [0, 10, 20, 25]  # the last evaluation is the last step
        assert run["val_loss"] == [round(e["val_loss"], 5) for e in record["evals"]]
        assert run["val_loss"][0] == pytest.approx(8.3 - 0.1 * record["seed"] + 0.12346, abs=1e-9)
    assert "routing" not in d  # dense: no routing at all
    r, raw = m["routing"], moe["routing"]
    imb = np.mean(raw["imbalance"], axis=1)  # (steps,) mean over layers; entry i is step i + 1
    dropped = np.mean(raw["dropped"], axis=1)
    windows = [(0, 10), (10, 20), (15, 25)]  # the 10 steps up to each evaluation after step 0
    assert r["imbalance"] == pytest.approx([imb[a:b].mean() for a, b in windows], abs=6e-5)
    assert r["dropped"] == pytest.approx([dropped[a:b].mean() for a, b in windows], abs=6e-6)
    assert r["aux_loss"] == pytest.approx([np.mean(raw["aux_loss"][a:b]) for a, b in windows], abs=6e-5)
    assert len(r["early_imbalance"]) == 25  # every step, when there are fewer than EARLY_STEPS
    assert r["early_imbalance"] == pytest.approx(imb, abs=6e-4)
    assert r["early_dropped"] == pytest.approx(dropped, abs=6e-5)
    np.testing.assert_allclose(r["final_share"], raw["final_share"], atol=6e-5, rtol=0)
    assert np.shape(r["final_share"]) == (2, 4)
    assert r["final_imbalance_per_layer"] == pytest.approx(np.mean(raw["imbalance"][-10:], axis=0), abs=6e-4)
    assert len(json.dumps(summary)) < 5000  # condensed: train losses of the first steps only


def test_summarise_runs_keeps_the_first_steps_and_short_first_windows(tmp_path):
    runs = tmp_path / "runs"
    raw = _write(runs, _record("moe", 3, MOE, steps=100, eval_every=5, final={"val_loss": 4.0}))["routing"]
    (run,) = summarise_runs(runs)["runs"]
    assert EARLY_STEPS == 80
    imb = np.mean(raw["imbalance"], axis=1)
    assert len(run["routing"]["early_imbalance"]) == 80  # capped at EARLY_STEPS
    assert run["routing"]["early_imbalance"] == pytest.approx(imb[:80], abs=6e-4)
    assert len(run["early_train_loss"]) == 80
    assert len(run["routing"]["imbalance"]) == len(run["steps"]) - 1 == 20
    assert run["routing"]["imbalance"][0] == pytest.approx(imb[:5].mean(), abs=6e-5)  # step 5: 5 steps only
    assert run["routing"]["imbalance"][-1] == pytest.approx(imb[90:100].mean(), abs=6e-5)
    assert summarise_runs(tmp_path / "nothing") == {"runs": []}


# ------------------------------------------------------------------ Study
DENSE_FINAL = {0: 3.0, 1: 3.1, 2: 3.2}
MOE_FINAL = {0: 2.9, 1: 3.15, 2: 3.0}


@pytest.fixture
def study_data(tmp_path) -> dict:
    """2 models x 3 seeds (routing for the MoE), as `summarise_runs` writes them, plus what the analysis adds."""
    runs = tmp_path / "runs"
    for seed in range(3):
        _write(runs, _record("dense", seed, DENSE, steps=30, eval_every=10, final={"val_loss": DENSE_FINAL[seed]},
                             losses=[8.0 - seed, 6.0 + 0.5 * seed, 5.0, 4.0 + 0.1 * seed]))
        _write(runs, _record("moe-4x2", seed, MOE, steps=30, eval_every=10,
                             final={"val_loss": MOE_FINAL[seed], "val_loss_train_capacity": MOE_FINAL[seed] + 0.01},
                             losses=[8.0, 5.5 + seed, 4.8, 3.9]))
    return summarise_runs(runs, {"protocol": {"batch_size": 16, "block_size": 100}, "baselines": {"bigram": 5.5}})


def test_study_of_final_and_summary(study_data):
    study = Study(study_data)
    assert study.models() == ["dense", "moe-4x2"] and len(study.runs) == 6
    assert sorted(study.of("dense")) == [0, 1, 2] and study.of("moe-4x2")[1]["seed"] == 1
    with pytest.raises(KeyError, match=r"model 'moe-8x2' has no runs in this study; it has \['dense', 'moe-4x2'\]"):
        study.of("moe-8x2")
    assert study.final("dense") == DENSE_FINAL
    with_capacity = study.final("moe-4x2", "val_loss_train_capacity")
    assert with_capacity == pytest.approx({s: v + 0.01 for s, v in MOE_FINAL.items()})
    assert study.final("dense", "val_loss_train_capacity") == {}  # a dropless model has no such value
    s = study.summary("dense")
    assert s.n == 3 and s.mean == pytest.approx(3.1)
    assert s.se == pytest.approx(statistics.stdev([3.0, 3.1, 3.2]) / math.sqrt(3))


def test_study_versus_pairs_over_the_common_seeds(study_data):
    study = Study(study_data)
    d = study.versus("moe-4x2")
    diffs = [-0.1, 0.05, -0.2]
    assert d.n == 3 and d.wins == 2
    assert d.mean == pytest.approx(statistics.fmean(diffs))
    assert d.se == pytest.approx(statistics.stdev(diffs) / math.sqrt(3))
    # a seed only one model has does not count
    extra = json.loads(json.dumps(study_data))
    extra["runs"].append({**extra["runs"][-1], "seed": 7, "final": {"val_loss": 1.0}})
    assert Study(extra).versus("moe-4x2") == d
    assert study.versus("dense", "moe-4x2").mean == pytest.approx(-d.mean)
    # no common seed at all
    only = {"runs": [r for r in study_data["runs"] if (r["model"], r["seed"]) in {("dense", 0), ("moe-4x2", 1)}]}
    with pytest.raises(ValueError, match="no common seeds"):
        Study(only).versus("moe-4x2")


def test_study_curve_is_the_mean_and_standard_error_per_step(study_data):
    study = Study(study_data)
    steps, mean, se = study.curve("dense")
    assert steps == [0, 10, 20, 30]
    per_step = [[8.0, 7.0, 6.0], [6.0, 6.5, 7.0], [5.0, 5.0, 5.0], [4.0, 4.1, 4.2]]
    assert mean == pytest.approx([statistics.fmean(v) for v in per_step])
    assert se == pytest.approx([statistics.stdev(v) / math.sqrt(3) for v in per_step])
    assert se[2] == 0.0
    single = {"runs": [r for r in study_data["runs"] if r["model"] == "dense" and r["seed"] == 1]}
    steps, mean, se = Study(single).curve("dense")
    assert mean == pytest.approx([7.0, 6.5, 5.0, 4.1]) and se == [0.0] * 4  # one seed: no error bar, not NaN


def test_study_table_timing_and_format(study_data):
    study = Study(study_data)
    assert study.seconds_per_step("dense") is None  # no interleaved timing in this study
    timed = Study({**study_data, "timing": {"seconds_per_step": {"dense": 0.11, "moe-4x2": 0.2}}})
    assert timed.seconds_per_step("moe-4x2") == 0.2 and timed.seconds_per_step("other") is None
    rows = study.table(["dense", "moe-4x2"])
    assert [r["model"] for r in rows] == ["dense", "moe-4x2"]
    assert rows[0]["difference"] is None and rows[1]["difference"] == study.versus("moe-4x2")
    assert (rows[1]["params"], rows[1]["active_params"]) == (2_000_000, 1_335_040)
    assert rows[0]["val_loss"] == study.summary("dense")
    assert study.table(["dense"], baseline="moe-4x2")[0]["difference"] == study.versus("dense", "moe-4x2")
    text = format_table(rows)
    lines = text.splitlines()
    assert len(lines) == 3
    assert lines[0].split() == ["model", "params", "active", "val", "loss", "±", "SE", "minus", "dense", "±", "SE",
                                "wins"]
    assert lines[1].split() == ["dense", "1,330,432", "1,330,432", "3.1000", "±", f"{study.summary('dense').se:.4f}"]
    d = study.versus("moe-4x2")
    assert lines[2].split() == ["moe-4x2", "2,000,000", "1,335,040", f"{statistics.fmean(MOE_FINAL.values()):.4f}",
                                "±", f"{study.summary('moe-4x2').se:.4f}", f"{d.mean:+.4f}", "±", f"{d.se:.4f}", "2/3"]
    assert "minus moe-4x2" in format_table(study.table(["dense"], "moe-4x2"), baseline="moe-4x2")
    long_name = [{**rows[1], "model": "fine-shared-lossfree"}, rows[0]]  # a name longer than the usual column
    data_rows = format_table(long_name).splitlines()[1:]
    columns = [len(line) - len(line.split(maxsplit=1)[1]) for line in data_rows]  # where the parameters start
    assert columns == [len("fine-shared-lossfree") + 1] * 2  # both rows, one column
    table = markdown_table(rows).splitlines()
    assert table[0].startswith("| model |") and table[1] == "|---|---|---|---|---|---|---|"
    assert table[2] == f"| dense | 1,330,432 | 1,330,432 | 3 | 3.1000 ± {study.summary('dense').se:.4f} |  |  |"
    assert table[3].endswith(f"| {d.mean:+.4f} ± {d.se:.4f} | 2/3 |")


def test_load_study_from_a_path_and_errors(study_data, tmp_path):
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(study_data), encoding="utf-8")
    assert load_study(path=path).data == study_data
    assert load_study(path=str(path)).final("dense") == DENSE_FINAL
    with pytest.raises(FileNotFoundError, match=r"study summary '.*missing\.json' does not exist; run the study"):
        load_study(path=tmp_path / "missing.json")
    with pytest.raises(ValueError, match=r"study 'moe_vs_sparse' is not known: choose one of \['balance_scope', 'moe"):
        load_study("moe_vs_sparse")


def test_the_committed_summary_loads():
    path = study_path()
    assert path.is_file() and path.parent.name == "studies" and path.parent.parent.name == "data"
    study = load_study("moe_vs_dense")
    assert study.runs and "dense" in study.models()
    for run in study.runs:
        assert {"model", "seed", "final", "steps", "val_loss", "params", "active_params"} <= set(run)
        assert len(run["steps"]) == len(run["val_loss"]) and run["steps"][0] == 0
        assert math.isfinite(run["final"]["val_loss"])
        if "routing" in run:
            assert len(run["routing"]["imbalance"]) == len(run["steps"]) - 1
    assert study.summary("dense").n == len(study.of("dense"))


# ------------------------------------------------------------------ figures
def _main_axes(fig):
    """The figure's axes without colorbars."""
    bars = {id(im.colorbar.ax) for ax in fig.axes for im in ax.images if im.colorbar is not None}
    return [ax for ax in fig.axes if id(ax) not in bars]


def _check_labelled(fig, n_axes):
    axes = _main_axes(fig)
    assert len(axes) == n_axes
    for i, ax in enumerate(axes):
        assert ax.get_title() and ax.get_xlabel()
        assert ax.get_ylabel() or (i > 0 and ax.get_shared_y_axes().joined(ax, axes[0]))
    return axes


def test_plot_study_curves_with_and_without_timing(study_data):
    study = Study(study_data)
    fig = plot_study_curves(study, ["dense", "moe-4x2"], labels={"dense": "Dense"})
    (ax,) = _check_labelled(fig, 1)
    assert len(fig.axes) == 1
    curves = [ln for ln in ax.get_lines() if "seeds" in ln.get_label()]
    assert [ln.get_label() for ln in curves] == ["Dense (3 seeds)", "moe-4x2 (3 seeds)"]
    # step 0 is left out; x in millions of training tokens (16 x 100 per step)
    assert list(curves[0].get_xdata()) == pytest.approx([0.016, 0.032, 0.048])
    assert list(curves[0].get_ydata()) == pytest.approx(study.curve("dense")[1][1:])
    assert any(list(ln.get_ydata()) == [5.5, 5.5] for ln in ax.get_lines())  # the bigram line
    plt.close(fig)
    timed = Study({**study_data, "timing": {"seconds_per_step": {"dense": 0.1, "moe-4x2": 0.25}}})
    fig = plot_study_curves(timed, ["dense", "moe-4x2"])
    tokens, seconds = _check_labelled(fig, 2)
    assert "second" in seconds.get_title().lower() and "s" in seconds.get_xlabel()
    moe = [ln for ln in seconds.get_lines() if ln.get_label().startswith("moe-4x2")][0]
    assert list(moe.get_xdata()) == pytest.approx([2.5, 5.0, 7.5])
    plt.close(fig)
    # timing of only some models: per token only
    partial = Study({**study_data, "timing": {"seconds_per_step": {"dense": 0.1}}})
    fig = plot_study_curves(partial, ["dense", "moe-4x2"])
    _check_labelled(fig, 1)
    plt.close(fig)


def test_plot_paired_differences(study_data):
    study = Study(study_data)
    fig = plot_paired_differences(study, ["moe-4x2", "dense"], labels={"moe-4x2": "MoE"})
    (ax,) = fig.axes
    assert ax.get_title() and "dense" in ax.get_xlabel()
    assert [t.get_text() for t in ax.get_yticklabels()] == ["MoE", "dense"]  # the y axis names the models
    dots = ax.collections[0].get_offsets()
    assert sorted(np.asarray(dots)[:, 0]) == pytest.approx(sorted([-0.1, 0.05, -0.2]))
    diamond = [ln for ln in ax.get_lines() if ln.get_marker() == "D"][0]
    assert diamond.get_xdata()[0] == pytest.approx(study.versus("moe-4x2").mean)
    plt.close(fig)


def test_plot_balance_runs(study_data):
    study = Study(study_data)
    fig = plot_balance_runs(study, ["moe-4x2"], ceiling=2.0)
    early, late = _check_labelled(fig, 2)
    runs = list(study.of("moe-4x2").values())
    (first,) = [ln for ln in early.get_lines() if ln.get_label() == "moe-4x2"]
    assert list(first.get_xdata()) == list(range(1, 31))
    assert list(first.get_ydata()) == pytest.approx(np.mean([r["routing"]["early_imbalance"] for r in runs], axis=0))
    whole = [ln for ln in late.get_lines() if len(ln.get_xdata()) == 3][0]
    assert list(whole.get_xdata()) == [10, 20, 30]
    assert any(list(ln.get_ydata()) == [2.0, 2.0] for ln in early.get_lines())  # the ceiling E/k
    plt.close(fig)
    with pytest.raises(KeyError):
        plot_balance_runs(study, ["dense"], ceiling=2.0)  # a dense model has no routing to draw


def test_plot_expert_shares(study_data):
    study = Study(study_data)
    fig = plot_expert_shares(study, "moe-4x2", seed=1)
    (ax,) = _check_labelled(fig, 1)
    assert len(fig.axes) == 2  # and its colorbar
    assert "moe-4x2" in ax.get_title() and "seed 1" in ax.get_title()
    share = study.of("moe-4x2")[1]["routing"]["final_share"]
    np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), share)
    assert len(ax.texts) == 2 * 4
    plt.close(fig)


def test_plot_grid_leaves_missing_cells_blank(study_data):
    study = Study(study_data)
    keys = {("4", "dropless"): "moe-4x2", ("4", "1.0"): "moe-4x2-cf1", ("8", "dropless"): "moe-8x2"}
    fig = plot_grid(study, ["4", "8"], ["1.0", "dropless"], keys, "dropped", "experts", "capacity factor",
                    "Dropped share")
    (ax,) = _check_labelled(fig, 1)
    assert len(fig.axes) == 2 and ax.get_title() == "Dropped share"
    grid = np.ma.filled(ax.images[0].get_array().astype(float), np.nan)
    assert grid.shape == (2, 2) and np.isnan(grid[0, 0]) and np.isnan(grid[1]).all()
    expected = statistics.fmean(r["routing"]["dropped"][-1] for r in study.of("moe-4x2").values())
    assert grid[0, 1] == pytest.approx(expected)
    assert [t.get_text() for t in ax.texts] == [f"{expected:.1%}"]
    plt.close(fig)
    fig = plot_grid(study, ["4"], ["dropless"], keys, "val_loss", "experts", "capacity factor", "Loss")
    (ax,) = _check_labelled(fig, 1)
    assert ax.images[0].get_array()[0, 0] == pytest.approx(statistics.fmean(MOE_FINAL.values()))
    plt.close(fig)
    fig = plot_grid(study, ["4"], ["dropless"], keys, "peak_dropped", "experts", "capacity factor", "Peak")
    peak = statistics.fmean(max(r["routing"]["early_dropped"]) for r in study.of("moe-4x2").values())
    assert fig.axes[0].images[0].get_array()[0, 0] == pytest.approx(peak) and peak > expected
    plt.close(fig)
    with pytest.raises(ValueError, match="value must be 'dropped', 'peak_dropped' or 'val_loss', got 'loss'"):
        plot_grid(study, ["4"], ["dropless"], keys, "loss", "experts", "capacity factor", "Loss")


@pytest.mark.parametrize("counts", [
    [[30, 5, 0], [2, 10, 8], [0, 0, 0]],  # an empty label and a zero cell
    np.outer([1, 2], [3, 1, 2]).tolist(),  # no specialisation: every enrichment 1
])
def test_plot_specialisation(counts):
    names = ("punctuation", "number", "capitalised")[: len(counts)]
    spec = Specialisation(names, [np.zeros((1, 1)), np.asarray(counts)])
    fig = plot_specialisation(spec, 1, "Layer 2")
    (ax,) = _main_axes(fig)
    assert ax.get_title() == "Layer 2" and ax.get_xlabel()
    assert len(fig.axes) == 2  # the colorbar
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[0] == f"punctuation ({sum(counts[0]):,})"
    finite = np.isfinite(spec.enrichment(1))
    assert len(ax.texts) == finite.sum()
    plt.close(fig)


def test_plot_early_vs_final_puts_one_dot_per_run():
    runs = [{"model": m, "seed": s, "steps": [0, 100, 200], "val_loss": [8.0, 6.0 + 0.1 * s, 5.0 + 0.1 * s],
             "final": {"val_loss": 5.0 + 0.1 * s}} for m in ("dense", "moe") for s in range(3)]
    fig = plot_early_vs_final(Study({"runs": runs}), ["dense", "moe"], step=100)
    (ax,) = fig.axes
    assert ax.get_title() and "step 100" in ax.get_xlabel() and ax.get_ylabel()
    points = [c.get_offsets() for c in ax.collections]
    assert [len(p) for p in points] == [3, 3]
    assert points[0][:, 0].tolist() == pytest.approx([6.0, 6.1, 6.2]) and points[0][:, 1].tolist() == pytest.approx(
        [5.0, 5.1, 5.2])
    plt.close(fig)


# ------------------------------------------------------------------ the capacity grid
def test_capacity_grid_pairs_each_factor_with_the_dropless_model_of_its_size(tmp_path):
    runs = tmp_path / "runs"
    dropless = {0: 4.0, 1: 4.2}
    capped = {0: 4.1, 1: 4.15}  # minus dropless: +0.1, -0.05
    at_eval = {0: 4.3, 1: 4.15}  # evaluated with the training capacity, minus without: +0.2, 0
    for seed in (0, 1):
        _write(runs, _record("moe-4x2", seed, MOE, steps=30, eval_every=10, final={"val_loss": dropless[seed]}))
        _write(runs, _record("moe-4x2-cf1.25", seed, replace(MOE, capacity_factor=1.25), steps=30, eval_every=10,
                             final={"val_loss": capped[seed], "val_loss_train_capacity": at_eval[seed]}))
    study = Study(summarise_runs(runs))
    cells = study.capacity_grid([4, 8], [1.0, 1.25, None])  # 8 experts and factor 1 have no runs: left out
    assert [(c.n_expert, c.factor, c.model) for c in cells] == [(4, 1.25, "moe-4x2-cf1.25"), (4, None, "moe-4x2")]
    capped_cell, dropless_cell = cells
    assert capped_cell.versus_dropless.mean == pytest.approx(0.025) and capped_cell.versus_dropless.wins == 1
    assert capped_cell.versus_dropless.se == pytest.approx(statistics.stdev([0.1, -0.05]) / math.sqrt(2))
    assert capped_cell.capacity_at_eval.mean == pytest.approx(0.1) and capped_cell.capacity_at_eval.n == 2
    assert capped_cell.val_loss_train_capacity.mean == pytest.approx(4.225)
    assert dropless_cell.versus_dropless is None and dropless_cell.capacity_at_eval is None
    assert dropless_cell.val_loss_train_capacity is None and dropless_cell.val_loss.mean == pytest.approx(4.1)
    # _routing's dropped share is the mean over 2 layers of 0.05 * layer + 0.001 * t: 0.025 + 0.001 * t
    assert capped_cell.dropped == pytest.approx(0.025 + 0.001 * 24.5, abs=1e-4)  # the last 10 of 30 steps
    assert capped_cell.peak_dropped == pytest.approx(0.025 + 0.001 * 29, abs=1e-4)  # the largest of the first 30
    lines = format_capacity_grid(cells).splitlines()
    assert lines[0].split()[:5] == ["E", "factor", "seeds", "dropped", "peak"]
    assert lines[1].split() == ["4", "1.25", "2", "4.95%", "5.4%", "4.1250", "±", "0.0250", "+0.0250", "±", "0.0750",
                                "1/2", "+0.1000", "±", "0.1000"]
    assert lines[2].split() == ["4", "dropless", "2", "4.95%", "5.4%", "4.1000", "±", "0.1000"]
    assert study.common_seeds(["moe-4x2", "moe-4x2-cf1.25"]) == [0, 1]
    only_seed_1 = study.with_seeds([1])
    assert only_seed_1.common_seeds(["moe-4x2", "moe-4x2-cf1.25"]) == [1]
    assert only_seed_1.capacity_grid([4], [1.25])[0].versus_dropless.mean == pytest.approx(-0.05)
    assert len(study.runs) == 4  # the study itself is unchanged
    without_dropless = Study({"runs": [r for r in study.runs if r["model"] != "moe-4x2"]})
    with pytest.raises(KeyError, match="model 'moe-4x2' has no runs"):  # nothing to compare the capped model with
        without_dropless.capacity_grid([4], [1.25])
