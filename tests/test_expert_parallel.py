"""Expert parallelism against one process: two processes under torchrun (gloo, 127.0.0.1), each holding half
of every MoE layer's experts, compute what one process holding them all computes (dropout 0)."""

import time

import ep_worker  # tests/ is on the path
import pytest
import torch
from test_distributed import HERE, MODEL, torchrun

from nanogpt_lib import GPT, GPTConfig, TrainConfig, load_checkpoint, make_optimizer
from nanogpt_lib.expert_parallel import (
    ExpertGroup,
    compare_on_processes,
    exchange_bytes,
    expert_allreduce_bytes,
    expert_group,
    shard_experts,
)
from nanogpt_lib.plots import plot_token_exchange
from nanogpt_lib.train import main
from nanogpt_lib.training import objective, train_step

MOE = ["--n-expert", "4", "--top-k", "2", "--capacity-factor", "none", "--aux-loss-weight", "0.1"]


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    out = tmp_path_factory.mktemp("ep") / "ep.pt"
    result = torchrun([str(HERE / "ep_worker.py")], [], OUT=str(out))
    assert result.returncode == 0, result.stdout[-1500:] + result.stderr[-3000:]
    return torch.load(out, weights_only=False)


def one_process(overrides: dict, dtype: torch.dtype, rank: int):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**ep_worker.BASE, **overrides})).to(dtype)
    x, y = ep_worker.batch()
    mine = slice(8 * rank, 8 * (rank + 1))
    logits, loss, moe = model(x[mine], targets=y[mine], with_moe=True)
    total = objective(loss, moe)
    total.backward()
    return logits.detach(), total.detach(), {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", list(ep_worker.SETTINGS))
def test_each_process_computes_what_one_process_with_every_expert_does(worker, name):
    overrides, dtype = ep_worker.SETTINGS[name]
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    refs = [one_process(overrides, dtype, rank) for rank in range(2)]
    worst = 0.0
    for rank in range(2):
        got, (logits, total, grads) = worker[rank]["layers"][name], refs[rank]
        torch.testing.assert_close(got["logits"], logits, **tol)
        torch.testing.assert_close(got["objective"], total, **tol)
        worst = max(worst, float((got["logits"] - logits).abs().max()))
        for n, g in got["grads"].items():
            if ".experts." in n and "shared" not in n:  # held in halves: the owner's gradient sums both ranks
                expected = (refs[0][2][n] + refs[1][2][n])[2 * rank:2 * rank + 2]
            else:  # replicated: each rank's own gradient (DDP, not used here, would average them)
                expected = grads[n]
            assert g.shape == expected.shape, n
            torch.testing.assert_close(g, expected, **tol, msg=lambda m, n=n: f"{n}: {m}")
            worst = max(worst, float((g - expected).abs().max()))
    print(f"{name}: max abs difference of logits and gradients {worst:.2e}")


@pytest.mark.parametrize("name", list(ep_worker.SETTINGS))
def test_the_bytes_counted_are_the_rows_that_left_each_process(worker, name):
    """Forward: my rows for the other's experts go there, its rows for mine come back from me; the backward
    pass sends as many again. Each row is C numbers."""
    dtype = ep_worker.SETTINGS[name][1]
    C = ep_worker.BASE["n_embd"] * torch.empty((), dtype=dtype).element_size()
    for rank in range(2):
        other = 1 - rank
        mine, theirs = worker[rank]["layers"][name]["counts"], worker[other]["layers"][name]["counts"]
        leaving = sum(int(c[2 * other:2 * other + 2].sum()) for c in mine)
        arriving = sum(int(c[2 * rank:2 * rank + 2].sum()) for c in theirs)
        assert worker[rank]["layers"][name]["sent_bytes"] == 2 * (leaving + arriving) * C > 0


def test_global_balance_over_two_processes_of_two_micro_batches_equals_one_batch_of_16(worker):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**ep_worker.BASE, capacity_factor=None))
    x, y = ep_worker.batch()
    loss = train_step(model, torch.optim.SGD(model.parameters(), lr=0.0), [(x, y)], balance_scope="global")
    assert (worker[0]["global"]["loss"] + worker[1]["global"]["loss"]) / 2 == pytest.approx(loss, abs=1e-6)
    for n, p in model.named_parameters():
        for rank in range(2):
            torch.testing.assert_close(worker[rank]["global"]["grads"][n], p.grad, rtol=1e-5, atol=1e-7)


def test_training_under_expert_parallelism_matches_ddp_and_its_checkpoint_loads_in_one_process(tokens, tmp_path):
    ddp, ep, half = tmp_path / "ddp.pt", tmp_path / "ep.pt", tmp_path / "half.pt"
    common = ["--data", str(tokens), "--steps", "8", *MODEL, *MOE]
    result = torchrun(["-m", "nanogpt_lib.train"], [*common, "--checkpoint", str(ddp)])
    assert result.returncode == 0, result.stderr[-3000:]
    result = torchrun(["-m", "nanogpt_lib.train"], [*common, "--expert-parallel", "2", "--checkpoint", str(ep)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "experts spread over 2 processes, 2 of 4 per MoE layer" in result.stdout
    a, b = load_checkpoint(ddp), load_checkpoint(ep)  # the expert-parallel checkpoint holds every expert
    torch.testing.assert_close(torch.tensor(b.history.loss), torch.tensor(a.history.loss), rtol=1e-5, atol=1e-5)
    for (n, p), q in zip(b.model.named_parameters(), a.model.parameters(), strict=True):
        assert p.shape == q.shape, n
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    moments = []
    for path in (ep, ddp):  # the AdamW moments too: gathered, in the one-process order
        model = GPT(a.config)
        optimizer = make_optimizer(model, TrainConfig())
        load_checkpoint(path, model=model, optimizer=optimizer)
        moments.append([optimizer.state[p]["exp_avg"] for g in optimizer.param_groups for p in g["params"]])
    for s, t in zip(*moments, strict=True):
        torch.testing.assert_close(s, t, rtol=1e-3, atol=1e-6)
    # stopped at step 4 under expert parallelism, resumed in one process: the same run
    result = torchrun(["-m", "nanogpt_lib.train"], [*common, "--expert-parallel", "2", "--stop-after", "4",
                                                     "--checkpoint", str(half)])
    assert result.returncode == 0, result.stderr[-3000:]
    main([*common, "--resume", str(half), "--checkpoint", str(half), "--overwrite"])
    c = load_checkpoint(half)  # one process sums in another order than two: rounding, grown over 8 steps
    torch.testing.assert_close(torch.tensor(c.history.loss), torch.tensor(a.history.loss), rtol=1e-4, atol=1e-4)


def test_a_one_process_run_resumes_under_expert_parallelism(tokens, tmp_path):
    """Stopped at step 4 in one process, continued on two: with the experts spread, exactly as DDP continues it.
    (Against the uninterrupted one-process run only the losses are compared: two processes sum gradients in
    another order, and AdamW's first steps turn the rounding of near-zero router gradients into ~1e-3.)"""
    whole, half, ddp, ep = (tmp_path / f"{name}.pt" for name in ("whole", "half", "ddp", "ep"))
    common = ["--data", str(tokens), "--steps", "8", *MODEL, *MOE]
    main([*common, "--checkpoint", str(whole)])
    main([*common, "--stop-after", "4", "--checkpoint", str(half)])
    for out, extra in ((ddp, []), (ep, ["--expert-parallel", "2"])):
        result = torchrun(["-m", "nanogpt_lib.train"],
                          [*common, *extra, "--resume", str(half), "--checkpoint", str(out)])
        assert result.returncode == 0, result.stderr[-3000:]
    a, b, c = load_checkpoint(ddp), load_checkpoint(ep), load_checkpoint(whole)
    torch.testing.assert_close(torch.tensor(b.history.loss), torch.tensor(a.history.loss), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.tensor(b.history.loss), torch.tensor(c.history.loss), rtol=1e-4, atol=1e-4)
    for p, q in zip(b.model.parameters(), a.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_four_processes_two_copies_of_the_experts_with_global_balancing_match_ddp(tokens, tmp_path):
    """P = 4, n = 2: two groups, each holding every expert in halves; each expert's two copies (replicas)
    average their gradients. Global-batch balancing counts over all four processes and both micro-steps."""
    ddp, ep = tmp_path / "ddp.pt", tmp_path / "ep.pt"
    common = ["--data", str(tokens), "--steps", "6", *MODEL, *MOE, "--balance-scope", "global"]
    for out, extra in ((ddp, []), (ep, ["--expert-parallel", "2"])):
        result = torchrun(["-m", "nanogpt_lib.train"], [*common, *extra, "--checkpoint", str(out)], processes=4,
                          timeout=180)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "x 4 process(es)" in result.stdout and "global batch 8 = 4 x 2 x 1 windows" in result.stdout
    a, b = load_checkpoint(ddp), load_checkpoint(ep)
    torch.testing.assert_close(torch.tensor(b.history.loss), torch.tensor(a.history.loss), rtol=1e-5, atol=1e-5)
    for p, q in zip(b.model.parameters(), a.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_a_failing_process_stops_an_expert_parallel_run_quickly(tokens):
    began = time.monotonic()
    result = torchrun([str(HERE / "ddp_worker.py")], ["--data", str(tokens), "--steps", "50", "--dist-timeout", "30",
                                                      *MODEL, *MOE, "--expert-parallel", "2"],
                      timeout=90, FAIL_RANK="1", FAIL_STEP="3")
    assert result.returncode != 0 and time.monotonic() - began < 60
    assert "rank 1 of 2 failed: RuntimeError: injected failure on rank 1" in result.stderr
    assert "step     50/50" not in result.stdout


def test_what_cannot_be_spread_is_refused_in_one_line(tokens, capsys):
    half = ExpertGroup(size=2, rank=0, world_size=2, group=None, replicas=None)
    with pytest.raises(ValueError, match="--expert-parallel 2 does not divide --n-expert 3"):
        shard_experts(GPT(GPTConfig(**{**ep_worker.BASE, "n_expert": 3})), half)
    with pytest.raises(ValueError, match="the model is dense"):
        shard_experts(GPT(GPTConfig(vocab_size=64, block_size=8, n_layer=1, n_head=2, n_embd=32)), half)
    model = GPT(GPTConfig(**ep_worker.BASE))
    model.transformer.h[0].mlp.expert_group = half
    with pytest.raises(ValueError, match="spread over processes already"):
        shard_experts(model, half)
    with pytest.raises(ValueError, match=r"--expert-parallel 3 is not allowed: it must divide the 2 process\(es\)"):
        expert_group(3, 2, 0)
    with pytest.raises(SystemExit):
        main(["--data", str(tokens), "--steps", "2", *MODEL, *MOE, "--expert-parallel", "2"])
    err = capsys.readouterr().err
    assert "--expert-parallel 2 is not allowed: it must divide the 1 process(es)" in err and len(err.splitlines()) == 1


def test_compare_on_processes_reports_equality_counts_and_the_bytes_of_the_formula():
    config = GPTConfig(**ep_worker.BASE, capacity_factor=None)
    tokens = ep_worker.batch()[0]
    ranks = compare_on_processes(config, tokens, processes=2)
    assert [r["tokens"] for r in ranks] == [64, 64]
    for r in ranks:
        assert r["logits_diff"] < 1e-6 and r["grad_diff"] < 1e-6
        assert r["counts"].shape == (2, 4) and r["counts"].sum().item() == 2 * 64 * 2  # layers x experts, N k each
    # the formula is the balanced router's; the measured bytes follow the real counts
    formula = exchange_bytes(64, 2, 2, 32, 2)
    assert all(0.5 * formula < r["sent_bytes"] < 1.5 * formula for r in ranks)
    assert expert_allreduce_bytes(1000, 2) == 4000 and expert_allreduce_bytes(1000, 4, 2) == 3000
    fig = plot_token_exchange([r["counts"][0] for r in ranks])
    title = fig.axes[0].get_title()
    crossing = int(ranks[0]["counts"][0][2:].sum() + ranks[1]["counts"][0][:2].sum())
    assert f"{crossing:,} of 256 rows cross" in title
    with pytest.raises(ValueError, match="do not split over 3 processes"):
        compare_on_processes(config, tokens, processes=3)
    with pytest.raises(ValueError, match="whose number divides E=4"):
        plot_token_exchange([torch.ones(4)] * 3)


def test_the_benchmark_times_both_and_counts_the_bytes(tokens):
    result = torchrun(["-m", "benchmarks.expert_parallel"], ["--data", str(tokens), "--repeats", "1",
                                                              "--n-expert", "4", "--width", "64"], timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| DDP (every expert on every process) |" in result.stdout
    assert "| expert parallel (2 experts each) |" in result.stdout
    assert "all-to-all payload per process per step: measured" in result.stdout
