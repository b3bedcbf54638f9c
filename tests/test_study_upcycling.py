"""`python -m studies.upcycling` end to end on the Machado corpus, a few steps per arm: the phase-1 checkpoint,
the continued arms' curves, function preservation at the switch, the FLOP-matched scratch run, the summary."""

import json
import shutil

import pytest

from nanogpt_lib.study_results import Study
from studies.upcycling import dense_steps, scratch_steps, summary
from studies.upcycling import main as study


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    out, work = tmp_path_factory.mktemp("out"), tmp_path_factory.mktemp("work")
    common = ["--steps", "8", "--switch-step", "4", "--curve-every", "2", "--threads", "1", "--out", str(out),
              "--work", str(work), "--seeds", "0", "--eval-windows", "16"]
    study(common)
    return out, work, common


def test_every_arm_writes_its_run(ran):
    out, work, _ = ran
    runs = {p.parent.name: json.loads(p.read_text(encoding="utf-8")) for p in (out / "runs").glob("*/seed0.json")}
    assert sorted(runs) == ["dense", "dense-same-flops", "phase1", "scratch", "upcycled", "upcycled-fresh"]
    assert (work / "upcycling" / "dense-step4-of8-seed0.pt").is_file()
    assert not list((work / "upcycling").glob("*.partial"))
    assert [e["step"] for e in runs["phase1"]["evals"]] == [0, 2, 4] and "final" not in runs["phase1"]
    for arm in ("dense", "upcycled", "upcycled-fresh"):  # phase 1's curve, then the arm's own
        assert [e["step"] for e in runs[arm]["evals"]] == [0, 2, 4, 6, 8]
        assert runs[arm]["evals"][:2] == runs["phase1"]["evals"][:2]
        assert len(runs[arm]["train_loss"]) == 8 and runs[arm]["train_loss"][:4] == runs["phase1"]["train_loss"]
    up = runs["upcycled"]
    # right after upcycling: the dense model's loss on the same windows, the experts identical
    assert up["evals"][2]["val_loss"] == pytest.approx(runs["phase1"]["evals"][2]["val_loss"], abs=1e-5)
    assert up["spread"][0] == {"step": 4, "spread": [0.0] * 4}
    assert len(up["entropy"]) == len(up["imbalance"]) == 4  # the MoE's own steps
    assert up["config"]["n_expert"] == 8 and up["config"]["expert_hidden"] == 512 and up["config"]["top_k"] == 2
    scratch = runs["scratch"]
    assert scratch["steps"] == scratch_steps(4096, 8, 4) == len(scratch["train_loss"]) == 7  # 4 + 4 * 0.73
    assert scratch["flops_per_token"] == up["flops_per_token"] > runs["dense"]["flops_per_token"]
    same = runs["dense-same-flops"]  # 4 + 4 * 1.37: the upcycled arm's FLOPs on the dense model
    assert same["steps"] == dense_steps(4096, 8, 4) == len(same["train_loss"]) == 9
    assert runs["phase1"]["steps"] == 4 and [e["step"] for e in same["evals"]][-1] == 9
    assert all(6.0 < r["final"]["val_loss"] < 9.0 for k, r in runs.items() if k != "phase1")


def test_a_finished_arm_is_skipped_and_the_summary_reads_back(ran, capsys):
    out, _, common = ran
    before = (out / "runs" / "upcycled" / "seed0.json").read_text(encoding="utf-8")
    study(common)
    assert "seed 0:" not in capsys.readouterr().out
    assert (out / "runs" / "upcycled" / "seed0.json").read_text(encoding="utf-8") == before
    found = Study(summary(out, 4, 2))
    assert found.data["protocol"]["switch_step"] == 4
    steps, mean, _ = found.curve("upcycled")
    assert steps == [0, 2, 4, 6, 8] and len(mean) == 5
    assert found.of("upcycled")[0]["spread_steps"][0] == 4 and found.of("upcycled")[0]["spread"][0] == 0.0
    assert found.versus("upcycled", "dense").n == 1


def test_the_switch_must_fall_inside_the_run(tmp_path):
    with pytest.raises(SystemExit, match=r"--switch-step 8 is not allowed: .* in 1\.\.7"):
        study(["--steps", "8", "--switch-step", "8", "--out", str(tmp_path), "--work", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"--curve-every 0 is not allowed: it must be a number of steps >= 1"):
        study(["--steps", "8", "--switch-step", "4", "--curve-every", "0", "--out", str(tmp_path)])


def test_cost_counts_each_step_at_the_model_it_ran_on_and_the_figures_draw(ran):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nanogpt_lib.study_plots import plot_expert_divergence, plot_upcycling_curves

    out, _, _ = ran
    data = summary(out, 4, 2)
    data["timing"] = {"seconds_per_step": {"dense": 0.2, "upcycled": 0.3, "phase1": 0.2, "scratch": 0.3,
                                           "upcycled-fresh": 0.3}}
    found = Study(data)
    dense_flops = found.of("phase1")[0]["flops_per_token"] * 1600
    moe_flops = found.of("upcycled")[0]["flops_per_token"] * 1600
    assert found.cost("upcycled", [2, 4, 8]) == [2 * dense_flops, 4 * dense_flops, 4 * dense_flops + 4 * moe_flops]
    assert found.cost("scratch", [7]) == [7 * moe_flops]
    assert found.cost("upcycled", [8], "seconds") == pytest.approx([4 * 0.2 + 4 * 0.3])
    with pytest.raises(ValueError, match="unit='watts' is not known"):
        found.cost("dense", [1], "watts")
    fig = plot_upcycling_curves(found, ["dense", "upcycled", "scratch"])
    assert len(fig.axes) == 2 and "PFLOP" in fig.axes[0].get_xlabel()
    plt.close(fig)
    fig = plot_expert_divergence(found, ["upcycled", "upcycled-fresh", "scratch"])
    assert fig.axes[1].get_ylabel() == "router entropy (nats)"
    plt.close(fig)


def test_a_missing_phase1_checkpoint_is_an_error_not_a_wait(ran, tmp_path):
    out, work, common = ran
    moved = tmp_path / "runs"
    shutil.copytree(out, moved)
    (moved / "runs" / "upcycled" / "seed0.json").unlink()  # to be trained again, from a checkpoint that is gone
    other_work = tmp_path / "work"
    args = [a if a not in (str(out), str(work)) else str(moved if a == str(out) else other_work) for a in common]
    with pytest.raises(SystemExit, match=r"phase 1 of seed 0 is done .* but its checkpoint .* is not in --work"):
        study(args)
