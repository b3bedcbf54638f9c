"""Token folders: a prepared corpus as `train.bin` / `val.bin` plus `meta.json`, read as memmaps.

`python -m nanogpt_lib.prepare` writes the folder; training opens it here and reads random
windows straight from the files, so the corpus never has to fit in memory as one tensor.

    folder/train.bin   the first (1 - val_fraction) of the token stream, raw uint16 or uint32
    folder/val.bin     the rest
    folder/meta.json   tokenizer name and vocabulary size, dtype, token counts, split, source

Which windows a batch holds is a pure function of (seed, stream, step): any rank, any process
and a resumed run all draw the same ones, with no sampler state to save.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_write_text

FORMAT = "nanogpt_lib.tokens"
VERSION = 1
META_NAME = "meta.json"
SPLITS = ("train", "val")
TRAIN_STREAM, VAL_STREAM, TRAIN_EVAL_STREAM = 0, 1, 2  # independent random streams per use


class TokenFileError(ValueError):
    """A token folder that is missing, incomplete, or made for another tokenizer."""


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab_size <= 65536), else uint32."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        raise TokenFileError(f"vocab_size={vocab_size!r} is not allowed: it must be an integer >= 1")
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


@dataclass(frozen=True)
class TokenMeta:
    tokenizer_name: str
    vocab_size: int
    dtype: str  # "uint16" or "uint32"
    tokens: dict  # {"train": n_train, "val": n_val}
    split: dict  # {"method": "tail", "val_fraction": f}
    source: str  # what was tokenized, in words
    text_bytes: int  # UTF-8 bytes of text read
    documents: int  # files or dataset records
    fingerprint: str  # hash of the inputs: same inputs, same fingerprint (prepare reuses the files)
    format: str = FORMAT
    version: int = VERSION
    tokenizer_hash: str | None = None  # tokenizer.tokenizer_hash of the tokenizer used (None: older folders)
    document_tokens: list | None = None  # [[name, train tokens, val tokens], ...] in stream order (named files)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TokenMeta:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


_META_TYPES = {"tokenizer_name": (str,), "vocab_size": (int,), "dtype": (str,), "tokens": (dict,),
               "fingerprint": (str,), "tokenizer_hash": (str, type(None))}


def meta_path(folder: str | Path) -> Path:
    return Path(folder) / META_NAME


def bin_path(folder: str | Path, split: str) -> Path:
    return Path(folder) / f"{split}.bin"


def write_meta(folder: str | Path, meta: TokenMeta) -> Path:
    path = meta_path(folder)
    atomic_write_text(path, json.dumps(meta.to_dict(), indent=2, ensure_ascii=False) + "\n")
    return path


def read_meta(folder: str | Path) -> TokenMeta:
    folder = Path(folder)
    if not folder.is_dir():
        what = "is a file, not a token folder" if folder.exists() else "does not exist"
        raise TokenFileError(f"token folder {str(folder)!r} {what}; make one with `python -m nanogpt_lib.prepare`")
    path = meta_path(folder)
    if not path.is_file():
        raise TokenFileError(
            f"token folder {str(folder)!r} has no {META_NAME}: it is not (or not completely) prepared; "
            f"run `python -m nanogpt_lib.prepare --out {folder}`"
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise TypeError(f"it holds a JSON {type(raw).__name__}, not an object")
        meta = TokenMeta.from_dict(raw)
    except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as err:
        raise TokenFileError(f"{str(path)!r} is not a valid token-folder description ({err})") from None
    for name, kinds in _META_TYPES.items():
        value = getattr(meta, name)
        if isinstance(value, bool) or not isinstance(value, kinds):
            allowed = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
            raise TokenFileError(f"{str(path)!r} has {name}={value!r} ({type(value).__name__}); it must be "
                                 f"{allowed}: the file was edited or damaged, prepare the folder again")
    if meta.format != FORMAT or meta.version != VERSION:
        raise TokenFileError(
            f"{str(path)!r} has format {meta.format!r} version {meta.version!r}; "
            f"this library reads {FORMAT!r} version {VERSION}"
        )
    return meta


@dataclass
class TokenData:
    """An opened token folder: its description and one read-only memmap per split."""

    folder: Path
    meta: TokenMeta
    train: np.memmap
    val: np.memmap

    def split(self, name: str) -> np.memmap:
        return {"train": self.train, "val": self.val}[name]

    def check_compatible(self, tokenizer_name: str, vocab_size: int, tokenizer_hash: str | None = None) -> None:
        """Refuse a folder tokenized for another tokenizer or vocabulary, naming both values. With
        `tokenizer_hash`, a tokenizer changed in place (same name and size) is refused too."""
        meta, where = self.meta, str(self.folder)
        if meta.tokenizer_name != tokenizer_name:
            raise TokenFileError(
                f"token folder {where!r} was made with tokenizer {meta.tokenizer_name!r}, but this run uses "
                f"{tokenizer_name!r}; pass --tokenizer {meta.tokenizer_name} or prepare the folder again"
            )
        if meta.vocab_size != vocab_size:
            raise TokenFileError(
                f"token folder {where!r} has vocab_size {meta.vocab_size} but the model has vocab_size "
                f"{vocab_size}; they must be equal"
            )
        if None not in (tokenizer_hash, meta.tokenizer_hash) and tokenizer_hash != meta.tokenizer_hash:
            raise TokenFileError(
                f"token folder {where!r} was made with a tokenizer of hash {meta.tokenizer_hash}, but "
                f"{tokenizer_name!r} now has hash {tokenizer_hash}: it was changed since; prepare the folder again"
            )
        expected = token_dtype(vocab_size).name
        if meta.dtype != expected:
            raise TokenFileError(
                f"token folder {where!r} stores {meta.dtype} tokens, but a vocabulary of {vocab_size} "
                f"tokens needs {expected}; prepare the folder again"
            )

    def check_windows(self, block_size: int) -> None:
        for name in SPLITS:
            n = len(self.split(name))
            if n < block_size + 1:
                raise TokenFileError(
                    f"{name}.bin in {str(self.folder)!r} has {n} tokens, too few for windows of "
                    f"block_size={block_size} (need at least {block_size + 1}); use a smaller --block-size "
                    f"or a larger corpus"
                )


def open_tokens(folder: str | Path) -> TokenData:
    """Open a prepared folder; every file must exist and have the size its meta.json announces."""
    folder = Path(folder)
    meta = read_meta(folder)
    if meta.dtype not in ("uint16", "uint32"):
        raise TokenFileError(f"token folder {str(folder)!r} has dtype {meta.dtype!r}; allowed: 'uint16', 'uint32'")
    dtype = np.dtype(meta.dtype)
    maps = {}
    for name in SPLITS:
        path = bin_path(folder, name)
        count = meta.tokens.get(name) if isinstance(meta.tokens, dict) else None
        if not path.is_file():
            raise TokenFileError(f"token file {str(path)!r} does not exist; prepare the folder again")
        size = path.stat().st_size
        if not isinstance(count, int) or count < 1 or size != count * dtype.itemsize:
            raise TokenFileError(
                f"token file {str(path)!r} has {size} bytes but {META_NAME} announces {count!r} {meta.dtype} "
                f"tokens ({dtype.itemsize} bytes each); the folder is damaged or was written by another run"
            )
        maps[name] = np.memmap(path, dtype=dtype, mode="r")
    return TokenData(folder=folder, meta=meta, **maps)


def tokens_in_memory(train: np.ndarray, val: np.ndarray, tokenizer_name: str, vocab_size: int,
                     source: str = "in memory") -> TokenData:
    """A TokenData over arrays already in memory (a notebook's small corpus): no folder, same reader.

    The fingerprint hashes the tokens, so a checkpoint made on these arrays resumes only on them.
    """
    dtype = token_dtype(vocab_size)
    arrays = {}
    for name, ids in (("train", train), ("val", val)):
        ids = np.asarray(ids)
        if ids.ndim != 1 or ids.size == 0:
            raise TokenFileError(f"{name} tokens must be a non-empty 1-D array, got shape {ids.shape}")
        if ids.min() < 0 or ids.max() >= vocab_size:
            raise TokenFileError(f"{name} tokens must lie in [0, {vocab_size}), found {ids.min()}..{ids.max()}")
        arrays[name] = ids.astype(dtype)
    digest = hashlib.sha256(arrays["train"].tobytes() + b"|" + arrays["val"].tobytes()).hexdigest()[:16]
    counts = {k: int(v.size) for k, v in arrays.items()}
    meta = TokenMeta(tokenizer_name=tokenizer_name, vocab_size=vocab_size, dtype=dtype.name, tokens=counts,
                     split={"method": "given", "val_fraction": counts["val"] / sum(counts.values())},
                     source=source, text_bytes=0, documents=0, fingerprint=digest)
    return TokenData(folder=Path(f"<{source}>"), meta=meta, train=arrays["train"], val=arrays["val"])


# ------------------------------------------------------------------ windows
def window_starts(n_tokens: int, block_size: int, count: int, seed: int, stream: int, step: int) -> np.ndarray:
    """`count` window starts in [0, n_tokens - block_size), a pure function of (seed, stream, step)."""
    rng = np.random.default_rng([seed % 2**64, stream, step])  # numpy wants non-negative seeds
    return rng.integers(0, n_tokens - block_size, size=count)  # (count,)


def windows(data: np.ndarray, starts: np.ndarray, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets of the windows starting at `starts`: (B, T), (B, T) int64.

    Only these B * (T + 1) tokens are read from the memmap.
    """
    index = starts[:, None] + np.arange(block_size + 1)  # (B, T + 1)
    chunk = torch.from_numpy(data[index].astype(np.int64))  # (B, T + 1)
    return chunk[:, :-1], chunk[:, 1:]  # (B, T), (B, T)


def shard_batches(
    data: np.ndarray, starts: np.ndarray, block_size: int, micro_steps: int, world_size: int, rank: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's share of a global batch: `micro_steps` (x, y) pairs of B / (micro_steps * world) rows.

    The global starts are laid out as (micro_steps, world_size, micro_batch) and rank r takes
    [:, r, :], so the ranks and micro-steps together cover the global batch exactly once.
    """
    grid = starts.reshape(micro_steps, world_size, -1)  # (accum, world, b)
    return [windows(data, grid[m, rank], block_size) for m in range(micro_steps)]
