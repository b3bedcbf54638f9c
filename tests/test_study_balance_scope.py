"""`python -m studies.balance_scope` end to end, two steps per run on the Machado corpus: both balancing scopes
of two seeds, what each run file measures, the paired differences of the summary, and resuming."""

import json
import statistics

import pytest
import torch

from nanogpt_lib import GPT, GPTConfig
from studies.balance_scope import MEASURES, run_measures, summary, validation_routing
from studies.balance_scope import main as study


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """moe-8x2 under both scopes, seeds 0 and 1, 2 steps of 4 micro-batches, scored on 16 validation windows."""
    out, work = tmp_path_factory.mktemp("out"), tmp_path_factory.mktemp("work")
    common = ["--steps", "2", "--threads", "1", "--out", str(out), "--work", str(work), "--seeds", "0", "1",
              "--eval-windows", "16"]
    study(common)
    return out, work, common


def runs_of(out):
    return {(p.parent.name, int(p.stem[4:])): json.loads(p.read_text(encoding="utf-8"))
            for p in (out / "runs").glob("*/seed*.json")}


def test_each_scope_and_seed_writes_its_run(ran):
    out, _, _ = ran
    runs = runs_of(out)
    assert sorted(runs) == [("global", 0), ("global", 1), ("micro_batch", 0), ("micro_batch", 1)]
    for (arm, seed), r in runs.items():
        assert r["balance_scope"] == arm and r["seed"] == seed and r["model"] == "moe-8x2"
        assert r["config"]["n_expert"] == 8 and r["config"]["top_k"] == 2 and r["config"]["aux_loss_weight"] == 0.01
        assert r["protocol"]["grad_accum"] == 4 and r["protocol"]["micro_batch_windows"] == 4
        assert r["protocol"]["steps"] == 2 and len(r["train_loss"]) == 2 and r["eval_windows"] == 16
        assert [e["step"] for e in r["evals"]] == [0, 2]
        assert 6.0 < r["final"]["val_loss"] < 9.0  # two steps from ln(4096) = 8.3
        val = r["val_routing"]
        assert val["micro_batches"] == 4  # 16 windows in micro-batches of 4
        assert len(val["global"]) == len(val["micro_batch"]) == len(val["share"]) == 4  # one per layer
        assert all(1.0 <= v <= 4.0 for v in val["global"] + val["micro_batch"])  # between balance and E / k
        assert all(sum(s) == pytest.approx(1.0, abs=1e-4) for s in val["share"])
        # the busiest expert of all the tokens is at most as busy as the busiest one of each micro-batch, on average
        assert all(g <= m + 1e-9 for g, m in zip(val["global"], val["micro_batch"], strict=True))
        spec = r["specialisation"]
        assert all(len(spec[k]) == 4 for k in ("token_purity", "token_purity_shuffled", "nmi_class", "nmi_genre"))
        assert all(0.0 <= v <= 1.0 for k in ("token_purity", "nmi_class", "nmi_genre") for v in spec[k])
        assert sum(map(sum, spec["by_genre"]["counts"][0])) == 16 * 100  # every validation token counted
        assert len(r["routing"]["imbalance"]) == 2 and len(r["train_imbalance"]["all_steps"]) == 4
    for seed in (0, 1):  # paired: the same initial weights and windows, so the same loss before the first update
        micro, glob = runs[("micro_batch", seed)], runs[("global", seed)]
        assert glob["train_loss"][0] == micro["train_loss"][0]
        assert glob["evals"][0] == micro["evals"][0]
    assert runs[("micro_batch", 0)]["train_loss"][0] != runs[("micro_batch", 1)]["train_loss"][0]


def test_the_summary_pairs_the_seeds_from_the_run_files(ran):
    out, _, _ = ran
    runs = runs_of(out)
    found = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert list(found["arms"]) == ["micro_batch", "global"] and found["protocol"]["grad_accum"] == 4
    pair = found["paired"]["aux0.01"]
    assert pair["seeds"] == [0, 1] and (pair["global"], pair["micro_batch"]) == ("global", "micro_batch")
    for name in MEASURES:
        d = [run_measures(runs[("global", s)])[name] - run_measures(runs[("micro_batch", s)])[name] for s in (0, 1)]
        got = pair["difference"][name]
        assert list(got["per_seed"].values()) == pytest.approx(d, abs=6e-6)  # stored rounded to 5 decimals
        assert got["mean"] == pytest.approx(statistics.fmean(d), abs=1e-9)
        assert got["std"] == pytest.approx(statistics.stdev(d), abs=1e-9)
        assert got["global_lower"] == sum(v < 0 for v in got["per_seed"].values())
        for arm in ("micro_batch", "global"):
            values = [run_measures(runs[(arm, s)])[name] for s in (0, 1)]
            assert found["arms"][arm][name]["mean"] == pytest.approx(statistics.fmean(values), abs=1e-9)
            assert found["arms"][arm][name]["n"] == 2
    val = pair["difference"]["val_loss"]
    assert val["favour_global"] == val["global_lower"]
    per_layer = found["arms"]["global"]["per_layer"]["imbalance_val_global"]
    by_hand = [statistics.fmean(runs[("global", s)]["val_routing"]["global"][i] for s in (0, 1)) for i in range(4)]
    assert per_layer == pytest.approx(by_hand, abs=1e-4)
    assert found["part2_reference"] is None  # Part 2's committed runs have 600 steps, these 2


def test_the_part2_reference_compares_runs_of_the_same_protocol(ran, tmp_path):
    out, _, _ = ran
    runs = runs_of(out)
    reference = tmp_path / "moe-8x2"
    reference.mkdir()
    for seed in (0, 1):  # stand-ins for Part 2's runs: this study's micro-batch runs, seed 1's loss moved
        r = runs[("micro_batch", seed)]
        r["final"]["val_loss"] += 0.5 * seed
        (reference / f"seed{seed}.json").write_text(json.dumps(r), encoding="utf-8")
    found = summary(out, reference)["part2_reference"]
    assert found["micro_batch"]["per_seed"]["0"] == {"part2_val_loss": runs[("micro_batch", 0)]["final"]["val_loss"],
                                                    "difference": 0.0, "identical_steps": 2}
    assert found["micro_batch"]["per_seed"]["1"]["difference"] == pytest.approx(-0.5)
    assert found["micro_batch"]["mean"] == pytest.approx(-0.25) and found["micro_batch"]["n"] == 2
    glob = found["global"]["per_seed"]["0"]  # the first step's loss is the same, paired
    assert glob["identical_steps"] >= 1 and glob["difference"] == pytest.approx(
        runs[("global", 0)]["final"]["val_loss"] - runs[("micro_batch", 0)]["final"]["val_loss"])
    r = runs[("micro_batch", 0)]
    r["protocol"]["steps"] = 600  # another protocol: not a reference
    (reference / "seed0.json").write_text(json.dumps(r), encoding="utf-8")
    assert sorted(summary(out, reference)["part2_reference"]["micro_batch"]["per_seed"]) == ["1"]


def test_a_finished_run_is_skipped_and_a_missing_one_is_trained_again(ran, tmp_path, capsys):
    out, work, common = ran
    before = {p: p.read_text(encoding="utf-8") for p in (out / "runs").glob("*/seed*.json")}
    study(common)
    printed = capsys.readouterr().out
    assert "4 runs in all" in printed and "seed 0: val" not in printed and "| val loss |" in printed
    assert {p: p.read_text(encoding="utf-8") for p in before} == before
    gone = out / "runs" / "global" / "seed1.json"
    old = json.loads(before[gone])
    gone.unlink()
    fresh_work = tmp_path / "work"  # the claim of the deleted run stays in the old --work
    study([a if a != str(work) else str(fresh_work) for a in common])
    printed = capsys.readouterr().out
    trained = [line.split()[:3] for line in printed.splitlines() if ": val " in line]
    assert trained == [["global", "seed", "1:"]]
    new = json.loads(gone.read_text(encoding="utf-8"))
    assert new["train_loss"] == old["train_loss"] and new["final"] == old["final"]  # the same run again
    assert {p: p.read_text(encoding="utf-8") for p in before if p != gone} == {
        p: t for p, t in before.items() if p != gone}


def test_validation_routing_counts_the_global_batch_and_its_micro_batches():
    config = GPTConfig(vocab_size=64, block_size=8, n_layer=2, n_head=2, n_embd=32, dropout=0.0, n_expert=4,
                       top_k=2, capacity_factor=None, eval_capacity_factor=None)
    torch.manual_seed(0)
    model = GPT(config)
    x = torch.randint(0, 64, (10, 8))
    whole = validation_routing(model, x, 10)  # one micro-batch: both views agree
    assert whole["micro_batches"] == 1 and whole["global"] == pytest.approx(whole["micro_batch"])
    parts = validation_routing(model, x, 4)  # 4 + 4 + 2 windows: the last one is not a full micro-batch
    assert parts["micro_batches"] == 2 and parts["global"] == pytest.approx(whole["global"])
    assert parts["share"] == whole["share"]


def test_grad_accum_must_split_the_step(tmp_path):
    with pytest.raises(SystemExit, match="--grad-accum 3 is not allowed: it must divide the 16 windows"):
        study(["--grad-accum", "3", "--out", str(tmp_path), "--work", str(tmp_path)])
