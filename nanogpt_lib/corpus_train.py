"""Training on a prepared corpus: random windows from token files, periodic train/val evaluation,
warm-up + cosine learning rate, gradient clipping, gradient accumulation, DDP and exact resume.

One optimisation step uses a global batch of `batch_size` windows, split into `grad_accum`
micro-steps on each of `world_size` ranks (each rank sees batch_size / (grad_accum * world_size)
windows at a time). Which windows, and the dropout masks, depend only on (seed, step, rank), so:

- two ranks with dropout 0 compute the same update as one process on the whole global batch
  (up to float rounding; with dropout > 0 each rank draws its own masks, so the runs differ in the
  masks only);
- a run resumed from a checkpoint repeats the uninterrupted run exactly: the checkpoint needs the
  weights, the optimizer state and the step, but no sampler or RNG state.

With `expert_parallel` = n > 1, each MoE layer's experts are spread over groups of n ranks
(`expert_parallel.py`): the same updates as DDP, with E/n experts per rank; checkpoints still hold the
whole model, so they resume under any number of processes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from .config import SHAPE_FIELDS
from .distributed import DistContext, mean_over_ranks, unwrap, wrap
from .evaluation import eval_mode
from .expert_parallel import expert_group, gathered_state_dicts, shard_experts, sharded_parameters, to_device
from .model import GPT
from .schedule import CosineSchedule, set_lr
from .tokens import TRAIN_EVAL_STREAM, TRAIN_STREAM, VAL_STREAM, TokenData, shard_batches, window_starts
from .training import History, TrainConfig, check_finite, make_optimizer, train_step

Batch = tuple[torch.Tensor, torch.Tensor]  # (inputs (B, T), targets (B, T))
_DROPOUT_STREAM = 3


@dataclass(frozen=True)
class CorpusConfig:
    steps: int = 1000  # optimisation steps in the whole run
    batch_size: int = 32  # global: windows per step, over all ranks and micro-steps
    grad_accum: int = 1  # micro-steps per optimisation step
    eval_interval: int = 100  # evaluate train and val loss every this many steps (and at the end)
    eval_batches: int = 4  # fixed batches of batch_size / grad_accum windows per evaluation
    warmup_steps: int | None = None  # linear warm-up, then cosine decay; None: steps // 10, at most 100
    min_lr: float | None = None  # None: a tenth of TrainConfig.lr
    grad_clip: float | None = 1.0  # max global gradient norm; None or 0: no clipping
    expert_parallel: int = 1  # processes an MoE layer's experts are spread over (`expert_parallel.py`)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "eval_interval", "eval_batches", "expert_parallel"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"CorpusConfig.{name}={value!r} is not allowed: it must be an integer >= 1")
        if self.warmup_steps is None:
            object.__setattr__(self, "warmup_steps", min(100, self.steps // 10))
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or not (
            0 <= self.warmup_steps <= self.steps
        ):
            raise ValueError(f"CorpusConfig.warmup_steps={self.warmup_steps!r} is not allowed: "
                             f"it must be an integer in [0, steps={self.steps}]")
        for name in ("min_lr", "grad_clip"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not 0 <= value < math.inf):
                raise ValueError(
                    f"CorpusConfig.{name}={value!r} is not allowed: it must be None or a finite number >= 0"
                )

    def micro_batch_size(self, world_size: int) -> int:
        """Windows per rank per micro-step; the global batch must split evenly."""
        parts = self.grad_accum * world_size
        if self.batch_size % parts:
            raise ValueError(
                f"batch_size={self.batch_size} does not split evenly over grad_accum={self.grad_accum} x "
                f"{world_size} processes; use a multiple of {parts}"
            )
        return self.batch_size // parts

    def schedule(self, lr: float) -> CosineSchedule:
        min_lr = lr / 10 if self.min_lr is None else self.min_lr
        if min_lr > lr:
            raise ValueError(f"min_lr={min_lr} is not allowed: it must be at most the learning rate lr={lr}")
        return CosineSchedule(max_lr=lr, total_steps=self.steps, warmup_steps=self.warmup_steps, min_lr=min_lr)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CorpusRun:
    history: History
    tokens_per_s: float  # global training tokens per second (evaluation and saving excluded)
    train_seconds: float


EvalCallback = Callable[[dict, History], None]


# --------------------------------------------------------------------- steps
def step_seed(seed: int, step: int, rank: int) -> int:
    """The torch seed for dropout at (step, rank): a pure function, so resuming needs no RNG state."""
    return int(np.random.SeedSequence([seed % 2**64, _DROPOUT_STREAM, step, rank]).generate_state(1)[0])


def evaluate_splits(model: torch.nn.Module, data: TokenData, config: CorpusConfig, seed: int,
                    ctx: DistContext) -> dict[str, float]:
    """Eval-mode loss on fixed batches of each split (the same windows at every evaluation)."""
    model = unwrap(model)
    block = model.config.block_size
    rows = config.batch_size // config.grad_accum
    losses = {}
    with eval_mode(model):
        for name, stream in (("train", TRAIN_EVAL_STREAM), ("val", VAL_STREAM)):
            tokens = data.split(name)
            starts = window_starts(len(tokens), block, config.eval_batches * rows, seed, stream, 0)
            batches = shard_batches(tokens, starts, block, config.eval_batches, ctx.world_size, ctx.rank)
            local = [model(x.to(ctx.device), targets=y.to(ctx.device))[1].item() for x, y in batches]
            losses[name] = mean_over_ranks(sum(local) / len(local), ctx)
    return losses


# ----------------------------------------------------------------------- run
def train_corpus(
    model: torch.nn.Module,
    data: TokenData,
    train_config: TrainConfig,
    config: CorpusConfig,
    ctx: DistContext | None = None,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    resume: str | Path | Checkpoint | None = None,
    checkpoint: str | Path | None = None,
    tokenizer_name: str | None = None,
    on_eval: EvalCallback | None = None,
    progress: bool = True,
    until: int | None = None,
) -> CorpusRun:
    """Train `model` (a plain GPT on ctx.device, or on the CPU to be moved there once its experts are cut
    under `config.expert_parallel`) on `data` for `config.steps` steps.

    Uses `train_config`'s lr (the schedule's peak), weight decay, betas and seed. Evaluates at
    step 0, every `config.eval_interval` steps and at the end; each evaluation appends
    {"step", "train_loss", "val_loss", "lr"} to `history.evals`, saves `checkpoint` (rank 0 only)
    and calls `on_eval(record, history)`. With `resume`, weights, optimizer state, history and
    step come from that checkpoint and the run continues where it stopped. `resume` may also be a
    loaded `Checkpoint` whose run this one continues with the model and optimizer given here (which
    already hold their weights and state): how an upcycled MoE carries on its dense run (`upcycling.py`).
    With `until`, the run stops after that step (evaluated and saved there) while the learning-rate
    schedule still spans `config.steps`; resuming it later gives the uninterrupted run.
    """
    ctx = ctx if ctx is not None else DistContext(device=next(model.parameters()).device)
    block = model.config.block_size
    data.check_windows(block)
    config.micro_batch_size(ctx.world_size)  # fails early when the batch does not split
    schedule = config.schedule(train_config.lr)
    if isinstance(resume, Checkpoint) and optimizer is None:
        raise ValueError("resuming from a loaded Checkpoint needs optimizer=, holding the state the run continues "
                         "with (a path as resume= restores the optimizer from the file)")
    optimizer = optimizer if optimizer is not None else make_optimizer(model, train_config)
    history, start = History(), 0
    if isinstance(resume, Checkpoint):
        differs = [f"{k}: {getattr(resume.config, k)!r} -> {getattr(model.config, k)!r}" for k in SHAPE_FIELDS
                   if getattr(resume.config, k) != getattr(model.config, k)]
        if differs:
            raise ValueError(f"the model does not continue the checkpoint's run: {'; '.join(differs)}")
        history, start = resumable(resume, "the given checkpoint", data, config, train_config)
        history = History.from_dict(history.to_dict())  # a copy: the run appends to it
    elif resume is not None:
        history, start = restore(resume, model, optimizer, data, config, ctx, train_config)
    end = config.steps if until is None else until
    if isinstance(end, bool) or not isinstance(end, int) or not start < end <= config.steps:
        raise ValueError(f"stopping after step {until!r} (until, --stop-after) is not allowed: it must be a step "
                         f"in ({start}, {config.steps}], after the start and at most --steps")
    # expert parallelism: keep this process's experts (weights and AdamW moments) before DDP wraps the rest
    group = expert_group(config.expert_parallel, ctx.world_size, ctx.rank)
    if group.size > 1:
        shard_experts(model, group, optimizer)
    if next(model.parameters()).device != ctx.device:  # built (and cut) on the CPU: only its part moves
        to_device(model, optimizer, ctx.device)
    ddp = wrap(model, ctx)
    seed = train_config.seed

    def evaluation(step: int, lr: float) -> None:
        losses = evaluate_splits(model, data, config, seed, ctx)
        for name, value in losses.items():  # the weights after the last update: never saved when diverged
            check_finite(value, f"step {step} ({name} evaluation)", train_config)
        record = {"step": step, "train_loss": losses["train"], "val_loss": losses["val"], "lr": lr}
        history.evals.append(record)
        if checkpoint is not None:
            whole = whole_model(model, optimizer, train_config)  # every process: the experts are gathered
            state = {"step": step, "corpus_config": config.to_dict(), "data_fingerprint": data.meta.fingerprint,
                     "world_size": ctx.world_size}
            if whole is not None and ctx.is_main:
                save_checkpoint(checkpoint, *whole, history, tokenizer_name, train_config, train_state=state)
        if on_eval is not None:
            on_eval(record, history)

    if resume is None:  # a resumed run has its step-0 evaluation already
        evaluation(0, schedule(0))
    seconds = 0.0
    bar = tqdm(range(start + 1, end + 1), desc="training", unit="step", initial=start,
               total=end, disable=not (progress and ctx.is_main))
    for step in bar:
        lr = schedule(step - 1)
        set_lr(optimizer, lr)
        starts = window_starts(len(data.train), block, config.batch_size, seed, TRAIN_STREAM, step)  # (B,)
        batches = [(x.to(ctx.device), y.to(ctx.device)) for x, y in
                   shard_batches(data.train, starts, block, config.grad_accum, ctx.world_size, ctx.rank)]
        torch.manual_seed(step_seed(seed, step, ctx.rank))
        began = time.perf_counter()
        loss = mean_over_ranks(train_step(ddp, optimizer, batches, history.moe, grad_clip=config.grad_clip,
                                          balance_scope=train_config.balance_scope), ctx)
        seconds += time.perf_counter() - began
        check_finite(loss, f"step {step}", train_config)
        history.epoch.append(step)
        history.loss.append(loss)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
        if step % config.eval_interval == 0 or step == end:
            evaluation(step, lr)
    bar.close()
    done = end - start
    rate = done * config.batch_size * block / seconds if seconds > 0 else 0.0
    return CorpusRun(history=history, tokens_per_s=rate, train_seconds=seconds)


def whole_model(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                train_config: TrainConfig) -> tuple[torch.nn.Module, torch.optim.Optimizer] | None:
    """The model and optimizer a checkpoint holds: these ones, or under expert parallelism a copy on the
    CPU of rank 0 with every expert gathered from the processes that hold them (None on the others).
    Collective: every process calls it."""
    if not sharded_parameters(model):
        return model, optimizer
    gathered = gathered_state_dicts(model, optimizer)
    if gathered is None:
        return None
    state, opt_state = gathered
    with torch.random.fork_rng(devices=[]):  # a model built only to be filled: the run's random stream stays
        whole = GPT(model.config)
    whole.load_state_dict(state)
    whole_optimizer = make_optimizer(whole, train_config)
    whole_optimizer.load_state_dict(opt_state)
    return whole, whole_optimizer


# settings that decide which windows each step and each evaluation reads: fixed for a resume
# (--steps and --warmup-steps may change: they reshape the learning-rate schedule from there on)
_FIXED_ON_RESUME = ("batch_size", "grad_accum", "eval_batches", "min_lr", "grad_clip")
# and the optimiser's settings: another value would break "the same losses as an uninterrupted run"
_FIXED_TRAIN_ON_RESUME = ("seed", "lr", "weight_decay", "betas", "balance_scope")


def restore(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, data: TokenData,
            config: CorpusConfig, ctx: DistContext, train_config: TrainConfig) -> tuple[History, int]:
    """Load a corpus checkpoint into model and optimizer; returns its history and step."""
    # onto the model's device: the CPU for a model whose experts are cut before it moves (expert parallelism)
    ck = load_checkpoint(path, model=model, optimizer=optimizer, map_location=next(model.parameters()).device)
    return resumable(ck, f"checkpoint {str(path)!r}", data, config, train_config)


def resumable(ck: Checkpoint, name: str, data: TokenData, config: CorpusConfig,
              train_config: TrainConfig) -> tuple[History, int]:
    """The history and step a run continues from `ck`, after checking it was made on the same data
    with the settings that decide the windows and the optimiser."""
    state = ck.train_state
    if state is None or ck.history is None:
        raise CheckpointError(f"{name} has no corpus training state (a Part-1 checkpoint?); "
                              f"it cannot be resumed on a corpus")
    try:
        fingerprint, step = state["data_fingerprint"], int(state["step"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(
            f"{name} holds an invalid corpus training state: {str(state)[:200]}"
        ) from None
    if fingerprint != data.meta.fingerprint:
        raise CheckpointError(
            f"{name} was trained on token folder fingerprint {fingerprint!r}, "
            f"but {str(data.folder)!r} has {data.meta.fingerprint!r}; resume on the same prepared data"
        )
    saved = state.get("corpus_config") or {}
    now = config.to_dict()
    changed = [f"{k}: {saved[k]!r} -> {now[k]!r}" for k in _FIXED_ON_RESUME if k in saved and saved[k] != now[k]]
    if ck.train_config is not None:
        saved_train, now_train = ck.train_config.to_dict(), train_config.to_dict()
        changed += [f"{k}: {saved_train[k]!r} -> {now_train[k]!r}" for k in _FIXED_TRAIN_ON_RESUME
                    if saved_train[k] != now_train[k]]
    if changed:
        raise CheckpointError(
            f"{name} was trained with other settings ({'; '.join(changed)}); resume with the "
            f"same ones (--steps and --warmup-steps may change; they reshape the schedule from here on)"
        )
    if step >= config.steps:
        raise CheckpointError(f"{name} is at step {step}, already at or past --steps "
                              f"{config.steps}; give more steps to continue")
    return ck.history, step  # saved right after the evaluation at `step`: it ends there
