"""The command-line run: the seed's script as `python -m nanogpt_lib.train`."""

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nanogpt_lib import load_checkpoint
from nanogpt_lib.train import build_parser, main, resolve_device

ROOT = Path(__file__).parent.parent


def test_help_documents_every_option():
    result = subprocess.run([sys.executable, "-m", "nanogpt_lib.train", "--help"], capture_output=True,
                            text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0
    for option in ("--epochs", "--lr", "--weight-decay", "--beta1", "--beta2", "--block-size", "--n-layer",
                   "--n-head", "--n-embd", "--dropout", "--bias", "--text-file", "--tokenizer", "--seed",
                   "--device", "--checkpoint", "--cont-prefix-tokens", "--progress"):
        assert option in result.stdout
    defaults = build_parser().parse_args([])
    assert (defaults.block_size, defaults.n_layer, defaults.n_head, defaults.n_embd, defaults.dropout,
            defaults.bias, defaults.epochs, defaults.lr) == (100, 4, 4, 128, 0.2, True, 500, 1e-4)


def test_default_run_memorises_the_paragraph(tmp_path, capsys):
    """The seed's full recipe (500 epochs, 4L/4H/128, dropout 0.2, lr 1e-4) on the bundled paragraph."""
    ck = tmp_path / "part1.pt"
    main(["--no-progress", "--checkpoint", str(ck)])
    out = capsys.readouterr().out
    initial = re.search(r"Initial loss ([\d.]+) \(ln\(vocab_size\) = ([\d.]+)\)", out)
    loss0, ln_v = float(initial[1]), float(initial[2])
    assert abs(loss0 - ln_v) / ln_v < 0.10
    quarters = re.findall(r"\[ *(\d+)%\] epoch (\d+)/500: .*perplexity ([\d.]+) \| reconstruction ([\d.]+)%", out)
    assert [(q[0], q[1]) for q in quarters] == [("25", "125"), ("50", "250"), ("75", "375"), ("100", "500")]
    final_ppl, final_acc = float(quarters[-1][2]), float(quarters[-1][3])
    assert final_ppl < 5 and final_acc >= 95
    assert "continuation:" in out and "Checkpoint saved to" in out
    saved = load_checkpoint(ck)
    assert saved.history.quarters[-1]["eval_perplexity"] == pytest.approx(final_ppl, abs=1e-3)
    assert math.isclose(saved.history.loss[0], loss0, rel_tol=0.1)


def test_a_user_text_file_and_sizes(tmp_path, capsys):
    f = tmp_path / "meu.txt"
    f.write_text("Um texto curto de teste para o modelo aprender.", encoding="utf-8")
    ck = tmp_path / "out" / "small.pt"
    main(["--text-file", str(f), "--epochs", "4", "--n-layer", "1", "--n-embd", "32", "--n-head", "2",
          "--no-progress", "--no-bias", "--cont-prefix-tokens", "3", "--cont-new-tokens", "5",
          "--cont-temperature", "2.0", "--cont-top-k", "50", "--checkpoint", str(ck)])
    out = capsys.readouterr().out
    assert "[100%] epoch 4/4" in out and "'Um texto curto'" in out
    saved = load_checkpoint(ck)
    assert (saved.config.n_layer, saved.config.n_embd, saved.config.bias) == (1, 32, False)
    tc = saved.train_config
    assert (tc.epochs, tc.cont_new_tokens, tc.cont_temperature, tc.cont_top_k) == (4, 5, 2.0, 50)


@pytest.mark.parametrize("argv, message", [
    (["--n-head", "3"], r"n_embd=128 is not divisible by n_head=3"),
    (["--dropout", "1.5"], r"dropout=1.5 is not allowed"),
    (["--epochs", "0"], r"epochs=0 is not allowed"),
    (["--block-size", "20"], r"the text has [\d,]+ (tokens|characters, so at least [\d,]+ tokens),? but "
                             r"block_size is 20"),
    (["--text-file", "/no/such/file.txt"], r"'/no/such/file.txt' does not exist"),
    (["--device", "tpu"], r"--device 'tpu'"),
    (["--checkpoint", "/"], r"--checkpoint '/' is a folder"),
    (["--checkpoint", "/proc/no/such/x.pt"], r"No such file or directory|Permission denied"),
    (["--cont-top-k", "0"], r"cont_top_k=0"),
])
def test_bad_options_exit_with_a_one_line_error(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv + ["--no-progress"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err


def test_cuda_request_without_a_gpu_is_explained(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="torch sees no CUDA GPU"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"
