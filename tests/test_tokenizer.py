import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import nanogpt_lib.tokenizer as tk
from nanogpt_lib import bundled_paragraph
from nanogpt_lib.tokenizer import BUNDLED_TOKENIZER_DIR, BUNDLED_TOKENIZER_NAME, HUB_TOKENIZER, load_tokenizer
from nanogpt_lib.tokenizer_train import FILES, VOCAB_SIZE
from nanogpt_lib.tokenizer_train import main as train_main


def _no_network(*args, **kwargs):
    raise AssertionError("the loader must not open a connection here")


def test_offline_env_falls_back_at_once_to_the_bundled_tokenizer(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(tk.socket, "create_connection", _no_network)
    tok = load_tokenizer()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    assert "bundled byte-level BPE" in lines[0] and HUB_TOKENIZER in lines[0] and "HF_HUB_OFFLINE=1" in lines[0]
    assert len(tok) == VOCAB_SIZE
    assert tok.name_or_path == BUNDLED_TOKENIZER_NAME


def test_unreachable_hub_is_detected_by_the_probe(monkeypatch, capsys):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    calls = []

    def refuse(address, timeout):
        calls.append((address, timeout))
        raise ConnectionRefusedError("refused")

    monkeypatch.setattr(tk.socket, "create_connection", refuse)
    tok = load_tokenizer(probe_timeout=0.5)
    out = capsys.readouterr().out
    assert calls == [(("huggingface.co", 443), 0.5)]
    assert "unreachable (ConnectionRefusedError)" in out
    assert len(tok) == VOCAB_SIZE


def test_hub_error_after_a_successful_probe_still_falls_back(monkeypatch, capsys):
    from transformers import AutoTokenizer

    real = AutoTokenizer.from_pretrained.__func__

    def fake(cls, name, *args, **kwargs):
        if name == HUB_TOKENIZER:
            raise OSError("We couldn't connect to the Hub")
        return real(cls, name, *args, **kwargs)

    monkeypatch.setattr(tk, "hub_offline_reason", lambda timeout: None)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", classmethod(fake))
    tok = load_tokenizer()
    assert "the Hub did not provide it (OSError: We couldn't connect to the Hub)" in capsys.readouterr().out
    assert len(tok) == VOCAB_SIZE


def test_a_local_folder_is_loaded_directly(tmp_path, capsys):
    folder = tmp_path / "my-tokenizer"
    shutil.copytree(BUNDLED_TOKENIZER_DIR, folder)
    tok = load_tokenizer(str(folder))
    assert "Tokenizer: " + str(folder) + " (local folder)" in capsys.readouterr().out
    assert tok.decode(tok(bundled_paragraph())["input_ids"]) == bundled_paragraph()


def test_a_fallback_folder_of_ones_own(tmp_path, capsys):
    folder = tmp_path / "fallback"
    shutil.copytree(BUNDLED_TOKENIZER_DIR, folder)
    tok = load_tokenizer("someone/not-cached", fallback_dir=folder)
    assert f"the fallback tokenizer in {folder}" in capsys.readouterr().out
    assert len(tok) == VOCAB_SIZE


def test_missing_fallback_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"fallback folder .* has no tokenizer.json"):
        load_tokenizer("someone/not-cached", fallback_dir=tmp_path, verbose=False)


def test_a_named_folder_without_a_usable_tokenizer_is_an_error_not_a_fallback(tmp_path):
    """Issue 15: an empty or broken folder the user named used to fall back to the bundled tokenizer."""
    with pytest.raises(ValueError, match=r"holds no usable tokenizer"):
        load_tokenizer(str(tmp_path), verbose=False)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tokenizer.json").write_text("[]", encoding="utf-8")
    with pytest.raises(ValueError, match=r"'.*broken' holds no usable tokenizer"):
        load_tokenizer(str(broken), verbose=False)


@pytest.mark.parametrize("name, message", [
    (None, r"tokenizer name None is not allowed"),
    ("FILE", r"is a file; give the folder that holds it"),
])
def test_a_tokenizer_name_that_is_not_a_folder_or_id_is_named(name, message, tmp_path):
    if name == "FILE":
        name = str(tmp_path / "tokenizer.json")
        shutil.copy(BUNDLED_TOKENIZER_DIR / "tokenizer.json", name)
    with pytest.raises(ValueError, match=message):
        load_tokenizer(name, verbose=False)


def test_the_hugging_face_cache_is_used_offline(tmp_path):
    """A reader who was online once has the blog's tokenizer in the HF cache; offline it is used.
    We build that cache layout by hand (with our files standing in for the Hub's)."""
    repo = tmp_path / "hub" / ("models--" + HUB_TOKENIZER.replace("/", "--"))
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(BUNDLED_TOKENIZER_DIR, snapshot)
    (snapshot / "config.json").write_text('{"model_type": "gpt2"}', encoding="utf-8")  # the Hub repo has one
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40, encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    code = "from nanogpt_lib import load_tokenizer; t = load_tokenizer(); print(len(t), t.name_or_path)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).parent.parent)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"Tokenizer: {HUB_TOKENIZER} (local Hugging Face cache)")
    assert lines[1].startswith(f"{VOCAB_SIZE} ")


def test_bundled_tokenizer_is_reproduced_byte_for_byte(tmp_path, capsys):
    train_main(["--out", str(tmp_path)])
    assert "4096-token byte-level BPE" in capsys.readouterr().out
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (BUNDLED_TOKENIZER_DIR / name).read_bytes(), name
    assert not list(tmp_path.glob(".*.tmp"))


def test_bundled_tokenizer_is_gpt2_style_byte_level_bpe(tokenizer):
    spec = json.loads((BUNDLED_TOKENIZER_DIR / "tokenizer.json").read_text(encoding="utf-8"))
    assert spec["model"]["type"] == "BPE" and spec["pre_tokenizer"]["type"] == "ByteLevel"
    assert tokenizer.eos_token == "<|endoftext|>"
    text = "Olá, coração! 123 ação — ñ 😀"  # any UTF-8 text round-trips through the byte alphabet
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    ids = tokenizer(bundled_paragraph())["input_ids"]
    assert 80 <= len(ids) <= 100  # fits the Part-1 context of 100 tokens


def test_training_cli_refuses_a_too_small_vocabulary(capsys):
    with pytest.raises(SystemExit):
        train_main(["--vocab-size", "100", "--out", "/nonexistent"])
    assert "--vocab-size 100 is too small" in capsys.readouterr().err


def test_the_name_checkpoints_record_loads_the_bundled_tokenizer_directly(monkeypatch, capsys):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(tk.socket, "create_connection", _no_network)
    tok = load_tokenizer(BUNDLED_TOKENIZER_NAME, expected_vocab_size=VOCAB_SIZE)
    assert capsys.readouterr().out.strip().endswith("as requested")
    assert tok.name_or_path == BUNDLED_TOKENIZER_NAME


def test_a_path_that_does_not_exist_is_an_error_not_a_fallback(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"tokenizer folder '.*typo' does not exist"):
        load_tokenizer(str(tmp_path / "typo"))
    with pytest.raises(FileNotFoundError, match=r"tokenizer folder './typo' does not exist"):
        load_tokenizer("./typo")


def test_local_folders_are_recorded_by_their_absolute_path(tmp_path, monkeypatch):
    shutil.copytree(BUNDLED_TOKENIZER_DIR, tmp_path / "tok")
    monkeypatch.chdir(tmp_path)
    tok = load_tokenizer("./tok", verbose=False)
    assert tok.name_or_path == str(tmp_path / "tok")


def test_a_tokenizer_of_the_wrong_size_is_refused():
    with pytest.raises(ValueError, match=r"has 4,096 tokens but 50,257 are expected"):
        load_tokenizer(expected_vocab_size=50257, verbose=False)


def test_the_probe_is_bounded_even_when_the_connect_hangs(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    release = threading.Event()

    def hang(address, timeout):
        release.wait(10)  # a resolver that does not answer
        raise OSError("late")

    monkeypatch.setattr(tk.socket, "create_connection", hang)
    try:
        assert tk.hub_offline_reason(timeout=0.2) == "huggingface.co:443 gave no answer within 0.2 s"
    finally:
        release.set()


def test_the_probe_asks_the_proxy_when_one_is_set(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.local:3128")
    seen = []

    class Conn:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(tk.socket, "create_connection", lambda address, timeout: seen.append(address) or Conn())
    assert tk.hub_offline_reason() is None
    assert seen == [("proxy.local", 3128)]
