import math

import pytest
import torch
import torch.nn.functional as F

from nanogpt_lib import GPT, GPTConfig, History, continue_text, eval_mode, evaluate, reconstruct, shift_targets
from nanogpt_lib.evaluation import perplexity


@pytest.fixture
def dropout_model():
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=32, vocab_size=4096, n_layer=1, n_head=2, n_embd=32, dropout=0.5))


def test_evaluate_is_eval_mode_and_restores_the_mode(dropout_model):
    x = torch.randint(0, 4096, (1, 20))
    y = shift_targets(x)
    dropout_model.train()
    a, b = evaluate(dropout_model, x, y), evaluate(dropout_model, x, y)
    assert a == b  # no dropout noise
    assert dropout_model.training
    with eval_mode(dropout_model):
        logits, _ = dropout_model(x)
    expected = F.cross_entropy(logits[0, :-1], x[0, 1:]).item()
    assert a.loss == pytest.approx(expected, rel=1e-6)
    assert a.perplexity == pytest.approx(math.exp(expected))


def test_reconstruction_compares_argmax_with_the_text(dropout_model, tokenizer):
    x = tokenizer("Nas manhãs de inverno, a neblina desce devagar.", return_tensors="pt")["input_ids"]
    y = shift_targets(x)
    rec = reconstruct(dropout_model, x, y, tokenizer)
    with eval_mode(dropout_model):
        pred = dropout_model(x)[0][0, :-1].argmax(-1)
    assert rec.predicted_ids == pred.tolist()
    assert rec.correct == (pred == x[0, 1:]).tolist()
    assert rec.accuracy == pytest.approx(sum(rec.correct) / (x.shape[1] - 1))
    assert rec.text == tokenizer.decode([int(x[0, 0])] + pred.tolist())


def test_a_model_that_predicts_the_text_reconstructs_it_fully(tokenizer):
    """Make the model's logits the one-hot next token: accuracy 1 and the original text."""
    text = "O rio que atravessa a cidade."
    x = tokenizer(text, return_tensors="pt")["input_ids"]

    class Oracle(torch.nn.Module):
        def forward(self, idx, targets=None):
            logits = torch.zeros(*idx.shape, len(tokenizer))
            nxt = torch.cat([x[0, 1:], x[0, -1:]])
            logits[0, torch.arange(idx.shape[1]), nxt[: idx.shape[1]]] = 10.0
            return logits, None

    rec = reconstruct(Oracle(), x, shift_targets(x), tokenizer)
    assert rec.accuracy == 1.0 and rec.text == text


def test_continuation_keeps_the_prefix_and_is_greedy_by_default(dropout_model, tokenizer):
    x = tokenizer("O rio que atravessa a nossa cidade nasce numa serra coberta", return_tensors="pt")["input_ids"]
    dropout_model.train()
    a = continue_text(dropout_model, x, tokenizer, prefix_tokens=4, max_new_tokens=6)
    b = continue_text(dropout_model, x, tokenizer, prefix_tokens=4, max_new_tokens=6)
    assert a == b and dropout_model.training
    assert a.ids[:4] == x[0, :4].tolist() and len(a.ids) == 10
    assert a.prefix == tokenizer.decode(x[0, :4].tolist())
    assert a.generated == tokenizer.decode(a.ids[4:])
    with pytest.raises(ValueError, match="prefix_tokens=0"):
        continue_text(dropout_model, x, tokenizer, prefix_tokens=0)


def test_perplexity_of_a_diverged_loss_is_inf_not_an_overflow():
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(4096)) == pytest.approx(4096)
    assert perplexity(800.0) == math.inf
    assert History(epoch=[1, 2], loss=[1.0, 1000.0]).perplexity == [math.e, math.inf]


def test_position_report_matches_the_loss_and_the_reconstruction(dropout_model, tokenizer):
    from nanogpt_lib.evaluation import position_report

    x = tokenizer("Nas manhãs de inverno, a neblina desce devagar sobre o vale.", return_tensors="pt")["input_ids"]
    y = shift_targets(x)
    dropout_model.train()
    rep = position_report(dropout_model, x, y)
    assert len(rep.target_prob) == len(rep.loss) == len(rep.correct) == x.shape[1] - 1
    torch.testing.assert_close(torch.tensor(rep.loss).mean(), torch.tensor(evaluate(dropout_model, x, y).loss))
    torch.testing.assert_close(torch.tensor(rep.target_prob), torch.exp(-torch.tensor(rep.loss)))
    assert rep.correct == reconstruct(dropout_model, x, y, tokenizer).correct
    assert dropout_model.training  # the mode is restored


def test_checkup_bundles_the_three_measurements(dropout_model, tokenizer):
    from nanogpt_lib import TrainConfig
    from nanogpt_lib.checkup import checkup

    x = tokenizer("Nas manhãs de inverno, a neblina desce devagar sobre o vale.", return_tensors="pt")["input_ids"]
    y = shift_targets(x)
    cfg = TrainConfig(cont_prefix_tokens=4, cont_new_tokens=6)
    c = checkup(dropout_model, x, y, tokenizer, cfg)
    assert c.loss == evaluate(dropout_model, x, y)
    assert c.reconstruction == reconstruct(dropout_model, x, y, tokenizer)
    assert c.continuation == continue_text(dropout_model, x, tokenizer, 4, 6, temperature=0.1, top_k=1)
    assert set(c.record()) == {"eval_loss", "eval_perplexity", "reconstruction_accuracy", "reconstruction",
                               "continuation"}
    lines = c.describe(epoch=125, total=500, percent=25, train_loss=1.5).splitlines()
    assert lines[0].startswith("[ 25%] epoch 125/500: train loss 1.5000 | eval loss ")
    assert lines[1] == f"  reconstruction: {c.reconstruction.text!r}"
    assert lines[2] == f"  continuation:   {c.continuation.prefix!r} + {c.continuation.generated!r}"


def test_checkup_callback_writes_and_records(dropout_model, tokenizer):
    from nanogpt_lib import TrainConfig, fit
    from nanogpt_lib.checkup import checkup_callback

    x = tokenizer("Nas manhãs de inverno, a neblina desce devagar sobre o vale.", return_tensors="pt")["input_ids"]
    y = shift_targets(x)
    cfg = TrainConfig(epochs=4, cont_prefix_tokens=3, cont_new_tokens=4)
    lines = []
    history = fit(dropout_model, (x, y), cfg, on_quarter=checkup_callback(dropout_model, x, y, tokenizer, cfg,
                                                                           write=lines.append), progress=False)
    assert [q["epoch"] for q in history.quarters] == [1, 2, 3, 4]
    assert [line.split("]")[0] for line in lines] == ["[ 25%", "[ 50%", "[ 75%", "[100%"]
    assert history.quarters[-1]["eval_loss"] == evaluate(dropout_model, x, y).loss
