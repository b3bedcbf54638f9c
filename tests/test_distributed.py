"""Two processes under torchrun (gloo on CPU, 127.0.0.1) against one process with the same global batch
(both with 2 micro-steps of gradient accumulation, so DDP's no_sync path runs too).

Dropout is 0 in the comparison: each rank draws its own dropout masks (a function of seed, step and
rank), which cannot equal the masks one process draws for the whole batch. Without dropout the
windows are the same (a function of seed and step, split between the ranks) and DDP averages the
ranks' gradients, so the losses agree up to float rounding.
"""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

from nanogpt_lib import load_checkpoint
from nanogpt_lib.train import main

HERE = Path(__file__).parent
MODEL = ["--block-size", "16", "--n-layer", "2", "--n-head", "2", "--n-embd", "16", "--dropout", "0.0",
         "--lr", "3e-3", "--batch-size", "8", "--grad-accum", "2", "--eval-interval", "4", "--eval-batches", "2",
         "--warmup-steps", "2", "--no-progress"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(target: list[str], args: list[str], timeout: float = 120, processes: int = 2,
             **env) -> subprocess.CompletedProcess:
    port = _free_port()
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc_per_node={processes}",
               "--master_addr=127.0.0.1", f"--master_port={port}", *target, *args]
    environment = {**os.environ, "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment, cwd=HERE.parent)


def test_two_processes_match_one_and_their_checkpoint_loads_in_one(tokens, tmp_path, capsys):
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    main(["--data", str(tokens), "--steps", "8", "--checkpoint", str(one), *MODEL])
    single_out = capsys.readouterr().out
    result = torchrun(["-m", "nanogpt_lib.train"], ["--data", str(tokens), "--steps", "8", "--checkpoint", str(two),
                                                    *MODEL])
    assert result.returncode == 0, result.stdout[-1500:] + result.stderr[-3000:]
    assert "x 2 process(es)" in result.stdout and "global batch 8 = 2 x 2 x 2 windows" in result.stdout
    assert result.stdout.count("step      8/8") == 1 and result.stdout.count("Checkpoint saved") == 1  # rank 0 only
    assert "x 1 process(es)" in single_out
    a, b = load_checkpoint(one), load_checkpoint(two)  # the DDP checkpoint loads in this single process
    assert b.train_state["world_size"] == 2 and not any(k.startswith("module.") for k in b.model.state_dict())
    torch.testing.assert_close(torch.tensor(b.history.loss), torch.tensor(a.history.loss), rtol=1e-5, atol=1e-5)
    for key in ("train_loss", "val_loss"):
        torch.testing.assert_close(torch.tensor([e[key] for e in b.history.evals]),
                                   torch.tensor([e[key] for e in a.history.evals]), rtol=1e-5, atol=1e-5)
    for p, q in zip(b.model.parameters(), a.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_a_failing_rank_fails_the_whole_run_quickly(tokens):
    began = time.monotonic()
    result = torchrun([str(HERE / "ddp_worker.py")], ["--data", str(tokens), "--steps", "50", "--dist-timeout", "30",
                                                      *MODEL], timeout=90, FAIL_RANK="1", FAIL_STEP="3")
    elapsed = time.monotonic() - began
    assert result.returncode != 0 and elapsed < 60
    assert "rank 1 of 2 failed: RuntimeError: injected failure on rank 1" in result.stderr
    assert "step     50/50" not in result.stdout
    # the healthy rank, when it lives long enough to say anything, names the failed one, not itself
    assert "rank 0 of 2 failed" not in result.stderr and "corpus_train.py" not in result.stderr
    if "rank 0 of 2" in result.stderr:
        assert "rank 0 of 2 stopped: rank 1 died or did not answer" in result.stderr


def test_a_frozen_rank_is_named_by_the_one_that_waited_for_it(tokens):
    result = torchrun([str(HERE / "ddp_worker.py")], ["--data", str(tokens), "--steps", "50", "--dist-timeout", "5",
                                                      *MODEL], timeout=90, FAIL_RANK="1", FAIL_STEP="3", FREEZE="1")
    assert result.returncode != 0
    assert "rank 0 of 2 stopped: rank 1 died or did not answer within --dist-timeout 5 s" in result.stderr
    assert "rank 0 of 2 failed" not in result.stderr and "corpus_train.py" not in result.stderr


def test_an_moe_model_trains_under_ddp(tokens, tmp_path):
    """Experts that no token of a rank chose get no gradient there: DDP must expect unused parameters."""
    ck = tmp_path / "moe.pt"
    result = torchrun(["-m", "nanogpt_lib.train"], ["--data", str(tokens), "--steps", "4", "--checkpoint", str(ck),
                                                    "--n-expert", "4", "--top-k", "1", "--moe-dispatch", "loop",
                                                    *MODEL])
    assert result.returncode == 0, result.stdout[-1500:] + result.stderr[-3000:]
    assert "MoE in blocks [0, 1]: 4 experts, top-1" in result.stdout
    saved = load_checkpoint(ck)
    assert saved.model.config.n_expert == 4 and len(saved.history.moe) == 4


def test_the_balancing_bias_counts_the_load_of_every_rank(tokens, tmp_path, capsys):
    """The bias update all-reduces the load: two processes move the bias exactly as one process with the
    whole global batch does (rank 0's half alone would give other signs)."""
    part3 = ["--n-expert", "8", "--top-k", "2", "--expert-type", "swiglu", "--n-shared-expert", "1",
             "--router-type", "sigmoid", "--bias-update-rate", "0.01", "--aux-loss-weight", "0",
             "--steps", "2", *MODEL]
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    main(["--data", str(tokens), "--checkpoint", str(one), *part3])
    capsys.readouterr()
    result = torchrun(["-m", "nanogpt_lib.train"], ["--data", str(tokens), "--checkpoint", str(two), *part3])
    assert result.returncode == 0, result.stdout[-1500:] + result.stderr[-3000:]
    assert "swiglu experts, 1 shared, sigmoid router, balancing bias" in result.stdout
    a, b = load_checkpoint(one).model.state_dict(), load_checkpoint(two).model.state_dict()
    for layer in (0, 1):
        key = f"transformer.h.{layer}.mlp.expert_bias"
        assert a[key].abs().sum() > 0
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0)
