"""Token folders: dtype choice, checked opening, windows that are a pure function of the step."""

import json

import numpy as np
import pytest
import torch

from nanogpt_lib.prepare import files_source, prepare
from nanogpt_lib.tokens import (
    TokenFileError,
    open_tokens,
    shard_batches,
    token_dtype,
    window_starts,
    windows,
)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, bundled_tokenizer):
    out = tmp_path_factory.mktemp("tokens") / "bundled"
    prepare(files_source([]), out, bundled_tokenizer, progress=False)
    return out


def test_dtype_follows_the_vocabulary():
    assert token_dtype(4096) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32 and token_dtype(50257) == np.uint16
    with pytest.raises(TokenFileError, match="vocab_size=0"):
        token_dtype(0)


def test_open_checks_the_tokenizer_vocabulary_and_dtype(prepared, bundled_tokenizer):
    data = open_tokens(prepared)
    assert data.train.dtype == np.uint16 and len(data.train) == data.meta.tokens["train"]
    data.check_compatible(bundled_tokenizer.name_or_path, len(bundled_tokenizer))
    with pytest.raises(TokenFileError, match=r"tokenizer 'nanogpt_lib/tokenizer_pt', but this run uses 'gpt2'"):
        data.check_compatible("gpt2", len(bundled_tokenizer))
    with pytest.raises(TokenFileError, match=r"vocab_size 4096 but the model has vocab_size 70000"):
        data.check_compatible(bundled_tokenizer.name_or_path, 70000)
    with pytest.raises(TokenFileError, match=r"block_size=100000"):
        data.check_windows(100_000)


def test_a_wrong_dtype_or_damaged_folder_is_named(prepared, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(prepared, copy)
    meta = json.loads((copy / "meta.json").read_text())
    (copy / "meta.json").write_text(json.dumps({**meta, "dtype": "uint32"}))
    with pytest.raises(TokenFileError, match=r"has \d+ bytes but meta.json announces \d+ uint32 tokens"):
        open_tokens(copy)
    (copy / "meta.json").write_text(json.dumps(meta))
    (copy / "val.bin").unlink()
    with pytest.raises(TokenFileError, match=r"val.bin' does not exist"):
        open_tokens(copy)
    (copy / "meta.json").unlink()
    with pytest.raises(TokenFileError, match=r"has no meta.json"):
        open_tokens(copy)
    with pytest.raises(TokenFileError, match=r"'/no/such/folder' does not exist"):
        open_tokens("/no/such/folder")


def test_uint16_file_with_a_uint32_vocabulary_is_refused(prepared):
    from dataclasses import replace

    data = open_tokens(prepared)
    data.meta = replace(data.meta, vocab_size=70000)  # a meta.json that names a large vocabulary
    with pytest.raises(TokenFileError, match=r"stores uint16 tokens, but a vocabulary of 70000 tokens needs uint32"):
        data.check_compatible(data.meta.tokenizer_name, 70000)


def test_windows_are_next_token_pairs_and_a_pure_function_of_the_step():
    data = np.arange(100, dtype=np.uint16)
    starts = window_starts(len(data), 8, 6, seed=1, stream=0, step=3)
    assert np.array_equal(starts, window_starts(len(data), 8, 6, seed=1, stream=0, step=3))
    assert not np.array_equal(starts, window_starts(len(data), 8, 6, seed=1, stream=0, step=4))
    x, y = windows(data, starts, 8)
    assert x.shape == y.shape == (6, 8) and x.dtype == torch.int64
    torch.testing.assert_close(y[:, :-1], x[:, 1:])
    torch.testing.assert_close(x[:, 0], torch.from_numpy(starts))


def test_ranks_and_micro_steps_cover_the_global_batch_once():
    data = np.arange(1000, dtype=np.uint16)
    starts = window_starts(len(data), 4, 12, seed=0, stream=0, step=1)
    whole = windows(data, starts, 4)[0]  # (12, 4)
    parts = [x for rank in range(2) for x, _ in shard_batches(data, starts, 4, 3, 2, rank)]
    assert all(p.shape == (2, 4) for p in parts)
    rows = sorted(tuple(r) for p in parts for r in p.tolist())
    assert rows == sorted(tuple(r) for r in whole.tolist())
