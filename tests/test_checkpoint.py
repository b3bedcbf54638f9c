import pytest
import torch

from nanogpt_lib import (
    GPT,
    CheckpointError,
    GPTConfig,
    History,
    TrainConfig,
    fit,
    load_checkpoint,
    make_optimizer,
    save_checkpoint,
    shift_targets,
)
from nanogpt_lib import checkpoint as ckpt_module


@pytest.fixture
def trained(tiny_model, tiny_config):
    x = torch.randint(0, tiny_config.vocab_size, (2, tiny_config.block_size))
    cfg = TrainConfig(epochs=3, lr=1e-3)
    opt = make_optimizer(tiny_model, cfg)
    history = fit(tiny_model, (x, shift_targets(x)), cfg, opt, progress=False,
                  on_quarter=lambda e, p, h: {"loss_here": h.loss[-1]})
    return tiny_model, opt, history, cfg


def test_round_trip_restores_everything(tmp_path, trained):
    model, opt, history, cfg = trained
    path = save_checkpoint(tmp_path / "sub" / "run.pt", model, opt, history, "nanogpt_lib/tokenizer_pt", cfg)
    assert path.is_file() and not list(path.parent.glob(".*.tmp"))
    ck = load_checkpoint(path)
    assert ck.config == model.config and ck.tokenizer_name == "nanogpt_lib/tokenizer_pt"
    assert ck.train_config == cfg
    assert ck.history == history and isinstance(ck.history, History)
    for (name, a), (_, b) in zip(model.state_dict().items(), ck.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert ck.model.transformer.wte.weight is ck.model.lm_head.weight  # tying survives
    fresh = GPT(model.config)
    opt2 = make_optimizer(fresh, cfg)
    load_checkpoint(path, model=fresh, optimizer=opt2)
    assert torch.equal(fresh.lm_head.weight, model.lm_head.weight)
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k]["exp_avg"], s2[k]["exp_avg"]) for k in s1)


def test_minimal_checkpoint_without_optimizer_or_history(tmp_path, tiny_model):
    path = save_checkpoint(tmp_path / "m.pt", tiny_model)
    ck = load_checkpoint(path)
    assert ck.history is None and ck.optimizer_state is None and ck.train_config is None
    with pytest.raises(CheckpointError, match="has no optimizer state"):
        load_checkpoint(path, model=GPT(tiny_model.config), optimizer=make_optimizer(tiny_model, TrainConfig()))


def test_another_config_is_refused_with_the_differences(tmp_path, tiny_model, tiny_config):
    path = save_checkpoint(tmp_path / "m.pt", tiny_model)
    other = GPT(GPTConfig(**{**tiny_config.to_dict(), "n_layer": 3, "dropout": 0.1}))
    with pytest.raises(CheckpointError, match=r"another config \(n_layer: file 2 vs model 3; dropout: file 0.0"):
        load_checkpoint(path, model=other)


def test_truncated_and_foreign_files_are_clear_errors(tmp_path, tiny_model):
    path = save_checkpoint(tmp_path / "m.pt", tiny_model)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated.pt' is corrupt or not a nanogpt_lib checkpoint"):
        load_checkpoint(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="is corrupt"):
        load_checkpoint(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="is not a nanogpt_lib checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_flipped_bytes_inside_the_file_are_caught(tmp_path, trained):
    model, opt, history, cfg = trained
    path = save_checkpoint(tmp_path / "m.pt", model, opt, history, "tok", cfg)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"is corrupt"):
        load_checkpoint(path)


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.pop("history"), r"is incomplete: it lacks \['history'\]"),
    (lambda p: p.update(history={"epoch": [1]}), r"holds invalid metadata: KeyError"),
    (lambda p: p.update(train_config={"epochs": 3, "betas": [0.9, 0.95], "warmup": 9}), r"invalid metadata: TypeError"),
    (lambda p: p["model_config"].update(n_head=5), r"invalid metadata: .*not divisible by n_head=5"),
    (lambda p: p["model"].pop("lm_head.weight"), r"weights in .* do not fit the model"),
])
def test_hand_damaged_payloads_are_checkpoint_errors(tmp_path, trained, damage, message):
    model, opt, history, cfg = trained
    path = save_checkpoint(tmp_path / "m.pt", model, opt, history, "tok", cfg)
    payload = torch.load(path, weights_only=True)
    damage(payload)
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_optimizer_state_for_other_parameters_is_refused(tmp_path, trained):
    model, opt, history, cfg = trained
    path = save_checkpoint(tmp_path / "m.pt", model, opt, history, "tok", cfg)
    other = torch.optim.AdamW(GPT(model.config).parameters())  # one group instead of two
    with pytest.raises(CheckpointError, match="optimizer state in .* does not fit this optimizer"):
        load_checkpoint(path, model=GPT(model.config), optimizer=other)


def test_a_failed_save_leaves_the_old_file_and_no_temp_file(tmp_path, tiny_model, monkeypatch):
    path = save_checkpoint(tmp_path / "m.pt", tiny_model)
    before = path.read_bytes()

    def crash(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_module.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, tiny_model)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]
