"""Train the tokenizer that ships inside the package (the offline fallback).

    python -m nanogpt_lib.tokenizer_train            # rebuilds nanogpt_lib/tokenizer_pt/
    python -m nanogpt_lib.tokenizer_train --out DIR  # somewhere else (the tests compare bytes)

A byte-level BPE like GPT-2's (same pre-tokenisation regex, same byte alphabet, same
`<|endoftext|>` special token), trained with Hugging Face `tokenizers` on the bundled Portuguese
corpus and paragraph. Training is deterministic, so the files are reproduced byte for byte.

Why VOCAB_SIZE = 4096: the corpus is about 116 KB of text (4,600 distinct words), and BPE with
merges seen at least twice runs out at about 4,640 tokens, far below GPT-2's 50257: a larger
target would change nothing. 4096 keeps every merge backed by repeated evidence, still writes most
common Portuguese words as one or two tokens (the 73-word paragraph is 93 tokens, inside the Part-1
context of 100), keeps the embedding matrix (4096 x 128 = 0.5M parameters) smaller than the 0.8M
of the four Part-1 blocks, and token ids fit in uint16.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .atomic import atomic_write_text
from .data import bundled_paragraph, corpus_files, read_text

VOCAB_SIZE = 4096
MIN_FREQUENCY = 2
SPECIAL_TOKEN = "<|endoftext|>"
BUNDLED_DIR = Path(__file__).parent / "tokenizer_pt"
# The files a Hugging Face tokenizer folder needs; written by hand so no library version or
# timestamp ends up inside them. No model_max_length: the tokenizer serves models of any context,
# and a limit would make transformers warn whenever a whole corpus is encoded.
FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def training_texts() -> list[str]:
    return [read_text(p) for p in corpus_files()] + [bundled_paragraph()]


def train_tokenizer(texts: list[str], vocab_size: int = VOCAB_SIZE):
    """A `tokenizers.Tokenizer`: byte-level BPE with GPT-2's pre-tokenizer and decoder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=MIN_FREQUENCY,
        special_tokens=[SPECIAL_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def write_tokenizer_folder(tokenizer, out_dir: str | Path) -> None:
    """Write the Hugging Face folder (loadable with `AutoTokenizer.from_pretrained(out_dir)`).

    Each file is written to a temporary name first and then renamed, so an interrupted run never
    leaves a half-written tokenizer behind.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "tokenizer_class": "GPT2TokenizerFast",
        "bos_token": SPECIAL_TOKEN,
        "eos_token": SPECIAL_TOKEN,
        "unk_token": SPECIAL_TOKEN,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
    }
    special = {"bos_token": SPECIAL_TOKEN, "eos_token": SPECIAL_TOKEN, "unk_token": SPECIAL_TOKEN}
    contents = {
        "tokenizer.json": tokenizer.to_str(pretty=True) + "\n",
        "tokenizer_config.json": json.dumps(config, indent=2, sort_keys=True) + "\n",
        "special_tokens_map.json": json.dumps(special, indent=2, sort_keys=True) + "\n",
    }
    for name in FILES:
        atomic_write_text(out_dir / name, contents[name])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m nanogpt_lib.tokenizer_train",
        description="Rebuild the byte-level BPE tokenizer shipped in nanogpt_lib/tokenizer_pt.",
    )
    parser.add_argument("--out", type=Path, default=BUNDLED_DIR, help="output folder (default: %(default)s)")
    parser.add_argument(
        "--vocab-size", type=int, default=VOCAB_SIZE, help="target vocabulary size (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    if args.vocab_size < 257:
        parser.error(f"--vocab-size {args.vocab_size} is too small: the 256 bytes + 1 special token need 257")
    tokenizer = train_tokenizer(training_texts(), args.vocab_size)
    write_tokenizer_folder(tokenizer, args.out)
    print(f"wrote a {tokenizer.get_vocab_size()}-token byte-level BPE to {args.out}")


if __name__ == "__main__":
    main()
