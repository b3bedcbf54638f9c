"""Text in, token tensors out: the bundled texts, user files, the target shift and batches.

Part 1 overfits one paragraph (a sanity check of the whole pipeline); later parts train on the
bundled corpus with a train/validation split and random windows.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch

from .model import IGNORE_INDEX

_DATA = resources.files("nanogpt_lib") / "data"


# --------------------------------------------------------------------------- text
def read_text(path: str | Path) -> str:
    """The contents of a UTF-8 text file, with clear errors for a missing, empty or non-UTF-8 file."""
    path = Path(path)
    if not path.is_file():
        what = ("is a folder, not a file" if path.is_dir() else
                "is not a regular file (a pipe or device); save the text to a file" if path.exists() else
                "does not exist")
        raise FileNotFoundError(f"text file {str(path)!r} {what}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"text file {str(path)!r} is not valid UTF-8 (byte 0x{raw[err.start]:02x} at offset "
            f"{err.start}); re-save it as UTF-8"
        ) from None
    text = text.removeprefix("\ufeff")  # a UTF-8 byte-order mark is not part of the text
    if not text.strip():
        raise ValueError(f"text file {str(path)!r} is empty (or only whitespace); it needs some text")
    return text


def bundled_paragraph() -> str:
    """The Portuguese paragraph that Part 1 memorises (about 100 tokens)."""
    return (_DATA / "paragraph.txt").read_text(encoding="utf-8").strip()


def corpus_files() -> list[Path]:
    """The bundled corpus, one UTF-8 file per topic, in a fixed order."""
    folder = _DATA / "corpus"
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".txt"))


def bundled_corpus() -> str:
    """All topics of the bundled corpus, joined by blank lines (original Portuguese prose)."""
    return _join(corpus_files())


def load_corpus(path: str | Path | None = None) -> str:
    """The bundled corpus, or a user's: one UTF-8 file, or a folder whose *.txt files are joined
    in name order."""
    if path is None:
        return bundled_corpus()
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise FileNotFoundError(f"corpus folder {str(path)!r} has no .txt files")
        return _join(files)
    return read_text(path)


def _join(files: list[Path]) -> str:
    return "\n\n".join(read_text(p).strip() for p in files) + "\n"


# ------------------------------------------------------------------------ tokens
def encode(tokenizer, text: str, block_size: int | None = None) -> torch.Tensor:
    """Token ids of `text` as a (1, T) LongTensor.

    With `block_size`, a text longer than the model's context is an error (Part 1 trains on the
    whole text as one sequence) rather than a silent crop.
    """
    if block_size is not None and len(text) > block_size:  # cheap bound first: a huge text is not tokenized
        longest = max(len(token) for token in tokenizer.get_vocab())  # characters one token can cover, at most
        at_least = -(-len(text) // longest)
        if at_least > block_size:
            raise ValueError(
                f"the text has {len(text):,} characters, so at least {at_least:,} tokens, but block_size is "
                f"{block_size}; Part 1 memorises one window: use a shorter text, or prepare a corpus "
                f"(`python -m nanogpt_lib.prepare`) and train on it with --data"
            )
    # verbose=False: a corpus is longer than the tokenizer's model_max_length, and that is fine here
    ids = tokenizer(text, return_tensors="pt", verbose=False)["input_ids"].long()  # (1, T)
    if block_size is not None and ids.shape[1] > block_size:
        raise ValueError(
            f"the text has {ids.shape[1]} tokens but block_size is {block_size}; use a shorter "
            f"text or a block_size of at least {ids.shape[1]}"
        )
    return ids


def shift_targets(ids: torch.Tensor) -> torch.Tensor:
    """Next-token targets for ids (B, T): targets[:, t] = ids[:, t + 1], and the last one is -1.

    The last position has no next token inside the text, so the loss ignores it.
    """
    if not isinstance(ids, torch.Tensor) or ids.dim() not in (1, 2):
        raise ValueError("ids must be a (T,) or (B, T) tensor of token ids")
    if ids.shape[-1] < 2:
        raise ValueError(
            f"need at least 2 tokens to make next-token targets, got {ids.shape[-1]}: "
            f"with one token there is nothing to predict"
        )
    targets = ids.clone()
    targets[..., :-1] = ids[..., 1:]
    targets[..., -1] = IGNORE_INDEX
    return targets


def train_val_split(ids: torch.Tensor, val_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a 1-D token stream into its first (1 - val_fraction) and last val_fraction parts."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction!r} must be in (0, 1)")
    ids = ids.reshape(-1)
    n_val = int(round(len(ids) * val_fraction))
    if n_val < 2 or len(ids) - n_val < 2:
        raise ValueError(
            f"{len(ids)} tokens are too few to split with val_fraction={val_fraction}: "
            f"each side needs at least 2 tokens"
        )
    return ids[:-n_val], ids[-n_val:]


def sample_batch(
    data: torch.Tensor,
    batch_size: int,
    block_size: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch_size` random windows of `block_size` tokens and their next tokens: (B, T), (B, T)."""
    data = data.reshape(-1)
    if batch_size < 1 or block_size < 1:
        raise ValueError(f"batch_size={batch_size} and block_size={block_size} must be >= 1")
    if len(data) < block_size + 1:
        raise ValueError(
            f"{len(data)} tokens are too few for windows of block_size={block_size} "
            f"(need at least {block_size + 1})"
        )
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)  # (B,)
    offsets = torch.arange(block_size)  # (T,)
    x = data[starts[:, None] + offsets]  # (B, T)
    y = data[starts[:, None] + offsets + 1]  # (B, T): every window continues past its end
    return x.long(), y.long()
