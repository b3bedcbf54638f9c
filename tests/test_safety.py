"""Nothing a user types destroys their work (issue 15): one test per principle, then the reported cases.

Principles: outputs are checked before any work; an existing checkpoint is replaced only on request;
nothing non-finite is saved; temp files never outlive a save; saves are fsync'ed; every expected
failure of a command line is one line; sizes are checked before allocating; options of another mode
are refused; a changed tokenizer is caught; resume keeps the optimiser's settings.
"""

import errno
import json
import os
import re
import shutil
import time

import numpy as np
import pytest
import torch

from nanogpt_lib import GPT, CheckpointError, GPTConfig, TrainConfig, load_checkpoint, load_tokenizer, save_checkpoint
from nanogpt_lib import checkpoint as ckpt_module
from nanogpt_lib.atomic import atomic_path, atomic_write_text
from nanogpt_lib.cli_errors import explain, run_cli
from nanogpt_lib.corpus_cli import is_peer_failure, rank_failure_line
from nanogpt_lib.corpus_train import CorpusConfig, train_corpus
from nanogpt_lib.costs import check_fits
from nanogpt_lib.distributed import DistContext
from nanogpt_lib.paths import check_not_replacing, check_outputs
from nanogpt_lib.prepare import PrepareError, files_source, prepare
from nanogpt_lib.prepare import main as prepare_main
from nanogpt_lib.tokenizer import BUNDLED_TOKENIZER_DIR
from nanogpt_lib.tokens import TokenFileError, open_tokens
from nanogpt_lib.train import main

TINY = ["--block-size", "16", "--n-layer", "2", "--n-head", "2", "--n-embd", "16", "--no-progress"]
CORPUS = ["--batch-size", "4", "--eval-batches", "1", "--warmup-steps", "0", *TINY]


@pytest.fixture(scope="module")
def data(tmp_path_factory, bundled_tokenizer):
    out = tmp_path_factory.mktemp("safety") / "tokens"
    prepare(files_source([]), out, bundled_tokenizer, progress=False)
    return open_tokens(out)


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


def _fails(argv, pattern, capsys, command=main, code=2):
    """The command exits with `code` and one line on stderr matching `pattern`, no traceback."""
    with pytest.raises(SystemExit) as exc:
        command(argv)
    err = capsys.readouterr().err
    assert exc.value.code == code, err
    assert re.search(pattern, err), err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def _tiny_model(vocab_size=4096):
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=16, vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=16, dropout=0.0))


# ------------------------------------------------------------- outputs first
def test_an_output_that_is_not_a_regular_file_is_refused_and_left_alone(fifo, capsys):
    _fails(["--checkpoint", str(fifo), *TINY], r"--checkpoint '.*fifo' is not a regular file", capsys)
    with pytest.raises(ValueError, match="is not a regular file"), atomic_path(fifo):
        pass
    assert fifo.is_fifo()


@pytest.mark.parametrize("case", ["text-is-checkpoint", "checkpoint-in-data", "plot-is-checkpoint",
                                  "plot-in-data"])
def test_an_output_equal_to_or_inside_an_input_or_another_output_is_refused(case, data, tmp_path, capsys):
    text = tmp_path / "mine.txt"
    text.write_text("Um texto curto de teste para o modelo aprender.", encoding="utf-8")
    folder = str(data.folder)
    before = {p.name: p.read_bytes() for p in data.folder.iterdir()}
    argv, pattern = {
        "text-is-checkpoint": (["--text-file", str(text), "--checkpoint", str(text)],
                               r"--checkpoint '.*mine.txt' is the input --text-file"),
        "checkpoint-in-data": (["--data", folder, "--checkpoint", f"{folder}/train.bin"],
                               r"--checkpoint '.*train.bin' is inside the input --data"),
        "plot-is-checkpoint": (["--data", folder, "--checkpoint", str(tmp_path / "a"), "--plot", str(tmp_path / "a")],
                               r"--checkpoint '.*a' is the output --plot"),
        "plot-in-data": (["--data", folder, "--plot", f"{folder}/loss.png"], r"--plot .* is inside the input --data"),
    }[case]
    _fails(argv + TINY, pattern, capsys)
    assert text.read_text(encoding="utf-8").startswith("Um texto")
    assert {p.name: p.read_bytes() for p in data.folder.iterdir()} == before


def test_prepare_refuses_an_output_folder_that_holds_its_inputs(tmp_path, capsys):
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "a.txt").write_text("Texto de teste. " * 50, encoding="utf-8")
    _fails([str(texts / "a.txt"), "--out", str(texts), "--no-progress"], r"--out '.*texts' contains the input",
           capsys, command=prepare_main)
    assert sorted(p.name for p in texts.iterdir()) == ["a.txt"]


def test_a_path_below_a_file_and_an_unwritable_plot_are_refused_before_training(data, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _fails(["--checkpoint", str(blocker / "x.pt"), *TINY], r"'.*file' is a file, so nothing can be created below",
           capsys)
    began = time.monotonic()
    _fails(["--data", str(data.folder), "--plot", str(blocker / "loss.png"), *CORPUS], r"--plot .* is a file, so",
           capsys)
    assert time.monotonic() - began < 10  # before the tokenizer, the model and the training


def test_check_outputs_allows_separate_paths_and_names_a_folder_output(tmp_path):
    (tmp_path / "in.txt").write_text("x")
    check_outputs({"--checkpoint": tmp_path / "out" / "run.pt", "--plot": None}, {"--text-file": tmp_path / "in.txt"})
    with pytest.raises(ValueError, match=r"--out '.*in.txt' is a file; give a folder"):
        check_outputs({"--out": tmp_path / "in.txt"}, folders=("--out",))


# ---------------------------------------------------- a checkpoint is kept
def test_an_existing_checkpoint_is_replaced_only_by_resume_or_overwrite(data, tmp_path, capsys):
    ck = tmp_path / "run.pt"
    command = ["--data", str(data.folder), "--steps", "2", "--eval-interval", "2", "--checkpoint", str(ck), *CORPUS]
    main(command)
    trained = ck.read_bytes()
    capsys.readouterr()
    _fails(command, r"--checkpoint '.*run.pt' already exists .* --resume .* --overwrite", capsys)
    assert ck.read_bytes() == trained
    main([*command[:3], "3", *command[4:], "--resume", str(ck)])  # the same file, continued: allowed
    assert load_checkpoint(ck).train_state["step"] == 3
    main(command + ["--overwrite"])
    assert load_checkpoint(ck).train_state["step"] == 2
    with pytest.raises(ValueError, match="already exists"):
        check_not_replacing("--checkpoint", ck, resume=tmp_path / "other.pt")
    _fails(["--checkpoint", str(ck), *TINY], r"already exists", capsys)  # Part 1 too, before training
    _fails(["--overwrite", *TINY], r"--overwrite lets a run replace its --checkpoint, but no --checkpoint", capsys)
    assert load_checkpoint(ck).train_state["step"] == 2


# ------------------------------------------------------ nothing non-finite
def test_a_model_holding_nan_is_never_saved_over_a_good_checkpoint(tmp_path, tiny_model):
    path = save_checkpoint(tmp_path / "m.pt", tiny_model)
    before = path.read_bytes()
    with torch.no_grad():
        tiny_model.lm_head.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"(wte|lm_head).weight holds NaN or infinite values; not saved"):
        save_checkpoint(path, tiny_model)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["m.pt"]


@pytest.mark.parametrize("option, value", [("--lr", "1e30"), ("--weight-decay", "1e30")])
def test_a_diverging_run_is_one_line_and_keeps_the_last_good_checkpoint(option, value, data, tmp_path, capsys):
    ck = tmp_path / "run.pt"
    err = _fails(["--data", str(data.folder), "--steps", "4", "--eval-interval", "1", "--checkpoint", str(ck),
                  option, value, *CORPUS], r"training diverged: the loss became nan .*lower --lr or --weight-decay",
                 capsys)
    saved = load_checkpoint(ck)
    assert all(torch.isfinite(p).all() for p in saved.model.parameters())
    assert re.search(r"\(lr 1e\+30, weight decay 0.01\)" if option == "--lr" else r"weight decay 1e\+30", err)


# --------------------------------------------------- temp files and fsync
def test_stale_temp_files_of_a_killed_save_are_removed_by_the_next_one(tmp_path, tiny_model):
    dead, alive = tmp_path / ".m.pt.4194999.abc.tmp", tmp_path / f".m.pt.{os.getppid()}.def.tmp"
    dead.write_bytes(b"x" * 100)
    alive.write_bytes(b"y")  # a save in progress in a live process: not ours to remove
    other = tmp_path / ".m.pt.7.4194999.ghi.tmp"  # a temp file of another target, m.pt.7
    other.write_bytes(b"z")
    save_checkpoint(tmp_path / "m.pt", tiny_model)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.pt", alive.name, other.name])


def test_a_failed_write_leaves_no_temp_file_and_saves_are_fsynced(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    atomic_write_text(tmp_path / "a.txt", "hello")
    assert synced == [str(tmp_path / synced[0].rsplit("/", 1)[1]), str(tmp_path)]  # the file, then its folder
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "b.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_a_failed_prepare_leaves_no_empty_output_folder(tmp_path, bundled_tokenizer):
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n", encoding="utf-8")
    out = tmp_path / "new" / "tokens"
    with pytest.raises(PrepareError, match="is empty"):
        prepare(files_source([empty]), out, bundled_tokenizer, progress=False)
    assert not out.exists()


def test_disk_full_during_a_save_is_named_as_such(tmp_path, tiny_model, monkeypatch):
    def full(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(ckpt_module.torch, "save", full)
    monkeypatch.setattr(ckpt_module.shutil, "disk_usage", lambda _p: shutil._ntuple_diskusage(10, 10, 0))
    with pytest.raises(OSError) as exc:
        save_checkpoint(tmp_path / "m.pt", tiny_model)
    assert exc.value.errno == errno.ENOSPC and list(tmp_path.iterdir()) == []
    assert explain(exc.value).startswith("the disk is full writing")


# -------------------------------------------------------- error boundary
@pytest.mark.parametrize("error, pattern, code", [
    (ValueError("bad value\nsecond line"), r"error: bad value$", 2),
    (OSError(errno.ENOSPC, "No space left on device", "x.pt"), r"the disk is full writing 'x.pt'", 2),
    (MemoryError(), r"out of memory", 2),
    (torch.OutOfMemoryError("CUDA out of memory"), r"out of memory \(CUDA out of memory\)", 2),
    (FloatingPointError("training diverged"), r"training diverged", 2),
    (KeyboardInterrupt(), r"interrupted \(Ctrl-C\)", 130),
])
def test_every_expected_failure_is_one_line_and_a_nonzero_exit(error, pattern, code, capsys):
    def work():
        raise error

    _fails(None, pattern, capsys, command=lambda _argv: run_cli("prog", work), code=code)
    with pytest.raises(type(error)):
        run_cli("prog", work, debug=True)  # --debug: the traceback


def test_an_unexpected_error_keeps_its_traceback():
    def work():
        raise AttributeError("a bug")

    with pytest.raises(AttributeError):
        run_cli("prog", work)


# ------------------------------------------------------------ size checks
@pytest.mark.parametrize("argv", [["--n-layer", "100000000"], ["--block-size", "100000000"],
                                  ["--n-embd", "1000000"], ["DATA", "--batch-size", "100000000"]])
def test_a_run_too_large_for_memory_is_refused_before_allocating(argv, data, capsys):
    argv = ["--data", str(data.folder)] + argv[1:] if argv[0] == "DATA" else argv
    began = time.monotonic()
    _fails(argv + ["--no-progress"], r"this run needs at least .* free; use a smaller model", capsys)
    assert time.monotonic() - began < 20


def test_check_fits_compares_the_estimate_with_the_free_memory():
    config = GPTConfig(vocab_size=4096, block_size=100, n_layer=4, n_head=4, n_embd=128)
    check_fits(config, 1, torch.device("cpu"), available=10**9)
    with pytest.raises(ValueError, match=r"1.33M parameters x 16 bytes .* but cpu has 1.0 MiB free"):
        check_fits(config, 1, torch.device("cpu"), available=2**20)


def test_a_huge_text_is_refused_before_it_is_tokenized(tmp_path, capsys):
    big = tmp_path / "big.txt"
    big.write_text("Um texto longo. " * 200_000, encoding="utf-8")  # 3.2 MB
    began = time.monotonic()
    _fails(["--text-file", str(big), *TINY], r"at least [\d,]+ tokens, but block_size is 16; .* --data", capsys)
    assert time.monotonic() - began < 10


# ------------------------------------------------- options of another mode
@pytest.mark.parametrize("argv, pattern", [
    (["--top-k", "2"], r"--top-k shape\(s\) a Mixture of Experts, but the model is dense"),
    (["--expert-type", "swiglu", "--aux-loss-weight", "0"], r"--aux-loss-weight, --expert-type|--expert-type, "),
    (["--cont-prefix-tokens", "500"], r"--cont-prefix-tokens 500 is not allowed: the text has \d+ tokens"),
])
def test_options_that_would_be_ignored_or_clamped_are_refused(argv, pattern, capsys):
    _fails(argv + ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--no-progress"], pattern, capsys)


def test_prepare_refuses_a_file_given_twice(tmp_path, capsys):
    text = tmp_path / "a.txt"
    text.write_text("Texto de teste. " * 50, encoding="utf-8")
    _fails([str(text), str(tmp_path), "--out", str(tmp_path / "tok")], r"'.*a.txt' is given twice", capsys,
           command=prepare_main)


# ------------------------------------------------------- tokenizer hash
def test_a_tokenizer_changed_in_place_is_caught_by_its_hash(tmp_path, capsys):
    folder = tmp_path / "tok"
    shutil.copytree(BUNDLED_TOKENIZER_DIR, folder)
    prepare_main(["--out", str(tmp_path / "data"), "--tokenizer", str(folder), "--no-progress"])
    spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = spec["model"]["vocab"]
    a, b = "ĠO", "Ġa"  # two tokens swap their ids: same name, same size, other tokens
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (folder / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    capsys.readouterr()
    _fails(["--data", str(tmp_path / "data"), "--tokenizer", str(folder), *CORPUS],
           r"made with a tokenizer of hash [0-9a-f]+, but .* now has hash [0-9a-f]+", capsys)


# --------------------------------------------------------------- resume
def test_resume_refuses_changed_optimizer_settings(data, tmp_path, capsys):
    ck = tmp_path / "run.pt"
    config = CorpusConfig(steps=2, batch_size=4, eval_interval=2, eval_batches=1, warmup_steps=0)
    train_corpus(_tiny_model(), data, TrainConfig(lr=1e-3, seed=7), config, checkpoint=ck, progress=False)
    longer = CorpusConfig(steps=3, batch_size=4, eval_interval=2, eval_batches=1, warmup_steps=0)
    with pytest.raises(CheckpointError, match=r"other settings \(lr: 0.001 -> 0.002; weight_decay: 0.01 -> 0.1\)"):
        train_corpus(_tiny_model(), data, TrainConfig(lr=2e-3, weight_decay=0.1, seed=7), longer, resume=ck,
                     progress=False)
    bigger = GPT(GPTConfig(block_size=16, vocab_size=4096, n_layer=3, n_head=2, n_embd=16, dropout=0.0))
    with pytest.raises(CheckpointError, match=r"give the saved model options") as exc:
        train_corpus(bigger, data, TrainConfig(lr=1e-3, seed=7), longer, resume=ck, progress=False)
    assert "load it without a model" not in str(exc.value)


# ------------------------------------------------------ clearer messages
def test_paths_of_the_wrong_kind_are_named_for_what_they_are(data, fifo, tmp_path, capsys):
    _fails(["--text-file", str(fifo), *TINY], r"text file '.*fifo' is not a regular file", capsys)
    _fails(["--data", str(data.folder / "train.bin"), *CORPUS], r"'.*train.bin' is a file, not a token folder",
           capsys)
    with pytest.raises(CheckpointError, match=r"is a folder; give the checkpoint file inside it"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=r"checkpoint path None is not allowed"):
        load_checkpoint(None)


@pytest.mark.parametrize("meta_edit, pattern", [
    (lambda meta: [meta], r"holds a JSON list, not an object"),
    (lambda meta: {**meta, "vocab_size": "4096"}, r"has vocab_size='4096' \(str\); it must be int"),
])
def test_a_damaged_meta_json_is_one_line_in_train_and_prepare(meta_edit, pattern, data, tmp_path, capsys):
    folder = tmp_path / "tokens"
    shutil.copytree(data.folder, folder)
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps(meta_edit(meta)))
    _fails(["--data", str(folder), *CORPUS], pattern, capsys)
    with pytest.raises(TokenFileError, match=pattern):
        open_tokens(folder)
    prepare_main(["--out", str(folder), "--no-progress"])  # prepare writes the damaged folder again
    assert open_tokens(folder).meta.vocab_size == 4096


def test_a_malicious_checkpoint_message_keeps_the_warning_not_the_bad_advice(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this would run",))

    torch.save({"format": "nanogpt_lib.checkpoint", "x": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(tmp_path / "evil.pt")
    assert "could run arbitrary code" in str(exc.value) and "weights_only=False" not in str(exc.value)


def test_generate_takes_numpy_numbers_and_names_a_prompt_on_another_device():
    model = _tiny_model(vocab_size=50).eval()
    idx = torch.tensor([[1, 2, 3]])
    out = model.generate(idx, np.int64(2), temperature=np.float32(0.5), top_k=np.int64(5))
    assert out.shape == (1, 5)
    with torch.device("meta"):
        elsewhere = GPT(model.config)
    with pytest.raises(ValueError, match=r"idx is on cpu but the model is on meta; move it there first"):
        elsewhere.generate(idx, 2)


@pytest.mark.parametrize("argv, pattern", [
    (["--seed", str(10**23)], r"seed=100000000000000000000000 is not allowed: it must be an integer in \[-9"),
    (["DATA", "--dist-timeout", "0"], r"--dist-timeout 0.0 is not allowed"),
    (["DATA", "--dist-timeout", "-5"], r"--dist-timeout -5.0 is not allowed"),
    (["DATA", "--dist-timeout", "nan"], r"--dist-timeout nan is not allowed"),
])
def test_out_of_range_numbers_are_named(argv, pattern, data, capsys):
    argv = ["--data", str(data.folder)] + argv[1:] if argv[0] == "DATA" else argv
    _fails(argv + CORPUS if "--data" in argv else argv + TINY, pattern, capsys)


def test_load_tokenizer_refuses_a_tokenizer_json_file(tmp_path):
    with pytest.raises(ValueError, match=r"is a file; give the folder that holds it"):
        load_tokenizer(str(BUNDLED_TOKENIZER_DIR / "tokenizer.json"), verbose=False)


# ------------------------------------------------------------ torchrun
def test_a_process_that_lost_its_peer_names_the_peer_not_itself():
    ctx = DistContext(rank=0, world_size=2)
    peer = torch.distributed.DistBackendError("[../third_party/gloo/...] Connection closed by peer [127.0.0.1]:1")
    assert is_peer_failure(peer) and not is_peer_failure(RuntimeError("injected failure on rank 1"))
    assert rank_failure_line(peer, ctx, 30).startswith(
        "rank 0 of 2 stopped: rank 1 died or did not answer within --dist-timeout 30 s")
    own = rank_failure_line(RuntimeError("injected failure on rank 0\nmore"), ctx, 30)
    assert own == "rank 0 of 2 failed: RuntimeError: injected failure on rank 0"
