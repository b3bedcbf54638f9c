"""Expert parallelism: the experts of each MoE layer spread over processes, tokens sent to them.

Under `torchrun` with P processes, `--expert-parallel n` splits the world into P / n groups of n
consecutive ranks. Inside a group, process r holds experts [r E/n, (r+1) E/n) of every MoE layer
(E/n of them) and no copy of the others; each group holds all E, so there are P / n copies of
each expert, one per group ("replicas"). Everything else (attention, embeddings, router, shared
experts) is replicated on every process and averaged by DDP as before.

One MoE layer on one process, N tokens, top-k (see `ExpertGroup.dispatch`):

    route        the router picks k experts per token, locally; capacity is counted per process
    sort         the N k choices become rows sorted by expert (`GroupedRows`), hence by owner
    counts       one small all-to-all: how many rows each process sends each owner, per expert
    send         all-to-all of the rows (N k, C): each owner receives the rows for its experts
    compute      the owner runs its E/n experts on what it received (grouped by expert)
    return       all-to-all back: every row comes home, in its original order
    combine      weighted sum into the tokens, as the one-process layer does

The backward pass runs the same two exchanges in reverse. Per process, per MoE layer and
micro-batch, the rows that leave the process are N k (n - 1) / n when the router is balanced, each
C numbers, there and back, forward and backward:

    bytes = 4 * N * k * (n - 1) / n * C * bytes_per_number

An expert's gradient reaches its owner only, summed over the tokens of the whole group; dividing it
by P and summing it over the replicas gives exactly DDP's average (`reduce_expert_grads`). The
gradient norm for clipping adds the experts' squares over the group (`clip_grad_norm`).
Checkpoints hold the whole model (`gathered_state_dicts`), so they load in one process and resume
under any number of processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .moe import GroupedRows, MoE, Routing, grouped_mm_supported


@dataclass
class ExpertGroup:
    """This process's place in expert parallelism, shared by all its MoE layers."""

    size: int  # n: processes that share one copy of the experts
    rank: int  # this process's place among them (it holds that n-th of the experts)
    world_size: int  # P: all processes
    group: dist.ProcessGroup | None  # the n processes of this group
    replicas: dist.ProcessGroup | None  # the P / n processes holding the same experts (None: just this one)
    sent_bytes: int = 0  # payload this process sent to the others so far, forward and backward

    def exchange(self, rows: torch.Tensor, out_splits: list[int], in_splits: list[int]) -> torch.Tensor:
        """All-to-all of rows (sum(in_splits), C) -> (sum(out_splits), C): in_splits[j] rows go to process
        j of the group, out_splits[j] come from it."""
        out = rows.new_empty(sum(out_splits), *rows.shape[1:])
        dist.all_to_all_single(out, rows.contiguous(), out_splits, in_splits, group=self.group)
        leaving = sum(in_splits) - in_splits[self.rank]  # rows this process keeps are not sent
        self.sent_bytes += leaving * rows[0].numel() * rows.element_size() if len(rows) else 0
        return out

    def dispatch(self, x: torch.Tensor, routing: Routing, experts: nn.Module) -> torch.Tensor:
        """The MoE layer's experts, spread over the group: (N, C) -> (N, C), as `moe.dispatch_grouped`
        computes with all the experts in one process."""
        n, local = self.size, experts.linears[0].weight.shape[0]  # E / n experts here
        rows = GroupedRows.of(routing)  # (M = N k rows), sorted by expert, hence by owner
        send = routing.counts.view(n, local)  # (n, E/n): rows for each owner's each expert
        recv = torch.empty_like(send)
        dist.all_to_all_single(recv, send, group=self.group)  # recv[s, e]: rows process s sends my expert e
        # the one wait: the split sizes (and each local expert's total) read to the host, in one transfer
        sizes = torch.cat([send.sum(1), recv.sum(1), recv.sum(0)]).tolist()
        in_splits, out_splits, per_expert = sizes[:n], sizes[n:2 * n], sizes[2 * n:]
        received = _Exchange.apply(x.index_select(0, rows.token), out_splits, in_splits, self)  # (R, C)
        # the received rows come by source, then by expert: regroup them by expert for the grouped products
        R = received.shape[0]
        expert = torch.repeat_interleave(torch.arange(local, device=x.device).repeat(n), recv.reshape(-1),
                                         output_size=R)  # (R,) local expert of each received row
        order = torch.sort(expert, stable=True).indices  # (R,) received rows, grouped by expert
        # the layout of `GroupedRows`, for the received rows: `token` here is the received row each sorted
        # row copies; no weight, no mask (the rows are combined back home)
        mine = GroupedRows(token=order, expert=expert.index_select(0, order), weight=None, kept=None,
                           ends=recv.sum(0).cumsum(0).to(torch.int32))
        y = _local_experts(experts, received.index_select(0, order), mine, per_expert)  # (R, C), by expert
        unsort = torch.empty_like(order).scatter_(0, order, torch.arange(R, device=x.device))
        y = _Exchange.apply(y.index_select(0, unsort), in_splits, out_splits, self)  # (M, C), rows' order
        added = torch.where(rows.kept, rows.weight * y, 0.0)  # (M, C): dropped rows add exactly nothing
        return torch.zeros_like(x).index_add_(0, rows.token, added.to(x.dtype))  # (N, C)


class _Exchange(torch.autograd.Function):
    """`ExpertGroup.exchange` with its gradient: the same all-to-all, splits swapped."""

    @staticmethod
    def forward(ctx, rows, out_splits, in_splits, group):
        ctx.splits, ctx.group = (out_splits, in_splits), group
        return group.exchange(rows, out_splits, in_splits)

    @staticmethod
    def backward(ctx, grad):
        out_splits, in_splits = ctx.splits
        return ctx.group.exchange(grad, in_splits, out_splits), None, None, None


def _local_experts(experts: nn.Module, x: torch.Tensor, rows: GroupedRows, per_expert: list[int]) -> torch.Tensor:
    """This process's experts on their rows, sorted by expert: (R, C) -> (R, C). Grouped products where
    the installed torch has them for this dtype and device, else one product per expert on its slice
    (`per_expert`: each one's row count, already on the host)."""
    if grouped_mm_supported(x, experts):
        return experts.grouped(x, rows)
    return torch.cat([experts.one(e, part) for e, part in enumerate(x.split(per_expert))])


# ---------------------------------------------------------------- setting up
def expert_group(size: int, world_size: int, rank: int) -> ExpertGroup:
    """Split the `world_size` processes into groups of `size` consecutive ranks (collective: every
    process calls it). `size` = 1 gives a group of one: no expert parallelism."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1 or world_size % size:
        raise ValueError(f"--expert-parallel {size!r} is not allowed: it must divide the {world_size} process(es) "
                         f"(run it under torchrun with a multiple of it)")
    if size == 1:
        return ExpertGroup(size=1, rank=0, world_size=world_size, group=None, replicas=None)
    groups = [dist.new_group(list(range(g * size, (g + 1) * size))) for g in range(world_size // size)]
    replicas = [dist.new_group(list(range(j, world_size, size))) for j in range(size)]
    return ExpertGroup(size=size, rank=rank % size, world_size=world_size, group=groups[rank // size],
                       replicas=replicas[rank % size] if world_size > size else None)


def moe_layers(model: nn.Module) -> list[MoE]:
    model = model.module if hasattr(model, "no_sync") else model  # inside DDP
    return [m for m in model.modules() if isinstance(m, MoE)]


def shard_experts(model: nn.Module, group: ExpertGroup, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Keep this process's E/n experts of every MoE layer, in place: each expert tensor (E, ...) becomes
    (E/n, ...), the same Parameter (so an optimizer made before keeps it), and the optimizer's moments
    of it are cut alike. The layers then dispatch through `group`."""
    layers = moe_layers(model)
    if not layers:
        raise ValueError(f"--expert-parallel {group.size} spreads the experts of an MoE, but the model is dense; "
                         f"give --n-expert E with E a multiple of {group.size}")
    E = layers[0].n_expert
    if E % group.size:
        raise ValueError(f"--expert-parallel {group.size} does not divide --n-expert {E}: each process must hold "
                         f"the same number of experts")
    if group.size == 1:
        return
    if any(layer.expert_group is not None for layer in layers):
        raise ValueError("the experts of this model are spread over processes already; shard a whole model once")
    lo, hi = group.rank * E // group.size, (group.rank + 1) * E // group.size
    for layer in layers:
        for p in layer.experts.parameters():
            p.data = p.data[lo:hi].clone()
            state = optimizer.state.get(p, {}) if optimizer is not None else {}
            for key, value in state.items():
                if torch.is_tensor(value) and value.dim() and value.shape[0] == E:
                    state[key] = value[lo:hi].clone()
        layer.expert_group = group


def sharded_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """{name: parameter} of the expert tensors that this process holds a part of (empty without expert
    parallelism): the ones DDP must leave alone."""
    model = model.module if hasattr(model, "no_sync") else model
    owned = {id(p) for layer in moe_layers(model) if layer.expert_group is not None
             for p in layer.experts.parameters()}
    return {name: p for name, p in model.named_parameters() if id(p) in owned}


def _group_of(model: nn.Module) -> ExpertGroup | None:
    groups = [layer.expert_group for layer in moe_layers(model) if layer.expert_group is not None]
    return groups[0] if groups else None


@torch.no_grad()
def reduce_expert_grads(model: nn.Module) -> None:
    """Turn each held expert's gradient into DDP's average over all P processes: it holds the sum over
    its group's tokens, so add the replicas' sums and divide by P. Nothing without expert parallelism."""
    group = _group_of(model)
    if group is None:
        return
    for p in sharded_parameters(model).values():
        if p.grad is None:
            continue
        if group.replicas is not None:
            dist.all_reduce(p.grad, group=group.replicas)
        p.grad /= group.world_size


@torch.no_grad()
def clip_grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Clip the gradient of the whole model (every expert of every process included) to norm `max_norm`,
    as `torch.nn.utils.clip_grad_norm_` does in one process; returns the norm before clipping."""
    group = _group_of(model)
    params = [p for p in model.parameters() if p.grad is not None]
    if group is None:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    sharded = {id(p) for p in sharded_parameters(model).values()}

    def squares(grads: list[torch.Tensor]) -> torch.Tensor:
        return sum((g.float().square().sum() for g in grads), torch.zeros((), device=params[0].device))

    replicated = squares([p.grad for p in params if id(p) not in sharded])
    experts = squares([p.grad for p in params if id(p) in sharded])
    dist.all_reduce(experts, group=group.group)  # the squares of all E experts: each process holds E/n
    total = (replicated + experts).sqrt()
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)  # as torch's clip_grad_norm_
    for p in params:
        p.grad.mul_(scale.to(p.grad.dtype))
    return total


@torch.no_grad()
def gathered_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict] | None:
    """(model state, optimizer state) of the whole model, every expert put back in order, on the CPU of
    global rank 0, which saves checkpoints (None on every other process). Collective: the processes of
    rank 0's group send it their experts one tensor at a time, so no device ever holds the whole model."""
    group = _group_of(model)
    module = model.module if hasattr(model, "no_sync") else model
    if group is None:
        raise ValueError("gathered_state_dicts is for a model whose experts are spread over processes")
    if dist.get_global_rank(group.group, 0) != 0:
        return None  # another group: rank 0's own group holds every expert already
    here = group.rank == 0

    def gather(t: torch.Tensor) -> torch.Tensor | None:
        parts = [torch.empty_like(t) for _ in range(group.size)] if here else None
        dist.gather(t.contiguous(), parts, dst=0, group=group.group)
        return torch.cat(parts).cpu() if here else None

    sharded = sharded_parameters(module)
    experts = {name: gather(p.detach()) for name, p in sharded.items()}
    index = {id(p): i for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}
    moments = {index[id(p)]: {key: gather(value) for key, value in optimizer.state[p].items()
                              if torch.is_tensor(value) and value.dim()}
               for p in sharded.values() if p in optimizer.state}
    if not here:
        return None
    state = {name: experts.get(name, t.cpu()) for name, t in module.state_dict().items()}
    opt_state = optimizer.state_dict()  # its inner dicts are the live state: copied, never changed
    opt_state["state"] = {i: {key: moments.get(i, {}).get(key, v.cpu() if torch.is_tensor(v) else v)
                              for key, v in entry.items()} for i, entry in opt_state["state"].items()}
    return state, opt_state


def to_device(model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Move a model (built and cut on the CPU) and its optimizer's state to `device`, in place: the
    Parameters stay the same objects, so the optimizer keeps them."""
    model.to(device)
    for state in optimizer.state.values():
        for key, value in state.items():
            if torch.is_tensor(value) and key != "step":
                state[key] = value.to(device)


# ---------------------------------------------------------------- costs
def exchange_bytes(tokens: int, top_k: int, processes: int, n_embd: int, moe_layers: int,
                   bytes_per_number: int = 4) -> float:
    """Payload one process sends per step through the all-to-alls when the router is balanced:
    4 N k (n-1)/n C b per MoE layer (there and back, forward and backward), for N tokens here."""
    return 4 * tokens * top_k * (processes - 1) / processes * n_embd * bytes_per_number * moe_layers


def expert_allreduce_bytes(expert_params: int, processes: int, bytes_per_number: int = 4) -> float:
    """What DDP sends per step for the expert gradients when every process holds every expert: a ring
    all-reduce sends 2 (n-1)/n of the data from each process."""
    return 2 * (processes - 1) / processes * expert_params * bytes_per_number


# ------------------------------------------------- a run on local processes
def compare_on_processes(config, tokens: torch.Tensor, processes: int = 2, seed: int = 0) -> list[dict]:
    """Run the MoE `config` with its experts spread over `processes` local processes (gloo), each on its
    share of `tokens` (B, T), against the same model whole in each process; returns per process the
    routing counts of its rows (layers, E), the bytes it sent, and the largest differences from the whole
    model (logits; every gradient, an expert's summed over the processes as its owner gets it)."""
    import tempfile

    import torch.multiprocessing as mp

    if tokens.shape[0] % processes:
        raise ValueError(f"{tokens.shape[0]} sequences do not split over {processes} processes")
    with tempfile.TemporaryDirectory() as folder:
        mp.start_processes(_compare_worker, args=(processes, _free_port(), folder, config, tokens, seed),
                           nprocs=processes, start_method="spawn")
        return [torch.load(f"{folder}/{rank}.pt", weights_only=True) for rank in range(processes)]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _compare_worker(rank: int, processes: int, port: int, folder: str, config, tokens: torch.Tensor,
                    seed: int) -> None:
    import copy

    from .model import GPT
    from .training import objective

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=processes)
    try:
        torch.manual_seed(seed)
        whole = GPT(config)
        spread = copy.deepcopy(whole)
        group = expert_group(processes, processes, rank)
        shard_experts(spread, group)
        x = tokens.chunk(processes)[rank]
        y = torch.roll(x, -1, dims=1)
        results = []
        for model in (whole, spread):
            logits, loss, moe = model(x, targets=y, with_moe=True)
            objective(loss, moe).backward()
            results.append((logits.detach(), moe))
        worst_grad = 0.0
        E, lo = config.n_expert, group.rank * config.n_expert // processes
        for p, q in zip(whole.parameters(), spread.parameters(), strict=True):
            expected = p.grad
            if q.shape != p.shape:  # an expert tensor: its owner holds the sum over the processes' tokens
                expected = p.grad.clone()
                dist.all_reduce(expected)
                expected = expected[lo:lo + E // processes]
            worst_grad = max(worst_grad, float((q.grad - expected).abs().max()))
        counts = torch.stack([s.counts for s in results[1][1].layers])  # (layers, E)
        torch.save({"counts": counts, "sent_bytes": group.sent_bytes, "tokens": x.numel(),
                    "logits_diff": float((results[0][0] - results[1][0]).abs().max()), "grad_diff": worst_grad},
                   f"{folder}/{rank}.pt")
    finally:
        dist.barrier()
        dist.destroy_process_group()
