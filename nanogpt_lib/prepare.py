"""Tokenize a corpus once into a token folder (train.bin, val.bin, meta.json) for training.

    python -m nanogpt_lib.prepare --out data/bundled              # the bundled corpus
    python -m nanogpt_lib.prepare --out data/mine my_texts/ a.txt # UTF-8 files and folders of *.txt
    python -m nanogpt_lib.prepare --out data/machado --corpus machado  # Machado de Assis (see corpora.py)
    python -m nanogpt_lib.prepare --out data/wiki --dataset wikimedia/wikipedia \\
        --dataset-config 20231101.pt --text-column text          # a Hugging Face dataset, streamed

Text is read and tokenized in pieces (about 1 MB of text at a time), so neither the text nor the
tokens of a large corpus need to fit in memory. Each document (a file, a dataset record) ends
with the tokenizer's end-of-text token. By default the last `val_fraction` of the token stream
becomes val.bin, the rest train.bin, as `data.train_val_split` does for a tensor; `--split
each-document` (the default for a named corpus) holds out the last `val_fraction` of every document
instead, so validation covers every work and genre. A second run with the
same inputs (files of the same size and time stamp, same tokenizer and split) reuses the folder.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .atomic import atomic_path
from .cli_errors import run_cli
from .corpora import CorpusError, cache_root, corpus_works, named_corpus
from .data import corpus_files
from .paths import check_outputs
from .tokenizer import HUB_TOKENIZER, load_tokenizer, tokenizer_hash
from .tokens import TokenFileError, TokenMeta, bin_path, meta_path, open_tokens, token_dtype, write_meta

SPLITS = ("tail", "each-document")  # the last tokens of the stream, or the last tokens of every document
PIECE_CHARS = 1 << 20  # text handed to the tokenizer at once
BATCH_PIECES = 64  # pieces tokenized together (the Rust tokenizer uses several threads)


class PrepareError(ValueError):
    """A corpus source that cannot be read or tokenized."""


# ------------------------------------------------------------------- sources
@dataclass(frozen=True)
class TextFiles:
    """UTF-8 text files, tokenized in the given order."""

    files: tuple[Path, ...]
    label: str
    names: tuple[str, ...] | None = None  # a name per file for meta.json's document list (None: the paths)

    def describe(self) -> str:
        return f"{self.label} ({len(self.files)} files)"

    def document_names(self) -> list[str]:
        return list(self.names) if self.names is not None else [str(p) for p in self.files]

    def identity(self) -> dict:
        return {"files": [_stamp(p) for p in self.files]}

    def total_bytes(self) -> int | None:
        return sum(p.stat().st_size for p in self.files)

    def documents(self) -> Iterator[Iterator[str]]:
        for path in self.files:
            yield _file_pieces(path)


@dataclass(frozen=True)
class HFDataset:
    """A Hugging Face dataset (Hub name, builder such as 'json' with data_files, or a saved folder)."""

    name: str
    text_column: str = "text"
    config: str | None = None
    split: str = "train"
    data_files: tuple[str, ...] = ()
    max_documents: int | None = None

    def describe(self) -> str:
        files = f", files {list(self.data_files)}" if self.data_files else ""
        return (f"dataset {self.name!r} (config {self.config!r}, split {self.split!r}, "
                f"column {self.text_column!r}{files})")

    def identity(self) -> dict:
        local = list(self.data_files) + ([self.name] if Path(self.name).exists() else [])
        return {"dataset": [self.name, self.config, self.split, self.text_column, self.max_documents],
                "files": _stamps(local)}

    def total_bytes(self) -> int | None:
        return None  # a streamed dataset does not say how large it is

    def document_names(self) -> None:
        return None  # records have no names, and a list of millions would not belong in meta.json

    def documents(self) -> Iterator[Iterator[str]]:
        for i, record in enumerate(_open_dataset(self)):
            if self.max_documents is not None and i >= self.max_documents:
                return
            if self.text_column not in record:
                raise PrepareError(
                    f"{self.describe()} has no column {self.text_column!r}; its columns are {sorted(record)}; "
                    f"choose one with --text-column"
                )
            text = record[self.text_column]
            if not isinstance(text, str):
                raise PrepareError(
                    f"column {self.text_column!r} of {self.describe()} holds {type(text).__name__}, not text"
                )
            yield iter([text])


def _stamps(patterns: list[str]) -> list[list]:
    """[path, size, mtime] of every file a pattern names: globs expanded, folders walked."""
    stamps = []
    for pattern in patterns:
        for match in sorted(glob.glob(str(pattern), recursive=True)):
            path = Path(match)
            files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
            stamps += [_stamp(f) for f in files]
    return stamps


def _stamp(path: Path) -> list:
    """[absolute path, size, modification time]: what tells a re-run that a file changed."""
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def _tokenizer_identity(tokenizer) -> list:
    """Name, size, and a hash of the tokenizer's own definition (a retrained tokenizer of the same
    name and size must not reuse old tokens)."""
    return [tokenizer.name_or_path, len(tokenizer), tokenizer_hash(tokenizer)]


def files_source(paths: list[str | Path]) -> TextFiles:
    """The bundled corpus (no paths), or the given files and folders (every *.txt below a folder)."""
    if not paths:
        return TextFiles(tuple(corpus_files()), "the bundled corpus")
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*.txt") if p.is_file())
            if not found:
                raise PrepareError(f"folder {str(path)!r} has no .txt files")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            what = "is not a regular file" if path.exists() else "does not exist"
            raise PrepareError(f"text source {str(path)!r} {what} (give UTF-8 files or folders of .txt files)")
    seen: dict[Path, Path] = {}
    for f in files:  # a file given twice would be tokenized twice: validation would copy training text
        first = seen.setdefault(f.resolve(), f)
        if first is not f:
            raise PrepareError(f"text file {str(f)!r} is given twice (also as {str(first)!r}, directly or "
                               f"inside a folder); give each file once")
    return TextFiles(tuple(files), ", ".join(str(p) for p in paths))


def named_source(name: str, genres: list[str] | None = None, local: str | Path | None = None,
                 **kwargs) -> TextFiles:
    """The works of a named corpus (see `corpora.py`), verified, one document per work."""
    corpus = named_corpus(name)
    works = corpus_works(name, local, genres=genres, **kwargs)
    chosen = "all genres" if genres is None else "genres " + ", ".join(genres)
    return TextFiles(tuple(path for _, path in works), f"{corpus.title}, {chosen}",
                     names=tuple(f"{genre}/{path.name}" for genre, path in works))


def prepare_named(name: str, tokenizer, genres: list[str] | None = None, local: str | Path | None = None,
                  out: str | Path | None = None, progress: bool = False) -> PrepareResult:
    """A named corpus tokenized with the each-document split (10 % of every work for validation) into
    `out`, by default a folder of the cache named after the corpus, genres and tokenizer; reused when
    it already holds these tokens."""
    if out is None:
        chosen = "all" if genres is None else "+".join(genres)
        out = cache_root() / "tokens" / f"{name}-{chosen}-{(tokenizer_hash(tokenizer) or 'unhashed')[:12]}"
    return prepare(named_source(name, genres, local), out, tokenizer, val_fraction=0.1, progress=progress,
                   split="each-document")


def _file_pieces(path: Path) -> Iterator[str]:
    """The text of one UTF-8 file in pieces of about PIECE_CHARS characters, cut after a line."""
    buffer: list[str] = []
    size, seen_text = 0, False
    try:
        with open(path, encoding="utf-8", newline="") as f:
            for number, line in enumerate(f):
                if number == 0:
                    line = line.removeprefix("\ufeff")  # a byte-order mark is not text
                seen_text = seen_text or bool(line.strip())
                buffer.append(line)
                size += len(line)
                if size >= PIECE_CHARS:
                    yield "".join(buffer)
                    buffer, size = [], 0
    except UnicodeDecodeError as err:
        raise PrepareError(f"text file {str(path)!r} is not valid UTF-8 ({err.reason} near byte {err.start} of a "
                           f"block); re-save it as UTF-8") from None
    if not seen_text:
        raise PrepareError(f"text file {str(path)!r} is empty (or only whitespace); remove it or give it text")
    if buffer:
        yield "".join(buffer)


def _open_dataset(source: HFDataset):
    try:
        import datasets
    except ImportError:
        raise PrepareError(
            "--dataset needs the Hugging Face `datasets` package: pip install 'nanogpt-lib[corpora]'"
        ) from None
    folder = Path(source.name)
    if folder.is_dir() and ((folder / "dataset_info.json").is_file() or (folder / "dataset_dict.json").is_file()):
        saved = datasets.load_from_disk(str(folder))  # a folder written by save_to_disk
        if isinstance(saved, datasets.DatasetDict):
            if source.split not in saved:
                raise PrepareError(f"dataset folder {source.name!r} has no split {source.split!r}; "
                                   f"its splits are {sorted(saved)}")
            saved = saved[source.split]
        return saved.to_iterable_dataset()
    try:
        return datasets.load_dataset(source.name, source.config, split=source.split, streaming=True,
                                     data_files=list(source.data_files) or None)
    except (FileNotFoundError, ValueError, datasets.exceptions.DatasetNotFoundError) as err:
        raise PrepareError(f"could not open {source.describe()}: {str(err).splitlines()[0][:300]}") from None


# ---------------------------------------------------------------- tokenizing
@dataclass(frozen=True)
class PrepareResult:
    folder: Path
    meta: TokenMeta
    reused: bool  # True when the folder already held these inputs' tokens
    seconds: float

    @property
    def mb_per_s(self) -> float:
        return self.meta.text_bytes / 1e6 / self.seconds if self.seconds > 0 else float("inf")


def prepare(
    source: TextFiles | HFDataset,
    out: str | Path,
    tokenizer,
    val_fraction: float = 0.1,
    force: bool = False,
    progress: bool = True,
    split: str = "tail",
) -> PrepareResult:
    """Tokenize `source` into the folder `out`; reuse it when it already holds the same inputs.

    `split` says which tokens are held out for validation: "tail", the last `val_fraction` of the
    whole stream (documents in the order given, so the last documents); or "each-document", the last
    `val_fraction` of every document, so that validation has every document (genre, topic) in the
    proportions training has. meta.json lists each document's train and val token counts, in order,
    for sources whose documents have names (files).
    """
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise PrepareError(f"val_fraction={val_fraction!r} is not allowed: it must be a number in (0, 1)")
    if split not in SPLITS:
        raise PrepareError(f"split={split!r} is not allowed: choose one of {list(SPLITS)}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PrepareError(f"--out {str(out)!r} is a file; give a folder for train.bin, val.bin and meta.json")
    inputs = {f"text file {i + 1}": p for i, p in enumerate(source.files)} if isinstance(source, TextFiles) else {
        "--dataset": source.name if Path(source.name).exists() else None,
        **{f"--data-files {i + 1}": p for i, p in enumerate(source.data_files)}}
    check_outputs({"--out": out}, inputs, folders=("--out",))
    name, vocab_size = tokenizer.name_or_path, len(tokenizer)
    dtype = token_dtype(vocab_size)
    split_meta = {"method": split, "val_fraction": float(val_fraction)}
    identity = {"tokenizer": _tokenizer_identity(tokenizer), "split": split_meta, "source": source.identity(),
                "version": 2}
    fingerprint = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    started = time.perf_counter()
    if not force and meta_path(out).is_file():
        try:
            data = open_tokens(out)
        except TokenFileError:
            data = None  # damaged or foreign: write it again
        if data is not None and data.meta.fingerprint == fingerprint:
            return PrepareResult(out, data.meta, reused=True, seconds=time.perf_counter() - started)
    created = not out.exists()
    try:
        with atomic_path(bin_path(out, "train")) as train_tmp, atomic_path(bin_path(out, "val")) as val_tmp:
            each = split == "each-document"
            text_bytes, counts = _tokenize_to_file(source, tokenizer, dtype, train_tmp, progress,
                                                   val_tmp if each else None, val_fraction)
            total = sum(map(sum, counts))
            n_val = sum(c[1] for c in counts) if each else int(round(total * val_fraction))
            if n_val < 2 or total - n_val < 2:
                raise PrepareError(f"{source.describe()} gives {total} tokens, too few to split with "
                                   f"val_fraction={val_fraction}: each side needs at least 2 tokens")
            if not each:
                _move_tail(train_tmp, val_tmp, dtype, total - n_val)
            # the new tokens are complete: only now may the old folder stop reading as prepared (a failure
            # above leaves it intact); until the new meta.json is written, it reads as unprepared
            meta_path(out).unlink(missing_ok=True)
    except BaseException:
        if created:  # leave no empty folder behind (the temp files are gone already)
            with suppress(OSError):
                out.rmdir()
        raise
    meta = TokenMeta(
        tokenizer_name=name, vocab_size=vocab_size, dtype=dtype.name, tokens={"train": total - n_val, "val": n_val},
        split=split_meta, source=source.describe(), text_bytes=text_bytes, documents=len(counts),
        fingerprint=fingerprint, tokenizer_hash=tokenizer_hash(tokenizer),
        document_tokens=_document_tokens(source.document_names(), counts, None if each else total - n_val),
    )
    write_meta(out, meta)
    return PrepareResult(out, meta, reused=False, seconds=time.perf_counter() - started)


def _tokenize_to_file(source, tokenizer, dtype: np.dtype, path: Path, progress: bool,
                      val_path: Path | None = None, val_fraction: float = 0.0) -> tuple[int, list[list[int]]]:
    """Write the tokens of every document to `path`; returns (text bytes, [[train, val] tokens per document]).

    Without `val_path` every token goes to `path` (the caller then moves the stream's tail to val.bin;
    val counts stay 0 here). With `val_path` (the "each-document" split), the last `val_fraction` of
    each document's own tokens goes there: round(n * val_fraction) of a document of n tokens.
    Pieces of several documents are tokenized together (the Rust tokenizer uses several threads).
    """
    end = tokenizer.eos_token_id
    end_ids = [end] if end is not None else tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    text_bytes = 0
    counts: list[list[int]] = []  # [train tokens, val tokens] of each document
    batch: list[str] = []
    closes: list[bool] = []  # whether each piece in the batch is its document's last
    owners: list[int] = []  # the document each piece belongs to
    current: list[np.ndarray] = []  # tokens of the document being read (each-document split only)
    bar = tqdm(total=source.total_bytes(), desc="tokenizing", unit="B", unit_scale=True, disable=not progress)

    def flush(train_f, val_f) -> None:
        if not batch:  # the last piece filled the previous batch exactly
            return
        ids = tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]
        for piece, last, doc in zip(ids, closes, owners, strict=True):
            tokens = np.asarray(piece + (end_ids if last else []), dtype=dtype)  # (n_i,)
            if val_f is None:
                train_f.write(tokens.tobytes())
                counts[doc][0] += len(tokens)
                continue
            current.append(tokens)
            if last:
                whole = np.concatenate(current)  # (n,) the document
                n_val = int(round(len(whole) * val_fraction))
                train_f.write(whole[: len(whole) - n_val].tobytes())
                val_f.write(whole[len(whole) - n_val :].tobytes())
                counts[doc] = [len(whole) - n_val, n_val]
                current.clear()
        batch.clear()
        closes.clear()
        owners.clear()

    with open(path, "wb") as train_f, (open(val_path, "wb") if val_path is not None else nullcontext()) as val_f:
        for pieces in source.documents():
            doc = len(counts)
            counts.append([0, 0])
            previous = None
            for piece in pieces:
                if previous is not None:
                    batch.append(previous)
                    closes.append(False)
                    owners.append(doc)
                previous = piece
                size = len(piece.encode("utf-8"))
                text_bytes += size
                bar.update(size)
                if len(batch) >= BATCH_PIECES:
                    flush(train_f, val_f)
            if previous is not None:
                batch.append(previous)
                closes.append(True)
                owners.append(doc)
            if len(batch) >= BATCH_PIECES:
                flush(train_f, val_f)
        flush(train_f, val_f)
    bar.close()
    if not counts or sum(map(sum, counts)) == 0:
        raise PrepareError(f"{source.describe()} holds no text to tokenize")
    return text_bytes, counts


def _document_tokens(names: list[str] | None, counts: list[list[int]], n_train: int | None) -> list | None:
    """[[name, train tokens, val tokens], ...] per document; with `n_train` (the tail split), the counts of
    the documents that straddle or follow the cut are recomputed from where the stream is cut."""
    if names is None:
        return None
    rows, seen = [], 0
    for name, (train, val) in zip(names, counts, strict=True):
        if n_train is not None:
            size = train + val
            train = min(max(n_train - seen, 0), size)
            val = size - train
            seen += size
        rows.append([name, train, val])
    return rows


def _move_tail(train_path: Path, val_path: Path, dtype: np.dtype, n_train: int) -> None:
    """Copy tokens [n_train:] of train_path into val_path, then cut train_path to n_train tokens."""
    stream = np.memmap(train_path, dtype=dtype, mode="r")  # (total,)
    with open(val_path, "wb") as f:
        for start in range(n_train, len(stream), 1 << 24):
            f.write(np.asarray(stream[start : start + (1 << 24)]).tobytes())
    del stream  # close the map before truncating the file under it
    os.truncate(train_path, n_train * dtype.itemsize)


# ------------------------------------------------------------------ command
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m nanogpt_lib.prepare",
        description="Tokenize a corpus into train.bin / val.bin token files and meta.json for "
        "`python -m nanogpt_lib.train --data FOLDER`.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("paths", nargs="*", type=Path,
                   help="UTF-8 text files and folders (every *.txt below them); none: the bundled corpus")
    p.add_argument("--out", type=Path, required=True, help="folder for train.bin, val.bin and meta.json")
    p.add_argument("--tokenizer", default=HUB_TOKENIZER,
                   help="Hugging Face tokenizer id or local folder; falls back to the bundled one when unavailable")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of tokens (the last ones) kept for validation")
    p.add_argument("--split", choices=SPLITS, default=None,
                   help="tail: the last tokens of the whole stream; each-document: the last tokens of every "
                   "document (default: each-document for --corpus, tail otherwise)")
    p.add_argument("--force", action="store_true", help="tokenize again even when the folder holds these inputs")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show a progress bar")
    p.add_argument("--debug", action="store_true", help="show the traceback of a failure instead of one line")
    named = p.add_argument_group("named corpus (instead of paths; the text is not shipped: see corpora.py)")
    named.add_argument("--corpus", default=None, help="a named corpus: machado (Machado de Assis, complete works)")
    named.add_argument("--genres", nargs="+", default=None,
                       help="only these genre folders (machado: conto critica cronica miscelanea poesia "
                       "romance teatro traducao); default all")
    named.add_argument("--corpus-dir", default=None,
                       help="a local copy (else $NANOGPT_MACHADO_DIR, else the cache, downloading on first use)")
    ds = p.add_argument_group("Hugging Face dataset (instead of paths; needs `pip install 'nanogpt-lib[corpora]'`)")
    ds.add_argument("--dataset", default=None,
                    help="Hub name, a builder such as 'json', 'text' or 'parquet' with --data-files, "
                    "or a save_to_disk folder")
    ds.add_argument("--dataset-config", default=None, help="dataset configuration (subset) name")
    ds.add_argument("--dataset-split", default="train", help="split to read")
    ds.add_argument("--text-column", default="text", help="column that holds the text")
    ds.add_argument("--data-files", nargs="+", default=(), help="local files for a builder such as 'json'")
    ds.add_argument("--max-documents", type=int, default=None, help="stop after this many records")
    return p


def main(argv: list[str] | None = None) -> PrepareResult:
    parser = build_parser()
    args = parser.parse_args(argv)
    result = run_cli(parser.prog, lambda: _prepare_from(args), debug=args.debug)
    meta = result.meta
    if result.reused:
        print(f"{result.folder} already holds these inputs' tokens ({meta.tokens['train']:,} train + "
              f"{meta.tokens['val']:,} val); nothing to do (--force tokenizes again)")
    else:
        print(f"Tokenized {meta.source}: {meta.text_bytes / 1e6:.2f} MB of text, {meta.documents:,} documents in "
              f"{result.seconds:.2f} s ({result.mb_per_s:.2f} MB/s) -> {meta.tokens['train']:,} train + "
              f"{meta.tokens['val']:,} val {meta.dtype} tokens in {result.folder}")
    return result


def _prepare_from(args: argparse.Namespace) -> PrepareResult:
    """The source the options name, tokenized into --out."""
    given = [name for name, on in (("text paths", bool(args.paths)), ("--dataset", args.dataset is not None),
                                   ("--corpus", args.corpus is not None)) if on]
    if len(given) > 1:
        raise PrepareError(f"give one source, not {len(given)}: {', '.join(given)} cannot be combined")
    if args.corpus is None and (args.genres or args.corpus_dir):
        raise PrepareError("--genres and --corpus-dir belong to --corpus; name the corpus (--corpus machado)")
    if args.max_documents is not None and args.max_documents < 1:
        raise PrepareError(f"--max-documents {args.max_documents} is not allowed: it must be >= 1")
    split = args.split or ("each-document" if args.corpus is not None else "tail")
    if args.corpus is not None:
        try:
            source = named_source(args.corpus, args.genres, args.corpus_dir)
        except CorpusError as err:
            raise PrepareError(str(err)) from None
    elif args.dataset is None:
        source = files_source(args.paths)
    else:
        source = HFDataset(args.dataset, args.text_column, args.dataset_config, args.dataset_split,
                           tuple(args.data_files), args.max_documents)
    tokenizer = load_tokenizer(args.tokenizer)
    return prepare(source, args.out, tokenizer, args.val_fraction, args.force, args.progress, split)


if __name__ == "__main__":
    main(sys.argv[1:])
