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

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

HUB_TOKENIZER = "pierreguillou/gpt2-small-portuguese"
BUNDLED_TOKENIZER_DIR = Path(__file__).parent / "tokenizer_pt"
BUNDLED_TOKENIZER_NAME = "nanogpt_lib/tokenizer_pt"  # how checkpoints name the fallback
_TRUE = {"1", "true", "yes", "on"}


def hub_offline_reason(timeout: float = 1.5) -> str | None:
    """Why the Hugging Face Hub cannot be used right now, or None if it answered a TCP connect."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return f"{var}={os.environ[var]}"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as err:
        return f"{host}:{port} unreachable ({type(err).__name__})"


def load_tokenizer(
    name: str = HUB_TOKENIZER,
    fallback_dir: str | Path = BUNDLED_TOKENIZER_DIR,
    probe_timeout: float = 1.5,
    verbose: bool = True,
):
    """A `transformers` tokenizer: `name` (a Hub id or a local folder) if it can be loaded, else
    the tokenizer in `fallback_dir`. Prints one line saying which one and why (unless verbose=False).

    The returned tokenizer's `name_or_path` is what checkpoints record.
    """
    from transformers import AutoTokenizer

    source, reason = _resolve(name, probe_timeout, AutoTokenizer)
    if source is not None:
        tokenizer, where = source
        _say(verbose, f"Tokenizer: {name} ({where}), vocabulary {len(tokenizer):,} tokens")
        return tokenizer
    fallback_dir = Path(fallback_dir)
    if not (fallback_dir / "tokenizer.json").is_file():
        raise FileNotFoundError(
            f"could not load tokenizer {name!r} ({reason}) and the fallback folder "
            f"{str(fallback_dir)!r} has no tokenizer.json; run `python -m nanogpt_lib.tokenizer_train`"
        )
    tokenizer = AutoTokenizer.from_pretrained(str(fallback_dir))
    if fallback_dir.resolve() == BUNDLED_TOKENIZER_DIR.resolve():
        tokenizer.name_or_path = BUNDLED_TOKENIZER_NAME
        label = f"the bundled byte-level BPE {BUNDLED_TOKENIZER_NAME}"
    else:
        label = f"the fallback tokenizer in {fallback_dir}"
    _say(
        verbose,
        f"Tokenizer: {label} (vocabulary {len(tokenizer):,} tokens), because {name!r} "
        f"could not be loaded: {reason}",
    )
    return tokenizer


def _resolve(name: str, probe_timeout: float, auto_tokenizer):
    """((tokenizer, where-it-came-from), None) or (None, reason it could not be loaded)."""
    if Path(name).is_dir():
        try:
            return (auto_tokenizer.from_pretrained(name), "local folder"), None
        except (OSError, ValueError) as err:
            return None, f"the folder {name!r} holds no usable tokenizer ({_short(err)})"
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


def _short(err: Exception) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {first[:160]}"


def _say(verbose: bool, line: str) -> None:
    if verbose:
        print(line)
