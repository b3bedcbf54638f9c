import pytest
import torch

from nanogpt_lib import (
    bundled_corpus,
    bundled_paragraph,
    encode,
    load_corpus,
    read_text,
    sample_batch,
    shift_targets,
    train_val_split,
)
from nanogpt_lib.data import corpus_files


def test_shift_is_the_seeds_next_token_targets():
    ids = torch.tensor([[5, 6, 7, 8]])
    assert shift_targets(ids).tolist() == [[6, 7, 8, -1]]
    assert shift_targets(torch.tensor([1, 2])).tolist() == [2, -1]
    assert ids.tolist() == [[5, 6, 7, 8]]  # input untouched


@pytest.mark.parametrize("ids", [torch.tensor([[3]]), torch.zeros(1, 0, dtype=torch.long), torch.tensor([9])])
def test_shift_needs_two_tokens(ids):
    with pytest.raises(ValueError, match=rf"need at least 2 tokens.*got {ids.shape[-1]}"):
        shift_targets(ids)


def test_bundled_texts():
    paragraph = bundled_paragraph()
    assert paragraph.startswith("O rio") and "\n" not in paragraph
    files = corpus_files()
    assert len(files) >= 6  # several topics, one file each
    corpus = bundled_corpus()
    assert len(corpus.encode("utf-8")) >= 50_000
    for needle in ("Cerrado", "fotossíntese", "feijão", "algoritmo"):
        assert needle in corpus


def test_read_text_accepts_utf8_and_drops_a_bom(tmp_path):
    f = tmp_path / "t.txt"
    f.write_bytes("\ufeffOlá, mundo".encode())
    assert read_text(f) == "Olá, mundo"


def test_read_text_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"'.*nope.txt' does not exist"):
        read_text(tmp_path / "nope.txt")
    with pytest.raises(FileNotFoundError, match="is a folder"):
        read_text(tmp_path)
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="is empty"):
        read_text(empty)
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("coração".encode("latin-1"))
    with pytest.raises(ValueError, match=r"not valid UTF-8 \(byte 0xe7 at offset 4\)"):
        read_text(latin)


def test_encode_refuses_a_text_longer_than_the_context(tokenizer):
    ids = encode(tokenizer, bundled_paragraph())
    assert ids.shape[0] == 1 and ids.dtype == torch.long
    with pytest.raises(ValueError, match=rf"the text has {ids.shape[1]} tokens but block_size is 50"):
        encode(tokenizer, bundled_paragraph(), block_size=50)


def test_train_val_split_keeps_order_and_sizes():
    ids = torch.arange(100)
    train, val = train_val_split(ids, 0.1)
    assert train.tolist() == list(range(90)) and val.tolist() == list(range(90, 100))
    with pytest.raises(ValueError, match=r"val_fraction=1.0 must be in \(0, 1\)"):
        train_val_split(ids, 1.0)
    with pytest.raises(ValueError, match="too few to split"):
        train_val_split(torch.arange(5), 0.1)


def test_sample_batch_windows_and_next_tokens():
    data = torch.arange(1000)
    g = torch.Generator().manual_seed(0)
    x, y = sample_batch(data, batch_size=8, block_size=32, generator=g)
    assert x.shape == y.shape == (8, 32)
    assert torch.equal(y, x + 1)  # consecutive ids: the target is the next token
    assert torch.equal(x[:, 1:], x[:, :-1] + 1)
    g2 = torch.Generator().manual_seed(0)
    assert torch.equal(sample_batch(data, 8, 32, generator=g2)[0], x)
    with pytest.raises(ValueError, match=r"10 tokens are too few for windows of block_size=10"):
        sample_batch(torch.arange(10), 2, 10)


def test_a_users_corpus_file_or_folder_replaces_the_bundled_one(tmp_path):
    assert load_corpus() == bundled_corpus()
    (tmp_path / "b.txt").write_text("segundo texto\n", encoding="utf-8")
    (tmp_path / "a.txt").write_text("primeiro texto", encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored", encoding="utf-8")
    assert load_corpus(tmp_path) == "primeiro texto\n\nsegundo texto\n"
    assert load_corpus(tmp_path / "a.txt") == "primeiro texto"
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no .txt files"):
        load_corpus(tmp_path / "empty")
    (tmp_path / "c.txt").write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match="c.txt' is not valid UTF-8"):
        load_corpus(tmp_path)
