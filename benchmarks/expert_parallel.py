"""Expert parallelism against DDP at the same number of processes: step time, bytes moved, memory.

    torchrun --standalone --nproc_per_node=2 -m benchmarks.expert_parallel        # Machado corpus
    torchrun --standalone --nproc_per_node=2 -m benchmarks.expert_parallel --n-expert 64 --top-k 8 --width 64
    torchrun --standalone --nproc_per_node=2 -m benchmarks.expert_parallel --data DIR

Each process builds the same MoE (Part-1 size, 8 experts of half width, top-2 unless told otherwise) twice:
once wrapped in DDP (every process holds every expert, gradients all-reduced) and once with its experts
spread over the processes (`expert_parallel.shard_experts`: each holds E/P, tokens sent by all-to-all).
Both train on the same corpus batches (a global batch of 16 windows of 100 tokens, split over the
processes) and their steps (`training.train_step`) are timed interleaved, DDP, expert-parallel, DDP, ...
Rank 0 prints the median step, the global tokens/s, the payload each process sent per step through the
all-to-alls (counted by `ExpertGroup.sent_bytes`) against the formula 4 N k (P-1)/P C b per MoE layer,
and the weights and AdamW moments each process holds. On one CPU machine the processes share its cores
and memory bandwidth, so this measures the price of the exchange, not the gain of spreading experts.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist

from nanogpt_lib import GPT, TrainConfig, load_tokenizer, make_optimizer
from nanogpt_lib.distributed import DistContext, wrap
from nanogpt_lib.experiments import part1_size, study_moe
from nanogpt_lib.expert_parallel import expert_group, shard_experts
from nanogpt_lib.prepare import prepare_named
from nanogpt_lib.tokenizer import BUNDLED_TOKENIZER_NAME
from nanogpt_lib.tokens import TRAIN_STREAM, open_tokens, shard_batches, window_starts
from nanogpt_lib.training import train_step

from .common import interleaved, machine, table

BATCH = 16


def held_bytes(model: torch.nn.Module) -> int:
    """Bytes of the weights this process holds, and of AdamW's two moments of them (3 x the weights)."""
    return 3 * sum(p.numel() * p.element_size() for p in model.parameters())


def exchange_formula(tokens: int, top_k: int, processes: int, width: int, itemsize: int, layers: int) -> float:
    """Bytes one process sends per step when the router is balanced: per MoE layer, its N k rows of C
    numbers, of which (P-1)/P go to other processes, there and back, in the forward and the backward pass."""
    return 4 * tokens * top_k * (processes - 1) / processes * width * itemsize * layers


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="torchrun ... -m benchmarks.expert_parallel", description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="a prepared corpus folder (default: the Machado corpus)")
    p.add_argument("--corpus-dir", default=None, help="local copy of the Machado corpus (else NANOGPT_MACHADO_DIR)")
    p.add_argument("--n-expert", type=int, default=8)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--width", type=int, default=256, help="hidden width of each expert")
    p.add_argument("--repeats", type=int, default=20, help="timed steps per variant (median reported)")
    args = p.parse_args(argv)
    if "RANK" not in os.environ:
        p.error("run it under torchrun with 2 or more processes: torchrun --standalone --nproc_per_node=2 "
                "-m benchmarks.expert_parallel")
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    ctx = DistContext(rank=rank, world_size=world)
    tokenizer = load_tokenizer(BUNDLED_TOKENIZER_NAME, verbose=rank == 0)
    folder = args.data or prepare_named("machado", tokenizer, local=args.corpus_dir).folder
    data = open_tokens(folder)
    config = study_moe(part1_size(len(tokenizer)), args.n_expert, args.top_k, args.width)
    block = config.block_size

    def batches(step: int) -> list:
        starts = window_starts(len(data.train), block, BATCH, 0, TRAIN_STREAM, step)
        return list(shard_batches(data.train, starts, block, 1, world, rank))

    group = expert_group(world, world, rank)
    runs, held = {}, {}
    for name in ("DDP (every expert on every process)", f"expert parallel ({args.n_expert // world} experts each)"):
        torch.manual_seed(0)
        model = GPT(config)
        if name.startswith("expert"):
            shard_experts(model, group)
        held[name] = held_bytes(model)
        ddp = wrap(model, ctx)
        optimizer = make_optimizer(model, TrainConfig(lr=1e-3))
        step = [0]

        def run(ddp=ddp, optimizer=optimizer, step=step):
            train_step(ddp, optimizer, batches(step[0]), grad_clip=1.0)
            step[0] += 1
        runs[name] = run
    sent_before = group.sent_bytes
    seconds = interleaved(runs, args.repeats)
    ep_steps = args.repeats + 2  # the warm-up steps count too
    sent = (group.sent_bytes - sent_before) / ep_steps
    every = torch.tensor([sent], dtype=torch.float64)
    dist.all_reduce(every)
    if rank == 0:
        tokens = BATCH * block
        layers = sum(config.is_moe_layer(i) for i in range(config.n_layer))
        formula = exchange_formula(tokens // world, args.top_k, world, config.n_embd, 4, layers)
        print(f"machine: {machine()}; {world} processes (gloo)")
        print(f"corpus: {folder}; global batch {BATCH} x {block} tokens; MoE {args.n_expert}x{args.top_k}, "
              f"expert width {args.width}, {layers} MoE layers\n")
        reference = seconds[next(iter(seconds))]
        rows = [[name, f"{1000 * s:.1f}", f"{tokens / s:,.0f}", f"{s / reference:.2f}x",
                 f"{held[name] / 2**20:.1f} MiB"] for name, s in seconds.items()]
        print(table(["step", "ms per step", "tokens/s", "time vs DDP", "weights + AdamW per process"], rows))
        print(f"\nall-to-all payload per process per step: measured {sent / 2**20:.2f} MiB (mean over processes "
              f"{every.item() / world / 2**20:.2f} MiB); balanced-router formula 4 N k (P-1)/P C b x layers = "
              f"{formula / 2**20:.2f} MiB")
        grads = sum(p.numel() for n, p in GPT(config).named_parameters() if ".experts." not in n) * 4
        print(f"DDP all-reduces the gradients of everything else too: {grads / 2**20:.2f} MiB of replicated "
              f"gradients per step (the experts' {held[next(iter(held))] / 3 / 2**20 - grads / 2**20:.2f} MiB more "
              f"without expert parallelism)")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
