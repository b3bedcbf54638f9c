"""Corpus training: schedule, accumulation, evaluation, exact resume, and the --data command line."""

import dataclasses
import json
import re
import shutil

import pytest
import torch

from nanogpt_lib import GPT, GPTConfig, History, TrainConfig, load_checkpoint, make_optimizer, save_checkpoint
from nanogpt_lib.checkpoint import CheckpointError
from nanogpt_lib.corpus_train import CorpusConfig, train_corpus
from nanogpt_lib.prepare import files_source, prepare
from nanogpt_lib.prepare import main as prepare_main
from nanogpt_lib.tokens import open_tokens
from nanogpt_lib.train import main

TINY = ["--block-size", "16", "--n-layer", "2", "--n-head", "2", "--n-embd", "16", "--no-progress"]


@pytest.fixture(scope="module")
def data(tmp_path_factory, bundled_tokenizer):
    out = tmp_path_factory.mktemp("corpus") / "bundled"
    prepare(files_source([]), out, bundled_tokenizer, progress=False)
    return open_tokens(out)


def _model(dropout=0.0, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(block_size=16, vocab_size=4096, n_layer=2, n_head=2, n_embd=16, dropout=dropout))


def _run(data, config, **kwargs):
    model = kwargs.pop("model", None) or _model()
    result = train_corpus(model, data, TrainConfig(lr=1e-3, seed=7), config, progress=False, **kwargs)
    return model, result


def test_loss_falls_and_evaluations_follow_the_interval(data):
    config = CorpusConfig(steps=12, batch_size=8, eval_interval=5, eval_batches=2, warmup_steps=3)
    _, result = _run(data, config)
    h = result.history
    assert h.epoch == list(range(1, 13)) and [e["step"] for e in h.evals] == [0, 5, 10, 12]
    assert h.evals[-1]["val_loss"] < h.evals[0]["val_loss"] and h.evals[-1]["train_loss"] < h.evals[0]["train_loss"]
    assert h.evals[0]["lr"] == pytest.approx(1e-3 / 3) and h.evals[-1]["lr"] == config.schedule(1e-3)(11)
    assert result.tokens_per_s > 0


def test_gradient_accumulation_equals_the_whole_batch(data):
    whole = _run(data, CorpusConfig(steps=4, batch_size=8, eval_interval=4, eval_batches=1, warmup_steps=0))
    accumulated = _run(data, CorpusConfig(steps=4, batch_size=8, grad_accum=4, eval_interval=4, eval_batches=1,
                                          warmup_steps=0))
    torch.testing.assert_close(torch.tensor(accumulated[1].history.loss), torch.tensor(whole[1].history.loss))
    for a, b in zip(accumulated[0].parameters(), whole[0].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


class Interrupted(Exception):
    pass


def test_resume_repeats_the_uninterrupted_run_exactly(data, tmp_path):
    """Dropout on: the masks are a function of (seed, step, rank), so resuming needs no RNG state."""
    config = CorpusConfig(steps=8, batch_size=4, eval_interval=4, eval_batches=1, warmup_steps=2)
    full_model, full = _run(data, config, model=_model(dropout=0.1))

    def crash_after_step_4(record, history):
        if record["step"] == 4:
            raise Interrupted
    ck = tmp_path / "run.pt"
    with pytest.raises(Interrupted):
        _run(data, config, model=_model(dropout=0.1), checkpoint=ck, on_eval=crash_after_step_4)
    assert load_checkpoint(ck).train_state["step"] == 4
    resumed_model = _model(dropout=0.1, seed=123)  # other initial weights: they must come from the file
    _, resumed = _run(data, config, model=resumed_model, resume=ck)
    assert resumed.history.epoch == full.history.epoch
    torch.testing.assert_close(torch.tensor(resumed.history.loss), torch.tensor(full.history.loss), rtol=0, atol=0)
    assert resumed.history.evals == full.history.evals
    for a, b in zip(resumed_model.state_dict().values(), full_model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_resume_refuses_other_data_and_finished_runs(data, tmp_path, bundled_tokenizer):
    config = CorpusConfig(steps=2, batch_size=4, eval_interval=2, eval_batches=1, warmup_steps=0)
    ck = tmp_path / "run.pt"
    _run(data, config, checkpoint=ck)
    with pytest.raises(CheckpointError, match=r"at step 2, already at or past --steps 2"):
        _run(data, config, resume=ck)
    model = _model()
    part1 = save_checkpoint(tmp_path / "part1.pt", model, make_optimizer(model, TrainConfig()), History())  # as Part 1
    with pytest.raises(CheckpointError, match=r"has no corpus training state \(a Part-1 checkpoint\?\)"):
        _run(data, config, resume=part1)
    (tmp_path / "other.txt").write_text("Outro corpus, bem diferente do primeiro. " * 40, encoding="utf-8")
    prepare(files_source([tmp_path / "other.txt"]), tmp_path / "other", bundled_tokenizer, progress=False)
    with pytest.raises(CheckpointError, match=r"fingerprint '[0-9a-f]+', but .* has '[0-9a-f]+'"):
        _run(open_tokens(tmp_path / "other"), CorpusConfig(steps=4, batch_size=4, eval_interval=2), resume=ck)
    longer = CorpusConfig(steps=4, batch_size=8, grad_accum=2, eval_interval=2, eval_batches=1, warmup_steps=0)
    with pytest.raises(CheckpointError, match=r"other settings \(batch_size: 4 -> 8; grad_accum: 1 -> 2\)"):
        _run(data, longer, resume=ck)
    model = _model()
    with pytest.raises(CheckpointError, match=r"seed: 7 -> 8"):
        train_corpus(model, data, TrainConfig(lr=1e-3, seed=8), dataclasses.replace(config, steps=4), resume=ck,
                     progress=False)


def test_resuming_from_the_first_evaluation_does_not_repeat_it(data, tmp_path):
    config = CorpusConfig(steps=4, batch_size=4, eval_interval=2, eval_batches=1, warmup_steps=0)
    ck = tmp_path / "run.pt"
    _run(data, dataclasses.replace(config, steps=1, eval_interval=5), checkpoint=ck)  # saved at steps 0 and 1
    first = load_checkpoint(ck)
    assert [e["step"] for e in first.history.evals] == [0, 1]
    _, resumed = _run(data, config, resume=ck)
    assert [e["step"] for e in resumed.history.evals] == [0, 1, 2, 4]


def test_a_negative_seed_works(data):
    model = _model()
    run = train_corpus(model, data, TrainConfig(lr=1e-3, seed=-3), CorpusConfig(steps=2, batch_size=4,
                       eval_interval=2, eval_batches=1, warmup_steps=0), progress=False)
    assert len(run.history.loss) == 2


@pytest.mark.parametrize("kwargs, message", [
    ({"steps": 0}, r"CorpusConfig.steps=0 is not allowed"),
    ({"warmup_steps": 20, "steps": 10}, r"warmup_steps=20 is not allowed: .*steps=10"),
    ({"grad_clip": -1.0}, r"grad_clip=-1.0 is not allowed"),
])
def test_bad_corpus_configs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CorpusConfig(**kwargs)
    with pytest.raises(ValueError, match=r"batch_size=6 does not split evenly over grad_accum=2 x 2 processes"):
        CorpusConfig(batch_size=6, grad_accum=2).micro_batch_size(2)


def test_prepare_then_train_a_folder_of_texts_end_to_end(tmp_path, capsys):
    texts = tmp_path / "texts"
    texts.mkdir()
    for i, line in enumerate(["A primeira história fala do mar. ", "A segunda fala da serra. "]):
        (texts / f"{i}.txt").write_text(line * 200, encoding="utf-8")
    prepare_main([str(texts), "--out", str(tmp_path / "tok"), "--no-progress"])
    ck, png = tmp_path / "ck" / "run.pt", tmp_path / "loss.png"
    common = ["--data", str(tmp_path / "tok"), "--batch-size", "4", "--eval-interval", "3", "--eval-batches", "1",
              "--warmup-steps", "2", "--lr", "3e-3", "--checkpoint", str(ck), *TINY]
    main(common + ["--steps", "6", "--plot", str(png)])
    out = capsys.readouterr().out
    steps = re.findall(r"step +(\d+)/6: train loss ([\d.]+) \| val loss ([\d.]+)", out)
    assert [s[0] for s in steps] == ["0", "3", "6"] and float(steps[-1][2]) < float(steps[0][2])
    assert re.search(r"at [\d,]+ tokens/s", out) and "Checkpoint saved to" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = load_checkpoint(ck)
    assert saved.train_state["step"] == 6 and saved.tokenizer_name == "nanogpt_lib/tokenizer_pt"
    main(common + ["--steps", "9", "--resume", str(ck)])  # continue the run to step 9
    out = capsys.readouterr().out
    assert re.findall(r"step +(\d+)/9", out) == ["9"] and load_checkpoint(ck).history.epoch == list(range(1, 10))


@pytest.fixture
def foreign_folder(data, tmp_path):
    """The bundled token folder, relabelled as made by another tokenizer."""
    folder = tmp_path / "foreign"
    shutil.copytree(data.folder, folder)
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, "tokenizer_name": "someone/else"}))
    return folder


@pytest.mark.parametrize("argv, message", [
    (["--steps", "5"], r"--steps: corpus-training option\(s\), which need --data FOLDER"),
    (["--data", "/no/such/tokens"], r"token folder '/no/such/tokens' does not exist"),
    (["--data", "FOREIGN"], r"made with tokenizer 'someone/else', but this run uses 'nanogpt_lib/tokenizer_pt'"),
    (["--data", "DATA", "--batch-size", "6", "--grad-accum", "4"], r"batch_size=6 does not split evenly"),
    (["--data", "DATA", "--block-size", "5000"], r"too few for windows of block_size=5000"),
    (["--data", "DATA", "--text-file", "x.txt"], r"--text-file: Part 1 option\(s\), which do not apply with --data"),
    (["--data", "DATA", "--epochs", "3"], r"--epochs: Part 1 option\(s\), which do not apply with --data"),
    (["--data", "DATA", "--plot", "/"], r"--plot '/' is a folder"),
    (["--data", "DATA", "--resume", "/no/such.pt"], r"checkpoint '/no/such.pt' does not exist"),
])
def test_bad_corpus_options_exit_with_one_line(argv, message, data, foreign_folder, capsys):
    argv = [{"DATA": str(data.folder), "FOREIGN": str(foreign_folder)}.get(a, a) for a in argv]
    with pytest.raises(SystemExit) as exc:
        main(argv + ["--no-progress"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and re.search(message, err) and "Traceback" not in err
