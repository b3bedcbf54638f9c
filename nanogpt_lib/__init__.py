"""nanogpt_lib: the code behind the "NanoGPT ao nanoMoE" course, one concept per module.

    config          GPTConfig (the model's hyper-parameters) and the Part-1 preset
    model           GPT: GPT-2 in PyTorch, with GPT-2's module names
    moe             Mixture of Experts: router, top-k, capacity, dispatch, balancing losses
    hf              conversion to and from transformers' GPT2LMHeadModel
    hf_moe          conversion of transformers' MoE blocks (Mixtral, Qwen, OLMoE, gpt-oss, DeepSeek-V3), parity
    real_models     released MoE models counted from their published hyperparameters
    tokenizer       load_tokenizer: the blog's Hub tokenizer, or the bundled fallback
    tokenizer_train how the bundled tokenizer was trained (reproducible)
    data            bundled texts, user files, the target shift, corpus batches
    training        TrainConfig, the objective, train_step (over micro-batches), fit, the 25 % points
    expert_parallel an MoE layer's experts spread over processes: all-to-all there and back
    evaluation      perplexity, reconstruction, continuation, per-position probabilities
    checkup         the 25 % check-up shared by the command line and the notebooks
    costs           parameters, FLOPs, memory and forward time of a configuration
    experiments     small experiments the notebooks run (capacity vs cost, dense vs MoE), the study's models
    upcycling       a trained dense model made into an MoE (each expert a copy or a slice of the MLP)
    corpora         named corpora the package does not ship (Machado de Assis): source, checksums, cache
    comparison      a fixed validation set for every model, and paired statistics over seeds
    baselines       unigram and bigram count models: the floor a language model must beat
    specialisation  which tokens go to which expert, by token class and by genre
    study_results   a finished study's committed summary, read back (tables, curves)
    study_plots     figures of a study's results
    plots           the notebooks' matplotlib figures, the GPT and MoE diagrams
    source          show_source: the library's own code, displayed in the notebooks
    widgets         slider callbacks and their ipywidgets wiring
    checkpoint      atomic save / checked load
    atomic          atomic, fsync'ed file writes; stale temp files of killed writes removed
    paths           output paths checked before any work (never over an input)
    cli_errors      the command lines' error boundary: one line, no traceback (--debug shows it)
    train           the command line: python -m nanogpt_lib.train
    prepare         a corpus to token files: python -m nanogpt_lib.prepare (import it as a module)
    tokens          token folders (train.bin, val.bin, meta.json) read as memmaps, random windows
    schedule        warm-up + cosine learning rate
    distributed     DistributedDataParallel under torchrun
    corpus_train    training on a token folder: evaluation, clipping, accumulation, resume
    corpus_cli      the --data options of the command line
"""

from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from .config import GPTConfig, part1_config
from .corpus_train import CorpusConfig, CorpusRun, train_corpus
from .data import (
    bundled_corpus,
    bundled_paragraph,
    corpus_files,
    encode,
    load_corpus,
    read_text,
    sample_batch,
    shift_targets,
    train_val_split,
)
from .evaluation import continue_text, eval_mode, evaluate, reconstruct
from .model import GPT, IGNORE_INDEX
from .schedule import CosineSchedule
from .tokenizer import HUB_TOKENIZER, load_tokenizer
from .tokens import TokenFileError, open_tokens
from .training import History, TrainConfig, fit, is_quarter, make_optimizer, objective, quarter_points, train_step

__all__ = [
    "GPT", "GPTConfig", "IGNORE_INDEX", "HUB_TOKENIZER", "Checkpoint", "CheckpointError", "History",
    "TrainConfig", "bundled_corpus", "bundled_paragraph", "continue_text", "corpus_files", "encode", "eval_mode",
    "evaluate", "fit", "is_quarter", "load_checkpoint", "load_corpus", "load_tokenizer", "make_optimizer",
    "objective", "part1_config", "quarter_points", "read_text", "reconstruct", "sample_batch", "save_checkpoint",
    "shift_targets", "train_step", "train_val_split",
    "CorpusConfig", "CorpusRun", "CosineSchedule", "TokenFileError", "open_tokens",
    "train_corpus",
]
