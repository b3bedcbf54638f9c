"""Sparse upcycling: function preservation and what breaks it, the carried optimizer state, the
continued corpus run, and --upcycle-from."""

import re

import pytest
import torch

from nanogpt_lib import GPT, GPTConfig, TrainConfig, load_checkpoint, make_optimizer
from nanogpt_lib.checkpoint import CheckpointError
from nanogpt_lib.corpus_train import CorpusConfig, train_corpus
from nanogpt_lib.moe import MoE
from nanogpt_lib.prepare import files_source, prepare
from nanogpt_lib.tokens import open_tokens
from nanogpt_lib.train import main
from nanogpt_lib.upcycling import (
    expert_spread,
    expert_tensors,
    upcycle,
    upcycle_checkpoint,
    upcycle_config,
    upcycled_optimizer,
)

VOCAB = 64


def _dense(dropout=0.1, seed=0, **changes):
    torch.manual_seed(seed)
    config = GPTConfig(block_size=16, vocab_size=VOCAB, n_layer=2, n_head=2, n_embd=16, dropout=dropout, **changes)
    model = GPT(config)
    with torch.no_grad():  # a "trained" model: every bias non-zero, so a wrongly copied bias shows
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.1)
    return model


def _tokens(seed=1, batch=4):
    return torch.randint(0, VOCAB, (batch, 16), generator=torch.Generator().manual_seed(seed))


def _up(dense, n_expert=8, top_k=2, **kwargs):
    return upcycle(dense, n_expert, top_k, generator=torch.Generator().manual_seed(0), **kwargs)


def _logit_gap(a, b, x, train=False):
    a.train(train)
    b.train(train)
    with torch.no_grad():
        return (a(x)[0] - b(x)[0]).abs().max().item()


@pytest.mark.parametrize("changes", [{}, {"top_k": 1, "norm_topk_prob": True}, {"top_k": 4}, {"moe_every": 2},
                                     {"router_type": "sigmoid"}, {"router_noise": 1.0}])
def test_copy_upcycling_preserves_the_function(changes):
    dense = _dense()
    top_k = changes.pop("top_k", 2)
    moe = _up(dense, 8, top_k, **changes)
    for seed in (1, 2, 3):
        x = _tokens(seed)
        dense.eval()
        moe.eval()
        with torch.no_grad():
            torch.testing.assert_close(moe(x)[0], dense(x)[0])
    # in training mode too (dropout 0: the same masks are not drawn by both), router noise included
    dense0 = _dense(dropout=0.0)
    moe0 = _up(dense0, 8, top_k, **changes)
    torch.manual_seed(5)
    assert _logit_gap(moe0, dense0, _tokens(), train=True) < 1e-5


def test_what_breaks_the_function():
    dense = _dense(dropout=0.0)
    x = _tokens()
    # top-1 with its raw probability: y = p_1 MLP(x), p_1 about 1/8
    assert _logit_gap(_up(dense, 8, 1), dense, x) > 1e-2
    assert _logit_gap(_up(dense, 8, 2, routed_scaling_factor=2.5), dense, x) > 1e-2
    # a capacity limit in training drops choices: those tokens get x + 0 instead of x + MLP(x)
    tight = _up(dense, 8, 2, capacity_factor=0.5)
    tight.train()
    _, _, out = tight(x, with_moe=True)
    assert min(layer.dropped for layer in out.layers) > 0
    assert _logit_gap(tight, dense, x, train=True) > 1e-2
    assert _logit_gap(tight, dense, x, train=False) < 1e-5  # eval has no limit (eval_capacity_factor None)
    # noise: the gap grows with it, and is small for small noise
    gaps = [_logit_gap(_up(dense, 8, 2, expert_noise=s), dense, x) for s in (0.001, 0.01, 0.1)]
    assert 0 < gaps[0] < gaps[1] < gaps[2] and gaps[0] < 1e-2


def test_split_upcycling_is_exact_only_with_every_slice_at_equal_weight():
    dense = _dense(dropout=0.0)
    x = _tokens()
    moe = _up(dense, 4, 4, method="split", router_std=0.0)
    assert moe.config.expert_hidden == 16  # 4 * 16 hidden units / 4 experts
    torch.testing.assert_close(moe.eval()(x)[0], dense.eval()(x)[0])
    assert _logit_gap(_up(dense, 4, 4, method="split"), dense, x) > 1e-4  # a random router: weights not 1/E
    assert _logit_gap(_up(dense, 4, 2, method="split", router_std=0.0), dense, x) > 1e-2  # half the units


def test_experts_are_the_mlp_and_everything_else_is_copied():
    dense = _dense()
    moe = _up(dense, 4, 2, moe_every=2)
    moe_state, dense_state = moe.state_dict(), dense.state_dict()
    for name, tensor in dense_state.items():
        if name in moe_state:
            torch.testing.assert_close(moe_state[name], tensor, rtol=0, atol=0)
    assert not isinstance(moe.transformer.h[0].mlp, MoE) and isinstance(moe.transformer.h[1].mlp, MoE)
    mlp, experts = dense.transformer.h[1].mlp, moe.transformer.h[1].mlp.experts
    for e in range(4):
        torch.testing.assert_close(experts.c_fc.weight[e], mlp.c_fc.weight.t(), rtol=0, atol=0)
        torch.testing.assert_close(experts.c_proj.bias[e], mlp.c_proj.bias, rtol=0, atol=0)
    router = moe.transformer.h[1].mlp.router.weight
    assert 0.01 < router.std().item() < 0.04  # N(0, 0.02), as a router trained from scratch starts
    assert expert_spread(moe) == [0.0]
    assert expert_spread(_up(dense, 4, 2, expert_noise=0.1))[0] > 0
    # the dense model is left as it was, and the same seed gives the same MoE
    assert all(torch.equal(a, b) for a, b in zip(dense.state_dict().values(), dense_state.values(), strict=True))
    again = _up(dense, 4, 2, moe_every=2)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), moe_state.values(), strict=True))


def test_split_slices_the_hidden_units_and_scales_the_output():
    w = torch.arange(8 * 2, dtype=torch.float32).reshape(8, 2)  # c_fc weight (4C = 8, C = 2)
    sliced = expert_tensors(w, "c_fc", "weight", 4, "split")  # (4, 2, 2): expert e, units 2e, 2e + 1
    torch.testing.assert_close(sliced[1], w[2:4].t())
    proj = torch.arange(2 * 8, dtype=torch.float32).reshape(2, 8)  # c_proj weight (C, 4C)
    torch.testing.assert_close(expert_tensors(proj, "c_proj", "weight", 4, "split")[3], 4 * proj[:, 6:8].t())
    torch.testing.assert_close(expert_tensors(proj, "c_proj", "weight", 4, "split", scale_output=False)[3],
                               proj[:, 6:8].t())


def test_the_language_model_loss_gives_the_copied_router_no_gradient():
    """Identical experts: the output does not depend on the weights w, so cross-entropy cannot move the router;
    the balancing loss can."""
    dense = _dense(dropout=0.0)
    moe = _up(dense, 8, 2)
    x = _tokens()
    targets = torch.roll(x, -1, dims=1)
    _, loss, out = moe.train()(x, targets=targets, with_moe=True)
    routers = [m.router.weight for m in moe.modules() if isinstance(m, MoE)]
    from_ce = torch.autograd.grad(loss, routers, retain_graph=True)
    assert max(g.abs().max().item() for g in from_ce) < 1e-7
    from_aux = torch.autograd.grad(out.aux_loss, routers)
    assert min(g.abs().max().item() for g in from_aux) > 1e-5
    noisy = _up(dense, 8, 2, expert_noise=0.05)
    _, loss, _ = noisy.train()(x, targets=targets, with_moe=True)
    grads = torch.autograd.grad(loss, [m.router.weight for m in noisy.modules() if isinstance(m, MoE)])
    assert min(g.abs().max().item() for g in grads) > 1e-5


def test_refusals_are_one_clear_line():
    dense = _dense()
    cases = [
        (lambda: upcycle(_up(dense), 8, 2), r"starts from a dense model \(n_expert=0\); got n_expert=8"),
        (lambda: upcycle(dense, 8, 2, method="slice"), r"method='slice' is not known; choose one of \('copy'"),
        (lambda: upcycle(dense, 8, 2, expert_type="swiglu"), r"\['expert_type'\] cannot be chosen when upcycling"),
        (lambda: upcycle(dense, 8, 2, n_shared_expert=1), r"\['n_shared_expert'\] cannot be chosen"),
        (lambda: upcycle(dense, 5, 2, method="split"), r"n_expert=5 equal slices; n_expert must divide 64"),
        (lambda: upcycle(dense, 1, 1), r"n_expert=1 is not allowed: .* at least 2 experts"),
        (lambda: upcycle(dense, 8, 9), r"top_k=9 is not allowed"),
        (lambda: upcycle(dense, 8, 2, expert_noise=-1.0), r"expert_noise=-1.0 is not allowed"),
        (lambda: upcycle("model", 8, 2), r"upcycle expects a GPT model, got str"),
        (lambda: upcycle(dense, 8, 2, block_size=32), r"\['block_size'\] cannot be chosen .* every shape comes"),
        (lambda: upcycle(dense, 8, 2, bias=False, vocab_size=80), r"\['bias', 'vocab_size'\] cannot be chosen"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    assert upcycle_config(dense.config, 8, 2).capacity_factor is None  # dropless unless asked
    assert upcycle_config(dense.config, 8, 2, capacity_factor=1.25).capacity_factor == 1.25


def _one_step(model, optimizer, seed=3):
    x = _tokens(seed)
    _, loss, out = model.train()(x, targets=torch.roll(x, -1, dims=1), with_moe=True)
    (loss + out.penalty).backward()
    optimizer.step()
    optimizer.zero_grad()


@pytest.mark.parametrize("method", ["copy", "split"])
def test_the_dense_optimizer_state_is_carried_to_the_experts(method):
    dense = _dense(dropout=0.0)
    config = TrainConfig(lr=1e-3)
    dense_opt = make_optimizer(dense, config)
    for seed in range(3):
        _one_step(dense, dense_opt, seed)
    moe = _up(dense, 4, 2, method=method)
    carried = upcycled_optimizer(dense, dense_opt.state_dict(), moe, config, "carry", method)
    params = dict(moe.named_parameters())
    old = {name: dense_opt.state[p] for name, p in dense.named_parameters()}
    for name in ("transformer.wte.weight", "transformer.h.0.attn.c_attn.weight", "transformer.h.1.ln_2.bias"):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(carried.state[params[name]][key], old[name][key], rtol=0, atol=0)
    fc = carried.state[params["transformer.h.0.mlp.experts.c_fc.weight"]]["exp_avg_sq"]  # (E, C, H)
    dense_fc = old["transformer.h.0.mlp.c_fc.weight"]["exp_avg_sq"]  # (4C, C)
    expected = dense_fc.t() if method == "copy" else dense_fc[16:32].t()  # expert 1: itself, or its slice
    torch.testing.assert_close(fc[1], expected, rtol=0, atol=0)
    proj = carried.state[params["transformer.h.0.mlp.experts.c_proj.weight"]]["exp_avg"]  # moments never scaled
    dense_proj = old["transformer.h.0.mlp.c_proj.weight"]["exp_avg"]
    torch.testing.assert_close(proj[3], dense_proj.t() if method == "copy" else dense_proj[:, 48:].t(), rtol=0, atol=0)
    assert params["transformer.h.0.mlp.router.weight"] not in carried.state  # the router starts fresh
    assert len(upcycled_optimizer(dense, dense_opt.state_dict(), moe, config, "fresh").state) == 0
    _one_step(moe, carried)  # and the carried state is one AdamW can use
    with pytest.raises(ValueError, match=r"optimizer state 'keep' is not known"):
        upcycled_optimizer(dense, None, moe, config, "keep")
    with pytest.raises(ValueError, match=r"needs the dense optimizer's state dict; got None"):
        upcycled_optimizer(dense, None, moe, config, "carry")


# ------------------------------------------------------------------ the corpus run continued
@pytest.fixture(scope="module")
def data(tmp_path_factory, bundled_tokenizer):
    out = tmp_path_factory.mktemp("corpus") / "bundled"
    prepare(files_source([]), out, bundled_tokenizer, progress=False)
    return open_tokens(out)


def _corpus_dense(seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(block_size=16, vocab_size=4096, n_layer=2, n_head=2, n_embd=16, dropout=0.0))


def test_a_stopped_run_continued_equals_the_uninterrupted_one(data, tmp_path):
    config = CorpusConfig(steps=8, batch_size=4, eval_interval=3, eval_batches=1, warmup_steps=2)
    train = TrainConfig(lr=1e-3, seed=7)
    full = train_corpus(_corpus_dense(), data, train, config, progress=False)
    ck = tmp_path / "dense.pt"
    half = train_corpus(_corpus_dense(), data, train, config, checkpoint=ck, until=4, progress=False)
    assert half.history.epoch == [1, 2, 3, 4] and [e["step"] for e in half.history.evals] == [0, 3, 4]
    assert load_checkpoint(ck).train_state["step"] == 4
    rest = train_corpus(_corpus_dense(seed=9), data, train, config, resume=ck, progress=False)
    assert rest.history.loss == pytest.approx(full.history.loss, rel=1e-5)
    with pytest.raises(ValueError, match=r"stopping after step 9 \(until, --stop-after\) is not allowed: .* \(0, 8\]"):
        train_corpus(_corpus_dense(), data, train, config, until=9, progress=False)


def test_an_upcycled_run_continues_the_dense_schedule(data, tmp_path):
    config = CorpusConfig(steps=8, batch_size=4, eval_interval=4, eval_batches=1, warmup_steps=2)
    train = TrainConfig(lr=1e-3, seed=7)
    ck = tmp_path / "dense.pt"
    dense_run = train_corpus(_corpus_dense(), data, train, config, checkpoint=ck, until=4, progress=False)
    moe, optimizer, dense_ck = upcycle_checkpoint(ck, train, 4, 2)
    # right after upcycling the MoE scores the dense model's evaluation windows exactly as the dense model
    x = torch.randint(0, 4096, (2, 16), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(moe.eval()(x)[0], dense_ck.model.eval()(x)[0])
    run = train_corpus(moe, data, train, config, optimizer=optimizer, resume=dense_ck, progress=False)
    assert run.history.epoch == list(range(1, 9)) and run.history.loss[:4] == dense_run.history.loss
    # step 5's loss is measured before step 5's update: the MoE still computes the dense function there
    continued = train_corpus(_corpus_dense(seed=9), data, train, config, resume=ck, progress=False)
    assert run.history.loss[4] == pytest.approx(continued.history.loss[4], abs=1e-5)
    assert run.history.loss[5] != pytest.approx(continued.history.loss[5], abs=1e-5)  # then they part
    assert [e["step"] for e in run.history.evals] == [0, 4, 8]
    assert len(run.history.moe) == 4  # routing records of the MoE's own steps
    assert run.history.evals[-1]["lr"] == config.schedule(1e-3)(7)  # the dense run's schedule, carried on
    assert len(dense_ck.history.loss) == 4  # the loaded checkpoint's history is not appended to
    with pytest.raises(ValueError, match=r"needs optimizer=, holding the state"):
        train_corpus(moe, data, train, config, resume=dense_ck, progress=False)
    with pytest.raises(ValueError, match=r"does not continue the checkpoint's run: n_layer: 2 -> 1"):
        other = GPT(GPTConfig(block_size=16, vocab_size=4096, n_layer=1, n_head=2, n_embd=16))
        train_corpus(other, data, train, config, optimizer=make_optimizer(other, train), resume=dense_ck,
                     progress=False)
    with pytest.raises(CheckpointError, match=r"holds an MoE model \(n_expert=4\)"):
        from nanogpt_lib import save_checkpoint

        moe_ck = save_checkpoint(tmp_path / "moe.pt", moe, optimizer, run.history)
        upcycle_checkpoint(moe_ck, train, 4, 2)


TINY = ["--block-size", "16", "--n-layer", "2", "--n-head", "2", "--n-embd", "16", "--no-progress"]


def test_the_command_line_upcycles_a_dense_checkpoint(data, tmp_path, capsys):
    dense_ck = tmp_path / "dense.pt"
    common = ["--data", str(data.folder), "--batch-size", "4", "--eval-interval", "2", "--eval-batches", "1",
              "--seed", "3", "--lr", "1e-3"]
    main([*TINY, *common, "--steps", "4", "--stop-after", "2", "--dropout", "0", "--checkpoint", str(dense_ck)])
    assert load_checkpoint(dense_ck).train_state["step"] == 2
    moe_ck = tmp_path / "moe.pt"
    main([*common, "--no-progress", "--steps", "4", "--upcycle-from", str(dense_ck), "--n-expert", "4",
          "--top-k", "2", "--aux-loss-weight", "0.02", "--dropout", "0.1", "--checkpoint", str(moe_ck)])
    out = capsys.readouterr().out
    assert re.search(r"Upcycled .*dense\.pt \(dense, step 2\): 4 experts, top-2, method copy, optimizer state carry",
                     out)
    assert "step      4/4" in out
    saved = load_checkpoint(moe_ck)
    assert saved.config.n_expert == 4 and saved.config.expert_hidden == 64 and saved.config.capacity_factor is None
    assert saved.config.aux_loss_weight == 0.02 and saved.config.dropout == 0.1 and saved.train_state["step"] == 4
    assert [e["step"] for e in saved.history.evals] == [0, 2, 4]


@pytest.mark.parametrize("extra, message", [
    (["--upcycle-method", "split"], r"--upcycle-method: upcycling option\(s\), which need --upcycle-from"),
    (["--upcycle-from", "X", "--n-expert", "0"], r"but --n-expert is 0; give --n-expert N with N >= 2"),
    (["--upcycle-from", "X", "--n-expert", "4", "--n-layer", "3"], r"--n-layer: with --upcycle-from the model's size"),
    (["--upcycle-from", "X", "--n-expert", "4", "--resume", "Y"], r"give one of them"),
    (["--upcycle-from", "X", "--n-expert", "4", "--upcycle-optimizer", "keep"], r"'keep' is not one of carry, fresh"),
    (["--stop-after", "1"], r"--stop-after stops a run to continue it later .* give --checkpoint"),
])
def test_the_command_line_refuses_what_upcycling_cannot_do(data, tmp_path, capsys, extra, message):
    args = [part if part not in ("X", "Y") else str(tmp_path / f"{part}.pt") for part in extra]
    with pytest.raises(SystemExit):
        main(["--data", str(data.folder), "--no-progress", "--steps", "2", *args])
    err = capsys.readouterr().err
    assert re.search(message, err), err


def test_function_gap_measures_logits_and_loss_in_either_mode():
    from nanogpt_lib.upcycling import function_gap

    dense = _dense(dropout=0.0)
    x = _tokens()
    y = torch.roll(x, -1, dims=1)
    exact = function_gap(_up(dense, 8, 2), dense, x, y)
    assert exact.max_logit < 1e-5 and abs(exact.loss) < 1e-6
    raw = _up(dense, 8, 1)
    gap = function_gap(raw, dense, x, y)
    with torch.no_grad():
        expected = (raw.eval()(x)[0] - dense.eval()(x)[0]).abs().max().item()
    assert gap.max_logit == pytest.approx(expected) and gap.loss != 0
    tight = _up(dense, 8, 2, capacity_factor=0.5).eval()
    assert function_gap(tight, dense, x, y, train=True).max_logit > 1e-2  # drops happen in training mode only
    assert function_gap(tight, dense, x, y).max_logit < 1e-5 and not tight.training  # mode restored


def test_the_moe_keeps_the_dense_models_precision():
    dense = _dense(dropout=0.0).double()
    moe = _up(dense, 8, 2)
    assert {p.dtype for p in moe.parameters()} == {torch.float64}
    x = _tokens()
    torch.testing.assert_close(moe.eval()(x)[0], dense.eval()(x)[0], rtol=0, atol=1e-12)  # float64: to its rounding
