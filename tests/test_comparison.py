"""Fair comparisons (nanogpt_lib/comparison.py): fixed validation windows, their loss, and paired statistics."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nanogpt_lib import GPT, GPTConfig
from nanogpt_lib.comparison import PairedDifference, Summary, fixed_windows, paired_difference, summarise, windows_loss


# ------------------------------------------------------------------ fixed_windows
def test_all_windows_are_non_overlapping_and_score_every_token_once():
    tokens = np.arange(100, 121)  # 21 tokens: (21 - 1) // 4 = 5 windows of 4 inputs + 1 target
    x, y = fixed_windows(tokens, 4)
    assert x.shape == y.shape == (5, 4) and x.dtype == y.dtype == torch.int64
    for w in range(5):
        assert x[w].tolist() == list(range(100 + 4 * w, 104 + 4 * w))
        assert y[w].tolist() == list(range(101 + 4 * w, 105 + 4 * w))  # shifted by one
    assert y.flatten().tolist() == list(range(101, 121))  # every token after the first, once


def test_tokens_left_over_are_not_scored():
    x, y = fixed_windows(np.arange(24), 4)  # (24 - 1) // 4 = 5: the last three tokens start no window
    assert len(x) == 5 and y[-1].tolist() == [17, 18, 19, 20]


@pytest.mark.parametrize("count, rows", [
    (1, [0]), (2, [0, 9]), (3, [0, 4, 9]), (4, [0, 3, 6, 9]), (10, list(range(10))),
])
def test_count_windows_are_evenly_spaced(count, rows):
    tokens = np.arange(61, dtype=np.uint16)  # 10 windows of 6 (a token file's dtype)
    x, y = fixed_windows(tokens, 6, count)
    assert x.shape == (count, 6) and x.dtype == torch.int64
    assert x[:, 0].tolist() == [6 * r for r in rows]
    assert torch.equal(y, x + 1)
    again = fixed_windows(tokens, 6, count)  # no random draw
    assert torch.equal(again[0], x) and torch.equal(again[1], y)


def test_count_windows_do_not_depend_on_the_torch_or_numpy_seed():
    tokens = np.arange(1000)
    torch.manual_seed(1)
    np.random.seed(1)
    first = fixed_windows(tokens, 8, 17)
    torch.manual_seed(2)
    np.random.seed(2)
    second = fixed_windows(tokens, 8, 17)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    starts = first[0][:, 0].tolist()  # 124 windows of 8: 17 distinct ones, first and last included
    assert starts[0] == 0 and starts[-1] == 123 * 8 and starts == sorted(set(starts)) and len(starts) == 17


@pytest.mark.parametrize("count", [0, -1, 11, True, 2.0, "3"])
def test_a_bad_count_is_refused(count):
    with pytest.raises(ValueError, match=rf"count={count!r} is not allowed: it must be an integer in \[1, 10\]"):
        fixed_windows(np.arange(61), 6, count)


@pytest.mark.parametrize("block_size", [0, -4, True, 2.5, None])
def test_a_bad_block_size_is_refused(block_size):
    with pytest.raises(ValueError, match=rf"block_size={block_size!r} is not allowed"):
        fixed_windows(np.arange(61), block_size)


@pytest.mark.parametrize("n", [0, 1, 4])
def test_too_few_tokens_for_one_window(n):
    with pytest.raises(ValueError, match=rf"{n} tokens hold no window of block_size=4"):
        fixed_windows(np.arange(n), 4)
    assert len(fixed_windows(np.arange(5), 4)[0]) == 1  # 4 inputs + 1 target: one window


# ------------------------------------------------------------------ windows_loss
def _hand_loss(model, x, y):
    """Mean over every target token of -log softmax(logits)[target], one window at a time."""
    model.eval()
    nll = []
    with torch.no_grad():
        for xw, yw in zip(x, y, strict=True):
            logits = model(xw[None])[0][0]  # (T, V)
            logp = logits.double().log_softmax(-1)
            nll += (-logp[torch.arange(len(yw)), yw]).tolist()
    return sum(nll) / len(nll)


def test_windows_loss_is_the_token_mean_cross_entropy(tiny_model):
    tokens = np.random.default_rng(0).integers(0, 50, 200)
    x, y = fixed_windows(tokens, 8, 7)
    expected = _hand_loss(tiny_model, x, y)
    assert 3.0 < expected < 5.0  # about log(50) for an untrained model
    for batch_size in (1, 2, 3, 7, 16):  # uneven last batches included
        assert windows_loss(tiny_model, x, y, batch_size=batch_size) == pytest.approx(expected, rel=1e-5)


def test_windows_loss_is_not_the_mean_of_the_window_means_only_by_luck(tiny_model):
    """Against F.cross_entropy over all tokens at once, on a model whose windows differ in loss."""
    x = torch.randint(0, 50, (5, 16), generator=torch.Generator().manual_seed(3))
    y = torch.roll(x, -1, dims=1)
    tiny_model.eval()
    with torch.no_grad():
        logits = tiny_model(x)[0]
        expected = F.cross_entropy(logits.reshape(-1, 50), y.reshape(-1)).item()
    assert windows_loss(tiny_model, x, y, batch_size=2) == pytest.approx(expected, rel=1e-5)


def test_windows_loss_uses_eval_mode_and_restores_training_mode():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=8, vocab_size=30, n_layer=1, n_head=2, n_embd=16, dropout=0.5))
    model.train()
    x, y = fixed_windows(np.random.default_rng(1).integers(0, 30, 100), 8, 4)
    first = windows_loss(model, x, y)
    assert model.training  # put back as it was
    assert windows_loss(model, x, y, batch_size=1) == pytest.approx(first, rel=1e-5)  # no dropout
    assert first == pytest.approx(_hand_loss(model, x, y), rel=1e-5)


# ------------------------------------------------------------------ summarise / paired_difference
def test_summarise_gives_the_mean_and_the_standard_error():
    s = summarise([1.0, 2.0, 4.0])
    # mean 7/3; deviations -4/3, -1/3, 5/3; sample variance (16 + 1 + 25) / 9 / 2 = 7/3
    assert s == Summary(pytest.approx(7 / 3), pytest.approx(math.sqrt(7 / 3) / math.sqrt(3)), 3)
    assert str(s) == "2.3333 ± 0.8819"
    one = summarise([2.5])
    assert one.mean == 2.5 and one.n == 1 and math.isnan(one.se)
    with pytest.raises(ValueError, match="no values"):
        summarise([])


def test_paired_difference_over_the_common_seeds():
    model = {1: 3.0, 2: 2.5, 3: 2.9, 7: 1.0}
    baseline = {1: 3.1, 2: 2.4, 3: 3.0, 5: 0.0}  # seeds 5 and 7 are not paired: left out
    d = paired_difference(model, baseline)
    # d = [-0.1, +0.1, -0.1]: mean -1/30; deviations -1/15, 2/15, -1/15; sample variance (6/225) / 2
    assert d.n == 3 and d.wins == 2
    assert d.mean == pytest.approx(-1 / 30)
    assert d.se == pytest.approx(math.sqrt(3 / 225) / math.sqrt(3))
    assert str(d) == "-0.0333 ± 0.0667 (wins 2/3)"
    assert isinstance(d, PairedDifference)
    reverse = paired_difference(baseline, model)
    assert reverse.mean == pytest.approx(1 / 30) and reverse.wins == 1 and reverse.se == pytest.approx(d.se)


def test_pairing_removes_what_the_seeds_share():
    """Two models that differ by a constant per seed: the paired SE is zero, the single-model SE is not."""
    baseline = {s: 3.0 + 0.1 * s for s in range(5)}
    model = {s: v - 0.02 for s, v in baseline.items()}
    d = paired_difference(model, baseline)
    assert d.mean == pytest.approx(-0.02) and d.se == pytest.approx(0, abs=1e-12) and d.wins == 5
    assert summarise(list(model.values())).se > 0.05


def test_ties_are_not_wins_and_one_seed_has_no_se():
    d = paired_difference({1: 2.0, 2: 2.0}, {1: 2.0, 2: 2.5})
    assert d.wins == 1 and d.mean == pytest.approx(-0.25)
    single = paired_difference({4: 1.0}, {4: 1.5, 5: 9.0})
    assert single.n == 1 and single.wins == 1 and single.mean == pytest.approx(-0.5) and math.isnan(single.se)


def test_no_common_seed_is_an_error_naming_both():
    with pytest.raises(ValueError, match=r"no common seeds: model has \[1, 2\], baseline has \[3\]"):
        paired_difference({2: 1.0, 1: 1.0}, {3: 1.0})
    with pytest.raises(ValueError, match="no common seeds"):
        paired_difference({}, {})
