"""Global-batch load balancing: the balancing loss counts each expert's choices over the whole step.

The equalities hold with dropout 0; `global_balance_counts` replays the random state, so with dropout
and router noise its counts are those of the forwards that train.
"""

import pytest
import torch

from nanogpt_lib import GPT, GPTConfig, TrainConfig
from nanogpt_lib.moe import load_balancing_loss, route
from nanogpt_lib.train import main
from nanogpt_lib.training import global_balance_counts, train_step

CONFIG = GPTConfig(vocab_size=64, block_size=8, n_layer=2, n_head=2, n_embd=32, dropout=0.0, n_expert=4, top_k=2,
                   aux_loss_weight=0.5, z_loss_weight=0.01, capacity_factor=None)  # capacity: per forward


def model_and_batch(config: GPTConfig = CONFIG, seed: int = 0):
    torch.manual_seed(seed)
    model = GPT(config)
    x = torch.randint(0, config.vocab_size, (16, config.block_size))
    return model, x, torch.roll(x, -1, dims=1)


def gradients(model, x, y, parts: int, scope: str) -> tuple[float, list[torch.Tensor]]:
    """The loss and the parameter gradients of one step over `parts` micro-batches (the update a no-op)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    batches = list(zip(x.chunk(parts), y.chunk(parts), strict=True))
    loss = train_step(model, optimizer, batches, balance_scope=scope)
    return loss, [p.grad.clone() for p in model.parameters()]


def router_grads(model, grads):
    return [g for (name, _), g in zip(model.named_parameters(), grads, strict=True) if "router" in name]


def test_global_scope_gives_the_same_gradient_for_one_micro_batch_of_16_or_four_of_4():
    model, x, y = model_and_batch()
    loss_1, whole = gradients(model, x, y, 1, "global")
    loss_4, parts = gradients(model, x, y, 4, "global")
    assert loss_4 == pytest.approx(loss_1, abs=1e-6)
    for g, h in zip(parts, whole, strict=True):
        torch.testing.assert_close(g, h, rtol=1e-5, atol=1e-7)
    # one micro-batch: the global batch is the micro-batch, both scopes agree exactly
    _, micro = gradients(model, x, y, 1, "micro_batch")
    for g, h in zip(micro, whole, strict=True):
        torch.testing.assert_close(g, h, rtol=0, atol=0)


def test_micro_batch_scope_differs_from_the_global_batch_where_it_should():
    model, x, y = model_and_batch()
    _, whole = gradients(model, x, y, 1, "global")
    _, micro = gradients(model, x, y, 4, "micro_batch")
    # the balancing loss moves the router: its gradient differs ...
    gap = max(float((g - h).abs().max()) for g, h in zip(router_grads(model, micro), router_grads(model, whole),
                                                         strict=True))
    assert gap > 1e-4
    # ... and without the balancing loss the two scopes are the same step
    plain = GPTConfig(**{**CONFIG.__dict__, "aux_loss_weight": 0.0})
    model, x, y = model_and_batch(plain)
    _, whole = gradients(model, x, y, 1, "global")
    _, micro = gradients(model, x, y, 4, "micro_batch")
    for g, h in zip(micro, whole, strict=True):
        torch.testing.assert_close(g, h, rtol=1e-5, atol=1e-7)


def test_global_counts_are_those_of_the_forwards_that_train_even_with_dropout_and_noise():
    config = GPTConfig(**{**CONFIG.__dict__, "dropout": 0.2, "router_noise": 1.0})
    model, x, y = model_and_batch(config)
    batches = list(zip(x.chunk(4), y.chunk(4), strict=True))
    model.train()
    torch.manual_seed(5)
    counts = global_balance_counts(model, batches)
    replayed = None
    for xb, _ in batches:  # the same random stream as the counting pass started from
        layers = torch.stack([s.counts for s in model(xb, with_moe=True)[2].layers])
        replayed = layers if replayed is None else replayed + layers
    assert [c.tolist() for c in counts] == [c.tolist() for c in replayed.unbind(0)]
    assert all(int(c.sum()) == 16 * config.block_size * config.top_k for c in counts)
    torch.manual_seed(5)
    assert global_balance_counts(model, batches)[0].tolist() == counts[0].tolist()  # a pure replay
    dense = GPT(GPTConfig(vocab_size=64, block_size=8, n_layer=1, n_head=2, n_embd=32))
    assert global_balance_counts(dense, batches) is None


def test_the_loss_with_given_counts_is_switch_with_those_shares():
    torch.manual_seed(0)
    logits = torch.randn(12, 4, requires_grad=True)
    routing = route(logits, 2, 24)
    counts = torch.tensor([10, 2, 6, 6])
    expected = 4 * (counts.float() / 24 * routing.probs.mean(0)).sum()
    torch.testing.assert_close(load_balancing_loss(routing, "switch", counts=counts), expected)
    torch.testing.assert_close(load_balancing_loss(routing, "mixtral", counts=counts), 2 * expected)
    with pytest.raises(ValueError, match="sequence-wise loss"):
        load_balancing_loss(routing, "sequence", seq_len=4, counts=counts)


def test_bad_balance_scope_is_refused_in_one_line(capsys):
    with pytest.raises(ValueError, match=r"balance_scope='batch' is not allowed: choose one of"):
        TrainConfig(balance_scope="batch")
    with pytest.raises(SystemExit):
        main(["--balance-scope", "global", "--epochs", "2", "--no-progress"])  # a dense model has no balancing
    assert "--balance-scope shape(s) a Mixture of Experts" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--n-expert", "4", "--aux-loss-type", "sequence", "--balance-scope", "global", "--epochs", "2"])
    assert "--aux-loss-type sequence balances each sequence on its own" in capsys.readouterr().err
    model, x, y = model_and_batch()
    with pytest.raises(ValueError, match="balance_scope='all' is not allowed"):
        train_step(model, torch.optim.SGD(model.parameters(), lr=0.0), (x, y), balance_scope="all")


def test_one_batch_may_be_a_tuple_or_a_list_of_two_tensors():
    model, x, y = model_and_batch()
    assert gradients(model, x, y, 1, "micro_batch")[0] == pytest.approx(
        train_step(model, torch.optim.SGD(model.parameters(), lr=0.0), [x, y]), abs=1e-6)


def test_no_counting_pass_without_a_balancing_loss_or_for_one_micro_batch():
    model, x, y = model_and_batch(GPTConfig(**{**CONFIG.__dict__, "aux_loss_weight": 0.0}))
    assert global_balance_counts(model, list(zip(x.chunk(2), y.chunk(2), strict=True))) is None
    model, x, y = model_and_batch()
    assert global_balance_counts(model, [(x, y)]) is None  # its own global batch
    assert global_balance_counts(model, list(zip(x.chunk(2), y.chunk(2), strict=True))) is not None

