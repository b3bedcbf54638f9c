"""The grouped dispatch (rows sorted by expert, one grouped product): the same values and gradients as the loop
reference, no wait for the device inside an MoE layer's training forward and backward, and one graph under
torch.compile."""

import contextlib
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from nanogpt_lib import GPT, GPTConfig
from nanogpt_lib.moe import (
    GroupedRows,
    MoE,
    MoEOutput,
    dispatch_grouped,
    dispatch_loop,
    expert_counts,
    grouped_matmul,
    grouped_mm_supported,
    route,
)

BASE = dict(block_size=16, vocab_size=64, n_layer=2, n_head=2, n_embd=16, dropout=0.0)

pytestmark = pytest.mark.skipif(grouped_matmul is None, reason="this torch has no F.grouped_mm")


def moe_config(**overrides) -> GPTConfig:
    return GPTConfig(**{**BASE, "n_expert": 8, "top_k": 2, **overrides})


def run(layer: MoE, x: torch.Tensor, upstream: torch.Tensor):
    """Forward and backward of a layer in training mode: output, input gradient, parameter gradients, drops."""
    x = x.clone().requires_grad_()
    y, out = layer.train()(x)
    ((y * upstream).sum() + out.aux_loss + out.z_loss).backward()
    return y.detach(), x.grad, {n: p.grad for n, p in layer.named_parameters()}, float(out.stats.dropped)


# ------------------------------------------------------------- the same numbers
@pytest.mark.parametrize("top_k, factor, bias, kind", [
    (2, None, True, "gelu"), (2, 1.0, True, "gelu"), (1, 0.5, False, "gelu"), (4, 0.75, True, "gelu"),
    (2, 1.0, True, "swiglu"), (3, 0.7, False, "clamped_swiglu"),
])
@pytest.mark.parametrize("dispatch", ["grouped", "vectorised"])
def test_dispatches_agree_with_the_loop_on_values_and_gradients(dispatch, top_k, factor, bias, kind):
    torch.manual_seed(0)
    config = moe_config(top_k=top_k, capacity_factor=factor, bias=bias, expert_type=kind, expert_hidden=32)
    fast = MoE(dataclasses.replace(config, moe_dispatch=dispatch))
    loop = MoE(dataclasses.replace(config, moe_dispatch="loop"))
    loop.load_state_dict(fast.state_dict())
    x, upstream = torch.randn(4, 12, 16), torch.randn(4, 12, 16)
    if dispatch == "grouped":
        assert grouped_mm_supported(x, fast.experts)  # the grouped products themselves are under test
    (y, gx, grads, dropped), (y_ref, gx_ref, grads_ref, dropped_ref) = run(fast, x, upstream), run(loop, x, upstream)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(gx, gx_ref)
    for name in grads_ref:
        torch.testing.assert_close(grads[name], grads_ref[name], msg=name)
    assert dropped == dropped_ref
    if factor is not None and factor < 1:
        assert dropped > 0  # dropped choices are covered


def test_shared_experts_and_a_sigmoid_router_agree_with_the_loop():
    torch.manual_seed(1)
    config = moe_config(n_shared_expert=1, shared_expert_gate=True, router_type="sigmoid", bias_update_rate=1e-3,
                        n_group=4, topk_group=2, routed_scaling_factor=2.5, capacity_factor=1.0)
    fast, loop = MoE(config), MoE(dataclasses.replace(config, moe_dispatch="loop"))
    loop.load_state_dict(fast.state_dict())
    x, upstream = torch.randn(2, 16, 16), torch.randn(2, 16, 16)
    for a, b in zip(run(fast, x, upstream)[:3], run(loop, x, upstream)[:3], strict=True):
        torch.testing.assert_close(a, b)


def test_an_expert_nobody_chose_gets_a_zero_gradient():
    torch.manual_seed(2)
    layer = MoE(moe_config(top_k=1))
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[3] = 1.0  # every token prefers expert 3 (its logit is the sum of x, mostly largest)
        layer.router.weight[3, 0] = 100.0
    x = torch.randn(1, 8, 16).abs()
    _, _, grads, _ = run(layer, x, torch.randn(1, 8, 16))
    others = [e for e in range(8) if e != 3]
    assert torch.count_nonzero(grads["experts.c_fc.weight"][others]) == 0
    assert torch.count_nonzero(grads["experts.c_fc.weight"][3]) > 0


def test_where_grouped_products_cannot_run_the_padded_buffer_is_used():
    torch.manual_seed(3)
    odd = moe_config(n_embd=12, n_head=2, expert_hidden=20)  # 12 float32 numbers: 48 bytes, 20: 80, fine...
    narrow = moe_config(n_embd=6, n_head=2, expert_hidden=10)  # ...but 24 and 40 bytes are not multiples of 16
    assert grouped_mm_supported(torch.zeros(1, 12), MoE(odd).experts)
    assert not grouped_mm_supported(torch.zeros(1, 6), MoE(narrow).experts)
    layer = MoE(moe_config()).double()
    assert not grouped_mm_supported(torch.zeros(1, 16, dtype=torch.float64), layer.experts)  # no float64 kernel
    x = torch.randn(24, 16, dtype=torch.float64)
    routing = layer.route(x)
    reference = MoE(moe_config(moe_dispatch="loop")).double()
    reference.load_state_dict(layer.state_dict())
    torch.testing.assert_close(dispatch_grouped(x, routing, layer.experts), dispatch_loop(x, routing, layer.experts))


def test_grouped_rows_hold_every_choice_sorted_by_expert_the_dropped_ones_marked():
    torch.manual_seed(4)
    routing = route(torch.randn(40, 4), 2, capacity=12)
    rows = GroupedRows.of(routing)
    assert rows.token.shape == (80,) and torch.equal(rows.expert, torch.sort(rows.expert, stable=True).values)
    assert rows.ends.tolist() == torch.cumsum(torch.bincount(routing.experts.flatten(), minlength=4), 0).tolist()
    got = sorted(zip(rows.token.tolist(), rows.expert.tolist(), rows.weight.squeeze(1).tolist(),
                     rows.kept.squeeze(1).tolist(), strict=True))
    want = sorted((t, int(routing.experts[t, j]), float(routing.weights[t, j]), bool(routing.kept[t, j]))
                  for t in range(40) for j in range(2))
    assert got == want
    assert int((~rows.kept).sum()) == int((~routing.kept).sum()) > 0  # the drops are covered


def test_a_dropped_row_adds_nothing_even_where_its_expert_overflows():
    """The grouped dispatch computes dropped choices too; a float16 token that overflows in its expert must still
    add exactly nothing (a mask: 0 * inf would be NaN), as in the loop, which never computes it."""
    torch.manual_seed(10)
    layer = MoE(moe_config(n_expert=4)).to(torch.float16)
    x = torch.randn(8, 16, dtype=torch.float16)
    x[7] = 3e4
    with torch.no_grad():
        layer.experts.c_fc.weight.mul_(50)  # token 7's hidden layer overflows float16
    logits = torch.tensor([[4.0, 3.0, 0.0, 0.0]], dtype=torch.float16).repeat(8, 1)  # expert 0, then expert 1
    routing = route(logits, 2, capacity=2)  # tokens 2..7 lose both choices
    assert not routing.kept[2:].any()
    assert not torch.isfinite(layer.experts.one(0, x[7:])).all()  # computed, the row is not finite
    y = dispatch_grouped(x, routing, layer.experts)
    assert torch.equal(y[2:], torch.zeros_like(y[2:]))
    torch.testing.assert_close(y, dispatch_loop(x, routing, layer.experts))


def test_seats_are_the_running_count_per_expert_first_choices_first():
    """The sort-based seats equal the direct definition: for each choice, in choice-major order, the number of
    earlier choices of the same expert."""
    torch.manual_seed(5)
    for top_k in (1, 2, 4):
        logits = torch.randn(50, 8)
        routing = route(logits, top_k, capacity=50)
        order = routing.experts.t().reshape(-1)
        seen = F.one_hot(order, 8).cumsum(dim=0)
        want = (seen.gather(1, order.unsqueeze(1)).squeeze(1) - 1).view(top_k, 50).t()
        assert torch.equal(routing.slot, want)
        assert torch.equal(expert_counts(routing.experts, 8), torch.bincount(routing.experts.flatten(), minlength=8))


# ---------------------------------------------------------- no wait for the device
# The aten operators that make the host wait for the device: a number read back (item, float, int, bool, an `if`
# on a tensor), and the operators whose output size depends on the values (boolean-mask indexing, nonzero,
# bincount, unique, repeat_interleave without output_size). On a CPU nothing waits, so the test counts them
# instead; on CUDA each one is a synchronisation.
SYNCING = {"_local_scalar_dense", "nonzero", "masked_select", "bincount", "_unique2", "unique_dim",
           "unique_consecutive", "equal", "is_nonzero"}


class SyncCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        bool_index = name in ("index", "index_put", "index_put_") and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else []) or [])
        repeat = name == "repeat_interleave" and isinstance(args[0], torch.Tensor) and kwargs.get("output_size") is None
        if name in SYNCING or bool_index or (repeat and len(args) == 1):
            self.calls.append(name)
        return func(*args, **kwargs)


# Copies to the host (tolist, cpu, numpy) never reach the dispatcher for a CPU tensor: the pass counts their calls.
HOST_COPIES = ("tolist", "cpu", "numpy", "__array__")


@contextlib.contextmanager
def counting_syncs():
    counter = SyncCounter()
    originals = {name: getattr(torch.Tensor, name) for name in HOST_COPIES}

    def counted(name):
        def call(self, *args, **kwargs):
            counter.calls.append(name)
            return originals[name](self, *args, **kwargs)
        return call

    for name in HOST_COPIES:
        setattr(torch.Tensor, name, counted(name))
    try:
        with counter:
            yield counter
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def syncs_of_a_training_pass(config: GPTConfig, backward_hook=None) -> list[str]:
    torch.manual_seed(6)
    layer = MoE(config).train()
    x = torch.randn(4, 16, config.n_embd, requires_grad=True)
    with counting_syncs() as counter:
        y, out = layer(x)
        if backward_hook is not None:
            y.register_hook(backward_hook)
        (y.square().mean() + out.aux_loss + out.z_loss).backward()
    return counter.calls


@pytest.mark.parametrize("settings", [
    dict(), dict(capacity_factor=1.25), dict(n_expert=64, top_k=8, expert_hidden=16),
    dict(expert_type="swiglu", expert_hidden=32, n_shared_expert=1, shared_expert_gate=True),
    dict(router_type="sigmoid", bias_update_rate=1e-3, n_group=4, topk_group=2, aux_loss_type="sequence"),
    dict(router_noise=1.0, aux_loss_type="mixtral"),
], ids=["dropless", "capacity", "fine-grained", "swiglu-shared", "deepseek", "noise"])
def test_a_training_forward_and_backward_never_wait_for_the_device(settings):
    assert syncs_of_a_training_pass(moe_config(**settings)) == []


def test_the_counter_sees_the_padded_dispatch_wait():
    """The check can fail: the padded buffer's size is read from the device (`int(slot.max())`), and the loop
    reference selects its tokens with a boolean mask."""
    assert "_local_scalar_dense" in syncs_of_a_training_pass(moe_config(moe_dispatch="vectorised"))
    assert syncs_of_a_training_pass(moe_config(moe_dispatch="loop"))


@pytest.mark.parametrize("wait", [lambda g: g.sum().item(), lambda g: g.tolist(), lambda g: g.cpu()],
                         ids=["item", "tolist", "cpu"])
def test_the_counter_sees_a_wait_in_the_backward_pass(wait):
    def hook(grad):
        wait(grad)
        return grad
    assert syncs_of_a_training_pass(moe_config(), backward_hook=hook)


def test_a_step_reads_its_routing_statistics_in_one_transfer(monkeypatch):
    torch.manual_seed(7)
    model = GPT(moe_config(bias_update_rate=1e-3))
    x = torch.randint(0, 64, (2, 16))
    _, _, moe = model(x, targets=x, with_moe=True)
    reads = []
    original = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: reads.append(t.shape) or original(t))
    record = moe.record()
    assert len(reads) == 1
    layer = moe.layers[0]
    assert record["share"][0] == layer.share.tolist() and record["dropped"][0] == float(layer.dropped)
    assert record["entropy"][1] == float(moe.layers[1].entropy) and record["aux_loss"] == float(moe.aux_loss.detach())
    assert record["bias"][1] == moe.layers[1].balance_bias.tolist()
    assert set(record) == {"aux_loss", "z_loss", "share", "dropped", "entropy", "max_prob", "bias"}
    assert isinstance(MoEOutput.collect([], model.config, x.device).aux_loss, torch.Tensor)


# ---------------------------------------------------------------- torch.compile
def test_the_layer_compiles_into_one_graph_forward_and_backward():
    """fullgraph=True raises at the first graph break; the "eager" backend checks the capture without a C++
    compiler (benchmarks.moe_dispatch --compile measures inductor's code)."""
    torch.manual_seed(8)
    layer = MoE(moe_config(capacity_factor=1.25)).train()
    x = torch.randn(4, 16, 16, requires_grad=True)

    def loss(x):
        y, out = layer(x)
        return y.square().mean() + out.aux_loss + out.z_loss

    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True, backend="eager")
    value = compiled(x)
    value.backward()
    torch.testing.assert_close(value, loss(x))
    assert torch._dynamo.explain(loss)(x).graph_break_count == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: there a synchronisation is an error to catch")
def test_on_cuda_a_bfloat16_training_pass_raises_no_synchronisation():
    torch.manual_seed(9)
    layer = MoE(moe_config(capacity_factor=1.25)).to("cuda", torch.bfloat16).train()
    x = torch.randn(4, 16, 16, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    assert grouped_mm_supported(x, layer.experts)
    layer(x)  # warm-up: first calls may synchronise while allocating
    torch.cuda.set_sync_debug_mode("error")
    try:
        y, out = layer(x)
        (y.float().square().mean() + out.aux_loss + out.z_loss).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
