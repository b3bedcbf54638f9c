"""`python -m studies.moe_vs_dense` end to end, two steps per model on the Machado corpus: the run files it
writes, resuming, sharing the work through claim files, the interleaved timing, and the summary read back."""

import json

import pytest

from nanogpt_lib.study_results import Study, summarise_runs
from studies.moe_vs_dense import main as study


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """Dense and two top-2 MoEs of 4 experts (dropless, capacity 1.25), seed 0, 2 steps each."""
    out, work = tmp_path_factory.mktemp("out"), tmp_path_factory.mktemp("work")
    common = ["--steps", "2", "--threads", "1", "--out", str(out), "--work", str(work), "--seeds", "0",
              "--secondary-seeds", "0", "--eval-windows", "32"]
    study(["--experiments", "main", "--only", "dense", *common])
    study(["--experiments", "capacity", "--only", "moe-4x2", "moe-4x2-cf1.25", *common])
    return out, work, common


def test_each_run_writes_its_file_and_the_first_seeds_weights(ran):
    out, work, _ = ran
    runs = {p.parent.name: json.loads(p.read_text(encoding="utf-8")) for p in (out / "runs").glob("*/seed0.json")}
    assert sorted(runs) == ["dense", "moe-4x2", "moe-4x2-cf1.25"]
    capped = runs["moe-4x2-cf1.25"]
    assert capped["config"]["capacity_factor"] == 1.25 and capped["protocol"]["steps"] == 2
    assert set(capped["final"]) == {"val_loss", "val_loss_train_capacity"}  # scored without and with capacity
    assert set(runs["moe-4x2"]["final"]) == {"val_loss"} and set(runs["dense"]["final"]) == {"val_loss"}
    assert [e["step"] for e in capped["evals"]] == [0, 2] and len(capped["train_loss"]) == 2
    assert capped["eval_windows"] == 32  # a quick check, not the whole split
    assert len(capped["routing"]["imbalance"]) == 2 and len(capped["routing"]["imbalance"][0]) == 4  # (steps, layers)
    assert runs["dense"]["routing"] == {}
    assert all(6.0 < r["final"]["val_loss"] < 9.0 for r in runs.values())  # two steps from ln(4096) = 8.3
    assert sorted(p.name for p in (work / "weights").iterdir()) == [
        "dense-seed0.pt", "moe-4x2-cf1.25-seed0.pt", "moe-4x2-seed0.pt"]
    study_ = Study(summarise_runs(out / "runs"))
    (cell,) = study_.capacity_grid([4], [1.25])
    assert cell.versus_dropless.n == 1 and cell.capacity_at_eval.n == 1


def test_a_finished_run_or_a_claimed_one_is_skipped(ran, capsys):
    out, work, common = ran
    path = out / "runs" / "moe-4x2" / "seed0.json"
    before = path.read_text(encoding="utf-8")
    (work / "claims" / "moe-4x2-cf2-seed0").touch()  # another process is training this one
    study(["--experiments", "capacity", "--only", "moe-4x2", "moe-4x2-cf2", *common])
    printed = capsys.readouterr().out
    assert "2 runs in all" in printed and "seed 0: val" not in printed  # nothing trained
    assert path.read_text(encoding="utf-8") == before  # not trained again
    assert not (out / "runs" / "moe-4x2-cf2").exists()


def test_timing_measures_every_model_with_weights_against_dense(ran, capsys):
    out, _, common = ran
    study(["--timing", "--timing-rounds", "1", "--experiments", "capacity", *common])  # dense comes as the unit
    timing = json.loads((out / "timing-cpu.json").read_text(encoding="utf-8"))
    assert sorted(timing["seconds_per_step"]) == ["dense", "moe-4x2", "moe-4x2-cf1.25"]
    assert all(s > 0 for s in timing["seconds_per_step"].values())
    assert timing["machine"]["threads"] == 1 and timing["batch_tokens"] == 1600 and timing["rounds"] == 1
    printed = capsys.readouterr().out
    assert "dense" in printed and "1.00x dense" in printed


def test_timing_without_the_dense_weights_says_what_is_missing(ran, tmp_path):
    _, _, common = ran
    empty = tmp_path / "work"
    empty.mkdir()
    args = [a if a != str(ran[1]) else str(empty) for a in common]
    with pytest.raises(SystemExit, match="--timing needs the dense model's trained weights in .* \\(seed 0\\)"):
        study(["--timing", "--experiments", "capacity", *args])
