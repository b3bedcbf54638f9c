"""Loading the tokenizer: the blog's Hugging Face tokenizer when the Hub is reachable, else ours.

The series uses `pierreguillou/gpt2-small-portuguese` (GPT-2's byte-level BPE retrained on
Portuguese Wikipedia, 50257 tokens). Without network access (and on this project's machines) the
package falls back to `nanogpt_lib/tokenizer_pt`, a byte-level BPE of the same kind trained on the
bundled corpus (see `tokenizer_train.py`). `load_tokenizer` prints one line saying which one is in
use and why; the model's vocab_size must come from `len(tokenizer)`.

Deciding "offline" must be quick: `from_pretrained` with no network retries for about 50 s, so we
honour HF_HUB_OFFLINE, look in the local Hugging Face cache first, and probe the Hub with a short
TCP connect before asking it.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

HUB_TOKENIZER = "pierreguillou/gpt2-small-portuguese"
BUNDLED_TOKENIZER_DIR = Path(__file__).parent / "tokenizer_pt"
BUNDLED_TOKENIZER_NAME = "nanogpt_lib/tokenizer_pt"  # how checkpoints name the fallback
_BUNDLED_LABEL = f"the bundled byte-level BPE {BUNDLED_TOKENIZER_NAME}"
_TRUE = {"1", "true", "yes", "on"}


def hub_offline_reason(timeout: float = 1.5) -> str | None:
    """Why the Hugging Face Hub cannot be used right now, or None if it answered a TCP connect.

    The connect (DNS look-up included) runs in a daemon thread, so a hanging resolver costs at
    most `timeout` seconds. Behind an HTTPS proxy, the proxy is what must answer.
    """
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return f"{var}={os.environ[var]}"
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlparse(proxy or os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                outcome.append(None)
        except OSError as err:
            outcome.append(f"{host}:{port} unreachable ({type(err).__name__})")

    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(timeout)
    return outcome[0] if outcome else f"{host}:{port} gave no answer within {timeout:g} s"


def load_tokenizer(
    name: str = HUB_TOKENIZER,
    fallback_dir: str | Path = BUNDLED_TOKENIZER_DIR,
    probe_timeout: float = 1.5,
    verbose: bool = True,
    expected_vocab_size: int | None = None,
):
    """A `transformers` tokenizer: `name` (a Hub id, a local folder, or BUNDLED_TOKENIZER_NAME) if
    it can be loaded, else the tokenizer in `fallback_dir`. Prints one line saying which one and
    why (unless verbose=False).

    A `name` that looks like a path (starts with '/', '.', or '~') must exist. With
    `expected_vocab_size` (e.g. a checkpoint's), a tokenizer of another size is an error rather
    than a silent mismatch. The returned tokenizer's `name_or_path` is what checkpoints record.
    """
    from transformers import AutoTokenizer

    if name == BUNDLED_TOKENIZER_NAME:
        tokenizer = _bundled(AutoTokenizer)
        _say(verbose, f"Tokenizer: {_BUNDLED_LABEL} (vocabulary {len(tokenizer):,} tokens), as requested")
        return _checked_size(tokenizer, expected_vocab_size)
    if not isinstance(name, str) or not name:
        raise ValueError(f"tokenizer name {name!r} is not allowed: give a Hugging Face id or a local folder")
    local = Path(name).expanduser()
    if local.exists() and not local.is_dir():
        raise ValueError(f"tokenizer {name!r} is a file; give the folder that holds it "
                         f"({str(local.parent)!r} for a tokenizer.json)")
    if name.startswith(("/", ".", "~")) and not local.is_dir():
        raise FileNotFoundError(f"tokenizer folder {name!r} does not exist")
    source, reason = _resolve(name, probe_timeout, AutoTokenizer)
    if source is not None:
        tokenizer, where = source
        _say(verbose, f"Tokenizer: {name} ({where}), vocabulary {len(tokenizer):,} tokens")
        return _checked_size(tokenizer, expected_vocab_size)
    fallback_dir = Path(fallback_dir)
    if not (fallback_dir / "tokenizer.json").is_file():
        raise FileNotFoundError(
            f"could not load tokenizer {name!r} ({reason}) and the fallback folder "
            f"{str(fallback_dir)!r} has no tokenizer.json; run `python -m nanogpt_lib.tokenizer_train`"
        )
    if fallback_dir.resolve() == BUNDLED_TOKENIZER_DIR.resolve():
        tokenizer = _bundled(AutoTokenizer)
        label = _BUNDLED_LABEL
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(fallback_dir.resolve()))
        label = f"the fallback tokenizer in {fallback_dir}"
    _say(
        verbose,
        f"Tokenizer: {label} (vocabulary {len(tokenizer):,} tokens), because {name!r} "
        f"could not be loaded: {reason}",
    )
    return _checked_size(tokenizer, expected_vocab_size)


def _bundled(auto_tokenizer):
    tokenizer = auto_tokenizer.from_pretrained(str(BUNDLED_TOKENIZER_DIR))
    tokenizer.name_or_path = BUNDLED_TOKENIZER_NAME
    return tokenizer


def _checked_size(tokenizer, expected: int | None):
    if expected is not None and len(tokenizer) != expected:
        raise ValueError(
            f"tokenizer {tokenizer.name_or_path!r} has {len(tokenizer):,} tokens but {expected:,} are expected "
            f"(the model was trained with another tokenizer); load that one, e.g. by its recorded name"
        )
    return tokenizer


def _resolve(name: str, probe_timeout: float, auto_tokenizer):
    """((tokenizer, where-it-came-from), None) or (None, reason it could not be loaded)."""
    folder = Path(name).expanduser()
    if folder.is_dir():  # the user named this folder: a broken one is an error, never a silent fallback
        try:
            tokenizer = auto_tokenizer.from_pretrained(str(folder.resolve()))
        except Exception as err:  # the Rust parser raises its own exception types for a bad tokenizer.json
            raise ValueError(f"tokenizer folder {name!r} holds no usable tokenizer ({_short(err)}); "
                             f"fix it or give another --tokenizer") from None
        return (tokenizer, "local folder"), None
    try:  # the Hugging Face cache of a reader who was online once: no network needed
        return (auto_tokenizer.from_pretrained(name, local_files_only=True), "local Hugging Face cache"), None
    except (OSError, ValueError):
        pass
    reason = hub_offline_reason(probe_timeout)
    if reason is not None:
        return None, f"not in the local cache and the Hub is offline ({reason})"
    try:
        return (auto_tokenizer.from_pretrained(name), "downloaded from the Hugging Face Hub"), None
    except (OSError, ValueError) as err:
        return None, f"the Hub did not provide it ({_short(err)})"


def tokenizer_hash(tokenizer) -> str | None:
    """A hash of the tokenizer's own definition (vocabulary, merges, normaliser): a tokenizer retrained
    or edited in place under the same name and size gets another hash. None for a slow tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return hashlib.sha256(backend.to_str().encode()).hexdigest()[:16] if backend is not None else None


def _short(err: Exception) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {first[:160]}"


def _say(verbose: bool, line: str) -> None:
    if verbose:
        print(line)
