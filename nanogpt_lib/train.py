"""Part 1 from the command line: overfit one paragraph and watch the pipeline work.

    python -m nanogpt_lib.train                 # the seed post's run on the bundled paragraph
    python -m nanogpt_lib.train --help          # every option
    python -m nanogpt_lib.train --data DIR ...  # a prepared corpus instead (corpus_cli.py; torchrun works)

Prints the initial loss and perplexity (expect about ln(vocab_size) and vocab_size), then at each
25 % of the epochs: training loss, eval-mode loss and perplexity, reconstruction accuracy and text,
and a greedy continuation of the first tokens.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import corpus_cli
from .checkpoint import save_checkpoint
from .checkup import checkup_callback
from .cli_errors import run_cli
from .config import AUX_LOSS_TYPES, DISPATCHES, EXPERT_TYPES, ROUTER_TYPES, GPTConfig, part1_config
from .costs import check_fits
from .data import bundled_paragraph, encode, read_text, shift_targets
from .evaluation import continue_text, evaluate
from .model import GPT
from .moe import imbalance
from .paths import check_not_replacing, check_outputs, same_file
from .tokenizer import HUB_TOKENIZER, load_tokenizer
from .training import BALANCE_SCOPES, History, TrainConfig, fit, make_optimizer

_P1 = part1_config(vocab_size=GPTConfig.vocab_size)  # the vocabulary comes from the tokenizer
_TC = TrainConfig()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m nanogpt_lib.train",
        description="Train a small GPT on one text until it memorises it (Part 1 of 'NanoGPT ao nanoMoE').",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = p.add_argument_group("data")
    data.add_argument("--text-file", type=Path, default=None,
                      help="UTF-8 text to memorise (default: the bundled Portuguese paragraph)")
    data.add_argument("--tokenizer", default=HUB_TOKENIZER,
                      help="Hugging Face tokenizer id or local folder; falls back to the bundled one when unavailable")
    model = p.add_argument_group("model (GPTConfig)")
    model.add_argument("--block-size", type=int, default=_P1.block_size, help="context length in tokens")
    model.add_argument("--n-layer", type=int, default=_P1.n_layer, help="Transformer blocks")
    model.add_argument("--n-head", type=int, default=_P1.n_head, help="attention heads (must divide --n-embd)")
    model.add_argument("--n-embd", type=int, default=_P1.n_embd, help="embedding width")
    model.add_argument("--dropout", type=float, default=_P1.dropout, help="dropout probability in [0, 1)")
    model.add_argument("--bias", action=argparse.BooleanOptionalAction, default=_P1.bias,
                       help="biases in Linear and LayerNorm layers")
    moe = p.add_argument_group("Mixture of Experts (Part 2; the model is dense unless --n-expert > 0)")
    moe.add_argument("--n-expert", type=int, default=_P1.n_expert, help="experts per MoE layer (0: dense)")
    moe.add_argument("--top-k", type=int, default=_P1.top_k, help="experts each token is sent to")
    moe.add_argument("--moe-every", type=int, default=_P1.moe_every,
                     help="every k-th block is MoE (1: all blocks, 2: every other one)")
    moe.add_argument("--expert-hidden", type=int, default=_P1.expert_hidden,
                     help="hidden width of one expert (default: 4 * n_embd, or 8 * n_embd // 3 for swiglu)")
    moe.add_argument("--capacity-factor", type=_factor, default=_P1.capacity_factor,
                     help="training seats per expert = factor * tokens * top_k / n_expert ('none': no limit)")
    moe.add_argument("--eval-capacity-factor", type=_factor, default=_P1.eval_capacity_factor,
                     help="the same for evaluation ('none': no limit)")
    moe.add_argument("--aux-loss-weight", type=float, default=_P1.aux_loss_weight,
                     help="weight of the load-balancing loss")
    moe.add_argument("--z-loss-weight", type=float, default=_P1.z_loss_weight, help="weight of the router z-loss")
    moe.add_argument("--router-noise", type=float, default=_P1.router_noise,
                     help="std of the noise on router logits in training")
    moe.add_argument("--moe-dispatch", choices=DISPATCHES, default=_P1.moe_dispatch,
                     help="grouped (rows sorted by expert, F.grouped_mm), vectorised (padded batched buffer) or "
                          "loop (one expert at a time); the same results")
    modern = p.add_argument_group("today's MoE designs (Part 3; the defaults are Part 2's MoE)")
    modern.add_argument("--expert-type", choices=EXPERT_TYPES, default=_P1.expert_type,
                        help="gelu (GPT-2 MLP), swiglu (gated: Mixtral, Qwen, DeepSeek), clamped_swiglu (gpt-oss)")
    modern.add_argument("--n-shared-expert", type=int, default=_P1.n_shared_expert,
                        help="always-active experts per MoE layer, added to the routed ones")
    modern.add_argument("--router-type", choices=ROUTER_TYPES, default=_P1.router_type,
                        help="softmax probabilities or DeepSeek-V3's sigmoid scores")
    modern.add_argument("--norm-topk-prob", type=_optional_bool, default=_P1.norm_topk_prob,
                        help="renormalise the k chosen weights: true, false, or none (only when top_k >= 2)")
    modern.add_argument("--bias-update-rate", type=float, default=_P1.bias_update_rate,
                        help="auxiliary-loss-free balancing: bias change per step (0: off)")
    modern.add_argument("--n-group", type=int, default=_P1.n_group,
                        help="DeepSeek-V3: experts in n_group groups; tokens choose within their best topk_group")
    modern.add_argument("--topk-group", type=int, default=_P1.topk_group, help="groups a token may choose from")
    modern.add_argument("--routed-scaling-factor", type=float, default=_P1.routed_scaling_factor,
                        help="DeepSeek-V3: routed experts' weights times this (1: unchanged)")
    modern.add_argument("--router-bias", action=argparse.BooleanOptionalAction, default=_P1.router_bias,
                        help="gpt-oss: a bias in the router's Linear")
    modern.add_argument("--swiglu-alpha", type=float, default=_P1.swiglu_alpha,
                        help="clamped_swiglu: gate * sigmoid(alpha * gate)")
    modern.add_argument("--swiglu-limit", type=float, default=_P1.swiglu_limit,
                        help="clamped_swiglu: gate <= limit, up in [-limit, limit]")
    modern.add_argument("--shared-expert-gate", action=argparse.BooleanOptionalAction,
                        default=_P1.shared_expert_gate, help="Qwen2-MoE: shared experts times sigmoid(x w_g)")
    modern.add_argument("--aux-loss-type", choices=AUX_LOSS_TYPES, default=_P1.aux_loss_type,
                        help="balancing loss: switch, mixtral / qwen (k x switch), sequence (DeepSeek-V3)")
    train = p.add_argument_group("training (TrainConfig)")
    train.add_argument("--epochs", type=int, default=_TC.epochs, help="optimisation steps on the whole text")
    train.add_argument("--lr", type=float, default=_TC.lr, help="AdamW learning rate")
    train.add_argument("--weight-decay", type=float, default=_TC.weight_decay, help="AdamW weight decay")
    train.add_argument("--beta1", type=float, default=_TC.betas[0], help="AdamW beta1")
    train.add_argument("--beta2", type=float, default=_TC.betas[1], help="AdamW beta2")
    train.add_argument("--cont-prefix-tokens", type=int, default=_TC.cont_prefix_tokens,
                       help="prefix tokens given to the continuation test")
    train.add_argument("--cont-new-tokens", type=int, default=_TC.cont_new_tokens,
                       help="tokens generated in the continuation test")
    train.add_argument("--cont-temperature", type=float, default=_TC.cont_temperature,
                       help="sampling temperature of the continuation test (> 0)")
    train.add_argument("--cont-top-k", type=int, default=_TC.cont_top_k,
                       help="top-k of the continuation test (1 = greedy)")
    train.add_argument("--seed", type=int, default=_TC.seed, help="random seed (weights, dropout)")
    train.add_argument("--balance-scope", choices=BALANCE_SCOPES, default=_TC.balance_scope,
                       help="where the MoE balancing loss counts each expert's choices: each micro-batch, or the "
                            "global batch of the step (all micro-batches and processes)")
    run = p.add_argument_group("run")
    run.add_argument("--device", default="auto", help="'auto' (CUDA when present, else CPU), 'cpu', 'cuda' or 'cuda:N'")
    run.add_argument("--checkpoint", type=Path, default=None, help="save model, optimizer and history here at the end")
    run.add_argument("--overwrite", action="store_true",
                     help="let a new run replace an existing --checkpoint (without it, such a run is refused)")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show a progress bar")
    run.add_argument("--debug", action="store_true", help="show the traceback of a failure instead of one line")
    corpus_cli.add_arguments(p)
    return p


def parse_args(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """The options, plus `args.given`: the destinations the user typed (an option given with its
    default value counts), so that options that do not apply to the chosen mode can be refused."""
    parser = parser if parser is not None else build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    shadow = build_parser()
    for action in shadow._actions:  # every default "not given": what is left was typed
        action.default = argparse.SUPPRESS
    args.given = frozenset(vars(shadow.parse_args(argv)))
    return args


def _factor(text: str) -> float | None:
    """A capacity factor from the command line: a number, or 'none' for no limit."""
    if text.strip().lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or 'none'") from None


def _optional_bool(text: str) -> bool | None:
    """true / false / none from the command line."""
    values = {"true": True, "false": False, "none": None}
    try:
        return values[text.strip().lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(values)}") from None


# every GPTConfig field has its option, but the vocabulary, which comes from the tokenizer
_MODEL_OPTIONS = tuple(f.name for f in dataclasses.fields(GPTConfig) if f.name != "vocab_size")


def model_config(args: argparse.Namespace, vocab_size: int) -> GPTConfig:
    """The GPTConfig the command-line options describe (the vocabulary comes from the tokenizer)."""
    return GPTConfig(vocab_size=vocab_size, **{name: getattr(args, name) for name in _MODEL_OPTIONS})


# options that shape the Mixture of Experts only: refused on a dense model instead of silently ignored
_MOE_OPTIONS = tuple(name for name in _MODEL_OPTIONS if name not in
                     ("block_size", "n_layer", "n_head", "n_embd", "dropout", "bias", "n_expert"))
# Part 1's own options: refused in corpus mode
_PART1_OPTIONS = ("epochs", "text_file", "cont_prefix_tokens", "cont_new_tokens", "cont_temperature", "cont_top_k")


def _option(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def check_applicable(args: argparse.Namespace) -> None:
    """Refuse options that the chosen mode would ignore (the defaults never count, only typed options)."""
    given = getattr(args, "given", frozenset())
    if args.n_expert == 0:
        moe = [_option(name) for name in (*_MOE_OPTIONS, "balance_scope") if name in given]
        if moe:
            raise ValueError(f"{', '.join(moe)} shape(s) a Mixture of Experts, but the model is dense (--n-expert 0); "
                             f"add --n-expert N (N > 0) or leave them out")
    if args.balance_scope == "global" and args.aux_loss_type == "sequence":
        raise ValueError("--balance-scope global counts the experts' choices over the whole step, but --aux-loss-type "
                         "sequence balances each sequence on its own; use one or the other")
    if "overwrite" in given and args.checkpoint is None:
        raise ValueError("--overwrite lets a run replace its --checkpoint, but no --checkpoint is given")
    if corpus_cli.corpus_mode(args):
        part1 = [_option(name) for name in _PART1_OPTIONS if name in given]
        if part1:
            raise ValueError(f"{', '.join(part1)}: Part 1 option(s), which do not apply with --data (the corpus "
                             f"comes from the token folder, the length from --steps); leave them out")


def check_paths(args: argparse.Namespace) -> None:
    """Before any work: outputs writable and apart from every input; an existing checkpoint kept
    unless this run resumes it or --overwrite says so. Then the outputs' folders are made."""
    resume = getattr(args, "resume", None)
    checkpoint, plot = args.checkpoint, getattr(args, "plot", None)
    tokenizer = Path(args.tokenizer).expanduser() if isinstance(args.tokenizer, str) else None
    inputs = {"--text-file": args.text_file, "--data": args.data, "--upcycle-from": getattr(args, "upcycle_from", None),
              "--tokenizer": tokenizer if tokenizer is not None and tokenizer.is_dir() else None}
    if resume is None or checkpoint is None or not same_file(resume, checkpoint):
        inputs["--resume"] = resume  # --checkpoint X --resume X continues the same file: allowed
    outputs = {"--checkpoint": checkpoint, "--plot": plot}
    check_outputs(outputs, inputs)
    check_not_replacing("--checkpoint", checkpoint, resume=resume, overwrite=args.overwrite)
    for path in outputs.values():
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)


_PART3_CHOICES = ("expert_type", "n_shared_expert", "router_type", "bias_update_rate")


def describe(model: GPT) -> str:
    """'1,330,432 parameters (793,344 without embeddings)', plus the active count of an MoE model."""
    text = f"{model.num_params():,} parameters ({model.num_params(non_embedding=True):,} without embeddings)"
    c = model.config
    if c.n_expert > 0:
        text += f"; MoE in blocks {c.moe_layers}: {c.n_expert} experts, top-{c.top_k}"
        if any(getattr(c, name) != getattr(_P1, name) for name in _PART3_CHOICES):  # not Part 2's layer
            text += (f" ({c.expert_type} experts, {c.n_shared_expert} shared, {c.router_type} router"
                     f"{', balancing bias' if c.bias_update_rate > 0 else ''})")
        text += f", {model.num_active_params():,} active per token"
    return text


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {name!r} is not a device; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name!r} asks for CUDA, but torch sees no CUDA GPU here; use 'cpu' or 'auto'")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name!r} is not supported; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return device


def run(args: argparse.Namespace) -> History:
    check_applicable(args)
    check_paths(args)
    device = resolve_device(args.device)
    if corpus_cli.corpus_mode(args):
        return corpus_cli.run(args, device).history
    train_config = TrainConfig(
        epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay, betas=(args.beta1, args.beta2),
        cont_prefix_tokens=args.cont_prefix_tokens, cont_new_tokens=args.cont_new_tokens,
        cont_temperature=args.cont_temperature, cont_top_k=args.cont_top_k, seed=args.seed,
        balance_scope=args.balance_scope,
    )
    tokenizer = load_tokenizer(args.tokenizer)
    text = read_text(args.text_file) if args.text_file is not None else bundled_paragraph()
    config = model_config(args, len(tokenizer))
    check_fits(config, 1, device, seq_len=1)  # before tokenizing: weights alone may not fit
    ids = encode(tokenizer, text, config.block_size).to(device)  # (1, T)
    targets = shift_targets(ids)  # (1, T), last position -1
    if train_config.cont_prefix_tokens > ids.shape[1]:
        raise ValueError(f"--cont-prefix-tokens {train_config.cont_prefix_tokens} is not allowed: the text has "
                         f"{ids.shape[1]} tokens; give at most {ids.shape[1]}")
    torch.manual_seed(train_config.seed)
    model = GPT(config).to(device)
    print(f"Device {device}; text of {ids.shape[1]} tokens; model {describe(model)}")

    start = evaluate(model, ids, targets)
    print(f"Initial loss {start.loss:.4f} (ln(vocab_size) = {math.log(config.vocab_size):.4f}), "
          f"perplexity {start.perplexity:,.1f} (vocab_size = {config.vocab_size:,})")
    first = continue_text(model, ids, tokenizer, train_config.cont_prefix_tokens, 10,
                          temperature=train_config.cont_temperature, top_k=train_config.cont_top_k)
    print(f"Before training, {first.prefix!r} continues as {first.generated!r}")

    # at each 25 %: eval loss, reconstruction, continuation (tqdm.write keeps the bar below the text)
    on_quarter = checkup_callback(model, ids, targets, tokenizer, train_config,
                                  write=lambda text: tqdm.write("\n" + text))

    optimizer = make_optimizer(model, train_config)
    history = fit(model, (ids, targets), train_config, optimizer, on_quarter=on_quarter, progress=args.progress)
    if history.moe:
        print("\n" + routing_summary(history.moe[-1]))
    if args.checkpoint is not None:
        path = save_checkpoint(args.checkpoint, model, optimizer, history, tokenizer.name_or_path, train_config)
        print(f"\nCheckpoint saved to {path}")
    return history


def routing_summary(record: dict) -> str:
    """One line per MoE layer from a step's routing record: drops, busiest expert, router entropy."""
    lines = [f"Routing at the last step (aux loss {record['aux_loss']:.4f}, z-loss {record['z_loss']:.4f}):"]
    for i, share in enumerate(record["share"]):
        busiest = imbalance(share)  # max / mean share: 1.0 is perfect balance
        lines.append(f"  MoE layer {i}: dropped {record['dropped'][i]:.1%}, busiest expert {busiest:.2f}x its fair "
                     f"share, router entropy {record['entropy'][i]:.3f} nats")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parse_args(argv, parser)
    run_cli(parser.prog, lambda: run(args), debug=args.debug)  # expected failures: one line, no traceback


if __name__ == "__main__":
    main(sys.argv[1:])
