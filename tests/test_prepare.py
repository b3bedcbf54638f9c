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
    (["x.txt", "--dataset", "json"], r"give one source, not 2: text paths, --dataset cannot be combined"),
    (["--val-fraction", "0"], r"val_fraction=0.0 is not allowed"),
])
def test_cli_errors_are_one_line(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv + ["--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and re.search(message, err) and "Traceback" not in err


# ------------------------------------------------------------------ the each-document split and named corpora
def _write_documents(folder, texts):
    folder.mkdir()
    for i, text in enumerate(texts):
        (folder / f"{i}.txt").write_text(text, encoding="utf-8")
    return [folder / f"{i}.txt" for i in range(len(texts))]


def _document_texts():
    """Three documents of clearly different lengths."""
    return [
        "Era uma vez um menino que morava perto do rio. " * 12,
        "Curto, mas com algumas palavras.\n",
        "".join(f"Linha {i}: a casa velha tinha janelas azuis e um jardim.\n" for i in range(40)),
    ]


@pytest.mark.parametrize("val_fraction", [0.1, 0.25])
def test_each_document_holds_out_the_end_of_every_document(tmp_path, bundled_tokenizer, val_fraction):
    texts = _document_texts()
    files = _write_documents(tmp_path / "docs", texts)
    result = prepare(files_source(files), tmp_path / "out", bundled_tokenizer, val_fraction=val_fraction,
                     progress=False, split="each-document")
    train, val, rows = [], [], []
    for path, text in zip(files, texts, strict=True):
        ids = _expected_stream(bundled_tokenizer, [text])
        n_val = round(len(ids) * val_fraction)
        assert n_val >= 1
        train.append(ids[: len(ids) - n_val])
        val.append(ids[len(ids) - n_val :])
        rows.append([str(path), len(ids) - n_val, n_val])
    data = open_tokens(tmp_path / "out")
    assert np.array_equal(data.train, np.concatenate(train)) and np.array_equal(data.val, np.concatenate(val))
    assert data.val[-1] == bundled_tokenizer.eos_token_id and data.train[-1] != bundled_tokenizer.eos_token_id
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["document_tokens"] == rows and result.meta.document_tokens == rows
    assert sum(r[1] for r in rows) == meta["tokens"]["train"] and sum(r[2] for r in rows) == meta["tokens"]["val"]
    assert meta["split"] == {"method": "each-document", "val_fraction": val_fraction} and meta["documents"] == 3


def test_each_document_with_documents_in_many_pieces_and_batches(tmp_path, bundled_tokenizer, monkeypatch):
    """Pieces of one document spread over several batches (and a batch holding two documents) still split
    at each document's own end; the stream is the one the tail split writes."""
    import nanogpt_lib.prepare as prep

    monkeypatch.setattr(prep, "PIECE_CHARS", 150)
    monkeypatch.setattr(prep, "BATCH_PIECES", 4)
    files = _write_documents(tmp_path / "docs", _document_texts())
    each = prepare(files_source(files), tmp_path / "each", bundled_tokenizer, val_fraction=0.2, progress=False,
                   split="each-document")
    tail = prepare(files_source(files), tmp_path / "tail", bundled_tokenizer, val_fraction=0.2, progress=False)
    tail_data, each_data = open_tokens(tmp_path / "tail"), open_tokens(tmp_path / "each")
    stream = np.concatenate([tail_data.train, tail_data.val])
    train, val, start = [], [], 0
    for _, n_train, n_val in each.meta.document_tokens:
        size = n_train + n_val
        assert n_val == round(size * 0.2)
        train.append(stream[start : start + n_train])
        val.append(stream[start + n_train : start + size])
        start += size
    assert start == len(stream) == sum(each.meta.tokens.values()) == sum(tail.meta.tokens.values())
    assert np.array_equal(each_data.train, np.concatenate(train))
    assert np.array_equal(each_data.val, np.concatenate(val))
    assert each.meta.fingerprint != tail.meta.fingerprint


def test_the_tail_split_records_where_each_document_was_cut(tmp_path, bundled_tokenizer):
    texts = ["Primeiro documento com um texto bem comprido e repetido. " * 8,
             "Segundo documento, também comprido, com outras palavras. " * 8,
             "Terceiro documento, do mesmo tamanho, e termina aqui. " * 8]
    files = _write_documents(tmp_path / "docs", texts)
    result = prepare(files_source(files), tmp_path / "out", bundled_tokenizer, val_fraction=0.6, progress=False)
    sizes = [len(_expected_stream(bundled_tokenizer, [t])) for t in texts]
    n_train = sum(sizes) - round(sum(sizes) * 0.6)
    assert sizes[0] < n_train < sizes[0] + sizes[1]  # the cut falls inside the second document
    rows = result.meta.document_tokens
    assert rows == [[str(files[0]), sizes[0], 0], [str(files[1]), n_train - sizes[0], sum(sizes[:2]) - n_train],
                    [str(files[2]), 0, sizes[2]]]  # the third is all validation
    assert sum(r[1] for r in rows) == result.meta.tokens["train"]
    assert sum(r[2] for r in rows) == result.meta.tokens["val"]
    assert json.loads((tmp_path / "out" / "meta.json").read_text())["document_tokens"] == rows


def test_a_dataset_has_no_document_list(tmp_path, bundled_tokenizer):
    pytest.importorskip("datasets")
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"text": f"Documento {i} em português."}) + "\n" for i in range(20)))
    result = prepare(HFDataset("json", data_files=(str(jsonl),)), tmp_path / "out", bundled_tokenizer,
                     progress=False, split="each-document")
    assert result.meta.document_tokens is None and result.meta.documents == 20
    assert result.meta.tokens["val"] >= 20  # every record gives some tokens to validation


@pytest.mark.parametrize("split", ["random", "each_document", "", None])
def test_an_unknown_split_is_refused(tmp_path, bundled_tokenizer, split):
    with pytest.raises(PrepareError) as exc:
        prepare(files_source([]), tmp_path / "out", bundled_tokenizer, progress=False, split=split)
    assert str(exc.value) == f"split={split!r} is not allowed: choose one of ['tail', 'each-document']"
    assert not (tmp_path / "out").exists()


def test_the_tail_split_fingerprint_is_unchanged(text_folder, tmp_path, bundled_tokenizer):
    """Folders prepared before the each-document split existed are still reused: same identity, same hash."""
    import hashlib

    from nanogpt_lib.prepare import _tokenizer_identity

    source = files_source([text_folder])
    result = prepare(source, tmp_path / "out", bundled_tokenizer, val_fraction=0.1, progress=False)
    identity = {"tokenizer": _tokenizer_identity(bundled_tokenizer), "split": {"method": "tail", "val_fraction": 0.1},
                "source": {"files": [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns]
                                     for p in sorted(text_folder.rglob("*.txt"))]},
                "version": 2}
    expected = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    assert result.meta.fingerprint == expected
    # a folder written before document_tokens existed (no such key in meta.json) is reused as it is
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    del meta["document_tokens"]
    (tmp_path / "out" / "meta.json").write_text(json.dumps(meta))
    again = prepare(files_source([text_folder]), tmp_path / "out", bundled_tokenizer, progress=False)
    assert again.reused and again.meta.document_tokens is None
    assert not prepare(source, tmp_path / "out", bundled_tokenizer, progress=False, split="each-document").reused


def _machado():
    """The shared copy of the Machado corpus (see tests/test_corpora.py); skipped without it, except in CI."""
    import os
    from pathlib import Path

    folder = Path(os.environ.get("NANOGPT_MACHADO_DIR")
                  or Path(__file__).resolve().parent.parent.parent / "shared" / "corpora" / "machado")
    if not (folder / "SHA256SUMS").is_file():
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(f"the Machado corpus is not at {str(folder)!r}")
        pytest.skip(f"the Machado corpus is not at {str(folder)!r}")
    return folder


def test_cli_prepares_a_named_corpus_split_in_every_document(tmp_path, capsys, bundled_tokenizer):
    shared = _machado()
    out = tmp_path / "out"
    main(["--corpus", "machado", "--genres", "miscelanea", "--corpus-dir", str(shared), "--out", str(out),
          "--no-progress"])
    printed = capsys.readouterr().out
    assert re.search(r"^Tokenized Machado de Assis, complete works \(116 works, public domain\), "
                     r"genres miscelanea \(10 files\): "
                     r"0\.07 MB of text, 10 documents in [\d.]+ s \([\d.]+ MB/s\) -> [\d,]+ train \+ [\d,]+ val "
                     r"uint16 tokens in ", printed, re.MULTILINE)
    data = open_tokens(out)
    meta = data.meta
    assert meta.split == {"method": "each-document", "val_fraction": 0.1}
    names = sorted(p.name for p in (shared / "miscelanea").glob("*.txt"))
    assert [r[0] for r in meta.document_tokens] == [f"miscelanea/{n}" for n in names]
    assert meta.text_bytes == sum((shared / "miscelanea" / n).stat().st_size for n in names)
    # every work gives its last tenth to validation: the first work's val tokens open val.bin
    first = _expected_stream(bundled_tokenizer, [(shared / "miscelanea" / names[0]).read_text(encoding="utf-8")])
    n_val = round(len(first) * 0.1)
    assert meta.document_tokens[0][1:] == [len(first) - n_val, n_val]
    assert np.array_equal(data.train[: len(first) - n_val], first[: len(first) - n_val])
    assert np.array_equal(data.val[:n_val], first[len(first) - n_val :])
    assert all(val == round((train + val) * 0.1) for _, train, val in meta.document_tokens)
    main(["--corpus", "machado", "--genres", "miscelanea", "--corpus-dir", str(shared), "--out", str(out),
          "--no-progress"])
    assert "nothing to do" in capsys.readouterr().out
    main(["--corpus", "machado", "--genres", "miscelanea", "--corpus-dir", str(shared), "--out", str(out),
          "--no-progress", "--split", "tail"])  # another split: tokenized again
    assert "Tokenized" in capsys.readouterr().out and open_tokens(out).meta.split["method"] == "tail"


@pytest.mark.parametrize("argv, message", [
    (["x.txt", "--corpus", "machado"], r"error: give one source, not 2: text paths, --corpus cannot be combined$"),
    (["--dataset", "json", "--corpus", "machado"], r"give one source, not 2: --dataset, --corpus cannot be combined"),
    (["--genres", "poesia"], r"error: --genres and --corpus-dir belong to --corpus; name the corpus"),
    (["--corpus-dir", "/tmp"], r"error: --genres and --corpus-dir belong to --corpus"),
    (["x.txt", "--genres", "poesia"], r"--genres and --corpus-dir belong to --corpus"),
    (["--corpus", "shakespeare"], r"error: corpus 'shakespeare' is not known: choose one of \['machado'\]"),
    (["--corpus", "machado", "--genres", "novels"], r"error: genres \['novels'\] are not allowed for corpus 'machado'"),
    (["--corpus", "machado", "--corpus-dir", "/no/such/copy"],
     r"error: the corpus folder '/no/such/copy' is not a folder"),
    (["--split", "random"], r"argument --split: invalid choice: 'random'"),
])
def test_cli_named_corpus_errors_are_one_line(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv + ["--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and re.search(message, err.strip(), re.MULTILINE) and "Traceback" not in err
    assert err.count("error:") == 1 and not (tmp_path / "out").exists()


def test_cli_a_damaged_corpus_copy_is_one_line_naming_the_file(tmp_path, capsys):
    shared = _machado()
    copy = tmp_path / "copy" / "miscelanea"
    copy.mkdir(parents=True)
    for f in (shared / "miscelanea").glob("*.txt"):
        (copy / f.name).write_bytes(f.read_bytes())
    (copy / "estatua.txt").write_bytes(b"outra coisa\n")
    with pytest.raises(SystemExit) as exc:
        main(["--corpus", "machado", "--genres", "miscelanea", "--corpus-dir", str(copy.parent),
              "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "miscelanea/estatua.txt has SHA-256" in err and len(err.strip().splitlines()) == 1


def test_prepare_named_splits_every_work_and_reuses_its_folder(tmp_path, monkeypatch, bundled_tokenizer):
    """prepare_named: the corpus's works (here one genre) with the each-document split, reused when unchanged;
    by default into the cache, in a folder named after the corpus, genres and tokenizer."""
    import os

    from nanogpt_lib.corpora import CorpusError
    from nanogpt_lib.prepare import named_source, prepare_named
    from nanogpt_lib.specialisation import genre_labels
    from nanogpt_lib.tokenizer import tokenizer_hash

    shared = _machado()
    assert os.environ.get("NANOGPT_MACHADO_DIR")  # the root conftest.py points the loader at the shared copy
    out = tmp_path / "tokens"
    result = prepare_named("machado", bundled_tokenizer, genres=["miscelanea"], out=out)
    assert result.folder == out and not result.reused
    meta = open_tokens(out).meta
    assert meta == result.meta and meta.split == {"method": "each-document", "val_fraction": 0.1}
    names = sorted(p.name for p in (shared / "miscelanea").glob("*.txt"))
    assert [r[0] for r in meta.document_tokens] == [f"miscelanea/{n}" for n in names]
    assert all(val == round((train + val) * 0.1) and val > 0 for _, train, val in meta.document_tokens)
    data = open_tokens(out)
    assert len(data.train) == sum(r[1] for r in meta.document_tokens)
    assert len(data.val) == sum(r[2] for r in meta.document_tokens)
    # the same tokens as `prepare` of the named source with the each-document split
    direct = prepare(named_source("machado", ["miscelanea"], shared), tmp_path / "direct", bundled_tokenizer,
                     val_fraction=0.1, progress=False, split="each-document")
    assert np.array_equal(open_tokens(direct.folder).train, data.train)
    assert np.array_equal(open_tokens(direct.folder).val, data.val)
    # every validation token belongs to the one genre
    labels, genres = genre_labels(meta.document_tokens, "val", np.arange(len(data.val)))
    assert genres == ["miscelanea"] and (labels == 0).all()
    # unchanged: reused, with the local copy named or not
    assert prepare_named("machado", bundled_tokenizer, genres=["miscelanea"], out=out).reused
    assert prepare_named("machado", bundled_tokenizer, genres=["miscelanea"], local=shared, out=out).reused
    # by default into the cache, one folder per corpus, genres and tokenizer
    monkeypatch.setenv("NANOGPT_CACHE", str(tmp_path / "cache"))
    cached = prepare_named("machado", bundled_tokenizer, genres=["miscelanea"])
    digest = tokenizer_hash(bundled_tokenizer)
    assert digest and cached.folder == tmp_path / "cache" / "tokens" / f"machado-miscelanea-{digest[:12]}"
    assert np.array_equal(open_tokens(cached.folder).val, data.val)
    assert prepare_named("machado", bundled_tokenizer, genres=["miscelanea"]).reused
    with pytest.raises(CorpusError, match="novels"):
        prepare_named("machado", bundled_tokenizer, genres=["novels"], out=tmp_path / "bad")
    with pytest.raises(CorpusError, match="shakespeare"):
        prepare_named("shakespeare", bundled_tokenizer, out=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
