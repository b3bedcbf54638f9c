"""Run by torchrun (2 processes, gloo) for test_expert_parallel: what expert parallelism computes, saved
by rank 0 to the file named by OUT, for the test to compare with one process.

- "layers": per MoE setting, each rank's logits, objective and gradients of a GPT whose experts are
  spread over the two processes (each rank on its own 8 sequences), and the bytes its exchanges moved;
- "global": the gradients of one `train_step` under DDP with balance_scope="global", each rank on its
  half of a 16-sequence batch in 2 micro-batches of 4.
"""

import os

import torch
import torch.distributed as dist

from nanogpt_lib import GPT, GPTConfig
from nanogpt_lib.distributed import DistContext, wrap
from nanogpt_lib.expert_parallel import expert_group, shard_experts
from nanogpt_lib.training import objective, train_step

BASE = dict(vocab_size=64, block_size=8, n_layer=2, n_head=2, n_embd=32, dropout=0.0, n_expert=4, top_k=2,
            aux_loss_weight=0.5, z_loss_weight=0.01)
SETTINGS = {  # name: (GPTConfig overrides, dtype)
    "dropless": (dict(capacity_factor=None), torch.float32),
    "capacity-1": (dict(capacity_factor=1.0), torch.float32),
    "swiglu-shared-float64": (dict(capacity_factor=None, expert_type="swiglu", n_shared_expert=1), torch.float64),
}


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randint(0, 64, (16, 8), generator=torch.Generator().manual_seed(seed))
    return x, torch.roll(x, -1, dims=1)


def layers(rank: int, world: int) -> dict:
    group = expert_group(2, world, rank)
    x, y = batch()
    mine = slice(8 * rank, 8 * (rank + 1))
    found = {}
    for name, (overrides, dtype) in SETTINGS.items():
        torch.manual_seed(0)
        model = GPT(GPTConfig(**{**BASE, **overrides})).to(dtype)
        shard_experts(model, group)
        group.sent_bytes = 0
        logits, loss, moe = model(x[mine], targets=y[mine], with_moe=True)
        total = objective(loss, moe)
        total.backward()
        found[name] = {"logits": logits.detach(), "objective": total.detach(),
                       "grads": {n: p.grad.clone() for n, p in model.named_parameters()},
                       "counts": [s.counts for s in moe.layers], "sent_bytes": group.sent_bytes}
    return found


def global_step(rank: int, world: int) -> dict:
    torch.manual_seed(0)
    model = GPT(GPTConfig(**BASE, capacity_factor=None))
    ddp = wrap(model, DistContext(rank=rank, world_size=world))
    x, y = batch()
    mine = slice(8 * rank, 8 * (rank + 1))
    batches = list(zip(x[mine].chunk(2), y[mine].chunk(2), strict=True))
    loss = train_step(ddp, torch.optim.SGD(model.parameters(), lr=0.0), batches, balance_scope="global")
    return {"loss": loss, "grads": {n: p.grad.clone() for n, p in model.named_parameters()}}


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = {"layers": layers(rank, world), "global": global_step(rank, world)}
    everyone = [None] * world
    dist.all_gather_object(everyone, mine)
    if rank == 0:
        torch.save(everyone, os.environ["OUT"])
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
