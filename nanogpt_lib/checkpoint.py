"""Checkpoints: model weights, config, optimizer state, history and tokenizer name in one file.

Corpus runs add a `train_state` (step, corpus settings, token folder fingerprint) so that they can
resume. A model wrapped in DistributedDataParallel is saved unwrapped: the file loads in one process.

Saved with `torch.save` to a temporary file in the same folder, fsync'ed and renamed into place
(`atomic.py`), so a crash never leaves a half-written checkpoint under the real name. A model or
optimizer holding a NaN or an infinity is never saved: the last good checkpoint stays.
Loaded with `weights_only=True`: the file holds only tensors and plain Python values.
"""

from __future__ import annotations

import errno
import os
import pickle
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .atomic import atomic_path
from .config import GPTConfig
from .distributed import unwrap
from .model import GPT
from .training import History, TrainConfig

FORMAT = "nanogpt_lib.checkpoint"
VERSION = 1
_KEYS = {"model_config", "model", "optimizer", "history", "tokenizer_name", "train_config"}  # "train_state" optional


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or made for another model."""


@dataclass
class Checkpoint:
    model: GPT
    config: GPTConfig
    tokenizer_name: str | None
    history: History | None
    train_config: TrainConfig | None
    optimizer_state: dict | None
    train_state: dict | None = None  # corpus runs: where to resume (absent from Part-1 checkpoints)


def save_checkpoint(
    path: str | Path,
    model: GPT,
    optimizer: torch.optim.Optimizer | None = None,
    history: History | None = None,
    tokenizer_name: str | None = None,
    train_config: TrainConfig | None = None,
    train_state: dict | None = None,
) -> Path:
    """Write the checkpoint atomically. `train_state` holds plain values only (ints, floats, strings,
    lists, dicts). Raises FloatingPointError, and leaves `path` as it was, when a weight or an
    optimizer value is not finite."""
    path = Path(path)
    model = unwrap(model)
    bad = _first_non_finite(model.state_dict(), optimizer.state_dict()["state"] if optimizer is not None else {})
    if bad is not None:
        raise FloatingPointError(f"the model diverged: {bad} holds NaN or infinite values; not saved, so "
                                 f"{str(path)!r} keeps its last good checkpoint (if any)")
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model_config": model.config.to_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "history": history.to_dict() if history is not None else None,
        "tokenizer_name": tokenizer_name,
        "train_config": train_config.to_dict() if train_config is not None else None,
    }
    if train_state is not None:
        payload["train_state"] = train_state
    with atomic_path(path) as tmp:
        try:
            torch.save(payload, tmp)
        except RuntimeError:  # torch reports a full disk as "unexpected pos ...": say what it is
            if shutil.disk_usage(tmp.parent).free < _tensor_bytes(payload):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None
            raise
    return path


def _first_non_finite(*states: dict) -> str | None:
    """The name of the first floating-point tensor holding NaN or inf in nested state dicts, or None."""
    for state in states:
        for name, value in state.items():
            if isinstance(value, dict):
                inner = _first_non_finite(value)
                if inner is not None:
                    return f"optimizer state {name}/{inner}"
            elif isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
                return str(name)
    return None


def _tensor_bytes(payload) -> int:
    """Bytes the tensors of a nested payload take: about the size of its file."""
    if isinstance(payload, torch.Tensor):
        return payload.numel() * payload.element_size()
    if isinstance(payload, dict):
        return sum(_tensor_bytes(v) for v in payload.values())
    if isinstance(payload, (list, tuple)):
        return sum(_tensor_bytes(v) for v in payload)
    return 0


def load_checkpoint(
    path: str | Path,
    model: GPT | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    map_location: str | torch.device = "cpu",
) -> Checkpoint:
    """Read a checkpoint. With `model`, its config must equal the saved one and its weights are
    replaced; otherwise a new `GPT` is built from the saved config. With `optimizer`, its state is
    restored too."""
    if not isinstance(path, (str, os.PathLike)):
        raise CheckpointError(f"checkpoint path {path!r} is not allowed: give the path of a checkpoint file")
    path = Path(path)
    if not path.is_file():
        what = ("is a folder; give the checkpoint file inside it" if path.is_dir()
                else "is not a regular file" if path.exists() else "does not exist")
        raise CheckpointError(f"checkpoint {str(path)!r} {what}")
    _check_zip_integrity(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, garbage bytes, foreign pickle...
        raise _corrupt(path, err) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a nanogpt_lib checkpoint (no '{FORMAT}' marker)")
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"{str(path)!r} has checkpoint version {payload.get('version')!r}; this library reads {VERSION}"
        )
    missing = sorted(_KEYS - payload.keys())
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} is incomplete: it lacks {missing}")
    try:
        saved = GPTConfig.from_dict(payload["model_config"])
        history = History.from_dict(payload["history"]) if payload["history"] is not None else None
        train_config = payload["train_config"]
        if train_config is not None:
            train_config = TrainConfig(**{**train_config, "betas": tuple(train_config["betas"])})
    except (TypeError, ValueError, KeyError) as err:
        raise CheckpointError(f"checkpoint {str(path)!r} holds invalid metadata: {_one_line(err)}") from None
    if model is None:
        model = GPT(saved).to(map_location)
    elif model.config != saved:
        diffs = [
            f"{k}: file {v!r} vs model {getattr(model.config, k)!r}"
            for k, v in saved.to_dict().items()
            if getattr(model.config, k) != v
        ]
        raise CheckpointError(
            f"checkpoint {str(path)!r} was made for another config ({'; '.join(diffs)}); "
            f"give the saved model options (from Python: load_checkpoint(path) with no model rebuilds it)"
        )
    try:
        model.load_state_dict(payload["model"])
    except (RuntimeError, KeyError, TypeError) as err:
        raise CheckpointError(f"weights in {str(path)!r} do not fit the model: {str(err)[:300]}") from None
    if optimizer is not None:
        if payload["optimizer"] is None:
            raise CheckpointError(f"checkpoint {str(path)!r} has no optimizer state to restore")
        try:
            optimizer.load_state_dict(payload["optimizer"])
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointError(
                f"optimizer state in {str(path)!r} does not fit this optimizer: {_one_line(err)}"
            ) from None
    return Checkpoint(
        model=model,
        config=saved,
        tokenizer_name=payload["tokenizer_name"],
        history=history,
        train_config=train_config,
        optimizer_state=payload["optimizer"],
        train_state=payload.get("train_state"),
    )


def _check_zip_integrity(path: Path) -> None:
    """torch.save writes a zip archive; its CRC-32s catch flipped bytes that torch.load would not."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except Exception as err:  # a damaged archive fails in many ways (BadZipFile, UnicodeDecodeError...)
        raise _corrupt(path, err) from None
    if bad is not None:
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt: {bad!r} fails its CRC check")


def _corrupt(path: Path, err: BaseException) -> CheckpointError:
    if isinstance(err, pickle.UnpicklingError):  # torch's text advises weights_only=False: never do that here
        return CheckpointError(
            f"checkpoint {str(path)!r} holds Python objects other than tensors and plain values; they were "
            f"not loaded, because loading them could run arbitrary code: use only checkpoints you trust"
        )
    return CheckpointError(f"checkpoint {str(path)!r} is corrupt or not a nanogpt_lib checkpoint ({_one_line(err)})")


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:200]}" if text else type(err).__name__
