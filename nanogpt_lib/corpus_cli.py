"""The corpus half of `python -m nanogpt_lib.train`: options, and the run they describe.

    python -m nanogpt_lib.train --data data/bundled --steps 2000 --batch-size 32
    torchrun --nproc_per_node=2 -m nanogpt_lib.train --data data/bundled ...

`--data` switches corpus mode on; without it `train.py` runs Part 1 unchanged. The model options
(--block-size, --n-layer, ...) and --lr, --weight-decay, --beta1/2, --seed, --device and
--checkpoint are shared with Part 1; --epochs, --text-file and the continuation options are Part
1's only.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .checkpoint import load_checkpoint
from .cli_errors import first_line
from .config import SHAPE_FIELDS
from .corpus_train import CorpusConfig, CorpusRun, train_corpus
from .costs import check_fits
from .distributed import init_distributed, shutdown
from .model import GPT
from .plots import plot_corpus_history, save_png
from .tokenizer import load_tokenizer, tokenizer_hash
from .tokens import open_tokens
from .training import TrainConfig
from .upcycling import METHODS, OPTIMIZER_STATES, upcycle_checkpoint, upcycle_config

_CC = CorpusConfig()


def _choice(allowed: tuple[str, ...]):
    """An argparse type that accepts one of `allowed` (kept apart from `choices` so the option stays
    "not given" by default)."""
    def parse(text: str) -> str:
        if text not in allowed:
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(allowed)}")
        return text
    return parse

# option -> (type, help); all default to "not given" so that Part 1 can refuse them
_OPTIONS = {
    "--steps": (int, f"optimisation steps (default {_CC.steps})"),
    "--batch-size": (int, f"global batch: windows per step over all processes (default {_CC.batch_size})"),
    "--grad-accum": (int, f"micro-steps per step, to fit a large batch in memory (default {_CC.grad_accum})"),
    "--eval-interval": (int, f"evaluate train and val loss every N steps (default {_CC.eval_interval})"),
    "--eval-batches": (int, f"fixed batches per evaluation (default {_CC.eval_batches})"),
    "--warmup-steps": (int, "linear warm-up steps before the cosine decay (default --steps / 10, at most 100)"),
    "--min-lr": (float, "learning rate at the end of the cosine decay (default --lr / 10)"),
    "--grad-clip": (float, f"clip the gradient norm to this; 0 turns clipping off (default {_CC.grad_clip})"),
    "--resume": (Path, "continue from this checkpoint (same --data); the run ends at --steps"),
    "--stop-after": (int, "stop after this step (evaluated and saved there); the schedule still spans --steps, "
                          "so --resume (or --upcycle-from) continues it"),
    "--plot": (Path, "save the loss curves to this PNG at the end"),
    "--expert-parallel": (int, "spread each MoE layer's experts over groups of N processes, tokens sent to them "
                               "with all-to-all (N divides the processes and --n-expert; default 1: every "
                               "process holds every expert)"),
    "--dist-timeout": (float, "seconds a process waits for the others before the run fails (default 300)"),
    "--upcycle-from": (Path, "start the MoE (--n-expert, --top-k, ...) from this dense corpus checkpoint: each "
                             "expert a copy of its block's MLP, the run continuing from the checkpoint's step"),
    "--upcycle-method": (_choice(METHODS), "copy (every expert the whole MLP) or split (expert e the e-th "
                                           "1/n_expert of its hidden units) (default copy)"),
    "--upcycle-noise": (float, "noise on the expert copies, in units of each weight's std (default 0: exact)"),
    "--upcycle-optimizer": (_choice(OPTIMIZER_STATES), "carry the dense AdamW moments over, or start "
                                                       "fresh (default carry)"),
}
# the options that only --upcycle-from uses
_UPCYCLE_DETAILS = ("--upcycle-method", "--upcycle-noise", "--upcycle-optimizer")
# model options that an upcycled model takes from its dense checkpoint (or from the method)
# (the vocabulary has no option: it comes from the tokenizer)
_FROM_CHECKPOINT = (*(f for f in SHAPE_FIELDS if f != "vocab_size"), "expert_hidden", "expert_type", "n_shared_expert")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("corpus training (switched on by --data)")
    group.add_argument("--data", type=Path, default=None,
                       help="token folder made by `python -m nanogpt_lib.prepare` (train.bin, val.bin, meta.json)")
    for option, (kind, text) in _OPTIONS.items():
        group.add_argument(option, type=kind, default=argparse.SUPPRESS, help=text)


def corpus_mode(args: argparse.Namespace) -> bool:
    """True when the command line asks for corpus training (--data or any corpus option)."""
    return args.data is not None or any(hasattr(args, _dest(o)) for o in _OPTIONS)


def _dest(option: str) -> str:
    return option.removeprefix("--").replace("-", "_")


def corpus_config(args: argparse.Namespace) -> CorpusConfig:
    given = {_dest(o): getattr(args, _dest(o)) for o in _OPTIONS if hasattr(args, _dest(o))}
    if given.get("grad_clip") == 0:
        given["grad_clip"] = None
    fields = CorpusConfig.__dataclass_fields__
    return CorpusConfig(**{k: v for k, v in given.items() if k in fields})


def run(args: argparse.Namespace, device: torch.device) -> CorpusRun:
    """Corpus training from parsed options; rank 0 alone prints, plots and saves."""
    if args.data is None:
        given = [o for o in _OPTIONS if hasattr(args, _dest(o))]
        raise ValueError(f"{', '.join(given)}: corpus-training option(s), which need --data FOLDER "
                         f"(made by `python -m nanogpt_lib.prepare`)")
    if hasattr(args, "stop_after") and args.checkpoint is None:
        raise ValueError("--stop-after stops a run to continue it later (--resume, --upcycle-from); give --checkpoint "
                         "FILE to save it there")
    details = [o for o in _UPCYCLE_DETAILS if hasattr(args, _dest(o))]
    if details and not hasattr(args, "upcycle_from"):
        raise ValueError(f"{', '.join(details)}: upcycling option(s), which need --upcycle-from DENSE_CHECKPOINT")
    config = corpus_config(args)
    train_config = TrainConfig(epochs=config.steps, lr=args.lr, weight_decay=args.weight_decay,
                               betas=(args.beta1, args.beta2), seed=args.seed, balance_scope=args.balance_scope)
    timeout = getattr(args, "dist_timeout", 300.0)
    if not 0 < timeout < math.inf:
        raise ValueError(f"--dist-timeout {timeout} is not allowed: it must be a finite number of seconds > 0")
    ctx = init_distributed(device, timeout)
    completed = False
    try:
        result = _train(args, config, train_config, ctx)
        completed = True
        return result
    except Exception as err:
        if not ctx.is_distributed:
            raise
        # one line per process; torchrun then stops the others. The process whose own work failed says
        # so; one that lost a peer (it died, or did not answer within --dist-timeout) names the peer instead
        print(rank_failure_line(err, ctx, timeout), file=sys.stderr)
        if getattr(args, "debug", False):
            raise
        raise SystemExit(1) from None
    finally:
        shutdown(ctx, completed=completed)


def rank_failure_line(err: BaseException, ctx, timeout: float) -> str:
    """The one line a process of a torchrun job prints when it stops on `err`."""
    if is_peer_failure(err):
        peer = f"rank {1 - ctx.rank}" if ctx.world_size == 2 else "another rank"
        return (f"rank {ctx.rank} of {ctx.world_size} stopped: {peer} died or did not answer within "
                f"--dist-timeout {timeout:g} s ({first_line(err)[:160]})")
    return f"rank {ctx.rank} of {ctx.world_size} failed: {type(err).__name__}: {first_line(err)}"


_PEER_SIGNS = ("connection closed by peer", "connection reset by peer", "timed out", "broken pipe", "gloo")


def is_peer_failure(err: BaseException) -> bool:
    """Whether `err` is a collective that broke because another process failed, not this one's own fault."""
    return isinstance(err, torch.distributed.DistError) or (
        isinstance(err, RuntimeError) and any(sign in str(err).lower() for sign in _PEER_SIGNS))


def _train(args, config: CorpusConfig, train_config: TrainConfig, ctx) -> CorpusRun:
    def say(line: str) -> None:
        if ctx.is_main:
            tqdm.write(line)

    from .train import describe  # shared with Part 1
    from .train import model_config as config_from_args

    data = open_tokens(args.data)
    tokenizer = load_tokenizer(args.tokenizer, verbose=ctx.is_main)
    micro = config.micro_batch_size(ctx.world_size)
    upcycled = _upcycled(args, train_config, ctx, micro) if hasattr(args, "upcycle_from") else None
    if upcycled is None:
        model_config = config_from_args(args, len(tokenizer))
        optimizer, resume = None, getattr(args, "resume", None)
        check_fits(model_config, micro, ctx.device)  # on every rank: a failure then stops all of them alike
    else:
        model, optimizer, resume = upcycled
        model_config = model.config
    data.check_compatible(tokenizer.name_or_path, model_config.vocab_size, tokenizer_hash(tokenizer))
    plot = getattr(args, "plot", None)
    if upcycled is None:
        torch.manual_seed(train_config.seed)
        # with expert parallelism the whole model is built on the CPU; each process moves only its part
        model = GPT(model_config).to(ctx.device if config.expert_parallel == 1 else torch.device("cpu"))
    else:
        say(f"Upcycled {args.upcycle_from} (dense, step {resume.train_state['step']}): {model_config.n_expert} "
            f"experts, top-{model_config.top_k}, method {getattr(args, 'upcycle_method', 'copy')}, optimizer state "
            f"{getattr(args, 'upcycle_optimizer', 'carry')}")
    say(f"Device {ctx.device} x {ctx.world_size} process(es); {data.meta.tokens['train']:,} train + "
        f"{data.meta.tokens['val']:,} val tokens in {data.folder}; model {describe(model)}; "
        f"global batch {config.batch_size} = {ctx.world_size} x {config.grad_accum} x {micro} windows "
        f"of {model_config.block_size} tokens")

    if config.expert_parallel > 1 and model_config.n_expert:
        say(f"Expert parallelism: experts spread over {config.expert_parallel} processes, "
            f"{model_config.n_expert // config.expert_parallel} of {model_config.n_expert} per MoE layer on each; "
            f"tokens travel to them by all-to-all")

    def on_eval(record: dict, history) -> None:
        say(f"step {record['step']:>6}/{config.steps}: train loss {record['train_loss']:.4f} | "
            f"val loss {record['val_loss']:.4f} | lr {record['lr']:.2e}")

    result = train_corpus(model, data, train_config, config, ctx, optimizer=optimizer, resume=resume,
                          checkpoint=args.checkpoint, tokenizer_name=tokenizer.name_or_path, on_eval=on_eval,
                          progress=args.progress, until=getattr(args, "stop_after", None))
    say(f"Trained {config.batch_size * model_config.block_size:,} tokens per step at "
        f"{result.tokens_per_s:,.0f} tokens/s ({result.train_seconds:.1f} s in training steps)")
    if args.checkpoint is not None:
        say(f"Checkpoint saved to {args.checkpoint}")
    if plot is not None and ctx.is_main:
        say(f"Loss curves saved to {save_png(plot_corpus_history(result.history), plot)}")
    return result


def _upcycled(args, train_config: TrainConfig, ctx, micro: int):
    """(MoE model, its optimizer, the dense checkpoint it continues) for --upcycle-from."""
    given = getattr(args, "given", frozenset())
    if hasattr(args, "resume"):
        raise ValueError("--upcycle-from starts an MoE from a dense checkpoint and --resume continues a run; give "
                         "one of them (resume an upcycled run from its own --checkpoint with --resume)")
    if args.n_expert < 2:
        raise ValueError(f"--upcycle-from makes a Mixture of Experts, but --n-expert is {args.n_expert}; "
                         f"give --n-expert N with N >= 2")
    from .train import _MOE_OPTIONS, _option

    fixed = [_option(name) for name in _FROM_CHECKPOINT if name in given]
    if fixed:
        raise ValueError(f"{', '.join(fixed)}: with --upcycle-from the model's size comes from the dense checkpoint "
                         f"and the experts' kind and width from --upcycle-method; leave them out")
    # the MoE options typed, and --dropout (the MoE may train with another dropout than its dense model did)
    options = {name: getattr(args, name) for name in (*_MOE_OPTIONS, "dropout")
               if name in given and name not in _FROM_CHECKPOINT and name != "top_k"}
    method = getattr(args, "upcycle_method", "copy")
    dense = load_checkpoint(args.upcycle_from, map_location="cpu")  # on the CPU: the device holds the MoE alone
    check_fits(upcycle_config(dense.config, args.n_expert, args.top_k, method, **options), micro, ctx.device)
    return upcycle_checkpoint(dense, train_config, args.n_expert, args.top_k, method=method,
                              optimizer_state=getattr(args, "upcycle_optimizer", "carry"),
                              expert_noise=getattr(args, "upcycle_noise", 0.0), seed=args.seed,
                              map_location=ctx.device, **options)
