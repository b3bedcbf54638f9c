"""Training: the seed post's hyper-parameters, one optimisation step, and the epoch loop.

An "epoch" in Part 1 is one step on the whole paragraph (a single batch). `fit` also accepts a
function that returns a fresh batch for each step, which is how the corpus is trained later.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .evaluation import perplexity
from .expert_parallel import clip_grad_norm, reduce_expert_grads
from .moe import MoE, MoEOutput, update_expert_biases

Batch = tuple[torch.Tensor, torch.Tensor]  # (inputs (B, T), targets (B, T))
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1
# where the balancing loss counts each expert's choices (f_i): the micro-batch it is computed on, or the
# global batch of the optimisation step (all micro-batches, all processes)
BALANCE_SCOPES = ("micro_batch", "global")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 500
    lr: float = 1e-4
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.95)
    cont_prefix_tokens: int = 10  # prefix kept for the continuation test
    cont_new_tokens: int = 25  # tokens generated after the prefix
    cont_temperature: float = 0.1  # the seed's near-greedy setting...
    cont_top_k: int | None = 1  # ...top_k=1 makes it exactly greedy
    seed: int = 1337
    balance_scope: str = "micro_batch"  # one of BALANCE_SCOPES (an MoE's load-balancing loss)

    def __post_init__(self) -> None:
        if self.balance_scope not in BALANCE_SCOPES:
            raise ValueError(f"TrainConfig.balance_scope={self.balance_scope!r} is not allowed: choose one of "
                             f"{BALANCE_SCOPES}")
        _positive_int("epochs", self.epochs)
        _positive_int("cont_prefix_tokens", self.cont_prefix_tokens)
        _positive_int("cont_new_tokens", self.cont_new_tokens)
        if self.cont_top_k is not None:
            _positive_int("cont_top_k", self.cont_top_k)
        _positive_finite("lr", self.lr)
        _positive_finite("cont_temperature", self.cont_temperature)
        if not _is_number(self.weight_decay) or not 0 <= self.weight_decay < math.inf:
            raise ValueError(f"TrainConfig.weight_decay={self.weight_decay!r} is not allowed: it must be >= 0")
        betas = self.betas
        valid = isinstance(betas, (tuple, list)) and len(betas) == 2
        if not valid or not all(_is_number(b) and 0 <= b < 1 for b in betas):
            raise ValueError(f"TrainConfig.betas={betas!r} is not allowed: it must be two numbers in [0, 1)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not SEED_MIN <= self.seed <= SEED_MAX:
            raise ValueError(f"TrainConfig.seed={self.seed!r} is not allowed: it must be an integer in "
                             f"[{SEED_MIN}, {SEED_MAX}] (what torch.manual_seed accepts)")
        object.__setattr__(self, "betas", tuple(float(b) for b in betas))

    def to_dict(self) -> dict:
        return asdict(self)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_finite(name: str, value) -> None:
    if not _is_number(value) or not 0 < value < math.inf:
        raise ValueError(f"TrainConfig.{name}={value!r} is not allowed: it must be a finite number > 0")


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"TrainConfig.{name}={value!r} is not allowed: it must be an integer >= 1")


# ---------------------------------------------------------------- 25 % points
def quarter_points(total: int) -> dict[int, int]:
    """{epoch: percent} for the 25/50/75/100 % evaluation points of a run of `total` epochs.

    Epoch q/4 * total rounded up, so each point is reached at or after its share of the run.
    Works when total is not a multiple of 4 (10 -> 3, 5, 8, 10) and when total < 4 (2 -> 1, 2:
    two quarters fall on the same epoch, and the later percentage names it).
    """
    if isinstance(total, bool) or not isinstance(total, int) or total < 1:
        raise ValueError(f"total epochs={total!r} must be an integer >= 1")
    return {math.ceil(q * total / 4): 25 * q for q in range(1, 5)}


def is_quarter(epoch: int, total: int) -> bool:
    """True when the 1-based `epoch` is one of the 25 % evaluation points of `total` epochs."""
    return epoch in quarter_points(total)


def check_finite(loss: float, where: str, config: TrainConfig) -> None:
    """Raise FloatingPointError, naming the settings that can cause it, when a loss is NaN or infinite."""
    if not math.isfinite(loss):
        raise FloatingPointError(
            f"training diverged: the loss became {loss} at {where} (lr {config.lr:g}, weight decay "
            f"{config.weight_decay:g}); lower --lr or --weight-decay (a saved checkpoint keeps its last good state)"
        )


# -------------------------------------------------------------------- steps
def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (and embeddings) only, none on biases and LayerNorm."""
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    # biases by name too: an MoE layer's expert biases are (E, out), two-dimensional yet still biases
    decay = [p for name, p in params if p.dim() >= 2 and not name.endswith("bias")]
    no_decay = [p for name, p in params if p.dim() < 2 or name.endswith("bias")]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas)


def objective(loss: torch.Tensor, moe: MoEOutput) -> torch.Tensor:
    """What training differentiates: the cross-entropy plus the MoE penalty (0 for a dense model),

        L = CE + aux_loss_weight * mean_l L_aux,l + z_loss_weight * mean_l L_z,l

    averaged over the MoE layers l (`MoEOutput.collect` weighs the two auxiliary losses).
    """
    return loss + moe.penalty


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: Batch | list[Batch],
               moe_log: list | None = None, *, grad_clip: float | None = None,
               balance_scope: str = "micro_batch") -> float:
    """One optimisation step over one batch (x, y) or a list of equal micro-batches; returns the mean
    cross-entropy before the update (this process's).

    Each micro-batch's `objective` is divided by their number, so the gradients add up to the mean's.
    Under DDP, gradients are all-reduced only in the last micro-batch's backward (`no_sync` before);
    experts spread over processes (`expert_parallel`) get theirs summed and averaged after it. Then
    the gradient norm is clipped to `grad_clip` (None or 0: not clipped), the optimizer steps and the
    balancing biases move (auxiliary-loss-free balancing, if a layer uses it). With
    balance_scope="global" the balancing loss counts the experts' choices over the whole step first
    (`global_balance_counts`). With `moe_log`, an MoE model appends the last micro-batch's routing
    record to it.
    """
    if len(batches) == 2 and all(isinstance(t, torch.Tensor) for t in batches):
        batches = [tuple(batches)]  # one batch (x, y)
    if balance_scope not in BALANCE_SCOPES:
        raise ValueError(f"balance_scope={balance_scope!r} is not allowed: choose one of {BALANCE_SCOPES}")
    model.train()
    optimizer.zero_grad(set_to_none=True)
    counts = global_balance_counts(model, batches) if balance_scope == "global" else None
    total = 0.0
    for i, (x, y) in enumerate(batches):
        last = i == len(batches) - 1
        sync = nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            _, loss, moe = model(x, targets=y, with_moe=True, balance_counts=counts)
            (objective(loss, moe) / len(batches)).backward()
        total += loss.item() / len(batches)
    reduce_expert_grads(model)
    if moe_log is not None and moe.layers:
        moe_log.append(moe.record())
    if grad_clip:
        clip_grad_norm(model, grad_clip)
    optimizer.step()
    update_expert_biases(model)
    return total


@torch.no_grad()
def global_balance_counts(model: torch.nn.Module, batches: list[Batch]) -> list[torch.Tensor] | None:
    """Per MoE layer, the (E,) choices per expert over the global batch: every micro-batch here, summed
    over all processes (an all-reduce). None for a dense model.

    A micro-batch's backward runs before the next one is routed, so the counts come from a forward
    pass without gradients over all of them first: one more forward per micro-batch, a step about a third
    longer (1.33x for Part 2's MoE in 4 micro-batches of 4 windows on a 2-core CPU), and under expert
    parallelism half as many bytes again. It runs in training mode with the random state put back
    afterwards, so its dropout and router noise are those of the real forwards: the counts are exactly
    those of the routing being trained. No pass (None) where none is needed: a model without a balancing
    loss (dense, or aux_loss_weight 0), or one micro-batch on one process, its own global batch.
    """
    module = model.module if hasattr(model, "no_sync") else model  # DDP's forward would prepare a reduction
    if not any(isinstance(m, MoE) for m in module.modules()) or module.config.aux_loss_weight == 0:
        return None
    distributed = dist.is_available() and dist.is_initialized()
    if len(batches) == 1 and not distributed:
        return None  # the micro-batch is the global batch: its own counts are the global ones
    device = batches[0][0].device
    total = None
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for x, _ in batches:
            _, _, moe = module(x, with_moe=True)
            counts = torch.stack([s.counts for s in moe.layers])  # (L, E)
            total = counts if total is None else total + counts
    if distributed:
        dist.all_reduce(total)
    return list(total.unbind(0))


# ---------------------------------------------------------------------- fit
@dataclass
class History:
    """Per-epoch training loss and perplexity (dropout on), plus what the callbacks added.

    Corpus runs (`corpus_train`) store optimisation steps in `epoch` and their periodic train and
    validation evaluations in `evals`. MoE models add one routing record per step to `moe`
    (auxiliary losses, and per layer the expert shares, dropped fraction and router entropy);
    `loss` stays cross-entropy alone.
    """

    epoch: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    quarters: list[dict] = field(default_factory=list)  # one record per 25 % point
    evals: list[dict] = field(default_factory=list)  # corpus runs: {"step", "train_loss", "val_loss", "lr"}
    moe: list[dict] = field(default_factory=list)  # MoE models: one `MoEOutput.record()` per step

    @property
    def perplexity(self) -> list[float]:
        return [perplexity(v) for v in self.loss]

    def to_dict(self) -> dict:
        d = {"epoch": list(self.epoch), "loss": list(self.loss), "quarters": list(self.quarters)}
        if self.evals:
            d["evals"] = list(self.evals)
        if self.moe:
            d["moe"] = list(self.moe)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> History:
        return cls(epoch=list(d["epoch"]), loss=list(d["loss"]), quarters=list(d.get("quarters", [])),
                   evals=list(d.get("evals", [])), moe=list(d.get("moe", [])))


QuarterCallback = Callable[[int, int, "History"], "dict | None"]


def fit(
    model: torch.nn.Module,
    data: Batch | Callable[[int], Batch],
    config: TrainConfig,
    optimizer: torch.optim.Optimizer | None = None,
    on_quarter: QuarterCallback | None = None,
    progress: bool = True,
) -> History:
    """Train for `config.epochs` steps and return the loss history.

    `data` is one fixed batch (x, y) or a function `epoch -> (x, y)`. At each 25 % point
    `on_quarter(epoch, percent, history)` is called; a dict it returns is stored in
    `history.quarters`. The global torch RNG is seeded with `config.seed` first, so dropout (and a
    batch function using the global RNG) repeat exactly on the same machine.
    """
    optimizer = optimizer if optimizer is not None else make_optimizer(model, config)
    history = History()
    points = quarter_points(config.epochs)
    get_batch = data if callable(data) else (lambda _epoch: data)
    torch.manual_seed(config.seed)
    bar = tqdm(range(1, config.epochs + 1), desc="training", unit="epoch", disable=not progress)
    for epoch in bar:
        loss = train_step(model, optimizer, get_batch(epoch), history.moe, balance_scope=config.balance_scope)
        check_finite(loss, f"epoch {epoch}", config)
        history.epoch.append(epoch)
        history.loss.append(loss)
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        if epoch in points and on_quarter is not None:
            record = on_quarter(epoch, points[epoch], history)
            if record is not None:
                history.quarters.append({"epoch": epoch, "percent": points[epoch], **record})
    bar.close()
    return history
