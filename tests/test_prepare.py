"""The prepare command: text files, folders and datasets to token files, reused when unchanged."""

import json
import re

import numpy as np
import pytest

from nanogpt_lib.data import corpus_files
from nanogpt_lib.prepare import HFDataset, PrepareError, files_source, main, prepare
from nanogpt_lib.tokens import open_tokens


def _expected_stream(tokenizer, texts):
    """Each document's tokens followed by the end-of-text token, as prepare writes them."""
    ids = []
    for text in texts:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return np.array(ids)


@pytest.fixture
def text_folder(tmp_path):
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    sources = corpus_files()[:3]
    for i, src in enumerate(sources):
        target = folder / ("sub" if i == 2 else "") / f"{i}.txt"
        target.write_text(src.read_text(encoding="utf-8"), encoding="utf-8")
    (folder / "ignored.md").write_text("not a .txt file", encoding="utf-8")
    return folder


def test_a_folder_becomes_train_and_val_tokens_in_order(text_folder, tmp_path, bundled_tokenizer):
    out = tmp_path / "out"
    result = prepare(files_source([text_folder]), out, bundled_tokenizer, val_fraction=0.2, progress=False)
    texts = [p.read_text(encoding="utf-8") for p in sorted(text_folder.rglob("*.txt"))]
    expected = _expected_stream(bundled_tokenizer, texts)
    data = open_tokens(out)
    assert np.array_equal(np.concatenate([data.train, data.val]), expected)
    assert len(data.val) == round(len(expected) * 0.2)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["tokenizer_name"] == "nanogpt_lib/tokenizer_pt" and meta["vocab_size"] == 4096
    assert meta["dtype"] == "uint16" and meta["documents"] == 3
    assert meta["tokens"] == {"train": len(data.train), "val": len(data.val)}
    assert meta["split"] == {"method": "tail", "val_fraction": 0.2}
    assert result.meta.text_bytes == sum(len(t.encode()) for t in texts) and not result.reused
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "train.bin", "val.bin"]  # no temp files


def test_a_rerun_reuses_the_files_until_an_input_changes(text_folder, tmp_path, bundled_tokenizer):
    out = tmp_path / "out"
    source = files_source([text_folder])
    prepare(source, out, bundled_tokenizer, progress=False)
    stamp = (out / "train.bin").stat().st_mtime_ns
    again = prepare(files_source([text_folder]), out, bundled_tokenizer, progress=False)
    assert again.reused and (out / "train.bin").stat().st_mtime_ns == stamp
    (text_folder / "0.txt").write_text("Um texto novo e diferente.\n" * 50, encoding="utf-8")
    changed = prepare(files_source([text_folder]), out, bundled_tokenizer, progress=False)
    assert not changed.reused and changed.meta.fingerprint != again.meta.fingerprint
    assert not prepare(files_source([text_folder]), out, bundled_tokenizer, 0.3, progress=False).reused


def test_long_files_are_tokenized_in_pieces(tmp_path, bundled_tokenizer, monkeypatch):
    import nanogpt_lib.prepare as prep

    monkeypatch.setattr(prep, "PIECE_CHARS", 200)  # many pieces, each cut after a line
    monkeypatch.setattr(prep, "BATCH_PIECES", 3)
    text = "".join(f"Linha número {i} do texto de teste.\n" for i in range(300))
    (tmp_path / "long.txt").write_text(text, encoding="utf-8")
    prepare(files_source([tmp_path / "long.txt"]), tmp_path / "out", bundled_tokenizer, progress=False)
    data = open_tokens(tmp_path / "out")
    stream = np.concatenate([data.train, data.val])
    assert bundled_tokenizer.decode(stream[:-1]) == text and stream[-1] == bundled_tokenizer.eos_token_id


@pytest.mark.parametrize("content, message", [
    (b"   \n\n", r"is empty \(or only whitespace\)"),
    (b"ol\xe1 mundo\n", r"is not valid UTF-8"),
])
def test_bad_text_files_are_named(tmp_path, bundled_tokenizer, content, message):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(content)
    with pytest.raises(PrepareError, match=message) as exc:
        prepare(files_source([bad]), tmp_path / "out", bundled_tokenizer, progress=False)
    assert str(bad) in str(exc.value)
    assert not (tmp_path / "out" / "train.bin").exists()  # nothing half-written under the real name


def test_missing_sources_and_bad_fractions_are_refused(tmp_path, bundled_tokenizer):
    with pytest.raises(PrepareError, match=r"'/no/such.txt' does not exist"):
        files_source(["/no/such.txt"])
    with pytest.raises(PrepareError, match=r"has no .txt files"):
        files_source([tmp_path])
    with pytest.raises(PrepareError, match=r"val_fraction=1.5 is not allowed"):
        prepare(files_source([]), tmp_path / "o", bundled_tokenizer, val_fraction=1.5)
    (tmp_path / "tiny.txt").write_text("Oi", encoding="utf-8")
    with pytest.raises(PrepareError, match=r"too few to split"):
        prepare(files_source([tmp_path / "tiny.txt"]), tmp_path / "o", bundled_tokenizer, progress=False)


def test_a_local_json_dataset_is_streamed(tmp_path, bundled_tokenizer):
    pytest.importorskip("datasets")
    records = [{"id": i, "body": f"Documento {i}: um texto curto em português."} for i in range(40)]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    source = HFDataset("json", text_column="body", data_files=(str(jsonl),), max_documents=30)
    result = prepare(source, tmp_path / "out", bundled_tokenizer, progress=False)
    data = open_tokens(tmp_path / "out")
    expected = _expected_stream(bundled_tokenizer, [r["body"] for r in records[:30]])
    assert np.array_equal(np.concatenate([data.train, data.val]), expected) and result.meta.documents == 30
    with pytest.raises(PrepareError, match=r"has no column 'text'; its columns are \['body', 'id'\]"):
        prepare(HFDataset("json", data_files=(str(jsonl),)), tmp_path / "o2", bundled_tokenizer, progress=False)


def test_a_saved_dataset_folder_works(tmp_path, bundled_tokenizer):
    datasets = pytest.importorskip("datasets")
    texts = [f"Texto {i} guardado com save_to_disk." for i in range(20)]
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(tmp_path / "saved"))
    prepare(HFDataset(str(tmp_path / "saved")), tmp_path / "out", bundled_tokenizer, progress=False)
    data = open_tokens(tmp_path / "out")
    assert np.array_equal(np.concatenate([data.train, data.val]), _expected_stream(bundled_tokenizer, texts))
    # other texts saved into the same folder: the files inside changed, so nothing is reused
    other = [f"Outro texto {i}, bem diferente." for i in range(20)]
    datasets.Dataset.from_dict({"text": other}).save_to_disk(str(tmp_path / "saved"))
    again = prepare(HFDataset(str(tmp_path / "saved")), tmp_path / "out", bundled_tokenizer, progress=False)
    assert not again.reused
    data = open_tokens(tmp_path / "out")
    assert np.array_equal(np.concatenate([data.train, data.val]), _expected_stream(bundled_tokenizer, other))


@pytest.mark.parametrize("n_files", [2, 3, 4])
def test_a_last_piece_that_fills_the_batch_exactly(tmp_path, bundled_tokenizer, monkeypatch, n_files):
    """With BATCH_PIECES=2, two or four one-piece files end on a full batch: nothing is left to flush."""
    import nanogpt_lib.prepare as prep

    monkeypatch.setattr(prep, "BATCH_PIECES", 2)
    texts = [f"Arquivo número {i}, com algumas palavras em português." for i in range(n_files)]
    for i, text in enumerate(texts):
        (tmp_path / f"{i}.txt").write_text(text, encoding="utf-8")
    prepare(files_source([tmp_path / f"{i}.txt" for i in range(n_files)]), tmp_path / "out", bundled_tokenizer,
            val_fraction=0.3, progress=False)
    data = open_tokens(tmp_path / "out")
    assert np.array_equal(np.concatenate([data.train, data.val]), _expected_stream(bundled_tokenizer, texts))


def test_a_failed_rerun_leaves_the_prepared_folder_usable(text_folder, tmp_path, bundled_tokenizer):
    first = prepare(files_source([text_folder]), tmp_path / "out", bundled_tokenizer, progress=False)
    (text_folder / "bad.txt").write_bytes(b"caf\xe9 em latin-1")
    with pytest.raises((PrepareError, ValueError), match="bad.txt"):
        prepare(files_source([text_folder]), tmp_path / "out", bundled_tokenizer, progress=False)
    data = open_tokens(tmp_path / "out")  # the old tokens, with their meta.json, still there
    assert data.meta == first.meta
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["meta.json", "train.bin", "val.bin"]


def test_cli_reports_throughput_and_reuse(text_folder, tmp_path, capsys):
    out = tmp_path / "out"
    main([str(text_folder), "--out", str(out), "--no-progress"])
    first = capsys.readouterr().out
    assert re.search(r"Tokenized .*: [\d.]+ MB of text, 3 documents in [\d.]+ s \([\d.]+ MB/s\)", first)
    main([str(text_folder), "--out", str(out), "--no-progress"])
    assert "nothing to do" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["/no/such/folder"], r"'/no/such/folder' does not exist"),
    (["x.txt", "--dataset", "json"], r"text paths or --dataset, not both"),
    (["--val-fraction", "0"], r"val_fraction=0.0 is not allowed"),
])
def test_cli_errors_are_one_line(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv + ["--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and re.search(message, err) and "Traceback" not in err
