import os

# The tests never reach for the network: the tokenizer loader must decide "offline" at once.
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from nanogpt_lib import GPT, GPTConfig, load_tokenizer  # noqa: E402
from nanogpt_lib.tokenizer import BUNDLED_TOKENIZER_DIR  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer(str(BUNDLED_TOKENIZER_DIR), verbose=False)


@pytest.fixture
def tiny_config():
    return GPTConfig(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=16, dropout=0.0)


@pytest.fixture
def tiny_model(tiny_config):
    torch.manual_seed(0)
    return GPT(tiny_config)


@pytest.fixture(scope="session")
def bundled_tokenizer():
    """The fallback tokenizer under its canonical name, as the CLI loads it offline."""
    from nanogpt_lib.tokenizer import BUNDLED_TOKENIZER_NAME

    return load_tokenizer(BUNDLED_TOKENIZER_NAME, verbose=False)


@pytest.fixture(scope="module")
def tokens(tmp_path_factory, bundled_tokenizer):
    """The bundled corpus prepared into a token folder (the torchrun tests' data)."""
    from nanogpt_lib.prepare import files_source, prepare

    out = tmp_path_factory.mktemp("ddp") / "bundled"
    prepare(files_source([]), out, bundled_tokenizer, progress=False)
    return out
