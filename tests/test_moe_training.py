"""MoE models in the Part-1 loop, the corpus loop (accumulation, resume), checkpoints and the command line."""

import pytest
import torch

from nanogpt_lib import GPT, GPTConfig, TrainConfig, fit, load_checkpoint, make_optimizer, save_checkpoint, train_step
from nanogpt_lib.corpus_train import CorpusConfig, train_corpus
from nanogpt_lib.prepare import files_source, prepare
from nanogpt_lib.tokens import open_tokens
from nanogpt_lib.train import main

MOE = dict(block_size=16, vocab_size=4096, n_layer=2, n_head=2, n_embd=16, dropout=0.0, n_expert=4, top_k=2)


def _model(seed=0, **overrides):
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**MOE, **overrides}))


@pytest.fixture(scope="module")
def data(tmp_path_factory, bundled_tokenizer):
    out = tmp_path_factory.mktemp("moe_corpus") / "bundled"
    prepare(files_source([]), out, bundled_tokenizer, progress=False)
    return open_tokens(out)


def test_fit_logs_routing_every_step_and_the_loss_stays_cross_entropy():
    x = torch.randint(0, 4096, (2, 16))
    model = _model(capacity_factor=1.0)
    history = fit(model, (x, x), TrainConfig(epochs=20, lr=3e-3), progress=False)
    assert len(history.moe) == 20 and history.loss[-1] < history.loss[0]
    record = history.moe[-1]
    assert set(record) == {"aux_loss", "z_loss", "share", "dropped", "entropy", "max_prob"}
    assert len(record["share"]) == 2 and all(abs(sum(s) - 1) < 1e-6 for s in record["share"])
    # the returned loss is the cross-entropy alone, though the gradient is that of cross-entropy + penalty
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.train()
        _, ce, moe = model(x, targets=x, with_moe=True)  # dropout 0, no noise: the same forward as the step
    logged = train_step(model, make_optimizer(model, TrainConfig(lr=3e-3)), (x, x))
    assert logged == pytest.approx(ce.item(), abs=1e-6) and moe.penalty.item() > 1e-3
    assert logged != pytest.approx((ce + moe.penalty).item(), abs=1e-6)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_penalty_changes_training():
    x = torch.randint(0, 4096, (2, 16))
    runs = []
    for aux in (0.0, 1.0):
        model = _model(aux_loss_weight=aux, z_loss_weight=aux)
        fit(model, (x, x), TrainConfig(epochs=5, lr=3e-3), progress=False)
        runs.append(model.transformer.h[0].mlp.router.weight.detach().clone())
    assert not torch.allclose(runs[0], runs[1])


def test_corpus_training_with_accumulation_and_an_exact_resume(data, tmp_path):
    config = CorpusConfig(steps=6, batch_size=4, grad_accum=2, eval_interval=3, eval_batches=1, warmup_steps=2)
    train = TrainConfig(lr=1e-3, seed=7)
    full_model = _model()
    full = train_corpus(full_model, data, train, config, progress=False)
    assert len(full.history.moe) == 6

    class Stop(Exception):
        pass

    def stop_at_3(record, history):
        if record["step"] == 3:
            raise Stop

    ck = tmp_path / "moe.pt"
    with pytest.raises(Stop):
        train_corpus(_model(), data, train, config, progress=False, checkpoint=ck, on_eval=stop_at_3)
    resumed_model = _model(seed=5)
    resumed = train_corpus(resumed_model, data, train, config, progress=False, resume=ck)
    assert resumed.history.loss == full.history.loss and resumed.history.moe == full.history.moe
    for a, b in zip(resumed_model.state_dict().values(), full_model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_an_moe_checkpoint_loads_with_its_config(tmp_path):
    model = _model(n_expert=8, top_k=1, capacity_factor=None, moe_every=2)
    path = save_checkpoint(tmp_path / "m.pt", model)
    loaded = load_checkpoint(path).model
    assert loaded.config == model.config
    x = torch.randint(0, 4096, (1, 16))
    torch.testing.assert_close(loaded.eval()(x)[0], model.eval()(x)[0])


def test_command_line_trains_an_moe_model(capsys):
    main(["--epochs", "8", "--n-layer", "2", "--n-head", "2", "--n-embd", "32",
          "--n-expert", "4", "--top-k", "1", "--capacity-factor", "none", "--moe-every", "2", "--no-progress"])
    out = capsys.readouterr().out
    assert "MoE in blocks [1]: 4 experts, top-1" in out and "active per token" in out
    assert "Routing at the last step" in out and "MoE layer 0: dropped 0.0%" in out


def test_command_line_refuses_a_bad_capacity_factor(capsys):
    with pytest.raises(SystemExit):
        main(["--n-expert", "4", "--capacity-factor", "lots", "--no-progress"])
    assert "'lots' is not a number or 'none'" in capsys.readouterr().err
